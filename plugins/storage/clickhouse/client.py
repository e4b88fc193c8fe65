"""ClickHouse's HTTP interface: one client, its errors and how to tell them apart, and SQL literals.

Every failure is a :class:`ClickHouseError`; those worth trying again later
(the server or the way to it cannot serve right now) are also
:class:`~gauss.errors.StorageUnavailable`, which the API answers with 503.
The rest are *permanent* for the statement that met them: trying the same
insert again gets the same answer, so the storage moves such a batch to its
dead-letter file instead of resending it forever (issue 10 item 7).
"""

from __future__ import annotations

import requests

from gauss.errors import StorageError, StorageUnavailable

__all__ = [
    "ClickHouseClient",
    "ClickHouseError",
    "ClickHouseUnavailable",
    "RETRYABLE_CODES",
    "sql_string",
    "sql_name",
]

RETRYABLE_CODES: dict[int, str] = {
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    194: "REQUIRED_PASSWORD",
    201: "QUOTA_EXPIRED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",
    243: "NOT_ENOUGH_SPACE",
    252: "TOO_MANY_PARTS",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",
    394: "QUERY_WAS_CANCELLED",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
    999: "KEEPER_EXCEPTION",
}
"""ClickHouse error codes that say "not now" rather than "not this": retried with back-off.

NOTE: the credential and permission codes (192-194, 497, 516) are here
because a wrong password is the operator's to fix, not the batch's fault:
dead-lettering every batch meanwhile would empty the spool into files no
one replays. Every code not listed is permanent for the batch (parse and
type errors, an unknown column, ...).
"""

_PER_BATCH_MESSAGES = ("Too many partitions for single INSERT block",)
"""Messages under a retryable code that no retry of the same batch can cure (252 has both meanings)."""


class ClickHouseError(StorageError):
    """ClickHouse refused a statement; ``code`` is its error code (0 if none), ``status`` the HTTP status."""

    retryable = False

    def __init__(self, message: str, code: int = 0, status: int = 0) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class ClickHouseUnavailable(ClickHouseError, StorageUnavailable):
    """ClickHouse could not be reached or cannot serve right now: worth trying again later."""

    retryable = True


def classify(message: str, code: int, status: int) -> type[ClickHouseError]:
    """The error class of an answer with HTTP ``status`` and ClickHouse ``code`` (0: none in the body).

    A ClickHouse code decides when there is one (:data:`RETRYABLE_CODES`);
    without one a 5xx (a proxy, a server starting or stopping), 408, 429 or
    an authentication refusal by a proxy is retryable, any other 4xx is not.
    """
    if code:
        if code in RETRYABLE_CODES and not any(text in message for text in _PER_BATCH_MESSAGES):
            return ClickHouseUnavailable
        return ClickHouseError
    if status >= 500 or status in (401, 403, 407, 408, 429):
        return ClickHouseUnavailable
    return ClickHouseError


def _error_code(text: str) -> int:
    """The code of a ClickHouse error body (``Code: 60, e.displayText() = ...``), or 0."""
    if not text.startswith("Code: "):
        return 0
    try:
        return int(text[6:].split(",", 1)[0])
    except ValueError:
        return 0


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
        """Run ``sql`` (with ``body`` as the data of an ``INSERT``); return the raw answer.

        Raises :class:`ClickHouseUnavailable` (retry later) or
        :class:`ClickHouseError` (permanent for this statement).
        """
        try:
            if body is None:
                response = self._session.post(self.url, data=sql.encode(), timeout=self._timeout)
            else:
                response = self._session.post(self.url, params={"query": sql}, data=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ClickHouseUnavailable(f"clickhouse {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            text = response.text.strip()
            code = _error_code(text)
            error = classify(text, code, response.status_code)
            raise error(f"clickhouse {self.url}: HTTP {response.status_code}: {text[:500]}", code, response.status_code)
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
