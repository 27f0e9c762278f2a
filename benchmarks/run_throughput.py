"""run() throughput: points/s until run() and finalize() have returned with every chunk delivered.

Run:  .venv/bin/python benchmarks/run_throughput.py             (about 1 min on 2 cores)
      .venv/bin/python benchmarks/run_throughput.py --rounds 2 --chunks 5000

One run = a fresh process that initializes a stream, then times
``run(data_id, "temperature", zip(ts, vs), units="C")`` + ``finalize(data_id)`` over 10,000
chunks of 100 points (1M points, lists of floats built before the clock starts):

  sdk        /work/shared/bench/anchor_atomscale.py URL 10000 100 run (the official SDK, unchanged)
  labstream  benchmarks/_worker.py labstream run ..., the same steps with labstream's streamer

Clock sync is off for both. The two alternate within every round (the order flips each round).
Delivery is checked at the server: nginx logs every chunk request, and a run counts only if all
10,000 arrived with status 200 (for labstream also: none after finalize() returned, and its report
says delivered). Prints median points/s and the ratio labstream / SDK.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _server import BenchServer, server_description

HERE = Path(__file__).resolve().parent
ANCHOR = Path("/work/shared/bench/anchor_atomscale.py")

PPC = 100


def one_run(client: str, srv: BenchServer, n: int) -> dict:
    srv.clear_chunk_log()
    if client == "sdk":
        cmd = [sys.executable, str(ANCHOR), srv.url, str(n), str(PPC), "run"]
    else:
        cmd = [
            sys.executable,
            str(HERE / "_worker.py"),
            "labstream",
            "run",
            "fast",
            srv.url,
            str(n),
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{client} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    if client == "sdk":
        m = re.search(r"points=(\d+) seconds=([\d.]+)", proc.stdout)
        if not m:
            raise RuntimeError(f"unexpected anchor output: {proc.stdout!r}")
        res = {"points": int(m.group(1)), "seconds": float(m.group(2))}
    else:
        out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
        res = {
            "points": n * PPC,
            "seconds": out["seconds"],
            "report_delivered": out["delivered_chunks"],
            "finalize_returned_unix": out["finalize_returned_unix"],
        }
    log = srv.chunk_log()
    ok = [t for t, status in log if status == 200]
    res["server_chunks_200"] = len(ok)
    res["server_chunks_other"] = len(log) - len(ok)
    late = 0
    if "finalize_returned_unix" in res:  # nginx's $msec has millisecond resolution
        late = sum(1 for t in ok if t > res["finalize_returned_unix"] + 0.002)
    res["late"] = late
    res["complete"] = len(ok) >= n and late == 0 and res.get("report_delivered", n) == n
    res["points_per_s"] = res["points"] / res["seconds"]
    return res


def main(rounds: int, n: int) -> None:
    have_sdk = importlib.util.find_spec("atomscale") is not None and ANCHOR.exists()
    clients = ["labstream", "sdk"] if have_sdk else ["labstream"]
    rates: dict[str, list[float]] = {c: [] for c in clients}
    started = time.perf_counter()
    with BenchServer() as srv:
        print(
            f"server: {server_description(srv)}; {n} chunks x {PPC} points per run; {rounds} rounds"
        )
        if not have_sdk:
            print(
                "NOTE: the official SDK (pip install atomscale) is not installed: labstream alone"
            )
        if srv.kind != "nginx":
            print(
                "NOTE: no nginx chunk log with the stub: "
                "delivery is checked by labstream's report only"
            )
        for r in range(rounds):
            order = clients if r % 2 == 0 else clients[::-1]
            parts = []
            for client in order:
                res = one_run(client, srv, n)
                if srv.kind == "nginx" and not res["complete"]:
                    raise RuntimeError(f"{client} run {r + 1} did not deliver everything: {res}")
                rates[client].append(res["points_per_s"])
                parts.append(
                    f"{client} {res['points_per_s']:,.0f} pts/s ({res['seconds']:.2f} s, "
                    f"{res['server_chunks_200']} chunks at server)"
                )
            print(f"  round {r + 1}: " + "; ".join(parts), flush=True)
    print()
    print(f"{'client':10} {'median points/s':>16} {'min':>10} {'max':>10}")
    for c in clients:
        med, lo, hi = statistics.median(rates[c]), min(rates[c]), max(rates[c])
        print(f"{c:10} {med:16,.0f} {lo:10,.0f} {hi:10,.0f}")
    if have_sdk:
        lab, sdk = statistics.median(rates["labstream"]), statistics.median(rates["sdk"])
        per_round = [a / b for a, b in zip(rates["labstream"], rates["sdk"], strict=True)]
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}x"
        print(f"\nlabstream / SDK: {lab / sdk:.2f}x (per round {spread})")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=10_000)
    args = ap.parse_args()
    main(args.rounds, args.chunks)
