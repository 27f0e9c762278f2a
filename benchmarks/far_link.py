"""Bulk delivery over a far link, and to a server with a capacity: labstream against the SDK.

Run:  .venv/bin/python benchmarks/far_link.py                     (about 1 min on 2 cores)
      .venv/bin/python benchmarks/far_link.py --latencies 0.1 --chunks 5000
      .venv/bin/python benchmarks/far_link.py --capacity-only

Needs the official SDK (``pip install -e '.[bench]'``) for the anchor; without it only labstream
runs. Each run is a fresh Atomscale emulator (``labstream atomscale serve``) in a process of its
own, holding every chunk request ``--latency`` seconds before it answers, and one client process
doing ``initialize``, ``run()`` over N chunks of 100 points, ``finalize``:

  sdk        /work/shared/bench/anchor_atomscale.py URL N 100 run (the official SDK, unchanged)
  labstream  this file's ``--client`` mode: the same steps with labstream (journal on)

Counted at the destination: the emulator's record of every request. The rate is the points it
stored over the time from the first chunk request's arrival to the last successful chunk
answer, so a client's start-up and a finalize() that does not wait (the SDK's) do not blur it.
A run that left points unstored says how many.

The capacity case: the emulator handles at most 32 chunk requests at once, 0.05 s each, and
answers 429 + ``Retry-After: 1`` beyond that (64,000 points/s of capacity with 100-point chunks);
the figure is the share of that capacity a client used, and how many points it delivered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR = HERE.parent.parent / "shared" / "bench" / "anchor_atomscale.py"
POINTS = 100


def client_main(url: str, chunks: int) -> None:
    """One labstream run: what the anchor does with the SDK."""
    from labstream import TimeseriesStreamer

    t0 = 1.7e9
    ts = [[t0 + (c * POINTS + i) * 0.01 for i in range(POINTS)] for c in range(chunks)]
    vs = [[25.0 + i * 0.001 for i in range(POINTS)] for _ in range(chunks)]
    with tempfile.TemporaryDirectory() as spool:
        s = TimeseriesStreamer(
            api_key="k", endpoint=url, clock_sync=False, spool_dir=spool, handle_sigterm=False
        )
        data_id = s.initialize(stream_name="bench")
        s.run(data_id, "temperature", zip(ts, vs, strict=True), units="C", timeout=600)
        report = s.finalize(data_id, timeout=600)
        s.close()
    print(json.dumps({"ok": report.ok, "window": report["atomscale"].window}))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(latency: float, capacity: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    labstream = str(Path(sys.executable).parent / "labstream")
    # The whole request log: every chunk's answer time is read back from it.
    cmd = [labstream, "atomscale", "serve", "--port", str(port), "--request-log", "10000000"]
    cmd += ["--latency", str(latency)]
    if capacity:
        cmd += ["--capacity", str(capacity), "--retry-after", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/_emulator/streams", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the emulator did not start")


def measure(client: str, latency: float, capacity: int, chunks: int) -> dict[str, float]:
    proc, url = serve(latency, capacity)
    try:
        if client == "sdk":
            cmd = [sys.executable, str(ANCHOR), url, str(chunks), str(POINTS), "run"]
        else:
            cmd = [sys.executable, __file__, "--client", url, "--chunks", str(chunks)]
        env = {**os.environ, "ATOMSCALE_SKIP_CLOCK_SYNC": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
        time.sleep(max(0.5, 2 * latency))  # what is still in flight lands (or does not)
        records = json.loads(urllib.request.urlopen(f"{url}/_emulator/requests").read())
    finally:
        proc.terminate()
        proc.wait()
    chunk = [r for r in records if r["path"].endswith("/chunk")]
    ok = [r for r in chunk if r["status"] == 200]
    stored = len({r["body"]["chunk_index"] for r in ok}) * POINTS
    start = min(r["received_at"] for r in chunk)
    end = max(r["answered_at"] for r in ok)
    refused = sum(1 for r in chunk if r["status"] == 429)
    return {"stored": stored, "rate": stored / (end - start), "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--latencies", default="0,0.02,0.1,0.2")
    parser.add_argument("--capacity-only", action="store_true")
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.chunks)
        return
    try:
        import atomscale  # noqa: F401

        clients = ["sdk", "labstream"]
    except ImportError:
        print("the official SDK is not installed: labstream only (pip install -e '.[bench]')")
        clients = ["labstream"]
    sent = args.chunks * POINTS
    if not args.capacity_only:
        print(f"bulk: run() + finalize(), {args.chunks:,} chunks of {POINTS} points")
        print(f"{'latency':>8}  {'client':<10}{'points/s':>11}{'stored':>10}  vs sdk")
        for latency in [float(x) for x in args.latencies.split(",")]:
            rates = {}
            for client in clients:
                m = measure(client, latency, 0, args.chunks)
                rates[client] = m["rate"]
                ratio = f"{m['rate'] / rates['sdk']:.2f}x" if "sdk" in rates else ""
                print(
                    f"{latency:>7g}s  {client:<10}{m['rate']:>11,.0f}"
                    f"{m['stored'] / sent:>10.1%}  {ratio if client != 'sdk' else ''}",
                    flush=True,
                )
    capacity_points = 32 / 0.05 * POINTS
    print("\ncapacity: 32 requests at once, 0.05 s each, 429 + Retry-After: 1 beyond")
    print(f"{'client':<10}{'points/s':>11}{'of capacity':>13}{'stored':>10}{'429s':>8}")
    for client in clients:
        m = measure(client, 0.05, 32, args.chunks)
        print(
            f"{client:<10}{m['rate']:>11,.0f}{m['rate'] / capacity_points:>13.0%}"
            f"{m['stored'] / sent:>10.1%}{m['refused']:>8,}",
            flush=True,
        )


if __name__ == "__main__":
    main()
