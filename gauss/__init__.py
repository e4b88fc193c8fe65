"""Gauss: a real-time market-data hub.

Quotes arrive over TCP, land in topics, become OHLC candles, are stored and
flow out to TCP clients, a REST + WebSocket API and Grafana. Importing this
package never monkey-patches anything; the commands patch gevent at start-up.
"""

from gauss.core import CORE, TopicRecord
from gauss.errors import (
    ConfigError,
    DecodeError,
    FrameTooLarge,
    GaussError,
    QueryError,
    StorageError,
    UnknownPluginError,
    UnknownTopic,
)
from gauss.protocols import (
    Codec,
    Connection,
    FormatSerializer,
    Framing,
    Middleware,
    PublishContext,
    QuoteCodec,
    TopicProcessor,
    TopicSink,
    TopicStorage,
    Transport,
)
from gauss.records import DataFormat, KeyInfo, OverflowPolicy, QueryResult, Rejected, TopicQuery

__version__ = "0.1.0"

__all__ = [
    "CORE",
    "__version__",
    # records
    "TopicRecord",
    "TopicQuery",
    "QueryResult",
    "KeyInfo",
    "Rejected",
    "OverflowPolicy",
    "DataFormat",
    # plugin protocols
    "Connection",
    "Transport",
    "Framing",
    "Middleware",
    "FormatSerializer",
    "Codec",
    "QuoteCodec",
    "TopicStorage",
    "PublishContext",
    "TopicProcessor",
    "TopicSink",
    # errors
    "GaussError",
    "ConfigError",
    "UnknownPluginError",
    "FrameTooLarge",
    "DecodeError",
    "QueryError",
    "UnknownTopic",
    "StorageError",
]
