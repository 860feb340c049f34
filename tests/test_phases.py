"""The phases the library marks for benchmarks: nothing without a recorder, exclusive times with one."""

from __future__ import annotations

import threading
import time

import pytest

from memo_edge.utils.phases import phase, record, timed


def test_nothing_is_recorded_without_a_recorder() -> None:
    calls = []

    @timed("work")
    def work(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert work(3) == 6 and calls == [3]
    with phase("outside"):
        pass
    with record() as seconds:
        pass
    assert seconds == {}


def test_nested_phases_are_exclusive_and_add_up() -> None:
    @timed("inner")
    def inner() -> None:
        time.sleep(0.02)

    with record() as seconds:
        start = time.perf_counter()
        with phase("outer"):
            time.sleep(0.01)
            inner()
            inner()
        total = time.perf_counter() - start
    assert set(seconds) == {"outer", "inner"}
    assert seconds["inner"] >= 0.04 and seconds["outer"] >= 0.01
    # Exclusive: the outer phase does not count the inner one's time again, so the two fit in the block.
    assert 0.05 <= seconds["outer"] + seconds["inner"] <= total


def test_a_failing_phase_is_recorded_and_its_error_raised() -> None:
    @timed("fails")
    def fails() -> None:
        raise KeyError("x")

    with record() as seconds:
        with pytest.raises(KeyError):
            fails()
        with phase("after"):
            pass
    assert set(seconds) == {"fails", "after"}


def test_clearing_starts_again_and_the_recorder_ends_with_its_block() -> None:
    with record() as seconds:
        with phase("before"):
            pass
        seconds.clear()
        with phase("after"):
            pass
    assert set(seconds) == {"after"}
    with phase("later"):
        pass
    assert "later" not in seconds


def test_only_the_recording_thread_is_recorded() -> None:
    def elsewhere() -> None:
        with phase("thread"):
            pass

    with record() as seconds:
        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        with record() as inner:  # a recorder inside another takes over until its block ends
            with phase("inner"):
                pass
        with phase("outer"):
            pass
    assert set(seconds) == {"outer"} and set(inner) == {"inner"}
