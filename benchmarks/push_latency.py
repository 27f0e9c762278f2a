"""push() latency per call: labstream's TimeseriesStreamer vs the official Atomscale SDK.

Run:  .venv/bin/python benchmarks/push_latency.py              (about 1.5 min on 2 cores)
      .venv/bin/python benchmarks/push_latency.py --rounds 2   (quicker, noisier)

Each run is a fresh process (benchmarks/_worker.py) that initializes a stream and then times every
``push(data_id, i, "temperature", ts, vs, units="C")`` call, 100 points per chunk given as lists of
floats (as /work/shared/bench/anchor_atomscale.py does), clock sync off for both clients.
labstream streams to both destinations, as the target says: Atomscale (nginx) and ATLAS
(labstream's emulator without content decode, in a process of its own). The SDK has Atomscale
only. ``--atomscale-only`` gives labstream Atomscale alone (the figures before 2026-11-22).
Scenarios:

  fast-burst   destinations = local nginx (+ ATLAS emulator), 10,000 pushes back to back (1M points)
  fast-paced   the same, 3,000 pushes, one per millisecond (100k points/s)
  down-burst   destinations unreachable (Atomscale's port closed after initialize, ATLAS's never
               open), 10,000 back to back
  down-paced   destinations unreachable, 3,000 pushes, one per millisecond

labstream and the SDK alternate within every round (the order flips each round). For the paced
scenarios it also prints the process's CPU time per push (all threads, while pushing).
Latencies of all rounds are pooled per (scenario, client). In round 1 only, each run also calls
finalize() and the time it took is shown (labstream waits for delivery; the SDK only sends the
finalize request).
If ``atomscale`` is not installed, labstream is reported alone. Needs nginx (see _server.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _server import BenchServer, free_port, server_description
from _worker import AtlasProcess

HERE = Path(__file__).resolve().parent

SCENARIOS = {  # name: (destination, chunks, pace in microseconds)
    "fast-burst": ("fast", 10_000, 0),
    "fast-paced": ("fast", 3_000, 1000),
    "down-burst": ("down", 10_000, 0),
    "down-paced": ("down", 3_000, 1000),
}


def one_run(client: str, scenario: str, url: str, finalize: bool, atlas: bool) -> dict:
    dest, n, pace = SCENARIOS[scenario]
    cmd = [
        sys.executable,
        str(HERE / "_worker.py"),
        client,
        "push",
        dest,
        url,
        str(n),
        str(pace),
        "yes" if finalize else "no",
    ]
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if client == "labstream" and atlas and dest == "fast":
            env.update(stack.enter_context(AtlasProcess("nodecode")).env)
        elif client == "labstream" and atlas:  # nothing listens there
            env["LABSTREAM_ATLAS"] = f"127.0.0.1:{free_port()}"
            env["LABSTREAM_ATLAS_KEY_GENERATOR"] = f"127.0.0.1:{free_port()}"
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{client} {scenario} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(lines[-1])


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def main(rounds: int, atlas: bool) -> None:
    have_sdk = importlib.util.find_spec("atomscale") is not None
    clients = ["labstream", "sdk"] if have_sdk else ["labstream"]
    runs: dict[tuple[str, str], list[dict]] = {}
    started = time.perf_counter()
    with BenchServer() as srv:
        print(f"server: {server_description(srv)}; {rounds} rounds; 100 points/chunk")
        print(
            "labstream streams to "
            + ("Atomscale and ATLAS" if atlas else "Atomscale only")
            + "; the SDK to Atomscale"
        )
        if not have_sdk:
            print(
                "NOTE: the official SDK (pip install atomscale) is not installed: labstream alone"
            )
        for r in range(rounds):
            order = clients if r % 2 == 0 else clients[::-1]
            for scenario in SCENARIOS:
                for client in order:
                    res = one_run(client, scenario, srv.url, finalize=(r == 0), atlas=atlas)
                    runs.setdefault((scenario, client), []).append(res)
            print(f"  round {r + 1} done ({time.perf_counter() - started:.0f} s)", flush=True)

    print()
    print(
        f"{'scenario':11} {'client':10} {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'max us':>8}"
        f" {'p99 per run':>15} {'max per run':>13} {'finalize (r1)':>14}"
    )
    ratios = []
    for scenario in SCENARIOS:
        stats = {}
        for client in clients:
            rs = runs[(scenario, client)]
            lat = sorted(x for res in rs for x in res["lat_us"])
            p99s = [res["p99_us"] for res in rs]
            maxes = [res["max_us"] / 1000 for res in rs]
            fin = rs[0]
            fin_txt = f"{fin['finalize_seconds']:.2f} s" + (
                " (error)" if fin.get("finalize_error") else ""
            )
            stats[client] = (pct(lat, 0.5), pct(lat, 0.99), pct(lat, 0.999), lat[-1])
            print(
                f"{scenario:11} {client:10} {stats[client][0]:7.1f} {stats[client][1]:7.1f} "
                f"{stats[client][2]:8.0f} {stats[client][3]:8.0f} "
                f"{min(p99s):7.1f}-{max(p99s):<7.1f} {min(maxes):5.1f}-{max(maxes):<4.1f}ms"
                f" {fin_txt:>14}"
            )
        if have_sdk:
            lab, sdk = stats["labstream"], stats["sdk"]
            ratios.append(
                f"{scenario}: p50 {lab[0] / sdk[0]:.1f}x, p99 {lab[1] / sdk[1]:.1f}x, "
                f"max {lab[3] / sdk[3]:.1f}x"
            )
    if ratios:
        print("\nlabstream / SDK (higher = labstream slower):")
        for line in ratios:
            print("  " + line)
    print("\nCPU per push while pacing (the whole process, all threads; median of the runs):")
    for scenario in ("fast-paced", "down-paced"):
        cpu = {
            client: statistics.median(
                r["cpu_push_seconds"] / r["chunks"] * 1e6 for r in runs[(scenario, client)]
            )
            for client in clients
        }
        print(f"  {scenario}: " + ", ".join(f"{c} {us:.0f} µs" for c, us in cpu.items()))
    for scenario in ("fast-burst", "down-burst"):
        fin = runs[(scenario, "labstream")][0]
        if "delivered_chunks" in fin:
            print(
                f"labstream {scenario} round 1: finalize() returned after "
                f"{fin['finalize_seconds']:.2f} s, chunks delivered of {fin['chunks']}: "
                + ", ".join(f"{k} {v}" for k, v in fin["delivered"].items())
                + (
                    " (finalize timeout 2 s, which bounds the close too)"
                    if scenario.startswith("down")
                    else ""
                )
            )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--atomscale-only", action="store_true", help="labstream without ATLAS configured"
    )
    args = ap.parse_args()
    main(args.rounds, atlas=not args.atomscale_only)
