"""The one exception hierarchy of Gauss.

Every error derives from :class:`GaussError` and also from the built-in error
it resembles, so callers may catch either (``except ValueError`` still works).
Errors that belong to one module stay there (``gauss.http.frames.ConnectionGone``,
``gauss.http.ws.ClientError``, ``gauss_plugins.middleware._common.BombError``, ...)
but derive from :class:`GaussError` too; tests/gauss/test_errors.py checks every one.
"""

from __future__ import annotations

from typing import Sequence

__all__ = [
    "GaussError",
    "ConfigError",
    "UnknownPluginError",
    "FrameTooLarge",
    "InflateBudgetExceeded",
    "DecodeError",
    "QueryError",
    "UnknownTopic",
    "StorageError",
    "StorageUnavailable",
]


class GaussError(Exception):
    """Root of every error Gauss raises on purpose."""


class ConfigError(GaussError, ValueError):
    """A configuration value is wrong.

    ``key`` is the dotted path of the offending key relative to where the
    error was raised; callers higher up prefix their own position with
    :meth:`at` so the final message names the whole path, e.g.
    ``config.toml: sources[0].framing.type: unknown framing 'line'``.
    """

    def __init__(self, key: str, reason: str, *, file: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.file = file
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.reason}"

    def at(self, prefix: str) -> ConfigError:
        """Return the same error with ``prefix`` put before its key."""
        if not prefix:
            return self
        key = f"{prefix}.{self.key}" if self.key and not self.key.startswith("[") else f"{prefix}{self.key}"
        # type(self): an UnknownPluginError stays one (still a LookupError) as it moves up.
        return type(self)(key, self.reason, file=self.file)

    def in_file(self, file: str) -> ConfigError:
        return type(self)(self.key, self.reason, file=file)


class UnknownPluginError(ConfigError, LookupError):
    """A configuration names a plugin type that is not installed."""


class FrameTooLarge(GaussError, ValueError):
    """A frame exceeded ``max_frame_bytes``; the connection must be closed.

    ``frames`` are the whole frames the same chunk completed before it: a
    source still takes them (SPEC section 6: input never loses what came first).
    """

    def __init__(self, message: str, frames: Sequence[bytes] = ()) -> None:
        super().__init__(message)
        self.frames = frames


class InflateBudgetExceeded(GaussError, ValueError):
    """The payloads of one read would inflate past ``max_inflate_bytes``; the connection must be closed."""


class DecodeError(GaussError, ValueError):
    """A payload could not be decoded into a record."""


class QueryError(GaussError, ValueError):
    """A query parameter is invalid; ``param`` names it."""

    def __init__(self, param: str, reason: str) -> None:
        self.param = param
        self.reason = reason
        super().__init__(f"{param}: {reason}")


class UnknownTopic(GaussError, KeyError):
    """No topic of that name exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown topic {self.name!r}"


class StorageError(GaussError, OSError):
    """A storage could not read or write."""


class StorageUnavailable(StorageError):
    """A storage cannot answer right now (its server is down, say); asking again later may succeed.

    The API answers it with 503 and the listing shows the topic with
    ``"records": null`` and the message (SPEC section 4).
    """

