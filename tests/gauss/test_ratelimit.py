"""gauss.ratelimit.RateLimitedLog: the window, the count of held-back lines, keys, threads."""

from __future__ import annotations

import logging
import threading

import pytest

from gauss import ratelimit
from gauss.ratelimit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gauss.test.ratelimit"]


LOG = logging.getLogger("gauss.test.ratelimit")


def test_one_line_per_window_then_the_count_of_the_rest(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "gauss.test.ratelimit")
    limited = RateLimitedLog(LOG, interval=10.0, level=logging.ERROR, clock=clock)
    for n in range(5):
        limited("bad frame %d", n)
    assert messages(caplog) == [(logging.ERROR, "bad frame 0")]
    assert (limited.logged, limited.held_back) == (1, 4)
    clock.now += 9.999
    limited("bad frame %d", 5)
    assert len(messages(caplog)) == 1
    clock.now += 0.001  # the window is over exactly ``interval`` after the logged line
    limited("bad frame %d", 6)
    assert messages(caplog)[-1] == (logging.ERROR, "bad frame 6 (5 similar messages held back)")
    clock.now += 10
    limited("bad frame %d", 7)
    assert messages(caplog)[-1] == (logging.ERROR, "bad frame 7")  # nothing held back since the last line
    assert (limited.logged, limited.held_back) == (3, 5)


def test_keys_have_their_own_windows_and_the_level_is_per_call(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "gauss.test.ratelimit")
    limited = RateLimitedLog(LOG, interval=5.0, clock=clock)
    limited.log(logging.WARNING, "a", "stream %s lost", "a")
    limited.log(logging.INFO, "b", "stream %s lost", "b")
    limited.log(logging.WARNING, "a", "stream %s lost", "a")
    limited("shared key")
    assert messages(caplog) == [
        (logging.WARNING, "stream a lost"),
        (logging.INFO, "stream b lost"),
        (logging.WARNING, "shared key"),
    ]
    clock.now += 5
    limited.log(logging.WARNING, "a", "stream %s lost", "a")
    limited.log(logging.WARNING, "b", "stream %s lost", "b")
    assert messages(caplog)[-2:] == [
        (logging.WARNING, "stream a lost (1 similar messages held back)"),
        (logging.WARNING, "stream b lost"),
    ]


def test_the_keys_it_remembers_are_bounded(
    clock: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 3)
    caplog.set_level(logging.DEBUG, "gauss.test.ratelimit")
    limited = RateLimitedLog(LOG, interval=60.0, clock=clock)
    for key in "abcd":
        limited.log(logging.WARNING, key, key)
    assert len(limited._next) == 3 and "a" not in limited._next  # the least recently logged went first
    limited.log(logging.WARNING, "a", "a again")  # forgotten: logged at once
    assert messages(caplog)[-1] == (logging.WARNING, "a again")


def test_threads_share_one_window_and_no_line_is_lost_from_the_counts(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "gauss.test.ratelimit")
    limited = RateLimitedLog(LOG, interval=3600.0, clock=clock)
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(2000):
            limited.log(logging.WARNING, "k", "flood")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert messages(caplog) == [(logging.WARNING, "flood")]
    assert (limited.logged, limited.held_back) == (1, 8 * 2000 - 1)
    clock.now += 3600
    limited.log(logging.WARNING, "k", "flood")
    assert messages(caplog)[-1] == (logging.WARNING, f"flood ({8 * 2000 - 1} similar messages held back)")
