"""ClickHouse's HTTP interface: one client, its errors, and SQL literals."""

from __future__ import annotations

import requests

from gauss.errors import StorageError

__all__ = ["ClickHouseClient", "ClickHouseError", "sql_string", "sql_name"]

class ClickHouseError(StorageError):
    """ClickHouse refused a statement or could not be reached; ``code`` is its error code (0 if none)."""

    def __init__(self, message: str, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


class ClickHouseClient:
    """Statements over ClickHouse's HTTP interface with one pooled ``requests`` session."""

    def __init__(
        self,
        url: str,
        *,
        user: str = "default",
        password: str = "",
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self._timeout = (connect_timeout, timeout)
        self._session = requests.Session()
        self._session.headers["X-ClickHouse-User"] = user
        if password:
            self._session.headers["X-ClickHouse-Key"] = password

    def execute(self, sql: str, body: bytes | None = None) -> bytes:
        """Run ``sql`` (with ``body`` as the data of an ``INSERT``); return the raw answer."""
        try:
            if body is None:
                response = self._session.post(self.url, data=sql.encode(), timeout=self._timeout)
            else:
                response = self._session.post(self.url, params={"query": sql}, data=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ClickHouseError(f"clickhouse {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            text = response.text.strip()
            code = 0
            if text.startswith("Code: "):
                try:
                    code = int(text[6:].split(",", 1)[0])
                except ValueError:
                    code = 0
            raise ClickHouseError(f"clickhouse {self.url}: HTTP {response.status_code}: {text[:500]}", code)
        return response.content

    def ping(self) -> bool:
        try:
            return self._session.get(self.url + "ping", timeout=self._timeout).status_code == 200
        except requests.RequestException:
            return False

    def close(self) -> None:
        self._session.close()


def sql_string(value: str) -> str:
    """A ClickHouse string literal (every byte that could end or bend it escaped)."""
    escaped = (
        value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")
    )
    return f"'{escaped}'"


def sql_name(value: str) -> str:
    """A quoted identifier."""
    return "`" + value.replace("\\", "\\\\").replace("`", "\\`") + "`"

