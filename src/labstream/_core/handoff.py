"""Hand chunks pushed on another thread to the event loop, without holding up the pusher.

Waking an asyncio loop from another thread (``call_soon_threadsafe``) writes to the loop's
self-pipe, and that syscall lets go of the GIL: the loop thread, or any thread waiting, takes it and
runs until it blocks, and only then does ``push()`` get it back, which made a paced ``push()`` slow
(docs/performance.md). Here the pushing thread only releases a lock, which never lets go of the GIL;
a small thread of ours, woken by that lock, makes the self-pipe call.

That thread waits ``coalesce_s`` before it wakes the loop, so that the pushes of those few ms reach
the loop together. Every wake-up of a thread costs far more than its work when the caller paces
its pushes (caches gone cold after a sleep, context switches, the GIL changing hands), and it
repeats down the line: the loop, the uploads, the journal. ``push()`` itself never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LoopHandoff"]

T = TypeVar("T")


class LoopHandoff(Generic[T]):
    """Items put on any thread, given to ``deliver`` on the loop's thread, in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[T], None],
        *,
        coalesce_s: float = 0.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._coalesce_s = coalesce_s
        self._sleep = sleep
        self._items: deque[T] = deque()
        self._scheduled = False  # a drain is signalled or queued on the loop
        self._closed = False
        # Locked while no wake-up is signalled; put() releases it, the waker thread takes it.
        self._signal = threading.Lock()
        self._signal.acquire()
        self._thread = threading.Thread(
            target=self._wake_loop, name="labstream-handoff", daemon=True
        )
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item`` for the loop (any thread; no syscall that lets go of the GIL)."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._notify()

    def drain(self) -> None:
        """Deliver everything queued (loop thread; also called directly before waiting)."""
        self._scheduled = False
        while self._items:
            self._deliver(self._items.popleft())

    def close(self) -> None:
        """Stop the waker thread; items still queued are for the caller to :meth:`drain`."""
        self._closed = True
        self._notify()
        self._thread.join(timeout=5)

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is on its way
            self._signal.release()

    def _wake_loop(self) -> None:
        while True:
            self._signal.acquire()
            if self._closed:
                return
            if self._coalesce_s:
                self._sleep(self._coalesce_s)
            try:
                self._loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nothing left to wake
                return
