"""Acquisition in an asyncio program, with ``AsyncTimeseriesStreamer``.

An asyncio acquisition program reads several instruments concurrently, each in its own task, and
must not stall its event loop: a stalled loop delays every reading. ``AsyncTimeseriesStreamer``
offers the SDK's calls as coroutines on the program's own loop: ``await s.push(...)`` only
validates and queues, and delivery to Atomscale and ATLAS runs in background tasks on the same
loop. Here a pyrometer (10 Hz) and a pressure gauge (2 Hz) each push their own channel with their
own chunk numbering, and a watchdog measures how late the loop wakes up, to show that streaming
costs the loop next to nothing.

    python examples/asyncio_acquisition.py
    python examples/asyncio_acquisition.py --duration 600 --speed 1 --atlas atlas-pc:13579
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from _destinations import add_arguments, destinations

from labstream import AsyncStreamHandle, AsyncTimeseriesStreamer


async def instrument(
    s: AsyncStreamHandle,
    channel: str,
    units: str,
    rate_hz: float,
    points_per_chunk: int,
    run: tuple[float, float, float],
    read: Callable[[float], float],
) -> int:
    """Sample one instrument at ``rate_hz``; push a chunk every ``points_per_chunk`` readings."""
    start, duration_s, speed = run
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    timestamps: list[float] = []
    values: list[float] = []
    chunk = 0
    n = int(duration_s * rate_hz)
    for i in range(n):
        await asyncio.sleep(max(0.0, t0 + i / rate_hz / speed - loop.time()))
        timestamps.append(start + i / rate_hz)
        values.append(read(i / rate_hz))
        if len(timestamps) == points_per_chunk or i == n - 1:
            await s.push(chunk, channel, timestamps, values, units=units)
            chunk += 1
            timestamps, values = [], []
    return n


async def watchdog(stop: asyncio.Event, period_s: float = 0.005) -> float:
    """The loop's worst wake-up lateness while the instruments run (seconds)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(period_s)
        worst = max(worst, loop.time() - before - period_s)
    return worst


async def valve(s: AsyncStreamHandle, run: tuple[float, float, float]) -> None:
    """The recipe opens the precursor valve a third of the way in: a marker at that instant."""
    start, duration_s, speed = run
    await asyncio.sleep(duration_s / 3 / speed)
    await s.mark("precursor valve open", timestamp=start + duration_s / 3)


async def acquire(args: argparse.Namespace, streamer_kwargs: dict[str, Any]) -> bool:
    rng = random.Random(5)
    async with AsyncTimeseriesStreamer(**streamer_kwargs) as streamer:
        async with streamer.stream(stream_name="CVD run - asyncio") as s:
            run = (time.time(), args.duration, args.speed)  # start (epoch s), length, speed
            stop = asyncio.Event()
            lag = asyncio.create_task(watchdog(stop))
            async with asyncio.TaskGroup() as tg:
                pyrometer = tg.create_task(
                    instrument(
                        s, "pyrometer_temperature", "C", 10.0, 50, run,
                        lambda t: 700.0 + 50.0 * math.tanh(t / 20.0) + rng.gauss(0, 0.2),
                    )
                )  # fmt: skip
                gauge = tg.create_task(
                    instrument(
                        s, "chamber_pressure", "mbar", 2.0, 10, run,
                        lambda t: 1.0e-3 * (1 + rng.gauss(0, 0.01)),
                    )
                )  # fmt: skip
                tg.create_task(valve(s, run))
            stop.set()
            worst_lag = await lag
        report = s.report
    assert report is not None
    print(f"pushed {pyrometer.result()} pyrometer and {gauge.result()} gauge readings")
    print(f"worst event-loop lag while streaming: {worst_lag * 1e3:.1f} ms")
    print(report)
    return report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="run length, seconds")
    parser.add_argument("--speed", type=float, default=20.0, help="time compression factor")
    add_arguments(parser)
    args = parser.parse_args(argv)
    with destinations(args) as dest:
        print(f"streaming from asyncio to {dest.describe()}")
        ok = asyncio.run(acquire(args, dest.streamer_kwargs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
