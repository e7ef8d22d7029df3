"""Keyed wake-ups across threads and event loops: the long poll sleeps on one (per tenant), and so
do the event streams and the webhook dispatcher.

Services commit in worker threads and waiters live on event loops, so ``wake`` may be called from
any thread. A per-key generation closes the race between a waiter's database check and its wait:
a wake-up that comes in between makes the wait return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable


class Wakeups:
    """Generations and waiters per key; ``close`` wakes every waiter for good (shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generations: dict[str, int] = {}
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.closed = False

    def generation(self, key: str) -> int:
        return self._generations.get(key, 0)

    def wake(self, keys: Iterable[str]) -> None:
        """Bump these keys' generations and wake their waiters."""
        woken: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        with self._lock:
            for key in keys:
                self._generations[key] = self._generations.get(key, 0) + 1
                woken.extend(self._waiters.pop(key, ()))
        for loop, future in woken:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, future)

    def close(self) -> None:
        """Wake every waiter, and make later waits return at once."""
        self.closed = True
        with self._lock:
            keys = list(self._waiters)
        self.wake(keys)

    async def wait(self, key: str, since: int, timeout: float) -> bool:
        """Wait until ``key``'s generation moves past ``since`` (True) or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._lock:
            if self.closed or self._generations.get(key, 0) != since:
                return True
            self._waiters.setdefault(key, set()).add(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[key]

    def waiting(self) -> int:
        """How many wait (for metrics and tests)."""
        with self._lock:
            return sum(len(entries) for entries in self._waiters.values())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
