"""Run an emulator on its own event loop in a daemon thread, for synchronous callers.

Both emulators are asyncio servers; the demo, the CLI and synchronous tests need them running in
the background while their own code blocks. This is the one place that owns that loop's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Iterator
from typing import Protocol, TypeVar

__all__ = ["started_in_thread"]


class _Startable(Protocol):
    def start(self) -> Awaitable[None]: ...

    def stop(self) -> Awaitable[None]: ...


E = TypeVar("E", bound=_Startable)


@contextlib.contextmanager
def started_in_thread(emulator: E, *, name: str, timeout_s: float) -> Iterator[E]:
    """Start ``emulator`` on a new loop in a daemon thread; stop it and the loop on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()

    async def call(step: Awaitable[None]) -> None:
        await step

    try:
        asyncio.run_coroutine_threadsafe(call(emulator.start()), loop).result(timeout_s)
        yield emulator
    finally:
        try:
            asyncio.run_coroutine_threadsafe(call(emulator.stop()), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()
