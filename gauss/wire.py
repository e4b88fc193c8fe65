"""One wire format: framing, middleware and codec as one object (SPEC section 2).

A source reads ``framing -> middleware* -> codec``, a sink and
``gauss-quotes-gen`` write ``codec -> middleware* -> framing``; the list of
middleware is in reading order (the first one is undone first, so it is
applied last on the way out), and a sink's output reads back with the same
table. All three
build their plugins through :class:`WireFormat`, which checks the
combination once, here and nowhere else: ``lines`` carries only
uncompressed text codecs (:func:`check_combination`).

PERF: :meth:`WireFormat.decode` takes a whole read's frames as one batch;
for a quote topic it prefers the codec's fused quote path
(:class:`~gauss.protocols.QuoteCodec`, checked once when the wire format is
built), which decodes and runs :class:`~gauss.quotes.QuoteCheck` in one
pass; any other codec decodes, then the check runs on its records.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import Codec, FrameDecoder, Framing, Middleware, QuoteCodec
from gauss.quotes import QuoteCheck, RecordCheck
from gauss.records import Rejected
from gauss.registry import Options, create

__all__ = ["WireFormat", "check_combination", "middleware_list", "DEFAULT_FRAMING", "DEFAULT_CODEC"]

DEFAULT_FRAMING = "lines"
DEFAULT_CODEC = "json"

PluginTable = str | Mapping[str, Any]
"""A plugin as written in a configuration: a bare type name or a table with ``type``."""


def check_combination(framing: Framing, codec: Codec, middleware: Sequence[Middleware]) -> None:
    """The SPEC section 2 rule: ``lines`` (a ``text_only`` framing) carries only uncompressed text codecs.

    Raises :class:`ConfigError` at ``codec`` or ``middleware`` (the caller
    puts its own position before the key).
    """
    if not framing.text_only:
        return
    if not codec.text:
        raise ConfigError(
            "codec",
            f"codec {codec.name!r} is binary; {framing.name!r} framing carries text codecs only "
            "(SPEC section 2); use length-prefixed framing",
        )
    if middleware:
        raise ConfigError(
            "middleware",
            f"{framing.name!r} framing carries uncompressed text only (SPEC section 2); "
            "use length-prefixed framing with middleware",
        )


def middleware_list(value: Any) -> list[PluginTable]:
    """A ``middleware`` option as written: a list of middleware types or tables."""
    if not isinstance(value, list):
        raise ConfigError("middleware", f"must be a list of middleware types or tables, got {value!r}")
    return value


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class WireFormat:
    """The framing, middleware and codec plugins of one source, sink or generator."""

    __slots__ = ("framing", "middleware", "codec", "_quote_codec")

    def __init__(self, framing: Framing, codec: Codec, middleware: Sequence[Middleware] = ()) -> None:
        """Raises :class:`ConfigError` for a combination SPEC section 2 forbids."""
        check_combination(framing, codec, middleware)
        self.framing = framing
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self.codec = codec
        # A capability declared by a protocol, checked once here (never probed per batch).
        self._quote_codec: QuoteCodec | None = codec if isinstance(codec, QuoteCodec) else None

    @classmethod
    def build(
        cls,
        framing: PluginTable = DEFAULT_FRAMING,
        codec: PluginTable = DEFAULT_CODEC,
        middleware: Sequence[PluginTable] = (),
        *,
        where: str = "",
    ) -> WireFormat:
        """Create the plugins from their tables; every :class:`ConfigError` names its key below ``where``."""
        framing_plugin = create("framing", framing, where=_at(where, "framing"))
        middleware_plugins = [
            create("middleware", m, where=_at(where, f"middleware[{i}]")) for i, m in enumerate(middleware)
        ]
        codec_plugin = create("codec", codec, where=_at(where, "codec"))
        try:
            return cls(framing_plugin, codec_plugin, middleware_plugins)
        except ConfigError as exc:
            raise exc.at(where) from None

    @classmethod
    def from_options(cls, opts: Options) -> WireFormat:
        """The ``framing`` (default lines), ``middleware`` (default none) and ``codec`` (default json) keys of a table."""
        framing = opts.raw("framing", DEFAULT_FRAMING)
        middleware = middleware_list(opts.raw("middleware", []))
        codec = opts.raw("codec", DEFAULT_CODEC)
        return cls.build(framing, codec, middleware)

    def chain(self, *, outbound: bool = False) -> str:
        """``lines -> json`` as a source reads it, ``json -> lines`` (``outbound``) as a sink writes it."""
        names = [self.framing.name, *(m.name for m in self.middleware), self.codec.name]
        return " -> ".join(reversed(names) if outbound else names)

    # --- inbound ---------------------------------------------------------------

    def decoder(self) -> FrameDecoder:
        """A fresh incremental frame decoder (one per connection)."""
        return self.framing.decoder()

    def decode(
        self, frames: Sequence[bytes], check: RecordCheck, *, max_frame_bytes: int, budget: int
    ) -> tuple[list[TopicRecord], list[Rejected], list[Rejected]]:
        """``(records, bad frames, refused records)`` of one batch of frames.

        ``budget`` is what the whole middleware chain may inflate the batch
        to; past it :class:`~gauss.errors.InflateBudgetExceeded` is raised
        and nothing of the batch is decoded.
        """
        payloads: Sequence[bytes] = frames
        bad: list[Rejected] = []
        for middleware in self.middleware:
            payloads, rejected = middleware.decode(payloads, max_frame_bytes, budget)
            # One budget for the whole chain: what a layer produced is spent.
            budget = max(budget - sum(map(len, payloads)), 0)
            if rejected:
                bad.extend(rejected)
        quote_codec = self._quote_codec
        if quote_codec is not None and isinstance(check, QuoteCheck):
            records, rejected, refused = quote_codec.decode_quotes(payloads, check)
        else:
            records, rejected = self.codec.decode(payloads)
            refused = []
            if records:
                records, refused = check.check(records)
        if rejected:
            bad.extend(rejected)
        return records, bad, refused

    # --- outbound --------------------------------------------------------------

    def encode(self, records: Sequence[TopicRecord]) -> bytes:
        """The wire bytes of a batch: codec, then middleware, then framing (a sink sends ``data``, SPEC section 2).

        The middleware apply in the reverse of the order :meth:`decode` undoes
        them, so what a sink writes a source with the same table reads.
        """
        payloads = self.codec.encode(records)
        for middleware in reversed(self.middleware):
            payloads = middleware.encode(payloads)
        return self.framing.encode(payloads) if payloads else b""
