"""The kernel build in use is the one asked for; a silent fallback fails CI."""

import os

import gauss


def test_core_matches_environment() -> None:
    if os.environ.get("GAUSS_PURE", "") not in ("", "0"):
        assert gauss.CORE == "python"
    elif os.environ.get("GAUSS_EXPECT_COMPILED") == "1":
        assert gauss.CORE == "cython", "compiled kernels expected but the pure-Python twins are in use"
    else:
        assert gauss.CORE in ("cython", "python")


def test_what_the_kernels_take_is_declared_by_core() -> None:
    from gauss.core import OHLC_TAKES_ARRAYS

    assert OHLC_TAKES_ARRAYS is (gauss.CORE == "cython")


def test_import_does_not_monkey_patch() -> None:
    import socket

    import gevent.socket

    assert socket.socket is not gevent.socket.socket
