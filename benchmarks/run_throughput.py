"""run() throughput: points/s until run() and finalize() have returned with every chunk delivered.

Run:  .venv/bin/python benchmarks/run_throughput.py             (about 2.5 min on 2 cores)
      .venv/bin/python benchmarks/run_throughput.py --atlas none          (Atomscale only, ~40 s)
      .venv/bin/python benchmarks/run_throughput.py --rounds 2 --chunks 5000
      .venv/bin/python benchmarks/run_throughput.py --atlas nodecode --nospool    (~2 min)
      .venv/bin/python benchmarks/run_throughput.py --profile    (one profiled +atlas run, ~30 s)

One run = a fresh process that initializes a stream, then times
``run(data_id, "temperature", zip(ts, vs), units="C")`` + ``finalize(data_id)`` over 10,000
chunks of 100 points (1M points, lists of floats built before the clock starts):

  sdk        /work/shared/bench/anchor_atomscale.py URL 10000 100 run (the official SDK, unchanged)
  labstream  benchmarks/_worker.py labstream run ..., the same steps with labstream's streamer
  +atlas     labstream streaming to Atomscale (nginx) and ATLAS at once: labstream's ATLAS
             emulator as shipped, in its own process (``_worker.py atlas-emulator``)
  +atlas-nd  the same against the emulator with its per-packet content decode stubbed out
             (``nodecode``, as in atlas_writes.py; the real server does not decode either): the
             emulator then costs less, so this is closer to labstream's own limit
  ...-nospool with ``--nospool``: labstream and +atlas-nd again with ``spool=False`` (no journal),
             to show what the journal costs
  floor      benchmarks/_floor.py URL 10000: the same requests with labstream's libraries and
             nothing else (one thread, no journal, no retries, no report): the least Python a
             chunk upload costs here, so labstream's distance to it is what its own layers cost
             (``--no-floor`` leaves it out)

Clock sync is off everywhere. The variants alternate within every round (the order rotates).
Delivery is checked at the server: nginx logs every chunk request, and a run counts only if all
10,000 arrived with status 200 (for labstream also: none after finalize() returned, and its report
says all delivered, to ATLAS too; the emulator's data packets must hold all 1M more samples,
counted after the run).
labstream journals into a temporary spool directory per run (the default ``spool=True``). Prints
median points/s, each variant's ratio to the SDK, and CPU per chunk: the client process's (all
threads) over its timed part (the SDK's read by ``_timed_cpu.py``, which runs the anchor
unchanged), and the server's (nginx's processes, whole run).

``--profile``: one labstream run to both destinations (``--atlas nodecode`` for that emulator,
``none`` for Atomscale alone) with cProfile in each of its threads (see _worker.py), then the top
functions of each thread by own time and by cumulative time. cProfile slows Python code about 2x,
so read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _server import BenchServer, server_description
from _worker import AtlasProcess

HERE = Path(__file__).resolve().parent
ANCHOR = Path("/work/shared/bench/anchor_atomscale.py")

PPC = 100


def one_run(
    client: str, srv: BenchServer, n: int, atlas: AtlasProcess | None = None, spool: bool = True
) -> dict:
    srv.clear_chunk_log()
    env = {**os.environ, **(atlas.env if atlas is not None else {})}
    if not spool:
        env["BENCH_SPOOL"] = "0"
    before = atlas.samples() if atlas is not None else 0
    if client == "sdk":
        cmd = [sys.executable, str(HERE / "_timed_cpu.py"), str(ANCHOR), srv.url, str(n)]
        cmd += [str(PPC), "run"]
    elif client == "floor":
        cmd = [sys.executable, str(HERE / "_floor.py"), srv.url, str(n)]
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
    server_cpu = srv.cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    server_cpu = srv.cpu_seconds() - server_cpu  # includes the client's idle start, ~nothing
    if proc.returncode != 0:
        raise RuntimeError(f"{client} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    if client == "sdk":
        m = re.search(r"points=(\d+) seconds=([\d.]+)", proc.stdout)
        if not m:
            raise RuntimeError(f"unexpected anchor output: {proc.stdout!r}")
        res = {"points": int(m.group(1)), "seconds": float(m.group(2))}
        res["cpu_seconds"] = out["timed_user_seconds"] + out["timed_system_seconds"]
    elif client == "floor":
        res = {"points": n * PPC, "seconds": out["seconds"]}
        res["cpu_seconds"] = out["user_seconds"] + out["system_seconds"]
    else:
        res = {
            "points": n * PPC,
            "seconds": out["seconds"],
            "cpu_seconds": out["cpu_seconds"],
            "report_delivered": min(out["delivered"].values()),
            "finalize_returned_unix": out["finalize_returned_unix"],
        }
        if atlas is not None:
            res["atlas_recorded"] = (atlas.samples() - before) // PPC  # in chunks
            res["report_delivered"] = min(res["report_delivered"], res["atlas_recorded"])
            if set(out["delivered"]) != {"atomscale", "atlas"}:
                raise RuntimeError(f"{client}: not streaming to both: {out['delivered']}")
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
    res["server_cpu_seconds"] = server_cpu
    return res


ATLAS_VARIANTS = {"+atlas": "shipped", "+atlas-nd": "nodecode"}


def profile(n: int, atlas: str, top: int = 25) -> None:
    import pstats
    import tempfile

    with tempfile.TemporaryDirectory(prefix="labstream-profile-") as tmp, BenchServer() as srv:
        prefix = os.path.join(tmp, "prof")
        os.environ["BENCH_PROFILE"] = prefix
        with contextlib.ExitStack() as stack:
            emu = None
            if atlas != "none":
                emu = stack.enter_context(
                    AtlasProcess("nodecode" if atlas == "nodecode" else "shipped")
                )
            res = one_run("labstream", srv, n, emu)
        del os.environ["BENCH_PROFILE"]
        where = "Atomscale alone" if emu is None else f"Atomscale + ATLAS ({emu.mode} emulator)"
        print(
            f"profiled run, {where}: {res['points_per_s']:,.0f} points/s, client CPU "
            f"{res['cpu_seconds'] / n * 1e6:.0f} us/chunk under cProfile; "
            f"all delivered: {res['complete']}"
        )
        for thread in ("main", "loop", "journal"):
            path = f"{prefix}.{thread}"
            if not os.path.exists(path):
                print(f"\n== {thread}: no profile")
                continue
            stats = pstats.Stats(path)
            total = stats.total_tt  # type: ignore[attr-defined]
            print(f"\n== thread {thread}: {total:.2f} s of own time profiled ({n} chunks)")
            for key in ("tottime", "cumulative"):
                print(f"-- by {key}")
                stats.sort_stats(key).print_stats(top)


def main(rounds: int, n: int, atlas: str, nospool: bool, floor: bool) -> None:
    have_sdk = importlib.util.find_spec("atomscale") is not None and ANCHOR.exists()
    clients = ["labstream", "sdk"] if have_sdk else ["labstream"]
    if floor:
        clients.append("floor")
    if atlas in ("shipped", "both"):
        clients.append("+atlas")
    if atlas in ("nodecode", "both"):
        clients.append("+atlas-nd")
    if nospool:
        clients.insert(1, "nospool")
        if "+atlas-nd" in clients:
            clients.append("+atlas-nd-nospool")
    rates: dict[str, list[float]] = {c: [] for c in clients}
    cpu: dict[str, list[float]] = {c: [] for c in clients}
    server_cpu: dict[str, list[float]] = {c: [] for c in clients}
    started = time.perf_counter()
    with BenchServer() as srv, contextlib.ExitStack() as stack:
        emulators = {
            c: stack.enter_context(AtlasProcess(ATLAS_VARIANTS[c.removesuffix("-nospool")]))
            for c in clients
            if c.removesuffix("-nospool") in ATLAS_VARIANTS
        }
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
            order = clients[r % len(clients) :] + clients[: r % len(clients)]
            parts = []
            for client in order:
                worker = client if client in ("sdk", "floor") else "labstream"
                spool = not client.endswith("nospool")
                res = one_run(worker, srv, n, emulators.get(client), spool)
                if srv.kind == "nginx" and not res["complete"]:
                    raise RuntimeError(f"{client} run {r + 1} did not deliver everything: {res}")
                rates[client].append(res["points_per_s"])
                cpu[client].append(res["cpu_seconds"] / n * 1e6)
                server_cpu[client].append(res["server_cpu_seconds"] / n * 1e6)
                parts.append(f"{client} {res['points_per_s']:,.0f} pts/s ({res['seconds']:.2f} s)")
            print(f"  round {r + 1}: " + "; ".join(parts), flush=True)
    print()
    print(
        f"{'variant':17} {'median points/s':>16} {'min':>10} {'max':>10} "
        f"{'CPU us/chunk':>13} {'server':>7} {'vs SDK':>7} {'per round':>12}"
    )
    for c in clients:
        med, lo, hi = statistics.median(rates[c]), min(rates[c]), max(rates[c])
        cpu_txt = f"{statistics.median(cpu[c]):13.0f} {statistics.median(server_cpu[c]):7.0f}"
        ratio = spread = ""
        if have_sdk:
            ratio = f"{med / statistics.median(rates['sdk']):6.2f}x"
            per_round = [a / b for a, b in zip(rates[c], rates["sdk"], strict=True)]
            spread = f"{min(per_round):.2f}-{max(per_round):.2f}x"
        print(f"{c:17} {med:16,.0f} {lo:10,.0f} {hi:10,.0f} {cpu_txt} {ratio:>7} {spread:>12}")
    print(
        "(CPU: user+system time of the client's process, all threads, over the timed part, per "
        "chunk; server: the server's, over the whole run)"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument(
        "--atlas",
        choices=["both", "shipped", "nodecode", "none"],
        default="both",
        help="which both-destination variants to run (emulator as shipped, nodecode, both, none)",
    )
    ap.add_argument("--nospool", action="store_true", help="also run labstream with spool=False")
    ap.add_argument("--profile", action="store_true", help="one profiled labstream run")
    ap.add_argument(
        "--no-floor", action="store_true", help="leave out the floor (_floor.py) variant"
    )
    args = ap.parse_args()
    if args.profile:
        profile(args.chunks, args.atlas)
    else:
        main(args.rounds, args.chunks, args.atlas, args.nospool, not args.no_floor)
