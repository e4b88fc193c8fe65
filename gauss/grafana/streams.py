"""Live channels: one Gauss WebSocket subscription per Grafana channel, resumed without holes.

``RunStream`` is called once per channel; it holds one ``/ws`` subscription to
the channel's topic and key (SPEC section 5). After a dropped connection it
subscribes again with ``since_seq`` and ``epoch``, so Gauss replays exactly
what was missed: the dashboard never shows a hole.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import websocket

from gauss.grafana.frames import Frame, candle_frame, quote_frame, to_json
from gauss.grafana.gauss_api import GaussClient, GaussRejected, GaussUnavailable
from gauss.grafana.queries import StreamPath
from gauss.ratelimit import RateLimitedLog

__all__ = ["GaussSubscription", "stream_packets"]

log = logging.getLogger("gauss.grafana.streams")
_rate_limited = RateLimitedLog(log)

POLL_SECONDS = 0.25
# Messages a subscription may receive before its ``subscribed`` answer (a reset, a first push).
MAX_MESSAGES_BEFORE_ACK = 1000
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GaussSubscription:
    """One ``/ws`` subscription to ``topic`` (only ``key``), that remembers where it stands.

    ``epoch`` and ``last_seq`` are kept across :meth:`connect` calls: a
    reconnect resumes right after the last record seen.
    """

    def __init__(self, client: GaussClient, topic: str, key: str, *, connect_timeout: float = 5.0) -> None:
        self.client = client
        self.topic = topic
        self.key = key
        self.connect_timeout = connect_timeout
        self.epoch: str | None = None
        self.last_seq: int | None = None
        self._ws: websocket.WebSocket | None = None
        self._closed = threading.Event()
        self._pending: list[dict[str, Any]] = []

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def connect(self) -> None:
        """Open the WebSocket and subscribe (resuming when a seq is known); raise GaussUnavailable."""
        if self._closed.is_set():
            raise GaussUnavailable("subscription closed")
        header = [f"{k}: {v}" for k, v in self.client.headers().items() if k == "Authorization"]
        try:
            ws = websocket.create_connection(
                self.client.ws_url(), timeout=self.connect_timeout, header=header, enable_multithread=True
            )
        except (websocket.WebSocketException, OSError) as exc:
            raise GaussUnavailable(f"cannot open {self.client.ws_url()}: {exc}") from None
        self._ws = ws
        request: dict[str, Any] = {"action": "subscribe", "topic": self.topic, "key": self.key, "id": "grafana"}
        if self.last_seq is not None:
            request["since_seq"] = self.last_seq
            if self.epoch is not None:
                request["epoch"] = self.epoch
        try:
            ws.send(json.dumps(request))
            for _ in range(MAX_MESSAGES_BEFORE_ACK):
                message = self._receive_message()
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribed":
                    self.epoch = message.get("epoch", self.epoch)
                    if self.last_seq is None and isinstance(message.get("last_seq"), int):
                        self.last_seq = message["last_seq"]
                    return
                if kind == "error":
                    raise GaussRejected(400, str(message.get("error")))
                self._handle(message)
            raise GaussUnavailable(f"no 'subscribed' answer for topic {self.topic!r}")
        except BaseException:
            self.drop()
            raise

    def receive(self) -> list[dict[str, Any]]:
        """Wait up to the poll interval for pushed records; return them (maybe none)."""
        if self._pending:
            records, self._pending = self._pending, []
            return records
        if self._ws is None:
            raise GaussUnavailable("not connected")
        message = self._receive_message(POLL_SECONDS)
        if message is not None:
            self._handle(message)
        records, self._pending = self._pending, []
        return records

    def _receive_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        ws = self._ws
        if ws is None:
            raise GaussUnavailable("not connected")
        ws.settimeout(timeout if timeout is not None else self.connect_timeout)
        try:
            text = ws.recv()
        except websocket.WebSocketTimeoutException:
            if timeout is None:
                raise GaussUnavailable(f"Gauss did not answer the subscription to {self.topic!r}") from None
            return None
        except (websocket.WebSocketException, OSError) as exc:
            self.drop()
            raise GaussUnavailable(f"WebSocket to Gauss lost: {exc or type(exc).__name__}") from None
        if not text:
            self.drop()
            raise GaussUnavailable("WebSocket to Gauss closed")
        if len(text) > MAX_MESSAGE_BYTES:
            raise GaussUnavailable("oversized WebSocket message from Gauss")
        try:
            message = json.loads(text)
        except ValueError:
            _rate_limited.log(logging.WARNING, "bad-json", "Gauss sent a non-JSON WebSocket message; ignored")
            return None
        return message if isinstance(message, dict) else None

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "records":
            for record in message.get("records") or []:
                if not isinstance(record, dict) or "ts_ms" not in record:
                    continue
                seq = record.get("seq")
                if isinstance(seq, int):
                    if self.last_seq is not None and seq <= self.last_seq:
                        continue  # already delivered before a reconnect
                    self.last_seq = seq
                if record.get("key", self.key) == self.key:
                    self._pending.append(record)
        elif kind == "reset":
            log.info("topic %s restarted its sequence (epoch %s); replaying what it holds", self.topic, message.get("epoch"))
            self.epoch = message.get("epoch")
            self.last_seq = None
        elif kind == "gap":
            _rate_limited.log(
                logging.WARNING,
                f"gap:{self.topic}:{self.key}",
                "stream %s/%s missed %s records (seq %s..%s)",
                self.topic,
                self.key,
                message.get("dropped"),
                message.get("from_seq"),
                message.get("to_seq"),
            )
        elif kind == "error":
            _rate_limited.log(logging.WARNING, f"error:{self.topic}", "Gauss WebSocket error: %s", message.get("error"))

    def drop(self) -> None:
        """Forget the current connection (kept position: the next connect resumes)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.abort()
                ws.shutdown()
            except Exception:  # noqa: BLE001 - the socket is going away either way
                pass

    def close(self) -> None:
        """Unsubscribe and close for good; safe to call from another thread (gRPC's cancel callback)."""
        self._closed.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.send(json.dumps({"action": "unsubscribe", "topic": self.topic, "key": self.key, "id": "grafana"}))
            except Exception:  # noqa: BLE001 - best effort; closing the socket ends it anyway
                pass
        self.drop()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early when closed."""
        return self._closed.wait(seconds)


def _frame_for(path: StreamPath, records: list[dict[str, Any]]) -> Frame:
    if path.kind == "candles":
        return candle_frame(path.symbol, records)
    return quote_frame(path.symbol, records)


def stream_packets(
    client: GaussClient,
    path: StreamPath,
    is_active: Callable[[], bool],
    on_cancel: Callable[[Callable[[], None]], Any],
    on_reconnect: Callable[[], None] = lambda: None,
) -> Iterator[bytes]:
    """Yield JSON frame packets for ``path`` while ``is_active()``: schema first, then data only.

    ``on_cancel`` registers the closer with gRPC (``context.add_callback``) so a
    cancelled stream releases its Gauss subscription at once.
    """
    subscription = GaussSubscription(client, path.topic, path.symbol)
    on_cancel(subscription.close)
    schema_sent = False
    failures = 0
    try:
        while is_active() and not subscription.closed:
            try:
                if not subscription.connected:
                    subscription.connect()
                    if failures:
                        on_reconnect()
                        log.info("stream %s resumed after seq %s", path.path, subscription.last_seq)
                    failures = 0
                records = subscription.receive()
            except (GaussUnavailable, GaussRejected) as exc:
                subscription.drop()
                if subscription.closed or not is_active():
                    break  # cancelled: the closer aborted the socket under us
                _rate_limited.log(logging.WARNING, f"stream:{path.path}", "stream %s: %s; retrying", path.path, exc)
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                # In slices, so a cancel or the plugin's shutdown ends the back-off at once.
                waited = 0.0
                while waited < delay and is_active() and not subscription.wait(POLL_SECONDS):
                    waited += POLL_SECONDS
                continue
            if records:
                yield to_json(_frame_for(path, records), schema=not schema_sent)
                schema_sent = True
    finally:
        subscription.close()
