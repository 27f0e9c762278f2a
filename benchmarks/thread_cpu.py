"""Where run() spends its CPU: each of labstream's threads, in µs per chunk, without a profiler.

Run:  .venv/bin/python benchmarks/thread_cpu.py               (about 30 s on 2 cores)
      .venv/bin/python benchmarks/thread_cpu.py --atlas        (also Atomscale + ATLAS)

One process per run, as in run_throughput.py: ``run()`` of 10,000 chunks x 100 points to local
nginx (and, with ``--atlas``, to labstream's ATLAS emulator without content decode, in a process
of its own), then ``finalize()``. Each thread's CPU time (user + system, from
``/proc/self/task/<tid>/stat``) is read before and after, so the figures are real CPU, not
profiler time: the caller's thread (validation, the journal hand-off), the event loop (delivery,
request bodies, ATLAS session and writes), the journal writer (SQLite), and the curl thread
(libcurl's work on the uploads). The GIL lets only one of them run Python at a time, so their sum
against the wall time per chunk shows how close the run is to one saturated core. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _server import proc_stat  # this script's folder is on sys.path

HERE = Path(__file__).resolve().parent
PPC, CHUNKS = 100, 10_000


def thread_cpu() -> dict[str, float]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(int(tid), "other")
        out[name] = out.get(name, 0.0) + proc_stat(f"/proc/self/task/{tid}/stat")[1]
    return out


def child(endpoint: str) -> None:
    import tempfile

    from labstream import TimeseriesStreamer

    spool = tempfile.mkdtemp(prefix="labstream-bench-")
    s = TimeseriesStreamer(
        "bench-key", endpoint, clock_sync=False, handle_sigterm=False, spool_dir=spool
    )
    data_id = s.initialize(stream_name="thread-cpu")
    t0 = 1.7e9
    data = [
        ([t0 + (c * PPC + i) * 0.01 for i in range(PPC)], [25.0 + i * 0.001 for i in range(PPC)])
        for c in range(CHUNKS)
    ]
    before = thread_cpu()
    start = time.perf_counter()
    s.run(data_id, "temperature", iter(data), units="C")
    report = s.finalize(data_id)
    wall = time.perf_counter() - start
    after = thread_cpu()
    per_chunk = {k: (after[k] - before.get(k, 0.0)) * 1e6 / CHUNKS for k in after}
    delivered = {name: d.chunks_delivered for name, d in report.destinations.items()}
    print(json.dumps({"wall_us": wall * 1e6 / CHUNKS, "threads": per_chunk, "ok": report.ok,
                      "delivered": delivered}), flush=True)  # fmt: skip
    shutil.rmtree(spool, ignore_errors=True)
    os._exit(0)  # no orderly close: the figures are taken


def main(rounds: int, atlas: bool) -> None:
    from _server import BenchServer
    from _worker import AtlasProcess

    variants = [("Atomscale", None)] + ([("Atomscale + ATLAS", "nodecode")] if atlas else [])
    results: dict[str, list[dict]] = {v: [] for v, _ in variants}
    with BenchServer() as srv:
        for _ in range(rounds):
            for label, mode in variants:
                with contextlib.ExitStack() as stack:
                    env = dict(os.environ)
                    if mode is not None:
                        env.update(stack.enter_context(AtlasProcess(mode)).env)
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", srv.url],
                        capture_output=True, text=True, timeout=180, env=env, check=True,
                    )  # fmt: skip
                res = json.loads(out.stdout.strip().splitlines()[-1])
                if not res["ok"] or set(res["delivered"].values()) != {CHUNKS}:
                    raise RuntimeError(f"{label}: not everything delivered: {res}")
                results[label].append(res)
    for label, runs in results.items():
        wall = statistics.median(r["wall_us"] for r in runs)
        print(f"\n{label}: {PPC * 1e6 / wall:,.0f} points/s, {wall:.0f} µs wall per chunk")
        names = sorted({n for r in runs for n in r["threads"]})
        total = 0.0
        for name in names:
            us = statistics.median(r["threads"].get(name, 0.0) for r in runs)
            total += us
            print(f"  {name:24s} {us:7.1f} µs CPU per chunk")
        print(f"  {'all threads':24s} {total:7.1f} µs CPU per chunk ({total / wall:.2f} cores)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--rounds", type=int, default=3)
        ap.add_argument("--atlas", action="store_true", help="also Atomscale + ATLAS")
        args = ap.parse_args()
        main(args.rounds, args.atlas)
