"""Chunks pushed on other threads reach the event loop in order, and the pushing thread never
makes the wake-up call itself (that call lets go of the GIL, and push() then waits for whichever
thread takes it)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from labstream import TimeseriesStreamer
from labstream._core.chunk import Chunk
from labstream._core.handoff import LoopHandoff
from labstream.destinations.base import Marker


def test_items_from_several_threads_reach_the_loop_in_each_threads_order() -> None:
    loop = asyncio.new_event_loop()
    received: list[tuple[str, int]] = []
    delivered_on: set[int] = set()
    wakers: set[int] = set()
    real_wake = loop.call_soon_threadsafe

    def recording_wake(*args: object) -> asyncio.Handle:
        wakers.add(threading.get_ident())
        return real_wake(*args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = recording_wake  # type: ignore[method-assign]

    everything = asyncio.Event()

    def deliver(item: tuple[str, int]) -> None:
        delivered_on.add(threading.get_ident())
        received.append(item)
        if len(received) == 6_000:
            everything.set()

    handoff: LoopHandoff[tuple[str, int]] = LoopHandoff(loop, deliver)
    pushers = [f"pusher-{k}" for k in range(3)]
    pusher_ids: set[int] = set()

    def push(name: str) -> None:
        pusher_ids.add(threading.get_ident())
        for i in range(2_000):
            handoff.put((name, i))

    async def main() -> None:
        threads = [threading.Thread(target=push, args=(n,)) for n in pushers]
        for t in threads:
            t.start()
        await everything.wait()
        for t in threads:
            t.join()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
        handoff.close()
    finally:
        loop.close()
    for name in pushers:
        assert [i for n, i in received if n == name] == list(range(2_000))
    assert delivered_on == {threading.main_thread().ident}  # the loop's thread
    assert wakers and not wakers & pusher_ids
    assert not handoff._thread.is_alive()


async def until(done: Callable[[], bool]) -> None:
    """Wait (up to ~1 s) for the waker thread's wake-up to have delivered."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0.001)


def run_then_close(
    loop: asyncio.AbstractEventLoop,
    handoff: LoopHandoff[int],
    main: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    try:
        loop.run_until_complete(main())
        handoff.close()
    finally:
        loop.close()


def test_a_direct_drain_and_a_pending_wake_up_do_not_lose_or_repeat_items() -> None:
    """drain() is also called on the loop before waiting (finalize): a wake-up already signalled
    then finds nothing, and later items still get one."""
    loop = asyncio.new_event_loop()
    received: list[int] = []
    handoff: LoopHandoff[int] = LoopHandoff(loop, received.append)

    async def main() -> None:
        handoff.put(1)
        handoff.drain()  # before the signalled wake-up runs
        await asyncio.sleep(0.05)
        handoff.put(2)
        handoff.put(3)
        await until(lambda: len(received) == 3)

    run_then_close(loop, handoff, main)
    assert received == [1, 2, 3]


def test_pushes_within_the_coalescing_window_reach_the_loop_in_one_wake_up() -> None:
    """At one push per ms, waking the loop for each costs more CPU than the work; pushes made
    while the waker waits out its window share its one wake-up."""
    loop = asyncio.new_event_loop()
    drains: list[list[int]] = []
    batch: list[int] = []
    window_open = threading.Event()
    window_closes = threading.Event()

    def coalesce(seconds: float) -> None:
        assert seconds == 0.005
        window_open.set()
        window_closes.wait(10)

    handoff: LoopHandoff[int] = LoopHandoff(loop, batch.append, coalesce_s=0.005, sleep=coalesce)
    real_drain = handoff.drain

    def recording_drain() -> None:
        real_drain()
        if batch:
            drains.append(batch.copy())
            batch.clear()

    handoff.drain = recording_drain  # type: ignore[method-assign]

    async def main() -> None:
        handoff.put(1)
        await asyncio.to_thread(window_open.wait, 10)
        handoff.put(2)
        handoff.put(3)
        window_closes.set()
        await until(lambda: bool(drains))

    run_then_close(loop, handoff, main)
    assert drains == [[1, 2, 3]]


def test_chunks_pushed_from_several_threads_reach_the_loop_in_seq_order(
    streamer_factory: Callable[..., TimeseriesStreamer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner reading its backlog back from the journal takes every chunk after a seq; a chunk
    that reached it after a later one would be skipped. So the loop must get them in seq order,
    even from threads that are switched out right after their chunk got its seq."""
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    core = streamer._core
    seen: list[int] = []
    dispatch = core._dispatch

    def recording_dispatch(item: Chunk | Marker) -> None:
        if isinstance(item, Chunk):
            seen.append(item.seq)
        dispatch(item)

    monkeypatch.setattr(core, "_dispatch", recording_dispatch)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:

        def push(channel: str) -> None:
            for c in range(300):
                streamer.push(data_id, c, channel, [1.7e9 + c], [float(c)])

        threads = [threading.Thread(target=push, args=(f"ch{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    report = streamer.finalize(data_id)
    assert report["atomscale"].chunks_delivered == 1_200
    assert len(seen) == 1_200
    assert seen == sorted(seen)
