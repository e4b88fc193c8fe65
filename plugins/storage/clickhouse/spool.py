"""The disk spool: encoded insert bodies waiting for ClickHouse, oldest first."""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote as _url_quote

from gauss.core import TopicRecord

__all__ = ["Spool", "file_name"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _SpoolFile:
    path: Path
    first_seq: int
    last_seq: int
    records: int
    size: int


def file_name(text: str) -> str:
    """A file name for any string (SPEC's percent-encoding rule of the file storage)."""
    encoded = _url_quote(text, safe="-_.")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


class Spool:
    """Encoded insert bodies waiting on disk, oldest first; bounded by ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.files: deque[_SpoolFile] = deque()
        self.bytes = 0
        self.records = 0

    def load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.directory.iterdir():
            if path.suffix == ".tmp":
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".rowbinary":
                continue
            try:
                first, last, count = (int(part) for part in path.stem.split("-"))
            except ValueError:
                log.warning("clickhouse spool: ignoring unexpected file %s", path)
                continue
            found.append(_SpoolFile(path, first, last, count, path.stat().st_size))
        for item in sorted(found, key=lambda f: f.first_seq):
            self.files.append(item)
            self.bytes += item.size
            self.records += item.records

    @property
    def last_seq(self) -> int:
        return max((f.last_seq for f in self.files), default=0)

    def room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def put(self, records: Sequence[TopicRecord], body: bytes) -> None:
        first, last = records[0].seq, records[-1].seq
        path = self.directory / f"{first:020d}-{last:020d}-{len(records)}.rowbinary"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.files.append(_SpoolFile(path, first, last, len(records), len(body)))
        self.bytes += len(body)
        self.records += len(records)

    def oldest(self) -> tuple[_SpoolFile, bytes] | None:
        if not self.files:
            return None
        item = self.files[0]
        return item, item.path.read_bytes()

    def remove(self, item: _SpoolFile) -> None:
        item.path.unlink(missing_ok=True)
        self.files.remove(item)
        self.bytes -= item.size
        self.records -= item.records

