"""``gauss-serve [--config PATH]``: run the hub until SIGINT/SIGTERM.

Patches gevent first (the server is one process of greenlets), loads and
validates the configuration (a bad one exits 2 with one message naming the
file, the key and the reason), raises the soft open-files limit to the hard
one (so that connection limits, not descriptors, decide who is served),
starts everything, logs one line per
listener and a status line every ``[hub] status_interval`` seconds. A
signal stops accepting, drains queues, flushes storages and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "default_config_path", "raise_open_files_limit"]


def default_config_path() -> Path:
    """``./config.toml`` when present, else the copy shipped in the package (SPEC section 3)."""
    local = Path("config.toml")
    if local.is_file():
        return local
    from gauss.resources import resource_path

    return resource_path("config.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gauss-serve", description="Run the Gauss market-data hub.")
    parser.add_argument("--config", metavar="PATH", help="configuration file (default: ./config.toml, else the shipped one)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gevent import monkey

    monkey.patch_all()

    import gevent

    from gauss.errors import ConfigError
    from gauss.hub import Hub

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("gauss.serve")
    try:
        path = Path(args.config) if args.config else default_config_path()
    except FileNotFoundError as exc:
        print(f"gauss-serve: {exc}", file=sys.stderr)
        return 2
    try:
        hub = Hub.from_config(path)
    except ConfigError as exc:
        print(f"gauss-serve: {exc}", file=sys.stderr)
        return 2
    log.info("gauss-serve: configuration %s", path)
    raise_open_files_limit(log)
    try:
        hub.start()
    except ConfigError as exc:  # a plugin the configuration names, refused when it is built
        print(f"gauss-serve: {exc.in_file(str(path)) if exc.file is None else exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gauss-serve: cannot start: {exc}", file=sys.stderr)
        return 1
    tune_gc()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, _on_signal, hub, log, signum)
    hub.serve_forever()
    return 0


def raise_open_files_limit(log: logging.Logger) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Go's runtime does) and log both.

    The common soft default (1024) would otherwise be what refuses clients:
    ``accept`` fails with EMFILE long before ``[api] max_connections`` or a
    listener's limit is reached (issue 11). Done by the command, not on
    ``import gauss``: a library must not change its host process's limits.
    Returns the (soft, hard) limits in force afterwards.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # Linux refuses a soft limit above fs.nr_open
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("gauss-serve: open files: cannot raise the soft limit %d to %d: %s", soft, target, exc)
            return (soft, hard)
        log.info("gauss-serve: open files: soft limit raised from %d to %d (hard limit %s)", soft, target, _limit(hard))
        return (target, hard)
    log.info("gauss-serve: open files: soft limit %s (hard limit %s)", _limit(soft), _limit(hard))
    return (soft, hard)


def _limit(value: int) -> str:
    import resource

    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the ingest path of a running server.

    PERF: ingest allocates a few short-lived objects per quote (record, dict),
    which trigger young collections often and drive older objects into full
    collections that rescan everything. Freezing what start-up built (config,
    plugins, greenlets) takes it out of every scan, and a larger first
    threshold makes young collections rarer. bench/bench_ingest.py (which
    calls this too): see the commit that added it for the before/after figures.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _on_signal(hub: object, log: logging.Logger, signum: int) -> None:
    log.info("gauss-serve: %s received; stopping", signal.Signals(signum).name)
    hub.request_stop()  # type: ignore[attr-defined]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
