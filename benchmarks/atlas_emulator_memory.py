"""Memory of ``labstream atlas serve`` over a long run: is it bounded?

Run:  .venv/bin/python benchmarks/atlas_emulator_memory.py                (30M points, ~2 min)
      .venv/bin/python benchmarks/atlas_emulator_memory.py --pushes 300   (3M points)

Starts ``labstream atlas serve`` as shipped (packet bytes spilled to a temporary file) in a process
of its own, and streams to it with labstream alone: ``--pushes`` ``push_multi`` calls of
``--channels`` channels x ``--points`` points (default 3,000 x 100 x 100: 30M points). Every tenth
of the run it reads the server's ``VmRSS`` and ``VmHWM`` (peak) from /proc. At the end it checks,
through the reader service (``labstream.cli.atlas_verify.read_session``), that every sample
is there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from emulator_memory import free_port, status_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=3000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()
    from labstream import Atlas, TimeseriesStreamer
    from labstream.cli.atlas_verify import read_session

    labstream = str(Path(sys.executable).parent / "labstream")
    port, key_port = free_port(), free_port()
    server = subprocess.Popen(
        [labstream, "atlas", "serve", "--port", str(port), "--key-generator-port", str(key_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if "Stream API" in line:
            break
    names = [f"ch{k:03d}" for k in range(args.channels)]
    total = args.pushes * args.channels * args.points
    print(f"{total:,} points: {args.pushes:,} push_multi of {args.channels} x {args.points}")
    print(f"{'points sent':>14} {'RSS MB':>8} {'peak MB':>8}")
    started = time.time()
    try:
        with tempfile.TemporaryDirectory() as spool:
            s = TimeseriesStreamer(
                atlas=Atlas(
                    address=f"127.0.0.1:{port}", key_generator_address=f"127.0.0.1:{key_port}"
                ),
                spool_dir=spool,
                handle_sigterm=False,
                points_per_chunk=args.points,
            )
            data_id = s.initialize(stream_name="memory")
            values = np.arange(args.points, dtype=np.float64)
            for c in range(args.pushes):
                ts = 1.7e9 + (c * args.points + np.arange(args.points)) * 0.01
                s.push_multi(data_id, c, {n: {"timestamps": ts, "values": values} for n in names})
                if (c + 1) % max(1, args.pushes // 10) == 0:
                    rss, peak = status_mb(server.pid)
                    print(f"{(c + 1) * args.channels * args.points:>14,} {rss:>8.0f} {peak:>8.0f}")
            report = s.finalize(data_id, timeout=600)
            s.close()
        rss, peak = status_mb(server.pid)
        print(
            f"after finalize: RSS {rss:.0f} MB, peak {peak:.0f} MB, {time.time() - started:.0f} s"
        )
        print(f"labstream's report: {'complete' if report.ok else 'INCOMPLETE'}")
        _, recorded, _ = read_session(f"127.0.0.1:{port}", data_id, idle_s=2.0, timeout_s=60)
        samples = 0
        for p in recorded.packets:
            if p.type == "PeriodicData":
                samples += sum(len(col.double_samples.samples) for col in p.content.columns)
        print(f"read back: {samples:,} of {total:,} samples")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
