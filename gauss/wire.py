"""One wire format: framing, middleware and codec as one object (SPEC section 2).

A source reads ``framing -> middleware* -> codec``, a sink and
``gauss-quotes-gen`` write ``codec -> middleware* -> framing``; the list of
middleware is in reading order (the first one is undone first, so it is
applied last on the way out), and a sink's output reads back with the same
table. All three
read their ``framing``/``middleware``/``codec`` keys as a :class:`WireConfig`,
which checks the combination once, here and nowhere else, when the
configuration is read: ``lines`` carries only uncompressed text codecs
(:func:`check_combination`).

PERF: :meth:`WireFormat.decode` takes a whole read's frames as one batch;
for a quote topic it prefers the codec's fused quote path
(:class:`~gauss.protocols.QuoteCodec`, checked once when the wire format is
built), which decodes and runs :class:`~gauss.quotes.QuoteCheck` in one
pass; any other codec decodes, then the check runs on its records.
"""

from __future__ import annotations

from typing import Annotated, Any, Hashable, Mapping, Sequence

import msgspec

from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import Codec, FrameDecoder, FramedQuoteEncoder, Framing, Middleware, QuoteCodec
from gauss.quotes import QuoteCheck, RecordCheck
from gauss.records import Rejected
from gauss.registry import CodecSpec, FramingSpec, MiddlewareSpec, PluginConfig, convert, default

__all__ = ["WireFormat", "WireConfig", "FramingConfig", "check_combination", "DEFAULT_FRAMING", "DEFAULT_CODEC"]

DEFAULT_FRAMING = "lines"
DEFAULT_CODEC = "json"


class FramingConfig(PluginConfig, frozen=True):
    """The options every framing takes."""

    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The largest frame; None: the source's or sink's ``max_frame_bytes``."""


class WireConfig(PluginConfig, frozen=True):
    """The ``framing`` (default lines), ``middleware`` (default none) and ``codec`` (default json) keys of a table."""

    framing: FramingSpec = msgspec.field(default_factory=default(FramingSpec, DEFAULT_FRAMING))
    middleware: tuple[MiddlewareSpec, ...] = ()
    codec: CodecSpec = msgspec.field(default_factory=default(CodecSpec, DEFAULT_CODEC))

    def __post_init__(self) -> None:
        # The plugin classes: the rule reads only their class attributes (name, text_only, text).
        check_combination(self.framing.plugin, self.codec.plugin, [m.plugin for m in self.middleware])


def check_combination(
    framing: Framing | type[Framing], codec: Codec | type[Codec], middleware: Sequence[Middleware | type[Middleware]]
) -> None:
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


class WireFormat:
    """The framing, middleware and codec plugins of one source, sink or generator."""

    __slots__ = ("framing", "middleware", "codec", "_quote_codec", "_framed_codec", "key")

    def __init__(
        self, framing: Framing, codec: Codec, middleware: Sequence[Middleware] = (), *, key: Hashable | None = None
    ) -> None:
        """Raises :class:`ConfigError` for a combination SPEC section 2 forbids."""
        check_combination(framing, codec, middleware)
        self.framing = framing
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self.codec = codec
        self.key = key if key is not None else self
        """Equal for wire formats built from equal tables: what writes the same bytes (sinks share encodings by it)."""
        # A capability declared by a protocol, checked once here (never probed per batch).
        self._quote_codec: QuoteCodec | None = codec if isinstance(codec, QuoteCodec) else None
        self._framed_codec: FramedQuoteEncoder | None = (
            codec if isinstance(codec, FramedQuoteEncoder) and not self.middleware else None
        )

    @classmethod
    def build(
        cls, framing: str | Mapping[str, Any] = DEFAULT_FRAMING, codec: str | Mapping[str, Any] = DEFAULT_CODEC,
        middleware: Sequence[str | Mapping[str, Any]] = (),
    ) -> WireFormat:
        """From plugin tables or bare type names (as a command line gives them); raises :class:`ConfigError`."""
        return cls.from_config(convert({"framing": framing, "codec": codec, "middleware": list(middleware)}, WireConfig))

    @classmethod
    def from_config(cls, config: WireConfig, *, max_frame_bytes: int | None = None) -> WireFormat:
        """The plugins ``config`` names, built; ``max_frame_bytes`` is the framing's unless its table set one."""
        framing = config.framing
        if max_frame_bytes is not None and isinstance(framing.config, FramingConfig) and framing.config.max_frame_bytes is None:
            framing = type(framing)(framing.kind, framing.type, framing.plugin, msgspec.structs.replace(framing.config, max_frame_bytes=max_frame_bytes))
        key = (framing, config.codec, tuple(config.middleware))  # frozen specs: equal tables, equal keys
        return cls(framing.build(), config.codec.build(), [m.build() for m in config.middleware], key=key)

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
    ) -> tuple[Sequence[TopicRecord], list[Rejected], list[Rejected]]:
        """``(records, bad frames, refused records)`` of one batch of frames (a quote codec's: a :class:`QuoteBatch`).

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
        records: Sequence[TopicRecord]
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
        Quotes as columns with no middleware are written framed by the codec
        itself (:class:`~gauss.protocols.FramedQuoteEncoder`): the same bytes.
        """
        if self._framed_codec is not None and isinstance(records, QuoteBatch):
            framed = self._framed_codec.encode_quotes_framed(records, self.framing.name)
            if framed is not None:
                return framed
        payloads = self.codec.encode(records)
        for middleware in reversed(self.middleware):
            payloads = middleware.encode(payloads)
        return self.framing.encode(payloads) if payloads else b""
