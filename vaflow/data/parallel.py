"""Many slow, independent calls at once (file checks, downloads, clip decodes): a bounded thread pool that hands
back results as they finish, one that hands them back in order while running ahead (`prefetched`), a cap on calls
started per second, and retries with exponential backoff.

Threads, not processes: each call waits on a subprocess (ffmpeg, yt-dlp) or the network, not on the interpreter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def as_finished(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[int, R]]:
    """`(index, fn(item))` for every item, in the order the calls finish, `workers` calls at a time.

    At most `2 * workers` calls are queued, so memory does not grow with the number of items (VGGSound lists
    200K). An exception of a call is raised here; the calls not yet started are then cancelled and the running
    ones finish before it propagates.
    """
    todo = enumerate(items)
    pending: dict[Future[R], int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def fill() -> None:
            for index, item in todo:
                pending[pool.submit(fn, item)] = index
                if len(pending) >= 2 * workers:
                    return

        try:
            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                # The results first, then a failure: the caller keeps (journals) every result it can.
                for future in sorted(done, key=lambda f: f.exception() is not None):
                    yield pending.pop(future), future.result()
                fill()
        finally:
            for future in pending:
                future.cancel()


def prefetched(items: Iterable[T], fetch: Callable[[T], R], workers: int, ahead: int) -> Iterator[R]:
    """`fetch(item)` for each item, in order, with up to `ahead` items fetched in advance by `workers` threads
    (0: in the caller's thread, nothing ahead). An error of `fetch` is raised where its item is yielded."""
    if workers <= 0:
        yield from map(fetch, items)
        return
    pending: deque[Future[R]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in source:
            pending.append(pool.submit(fetch, item))
            if len(pending) >= max(1, ahead):
                break
        try:
            while pending:
                result = pending.popleft().result()
                for item in source:
                    pending.append(pool.submit(fetch, item))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()


class RateLimiter:
    """At most `per_second` starts per second across threads: `wait()` returns at the caller's start time, the
    starts spaced `1 / per_second` apart (0 = no limit). `clock` and `sleep` are injectable for tests."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until this caller may start; returns its start time on `clock`."""
        with self._lock:  # book the slot under the lock, sleep outside it so that others can book theirs
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)
        return start


def with_retries(
    call: Callable[[], str | None],
    *,
    retries: int,
    backoff: float,
    limiter: RateLimiter,
    permanent: Callable[[str], bool] = lambda reason: False,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Run `call` (None on success, else the failure's reason) until it succeeds, fails permanently or has been
    tried `1 + retries` times, waiting `backoff * 2**k` seconds before retry k+1 and for `limiter` before every
    try. Returns None or the last reason (with the number of tries when there were several)."""
    for attempt in range(retries + 1):
        limiter.wait()
        reason = call()
        if reason is None:
            return None
        if permanent(reason):
            return reason
        if attempt < retries:
            sleep(backoff * 2**attempt)
    return f"{reason} (after {retries + 1} tries)" if retries else reason
