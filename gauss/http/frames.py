"""WebSocket frames on an upgraded connection: bounded reads, text writes of ready-made bytes.

gevent-websocket does the HTTP upgrade; this module reads and writes the
frames itself because its ``WebSocket`` has no message size limit, unmasks
byte by byte in Python, and cannot send ready-encoded bytes as a text frame
(which the API does for every push: one encoding shared by all clients).
"""

from __future__ import annotations

import struct
from typing import Callable

from geventwebsocket.websocket import Header

from gauss.errors import GaussError

__all__ = ["OP_CONTINUATION", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "Message", "FrameReader", "frame", "frame_header", "close_frame", "ConnectionGone", "ProtocolViolation"]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DISCARD_PIECE = 65_536


class ConnectionGone(GaussError, ConnectionError):
    """The peer closed the connection, or broke the framing so it cannot go on."""


class ProtocolViolation(ConnectionGone):
    """The peer broke the framing (RFC 6455 section 5): the server closes with status 1002 (section 7.1.7)."""


class Message:
    """One complete message: ``opcode`` (text, binary, close, ping, pong) and its payload.

    ``oversize`` is set (and ``data`` empty) when the message exceeded the
    limit and was read and discarded.
    """

    __slots__ = ("opcode", "data", "oversize")

    def __init__(self, opcode: int, data: bytes, oversize: bool = False) -> None:
        self.opcode = opcode
        self.data = data
        self.oversize = oversize


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (as big integers: fast in CPython)."""
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameReader:
    """Reads whole messages from ``read(n)``, never holding more than ``max_bytes`` of one."""

    def __init__(self, read: Callable[[int], bytes], max_bytes: int) -> None:
        self._read = read
        self._max = max_bytes
        # The data message in progress: it outlives a control frame that
        # arrives between its fragments (RFC 6455 section 5.4).
        self._opcode = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._oversize = False

    def _exactly(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise ConnectionGone("connection closed mid-frame")
        return data

    def _discard(self, n: int) -> None:
        while n > 0:
            piece = min(n, _DISCARD_PIECE)
            self._exactly(piece)
            n -= piece

    def read_message(self) -> Message:
        """The next message; control frames (close, ping, pong) come back as their own messages.

        A control frame between the fragments of a data message is returned
        at once; the message goes on with the next ``read_message`` call.
        Raises :class:`ConnectionGone` when the peer is gone,
        :class:`ProtocolViolation` when it broke the framing.
        """
        while True:
            try:
                header = Header.decode_header(_Reader(self._exactly))
            except ConnectionGone:
                raise
            except Exception as exc:  # noqa: BLE001 - geventwebsocket raises several kinds
                raise ProtocolViolation(f"bad frame header: {exc}") from None
            if header.flags:
                raise ProtocolViolation("reserved bits set (no extension was negotiated)")
            if not header.mask:
                raise ProtocolViolation("client frames must be masked")
            op = header.opcode
            if op >= 0x8:  # control frame: small, never fragmented, may come between fragments
                if op not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise ProtocolViolation(f"unexpected opcode {op}")
                if header.length > 125 or not header.fin:
                    raise ProtocolViolation("invalid control frame")
                return Message(op, unmask(self._exactly(header.length), header.mask))
            if op in (OP_TEXT, OP_BINARY):
                if self._opcode:
                    raise ProtocolViolation("new message before the previous one finished")
                self._opcode = op
            elif op != OP_CONTINUATION or not self._opcode:
                raise ProtocolViolation(f"unexpected opcode {op}")
            if self._oversize or self._size + header.length > self._max:
                self._oversize = True
                self._parts.clear()
                self._discard(header.length)
            else:
                self._parts.append(unmask(self._exactly(header.length), header.mask))
                self._size += header.length
            if header.fin:
                opcode, parts, oversize = self._opcode, self._parts, self._oversize
                self._opcode, self._parts, self._size, self._oversize = 0, [], 0, False
                if oversize:
                    return Message(opcode, b"", oversize=True)
                return Message(opcode, parts[0] if len(parts) == 1 else b"".join(parts))


class _Reader:
    """The ``read`` interface geventwebsocket's header decoder expects, reading exactly."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.read = read


def frame_header(length: int, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
    """The header of an unmasked frame of ``length`` payload bytes (server to client; ``fin``: the last of its message)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length <= 0xFFFF:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked, final frame carrying ``payload``."""
    return frame_header(len(payload), opcode) + payload


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(code.to_bytes(2, "big") + reason.encode()[:120], OP_CLOSE)
