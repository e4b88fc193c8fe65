"""Fuzz targets of the WebSocket frame reader (gauss/http/frames.py) and message handling (gauss/http/ws.py).

``ws_frames``: either the input itself is what a client sends, or it
describes messages (opcode, payload, fragmentation, interleaved control
frames) that are framed and masked as RFC 6455 says. Invariants: the
reader raises nothing but ``ConnectionGone``; every message is text,
binary, close, ping or pong, a control payload is at most 125 bytes, a data
message at most ``max_bytes`` or flagged ``oversize`` with no data; described
messages come back exactly, in order (oversize ones flagged), and the end
of the stream is ``ConnectionGone``.

``ws_messages``: a :class:`~gauss.http.ws.WebSocketSession` on a real hub
(memory topics holding quotes and candles) reads the client's messages —
JSON objects built from SPEC section 5's vocabulary with hostile values
(out-of-range integers, ``1e30``, wrong types, unknown fields), raw text,
binary frames, pings — while records are published between them, then a
close frame. Invariants (SPEC section 5): the session never raises, answers
every text or binary message with exactly one ``error``, ``subscribed``,
``unsubscribed`` or ``result`` (in order, echoing the ``id``), a binary
message with an error, a ping with its pong, pushes only known message
types, stays open until the client's close (which it echoes), and logs
nothing at ERROR (no traceback for anything a client sends).
"""

from __future__ import annotations

import io
import json
import os
import struct
from typing import Any

import gevent
import msgspec
from fuzz_hub import T0, ErrorLog
from fuzz_hub import hub as _hub
from fuzz_hub import publish as _publish
from fuzz_input import FuzzInput

from gauss.http.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, ConnectionGone, FrameReader
from gauss.http.metrics import ApiMetrics
from gauss.http.options import ApiOptions
from gauss.http.ws import WebSocketSession

__all__ = ["check_ws_frames", "check_ws_messages", "seeds_ws_frames", "seeds_ws_messages", "client_frame"]

OP_CONTINUATION = 0x0
MESSAGE_OPCODES = (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
LIMITS = (0, 1, 16, 125, 126, 1000, 65_536)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One masked client-to-server frame (RFC 6455 section 5.2), minimal length encoding."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return header + mask + masked


def _reader(stream: bytes, max_bytes: int) -> FrameReader:
    return FrameReader(io.BytesIO(stream).read, max_bytes)


def _read_all(reader: FrameReader) -> list[Any]:
    messages = []
    while True:
        try:
            message = reader.read_message()
        except ConnectionGone:
            return messages
        assert message.opcode in MESSAGE_OPCODES, f"message of opcode {message.opcode:#x}"
        if message.opcode >= 0x8:
            assert len(message.data) <= 125 and not message.oversize, "control frame over 125 bytes"
        messages.append((message.opcode, message.data, message.oversize))
        assert len(messages) < 100_000


def check_ws_frames(data: bytes) -> None:
    inp = FuzzInput(data)
    structured = inp.bool()
    max_bytes = inp.choice(LIMITS)
    if not structured:
        for opcode, payload, oversize in _read_all(_reader(inp.rest(), max_bytes)):
            if opcode in (OP_TEXT, OP_BINARY):
                assert (not payload if oversize else len(payload) <= max_bytes), "a data message over max_bytes"
        return
    stream = bytearray()
    expected = []
    for _ in range(inp.int(0, 8)):
        opcode = inp.choice((OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE))
        size = inp.int(0, 125) if opcode >= 0x8 else inp.choice((0, 1, 5, 125, 126, 300, 65_535, 65_536, 70_000))
        seed = inp.take(4).ljust(4, b"\x00")
        payload = (seed * (size // 4 + 1))[:size]
        mask = inp.take(4).ljust(4, b"\x00")
        if opcode >= 0x8:
            stream += client_frame(opcode, payload, mask=mask)
            expected.append((opcode, payload, False))
            continue
        pieces = inp.int(1, 4)
        cuts = sorted({inp.int(0, size) for _ in range(pieces - 1)})
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
        controls = []
        for i, part in enumerate(parts):
            stream += client_frame(opcode if i == 0 else OP_CONTINUATION, part, fin=i == len(parts) - 1, mask=mask)
            if i < len(parts) - 1 and inp.bool():  # a ping between fragments is allowed
                ping = inp.take(inp.int(0, 8))
                stream += client_frame(OP_PING, ping, mask=mask)
                controls.append((OP_PING, ping, False))
        expected.extend(controls)
        oversize = size > max_bytes
        expected.append((opcode, b"" if oversize else payload, oversize))
    got = _read_all(_reader(bytes(stream), max_bytes))
    assert got == expected, f"read {[(o, len(d), x) for o, d, x in got]}, sent {[(o, len(d), x) for o, d, x in expected]}"


# --- ws_messages ---------------------------------------------------------------------------

_HOSTILE = (
    0, 1, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, 1e30, -1e30, 1.5, 1e300,
    "5", "", True, False, None, [], {}, [1], {"a": 1}, "quotes.raw" * 40, "é" * 30,
)  # fmt: skip
_PLAUSIBLE: dict[str, tuple[Any, ...]] = {
    "action": ("subscribe", "unsubscribe", "query", "publish"),
    "topic": ("quotes.raw", "ohlc.1m", "ohlc.5m", "nope"),
    "key": ("EURUSD", "USDJPY", "nope"),
    "policy": ("drop", "drop_oldest", "conflate", "back_pressure", "bogus"),
    "id": (1, 2, "a", None),
    "since_seq": (0, 1, 5, 19, 20, 25, 10_000),
    "since_ts": (T0, T0 + 5_000, T0 + 30_000, 0),
    "epoch": ("", "x"),
    "from": (T0, T0 + 5_000, T0 + 10**9),
    "to": (T0, T0 + 10_000, T0 + 10**9),
    "limit": (1, 3, 100, 100_000, 100_001),
    "bogus": (1,),
}
_OPTIONAL = ("key", "policy", "id", "since_seq", "since_ts", "epoch", "from", "to", "limit", "bogus")


def _value(inp: FuzzInput, name: str) -> Any:
    """Mostly a plausible value of field ``name``, sometimes a hostile one of any type."""
    return inp.choice(_PLAUSIBLE[name]) if inp.int(0, 3) != 3 else inp.choice(_HOSTILE)


def _structured_message(inp: FuzzInput) -> bytes:
    message: dict[str, Any] = {}
    for name in ("action", "topic"):
        if inp.int(0, 7) != 7:  # present unless asked otherwise (an input's zero tail means "plausible")
            message[name] = _value(inp, name)
    for _ in range(inp.int(0, 4)):
        name = inp.choice(_OPTIONAL)
        message[name] = _value(inp, name)
    return json.dumps(message).encode()


_DIRECT = {"error", "subscribed", "unsubscribed", "result"}
_PUSHED = {"records", "gap", "reset"}


def _server_frames(out: bytes) -> list[tuple[int, bytes]]:
    """The server's messages: ``(opcode, payload)``, fragmented ones reassembled (control frames are never fragmented)."""
    messages: list[tuple[int, bytes]] = []
    reader = io.BytesIO(out)
    opcode, parts = 0, []
    while True:
        head = reader.read(2)
        if not head:
            assert not opcode, "the server's last message is unfinished"
            return messages
        assert len(head) == 2, "a torn server frame"
        first, second = head
        assert not second & 0x80, "a server frame is masked"
        assert not first & 0x70, "reserved bits set"
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", reader.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", reader.read(8))[0]
        payload = reader.read(n)
        assert len(payload) == n, "a torn server frame"
        op, fin = first & 0x0F, bool(first & 0x80)
        if op >= 0x8:
            assert fin and n <= 125, "a fragmented or oversize control frame"
            messages.append((op, payload))
            continue
        if op:
            assert not opcode, "a new message before the previous one ended"
            opcode = op
        else:
            assert opcode, "a continuation frame outside a message"
        parts.append(payload)
        if fin:
            messages.append((opcode, b"".join(parts)))
            opcode, parts = 0, []


def check_ws_messages(data: bytes) -> None:
    hub = _hub()
    inp = FuzzInput(data)
    options = ApiOptions(ws_queue_size=inp.choice((2, 100)), max_ws_subscriptions=3, max_ws_message_bytes=4096)
    items: list[tuple[str, Any]] = []  # what the client does, in order
    for _ in range(inp.int(1, 10)):
        kind = inp.int(0, 9)
        if kind <= 4:
            items.append(("text", _structured_message(inp)))
        elif kind == 5:
            items.append(("text", inp.take(inp.int(0, 255))))
        elif kind == 6:
            items.append(("binary", _structured_message(inp) if inp.bool() else inp.take(inp.int(0, 64))))
        elif kind == 7:
            items.append(("ping", inp.take(inp.int(0, 16))))
        else:
            items.append(("publish", inp.int(1, 8)))
    # the client's stream: one frame per item (publishing happens when the reader reaches it)
    frames: list[tuple[bytes, int]] = []
    for kind, value in items:
        if kind == "publish":
            frames.append((b"", value))
        else:
            opcode = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING}[kind]
            frames.append((client_frame(opcode, value, mask=os.urandom(4)), 0))
    frames.append((client_frame(OP_CLOSE, (1000).to_bytes(2, "big")), 0))
    stream = io.BytesIO()
    due: list[tuple[int, int]] = []  # (stream offset, records to publish when the reader gets there)
    for frame_bytes, publish in frames:
        if publish:
            due.append((stream.tell(), publish))
        stream.write(frame_bytes)
    wire = stream.getvalue()
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        while due and due[0][0] <= pos:
            _publish(hub, due.pop(0)[1])
        gevent.sleep(0)  # pushers run between the client's bytes
        chunk = wire[pos : pos + n]
        pos += len(chunk)
        return chunk

    out = bytearray()
    closed = []
    with ErrorLog() as capture:
        session = WebSocketSession(
            read, out.extend, lambda: closed.append(True), hub.registry, options, ApiMetrics(None), peer="fuzz"
        )
        session.run()
    assert not capture.records, f"logged at ERROR: {[r.getMessage() for r in capture.records]}"
    replies = _server_frames(bytes(out))
    assert replies and replies[-1][0] == OP_CLOSE, f"the session did not stay open until the client's close: {replies[-3:]!r}"
    direct = []
    pushed: dict[str, list[dict[str, Any]]] = {}  # topic -> its pushed records, in order
    for opcode, payload in replies[:-1]:
        assert opcode in (OP_TEXT, OP_PONG), f"server sent opcode {opcode:#x}"
        if opcode == OP_PONG:
            direct.append(("pong", payload))
            continue
        message = msgspec.json.decode(payload)
        assert type(message) is dict and message.get("type") in _DIRECT | _PUSHED, f"unknown message {payload[:200]!r}"
        if message["type"] in _DIRECT:
            direct.append((message["type"], message))
        elif message["type"] == "records":
            pushed.setdefault(message["topic"], []).extend(message["records"])
    asked = [(kind, value) for kind, value in items if kind != "publish"]
    assert len(direct) == len(asked), f"{len(asked)} client messages, {len(direct)} answers: {direct!r}"
    for (kind, value), (answer, message) in zip(asked, direct, strict=True):
        if kind == "ping":
            assert answer == "pong" and message == value, f"ping {value!r} answered {answer} {message!r}"
            continue
        assert answer != "pong", "a data message answered with a pong"
        if kind == "binary":
            assert answer == "error", f"a binary message answered {message!r}"
            continue
        try:
            sent = json.loads(value)
        except ValueError:
            sent = None
        if type(sent) is dict and "id" in sent and type(sent["id"]) in (int, str) and abs(hash(sent["id"])) >= 0:
            if type(sent["id"]) is str or -(2**63) <= sent["id"] < 2**64:
                assert message.get("id") == sent["id"], f"answer {message!r} does not echo id {sent['id']!r}"
    _check_pushes(asked, direct, pushed)


def _check_pushes(asked: list[tuple[str, Any]], direct: list[tuple[str, Any]], pushed: dict[str, list[Any]]) -> None:
    """A topic's one subscription (drop or drop_oldest) gets its records once each, ascending, of its key only.

    Replay (``since_seq``/``since_ts``) then the live tail: SPEC section 5's "no gap and no duplicate
    between them"; shed records may be missing (announced by ``gap``), never repeated or reordered.
    """
    subscribed: dict[str, list[dict[str, Any]]] = {}
    left: set[str] = set()
    for (_, value), (answer, message) in zip(asked, direct, strict=True):
        if answer == "subscribed":
            subscribed.setdefault(message["topic"], []).append(json.loads(value))
        elif answer == "unsubscribed":
            left.add(message["topic"])
    for topic, records in pushed.items():
        requests = subscribed.get(topic, [])
        assert requests, f"records of {topic} pushed without a subscription"
        if len(requests) != 1 or topic in left or requests[0].get("policy") not in (None, "drop", "drop_oldest"):
            continue
        seqs = [r["seq"] for r in records]
        assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), f"{topic}: pushed seqs {seqs} repeat or go back"
        key = requests[0].get("key")
        if key is not None:
            assert all(r["key"] == key for r in records), f"{topic}: records of other keys than {key!r} pushed"


def seeds_ws_frames() -> list[bytes]:
    text = client_frame(OP_TEXT, b'{"action":"subscribe","topic":"quotes.raw"}')
    return [
        b"\x00\x05" + text + client_frame(OP_PING, b"hi") + client_frame(OP_CLOSE, b"\x03\xe8"),
        b"\x00\x02" + client_frame(OP_TEXT, b"x" * 300),
        b"\x00\x06" + client_frame(OP_BINARY, b"ab", fin=False) + client_frame(OP_PONG, b"") + client_frame(OP_CONTINUATION, b"cd"),
        b"\x01\x06\x03\x00\x02abcd\x01\x02\x03\x04\x03\x05\x09\x01\x04\x00\x00",
        b"\x00\x05\x81\x7f\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00",
    ]


def seeds_ws_messages() -> list[bytes]:
    subscribe = b"\x00" * 7  # action subscribe, topic quotes.raw, no other field
    replay = b"\x00" * 6 + b"\x01\x03\x00\x01"  # the same with since_seq 1
    publish_then_ping = b"\x08\x07\x07\x02ab"
    return [
        b"\x01\x05\x00" + subscribe + publish_then_ping + publish_then_ping + b"\x07\x00",
        b"\x00\x05\x00" + replay + publish_then_ping + publish_then_ping + b"\x07\x00",
        b"\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x01\x06\x00\x00\x02\x00\x00\x01\x00\x08\x03\x09\x00\x02\x02\x00\x07\x00\x05\x01\x04\x00\x03\x00\x05",
        b"\x00\x03\x05\x10{\"action\":\"query\"}\x07\x04ping\x06\x01\x00",
    ]
