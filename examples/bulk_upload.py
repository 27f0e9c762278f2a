"""Bulk upload of a recorded instrument log in generator mode (``run()``).

The log is read lazily, one chunk at a time, and handed to ``streamer.run()``, which numbers the
chunks 0, 1, 2, ..., keeps memory bounded (it pauses reading while a destination has too many
chunks pending) and returns once every destination has confirmed every chunk. ``finalize()`` then
closes the stream and returns the report. Without ``--log`` a pyrometer log (CSV with a header,
``timestamp,value``, Unix epoch seconds) is generated first, ending now.

    python examples/bulk_upload.py                         # a 200,000-row log, local emulators
    python examples/bulk_upload.py --log pyrometer.csv --channel pyrometer_temperature --units C
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _destinations import add_arguments, destinations

from labstream import DeliveryError, TimeseriesStreamer


def write_generated_log(path: Path, rows: int, rate_hz: float = 5.0) -> None:
    """A pyrometer log as an instrument PC would have written it: epoch seconds, value."""
    start = time.time() - rows / rate_hz
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["timestamp", "value"])
        for i in range(rows):
            t = i / rate_hz
            out.writerow([f"{start + t:.3f}", f"{580.0 + 40.0 * math.tanh(t / 600.0):.3f}"])


def read_log(path: Path, rows_per_chunk: int) -> Iterator[tuple[list[float], list[float]]]:
    """Yield ``(timestamps, values)`` chunks; only one chunk is in memory at a time."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        timestamps: list[float] = []
        values: list[float] = []
        for row in reader:
            timestamps.append(float(row[0]))
            values.append(float(row[1]) if row[1] else math.nan)  # an empty cell is a gap
            if len(timestamps) == rows_per_chunk:
                yield timestamps, values
                timestamps, values = [], []
        if timestamps:
            yield timestamps, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, help="CSV log: timestamp,value (default: generated)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the generated log")
    parser.add_argument("--channel", default="pyrometer_temperature")
    parser.add_argument("--units", default="C")
    parser.add_argument("--points-per-chunk", type=int, default=1000)
    add_arguments(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, destinations(args) as dest:
        log = args.log
        if log is None:
            log = Path(tmp) / "pyrometer.csv"
            write_generated_log(log, args.rows)
            print(f"generated a {args.rows:,}-row pyrometer log at {log}")
        print(f"uploading {log.name} to {dest.describe()}")
        with TimeseriesStreamer(
            points_per_chunk=args.points_per_chunk, **dest.streamer_kwargs
        ) as streamer:
            data_id = streamer.initialize(stream_name=f"Pyrometer log {log.name}")
            started = time.perf_counter()
            try:
                streamer.run(
                    data_id, args.channel, read_log(log, args.points_per_chunk), units=args.units
                )
            except DeliveryError as exc:  # a destination rejected chunks: the report says which
                print(f"run() raised: {exc}")
            elapsed = time.perf_counter() - started
            report = streamer.finalize(data_id)
        points = report.destinations[streamer.destinations[0]].points_accepted
        chunks = report.destinations[streamer.destinations[0]].chunks_accepted
        print(
            f"uploaded {points:,} points in {chunks:,} chunks in {elapsed:.2f} s "
            f"({points / elapsed:,.0f} points/s, every destination confirmed)"
        )
        print(report)
        if dest.atomscale is not None:
            _, stored = dest.atomscale.points(data_id, args.channel)
            print(f"the Atomscale emulator holds {len(stored):,} points of {args.channel}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
