"""The adaptive window: how many uploads a destination may have in flight
(``labstream._core.window``), driven by an injected clock, then end to end against a server with
a capacity."""

from __future__ import annotations

from pathlib import Path

import anyio

from labstream import TimeseriesStreamer, TransientDestinationError
from labstream._core.window import AdaptiveWindow
from labstream.testing.atomscale import FaultPlan
from labstream.testing.atomscale import run_in_thread as atomscale_in_thread


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def overloaded(status: int | str = 429) -> TransientDestinationError:
    return TransientDestinationError("busy", destination="test", status=status)


def round_trip(
    window: AdaptiveWindow, clock: Clock, rtt: float, refuse_beyond: int | None = None
) -> int:
    """Fill the window, let ``rtt`` pass, answer everything (429 beyond ``refuse_beyond``)."""

    async def main() -> int:
        slots = [await window.acquire() for _ in range(window.size)]
        clock.now += rtt
        for k, slot in enumerate(slots):
            refused = refuse_beyond is not None and k >= refuse_beyond
            slot.release(overloaded() if refused else None)
        return len(slots)

    return anyio.run(main)


def test_slow_start_triples_the_window_each_round_trip_up_to_the_ceiling() -> None:
    clock = Clock()
    window = AdaptiveWindow(1000, initial=10, clock=clock)
    sizes = [round_trip(window, clock, 0.1) for _ in range(4)]
    assert sizes == [10, 30, 90, 270]
    for _ in range(3):
        round_trip(window, clock, 0.1)
    assert window.size == 1000


def test_a_server_with_a_capacity_is_found_and_held() -> None:
    """Refusals beyond 32: the window drops once per round trip (not once per refusal), comes
    back to 32 at once, and stays there, without probing, for the hold time."""
    clock = Clock()
    window = AdaptiveWindow(1000, initial=64, clock=clock)
    round_trip(window, clock, 0.05, refuse_beyond=32)
    assert window.decreases == 1  # 32 refusals of one round trip: one decrease
    assert window.size == int(32 * 0.7)
    for _ in range(3):
        round_trip(window, clock, 0.05, refuse_beyond=32)
    assert window.size == 32
    sizes = {round_trip(window, clock, 0.05, refuse_beyond=32) for _ in range(100)}  # 5 s
    assert sizes == {32}
    assert window.decreases == 1
    clock.now += 10
    round_trip(window, clock, 0.05, refuse_beyond=32)
    assert window.limit > 32  # probing again after the hold


def test_a_refused_connection_is_not_congestion_but_a_timeout_is() -> None:
    clock = Clock()
    window = AdaptiveWindow(100, initial=50, clock=clock)

    async def main() -> None:
        slot = await window.acquire()
        slot.release(TransientDestinationError("refused", destination="test"))
        assert window.decreases == 0
        slot = await window.acquire()
        slot.release(TransientDestinationError("late", destination="test", timed_out=True))
        assert window.decreases == 1

    anyio.run(main)


def test_rising_round_trips_shrink_the_window() -> None:
    """Requests queueing somewhere (round trips several times the lowest seen): the window
    shrinks instead of growing."""
    clock = Clock()
    window = AdaptiveWindow(1000, initial=100, clock=clock)
    round_trip(window, clock, 0.1)
    grown = window.size
    for _ in range(3):
        round_trip(window, clock, 0.5)
    assert window.size < grown / 2
    assert window.decreases >= 1


def test_an_idle_window_does_not_grow() -> None:
    """A live stream with one upload at a time must not open the window to its ceiling."""
    clock = Clock()
    window = AdaptiveWindow(1000, initial=64, clock=clock)

    async def main() -> None:
        for _ in range(500):
            slot = await window.acquire()
            clock.now += 0.1
            slot.release()

    anyio.run(main)
    assert window.size == 64


def test_a_server_with_a_capacity_gets_every_point(tmp_path: Path) -> None:
    """32 chunk requests at once, 429 + Retry-After beyond: every point is stored exactly once,
    the Retry-After is asked for, and the window ends near the capacity."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await anyio.sleep(min(seconds, 0.005))

    with atomscale_in_thread(api_key="k") as web:
        web.faults = FaultPlan(capacity=32, latency_s=0.02, retry_after_s=1)
        s = TimeseriesStreamer(
            "k", web.url, clock_sync=False, spool_dir=tmp_path, handle_sigterm=False, sleep=sleep
        )
        with s:
            data_id = s.initialize(stream_name="capacity")
            items = [
                ([1.7e9 + c + i / 100 for i in range(100)], [float(c)] * 100) for c in range(400)
            ]
            s.run(data_id, "T", items)
            report = s.finalize(data_id, timeout=60)
        stored = web.points(data_id, "T")[1]
    assert report.ok, str(report)
    assert stored == [float(c) for c in range(400) for _ in range(100)]
    assert web.fault_counts["capacity"] > 0 and 1.0 in asked
    assert report["atomscale"].window <= 64
