"""Memory of ``labstream atomscale serve`` over a long run: is it bounded?

Run:  .venv/bin/python benchmarks/emulator_memory.py                  (30M points, a few minutes)
      .venv/bin/python benchmarks/emulator_memory.py --chunks 300     (3M points, quicker)

Starts ``labstream atomscale serve`` (as shipped: chunk data spilled to a temporary file, the
request log at its defaults) in a process of its own, initializes one stream and posts
``--chunks`` chunk/multi requests straight over HTTP, one after another, each with ``--channels``
channels of ``--points`` points (default 3,000 x 100 x 100: 30M points in 300k channel chunks).
Every tenth of the run it reads the server's ``VmRSS`` and ``VmHWM`` (peak) from /proc, and the
size of its spill file (the unlinked file among its open descriptors). At the end it checks from
``/_emulator/streams`` that every point was stored, and times that answer.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = rest
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def spilled_mb(pid: int) -> float:
    """Size of the server's unlinked temporary files, in MB."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).endswith("(deleted)"):
                total += os.stat(fd).st_size
        except OSError:
            continue
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()

    port = free_port()
    # As `labstream atomscale serve`; PYTHONPATH=<an older checkout>/src measures that one.
    server = subprocess.Popen(
        [sys.executable, "-m", "labstream.cli", "atomscale", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "Atomscale emulator listening on ..."
        with httpx.Client(base_url=url, headers={"X-API-KEY": "k"}, timeout=60) as client:
            rss0, _ = status_mb(server.pid)
            body = {"stream_name": "day", "points_per_chunk": args.points, "project_id": None}
            data_id = client.post("/tool-state/stream/initialize", json=body).json()["data_id"]
            names = [f"ch{c:03d}" for c in range(args.channels)]
            rng = np.random.default_rng(0)
            print(f"{'points':>12} {'chunks':>9} {'RSS MB':>8} {'peak MB':>8} {'spill MB':>9}")
            print(f"{0:>12,} {0:>9,} {rss0:>8.0f} {rss0:>8.0f} {0:>9.0f}")
            started = time.monotonic()
            for i in range(args.chunks):
                t = 1.7e9 + i * args.points * 0.01 + np.arange(args.points) * 0.01
                channels = {
                    n: {"timestamps": t, "values": rng.normal(size=args.points), "units": "V"}
                    for n in names
                }
                raw = orjson.dumps(
                    {"data_id": data_id, "chunk_index": i, "channels": channels},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
                answer = client.post(
                    "/tool-state/stream/chunk/multi",
                    content=raw,
                    headers={"Content-Type": "application/json"},
                )
                answer.raise_for_status()
                if (i + 1) % max(1, args.chunks // 10) == 0 or i + 1 == args.chunks:
                    rss, peak = status_mb(server.pid)
                    points = (i + 1) * args.channels * args.points
                    chunks = (i + 1) * args.channels
                    print(
                        f"{points:>12,} {chunks:>9,} {rss:>8.0f} {peak:>8.0f} "
                        f"{spilled_mb(server.pid):>9.0f}",
                        flush=True,
                    )
            pushed_s = time.monotonic() - started
            asked = time.monotonic()
            summary = client.get("/_emulator/streams").json()
            answer_s = time.monotonic() - asked
        logged = summary.get("requests_logged", summary["requests"])  # older: every one
        stream = summary["streams"][data_id]
        stored = sum(c["points"] for c in stream["channels"].values())
        expected = args.chunks * args.channels * args.points
        print(
            f"stored {stored:,} of {expected:,} points in {pushed_s:.0f} s; "
            f"/_emulator/streams answered in {answer_s:.2f} s; "
            f"requests {summary['requests']:,}, {logged:,} logged"
        )
        if stored != expected:
            sys.exit("not every point was stored")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
