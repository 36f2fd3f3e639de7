"""Many calls at once: results as they finish with a bounded queue, a failure raised after the results before it,
the start-rate cap on a still clock, and retries with backoff."""

from __future__ import annotations

import threading
import time

import pytest

from vaflow.data import parallel


def test_as_finished_gives_every_result_with_bounded_parallelism_and_queue():
    lock, running, peak, pulled = threading.Lock(), [0], [0], []

    def items():
        for n in range(20):
            pulled.append(n)
            yield n

    def square(n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            assert len(pulled) - n <= 2 * 3 + 1  # never more than 2 * workers queued ahead
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return n * n

    got = dict(parallel.as_finished(square, items(), workers=3))
    assert got == {n: n * n for n in range(20)}
    assert 1 < peak[0] <= 3


def test_as_finished_raises_a_failure_and_starts_nothing_after_it():
    started = []

    def fail_on_3(n):
        started.append(n)
        if n == 3:
            raise RuntimeError("boom")
        return n

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for _, result in parallel.as_finished(fail_on_3, range(100), workers=1):
            got.append(result)
    # What finished is handed back before the failure (a journal keeps it); the queue held 2 calls at most.
    assert {0, 1, 2} <= set(got) and 3 not in got and max(started) <= 4


def test_rate_limiter_spaces_the_starts_of_many_threads():
    naps = []  # a clock standing still at 0: each thread's start is the slot the limiter books for it
    limiter = parallel.RateLimiter(4.0, clock=lambda: 0.0, sleep=naps.append)  # 4 per second: 0.25 s apart
    starts, lock = [], threading.Lock()

    def start():
        t = limiter.wait()
        with lock:
            starts.append(t)

    threads = [threading.Thread(target=start) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(starts) == pytest.approx([0.25 * n for n in range(12)])
    assert sorted(naps) == pytest.approx([0.25 * n for n in range(1, 12)])
    assert parallel.RateLimiter(0).wait() is not None  # 0: no limit, no wait


def test_with_retries_backs_off_and_stops_on_success_a_permanent_failure_or_the_last_try():
    naps, limiter = [], parallel.RateLimiter(0)
    outcomes = iter(["503", "503", None])
    assert (
        parallel.with_retries(
            lambda: next(outcomes), retries=3, backoff=2.0, limiter=limiter, sleep=naps.append
        )
        is None
    )
    assert naps == [2.0, 4.0]
    naps.clear()
    reason = parallel.with_retries(lambda: "503", retries=2, backoff=1.0, limiter=limiter, sleep=naps.append)
    assert reason == "503 (after 3 tries)" and naps == [1.0, 2.0]
    naps.clear()
    gone = parallel.with_retries(
        lambda: "gone",
        retries=5,
        backoff=1.0,
        limiter=limiter,
        permanent=lambda r: r == "gone",
        sleep=naps.append,
    )
    assert gone == "gone" and naps == []


def test_prefetching_keeps_the_order_bounds_what_runs_ahead_and_raises_at_the_failing_item():
    started: list[int] = []

    def fetch(i: int) -> int:
        started.append(i)
        if i == 7:
            raise ValueError("clip 7 is gone")
        return i * i

    out = parallel.prefetched(range(10), fetch, workers=2, ahead=3)
    assert [next(out) for _ in range(3)] == [0, 1, 4]
    assert max(started) <= 5  # three yielded, at most three more in flight
    with pytest.raises(ValueError, match="clip 7"):
        list(out)
    assert list(parallel.prefetched(range(4), lambda i: -i, workers=0, ahead=3)) == [0, -1, -2, -3]
