"""Record keys as file names (SPEC section 2), confined to their directory.

Every UTF-8 byte outside ``A-Z a-z 0-9 _ -`` becomes ``%XX``, so ``.``, ``/``
and ``\\`` never survive and no key can name a path outside the storage
directory (``../x`` is ``%2E%2E%2Fx``). A name too long for the file system
keeps a readable prefix and ends in ``~`` plus a hash; ``~`` never appears in
an encoded key, so such names cannot collide with ordinary ones.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["encode_key", "decode_key", "key_file_name", "KEY_FILE_SUFFIX", "MAX_STEM_CHARS"]

KEY_FILE_SUFFIX = ".jsonl"
MAX_STEM_CHARS = 200
"""Longest stem kept verbatim: common file systems allow 255 bytes a name."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED = [chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256)]
_PLAIN = re.compile(r"[A-Za-z0-9_-]*\Z")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_key(key: str) -> str:
    """The percent-encoded form of ``key`` (reversible with :func:`decode_key`)."""
    if _PLAIN.match(key):
        return key
    table = _ENCODED
    return "".join([table[b] for b in key.encode("utf-8", "surrogatepass")])


def decode_key(stem: str) -> str:
    """Undo :func:`encode_key`."""
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(stem):
        raw += stem[pos : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += stem[pos:].encode("ascii")
    return raw.decode("utf-8", "surrogatepass")


def key_file_name(key: str) -> str:
    """The file name (no directory) holding ``key``'s records."""
    stem = encode_key(key)
    if len(stem) > MAX_STEM_CHARS:
        digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
        stem = f"{stem[:150]}~{digest}"
    return stem + KEY_FILE_SUFFIX
