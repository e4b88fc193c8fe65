"""``clickhouse`` storage: a topic's records in a ClickHouse table (docs/clickhouse.md).

One module a job: :mod:`.client` (the HTTP interface and its errors),
:mod:`.rowbinary` (rows both ways), :mod:`.spool` (batches waiting on disk)
and :mod:`.storage` (the storage itself, which the ``clickhouse`` entry
point names, and its options, :class:`ClickHouseConfig`).
"""

from __future__ import annotations

from .client import ClickHouseClient, ClickHouseError
from .rowbinary import RowLayout, layout_for
from .storage import ClickHouseConfig, ClickHouseStorage

__all__ = ["ClickHouseStorage", "ClickHouseConfig", "ClickHouseClient", "ClickHouseError", "RowLayout", "layout_for"]
