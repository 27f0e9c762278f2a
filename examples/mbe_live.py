"""A live MBE acquisition loop: temperatures and pressure at 10 Hz, shutter events as markers.

This is the loop an instrument engineer writes: read the instruments every 100 ms, push a chunk
every few seconds, mark the shutter events, and let labstream deliver to Atomscale and ATLAS in the
background. ``push_multi()`` only validates and queues, so the loop keeps its 10 Hz pace whatever
the network does; the script prints how long the calls took to show it.

Time is compressed by ``--speed`` so a three-minute growth runs in about three seconds (``--speed
1`` is real time). Timestamps are the acquisition's own clock, starting now.

    python examples/mbe_live.py                      # local emulators, about 3 s
    python examples/mbe_live.py --plot growth.png    # and draw what each destination stored
    python examples/mbe_live.py --duration 600 --speed 10 --atlas atlas-pc:13579
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
from _destinations import Destinations, add_arguments, destinations

from labstream import StreamReport, TimeseriesStreamer

RATE_HZ = 10.0
CHANNELS = {  # name -> units
    "substrate_temperature": "C",
    "ga_cell_temperature": "C",
    "as_cell_temperature": "C",
    "chamber_pressure": "mbar",
}


class SimulatedChamber:
    """Stands in for the instrument drivers: a substrate ramp, two cells, a pressure gauge."""

    def __init__(self, duration_s: float, seed: int = 1) -> None:
        self.duration_s = duration_s
        self.rng = np.random.default_rng(seed)
        self.ga_shutter_open = False

    def read(self, elapsed_s: float) -> dict[str, float]:
        ramp = min(elapsed_s / (0.2 * self.duration_s), 1.0)
        pressure = 4.0e-6 if self.ga_shutter_open else 2.0e-9
        readings = {
            "substrate_temperature": 200.0 + 430.0 * ramp + self.rng.normal(0, 0.3),
            "ga_cell_temperature": 950.0 + 2.0 * math.sin(elapsed_s / 17.0),
            "as_cell_temperature": 340.0 + self.rng.normal(0, 0.05),
            "chamber_pressure": pressure * (1 + self.rng.normal(0, 0.02)),
        }
        if self.rng.random() < 0.002:  # the gauge drops out now and then: a gap, sent as NaN
            readings["chamber_pressure"] = math.nan
        return readings


def acquire(
    streamer: TimeseriesStreamer, duration_s: float, speed: float, points_per_chunk: int
) -> tuple[StreamReport, dict[str, list[float]], list[float], list[float]]:
    """Run the loop; return the report, what was pushed, and each push_multi() call's duration."""
    chamber = SimulatedChamber(duration_s)
    n = int(duration_s * RATE_HZ)
    opens_at, closes_at = int(0.25 * n), int(0.85 * n)
    pushed_ts: list[float] = []
    pushed: dict[str, list[float]] = {name: [] for name in CHANNELS}
    buffer_ts: list[float] = []
    buffer: dict[str, list[float]] = {name: [] for name in CHANNELS}
    call_s: list[float] = []
    chunk = 0
    start = time.time()
    wall0 = time.perf_counter()
    with streamer.stream(
        stream_name="MBE growth - live", physical_sample="GaAs-042", tags=["example"]
    ) as s:
        for i in range(n):
            t = start + i / RATE_HZ
            if i == opens_at:
                chamber.ga_shutter_open = True
                s.mark("Ga shutter open", timestamp=t)
            if i == closes_at:
                chamber.ga_shutter_open = False
                s.mark("Ga shutter closed", timestamp=t)
                s.mark("GaAs layer", timestamp=start + opens_at / RATE_HZ, end_time=t)
            buffer_ts.append(t)
            for name, value in chamber.read(i / RATE_HZ).items():
                buffer[name].append(value)
            if len(buffer_ts) == points_per_chunk or i == n - 1:
                channels = {
                    name: {"timestamps": buffer_ts, "values": values, "units": CHANNELS[name]}
                    for name, values in buffer.items()
                }
                before = time.perf_counter()
                s.push_multi(chunk, channels)
                call_s.append(time.perf_counter() - before)
                chunk += 1
                pushed_ts += buffer_ts
                for name, values in buffer.items():
                    pushed[name] += values
                buffer_ts = []
                buffer = {name: [] for name in CHANNELS}
            # Keep the acquisition pace (compressed by --speed).
            time.sleep(max(0.0, wall0 + (i + 1) / RATE_HZ / speed - time.perf_counter()))
    assert s.report is not None  # set when the with block finalized the stream
    return s.report, pushed, pushed_ts, call_s


def show_receipts(
    dest: Destinations,
    report: StreamReport,
    pushed: dict[str, list[float]],
    pushed_ts: list[float],
    offset_s: float,
    plot: str | None,
) -> None:
    """With the local emulators: compare what each one stored with what was pushed."""
    assert dest.atomscale is not None
    atlas = dest.atlas_report()
    print(f"\n{'channel':<24}{'pushed':>8}{'Atomscale':>11}{'ATLAS':>8}")
    for name, values in pushed.items():
        _, stored = dest.atomscale.points(report.data_id, name)
        param = atlas.parameters.get(f"{name}:labstream") if atlas else None
        got = len(param.values) if param else 0
        print(f"{name:<24}{len(values):>8}{len(stored):>11}{got:>8}")
    if atlas is not None:
        in_time = sorted(atlas.markers, key=lambda m: (m.timestamp_ns, m.end_time_ns))
        print(f"ATLAS markers: {', '.join(repr(m.label) for m in in_time)}")
        print(f"ATLAS protocol: {'clean' if atlas.clean else 'NOT clean'}")
    if plot:
        from labstream.cli.plot import plot_demo

        path = plot_demo(
            plot,
            timestamps=pushed_ts,
            channels={name: (values, CHANNELS[name]) for name, values in pushed.items()},
            atomscale=dest.atomscale,
            data_id=report.data_id,
            atlas=atlas,
            clock_offset_s=offset_s,
            title="examples/mbe_live.py: pushed vs stored",
        )
        print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="growth length, seconds")
    parser.add_argument("--speed", type=float, default=60.0, help="time compression factor")
    parser.add_argument("--points-per-chunk", type=int, default=50, help="50 = one chunk per 5 s")
    parser.add_argument("--plot", metavar="FILE", help="draw pushed vs stored (.png/.svg)")
    add_arguments(parser)
    args = parser.parse_args(argv)

    with destinations(args) as dest:
        print(f"streaming a {args.duration:.0f} s growth at {RATE_HZ:g} Hz to {dest.describe()}")
        with TimeseriesStreamer(
            points_per_chunk=args.points_per_chunk, **dest.streamer_kwargs
        ) as streamer:
            report, pushed, pushed_ts, call_s = acquire(
                streamer, args.duration, args.speed, args.points_per_chunk
            )
            offset_s = streamer.clock_status().offset_s
        micros = sorted(c * 1e6 for c in call_s)
        print(
            f"{len(call_s)} push_multi() calls: median {statistics.median(micros):.0f} µs, "
            f"max {micros[-1]:.0f} µs; the loop never waited on the network"
        )
        print(report)
        if dest.local:
            show_receipts(dest, report, pushed, pushed_ts, offset_s, args.plot)
        elif args.plot:
            print("--plot needs the local emulators: a real destination cannot be read back")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
