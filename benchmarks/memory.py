"""Peak memory while streaming with Atomscale down: journal on (burst, paced), off, and ATLAS up.

Run:  .venv/bin/python benchmarks/memory.py            (about 2 min on 2 cores)
      .venv/bin/python benchmarks/memory.py --quick    (smaller streams, about 40 s)

Each case is a fresh process (this file run with ``--child``) that streams 100-point chunks of one
channel with ``push()``. Atomscale is unreachable: a throwaway nginx answers ``initialize`` and is
then stopped, so every upload meets a closed port (as in push_latency.py). Data is made chunk by
chunk (lists of floats, like the other benchmarks), so the input never holds more than one chunk.

  spool burst   the default durable journal (SQLite) in a temporary directory (deleted afterwards);
                pushes back to back, as fast as the caller can: the worst case
  spool paced   the same at 5,000 pushes/s (500k points/s), below the journal writer's rate
  spool=False   chunks kept in memory only until delivered (here: never); back to back
  paced +ATLAS  spool paced, and ATLAS is up too: labstream's ATLAS emulator, as shipped, in
                another process (``_worker.py atlas-emulator``). The child waits until ATLAS has
                every chunk, so the figure covers a whole delivery to ATLAS.

The child measures its own memory: ``VmRSS`` from /proc/self/status, sampled every 10 ms by a
thread from before the streamer exists until the end (peak, and the value at each quarter of the
pushes), and ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end (the kernel's peak). "base" is RSS
after ``initialize()``, before the first push: imports, the loop thread, the SQLite connections.
Once the pushes are done it waits until the journal's writer has committed everything (its on-disk
size stops changing), then reads the size of ``journal.sqlite3`` + ``-wal`` + ``-shm``. It never
finalizes (that would wait for Atomscale) and exits with ``os._exit``.

Two diagnostics read labstream's internals (not API): the journal's queue of operations not yet
committed, and the chunks each delivery runner holds in memory; the peaks of both are printed.
Prints one table. Loopback only; every child is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PPC = 100
T0 = 1.7e9

PACED = 5_000  # chunks/s (500k points/s) in the paced cases

# (label, spool, atlas, chunks/s or 0 for back to back, points)
CASES = [
    ("spool burst", True, False, 0, 2_000_000),
    ("spool burst", True, False, 0, 10_000_000),
    ("spool paced", True, False, PACED, 2_000_000),
    ("spool paced", True, False, PACED, 10_000_000),
    ("spool paced", True, False, PACED, 20_000_000),
    ("spool=False", False, False, 0, 500_000),
    ("spool=False", False, False, 0, 2_000_000),
    ("paced +ATLAS", True, True, PACED, 500_000),
    ("paced +ATLAS", True, True, PACED, 2_000_000),
]
QUICK = [
    ("spool burst", True, False, 0, 500_000),
    ("spool burst", True, False, 0, 2_000_000),
    ("spool paced", True, False, PACED, 500_000),
    ("spool paced", True, False, PACED, 2_000_000),
    ("spool=False", False, False, 0, 500_000),
    ("spool=False", False, False, 0, 1_000_000),
    ("paced +ATLAS", True, True, PACED, 200_000),
    ("paced +ATLAS", True, True, PACED, 500_000),
]


# --------------------------------------------------------------------------------------------------
# The child: one measured stream


def vmrss_kb() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler:
    """VmRSS every 10 ms (and, optionally, a few internal gauges) in a daemon thread."""

    def __init__(self) -> None:
        self.peak_kb = vmrss_kb()
        self.gauges: dict[str, int] = {}
        self.watch: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.sample()

    def sample(self) -> int:
        now = vmrss_kb()
        self.peak_kb = max(self.peak_kb, now)
        for name, read in list(self.watch.items()):
            try:
                value = int(read())  # type: ignore[operator]
            except Exception:  # a diagnostic only: never break the measurement
                continue
            self.gauges[name] = max(self.gauges.get(name, 0), value)
        return now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


def journal_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in spool_dir.glob("journal.sqlite3*") if p.is_file())


def child(points: int, rate: int, spool_dir: str, atlas: str) -> None:
    os.environ["ATOMSCALE_SKIP_CLOCK_SYNC"] = "1"
    sampler = Sampler()
    import numpy as np
    from _server import BenchServer  # this script's folder is on sys.path

    from labstream import TimeseriesStreamer

    init_server = BenchServer().start()
    options: dict[str, object] = {"clock_sync": False}
    if spool_dir == "none":
        options["spool"] = False
    else:
        options["spool_dir"] = spool_dir
    if atlas != "none":
        from labstream import Atlas

        address, keygen = atlas.split("/")
        options["atlas"] = Atlas(address=address, key_generator_address=keygen)
    s = TimeseriesStreamer(api_key="k", endpoint=init_server.url, points_per_chunk=PPC, **options)
    data_id = s.initialize(stream_name="memory")
    init_server.stop()  # every upload now meets a closed port

    core = s._core  # diagnostics only (see the module docstring)
    journal = core._journal
    if journal is not None:
        sampler.watch["journal_queue"] = lambda: len(journal._queue)
    for runner in core._runners:
        sampler.watch[f"held_{runner.name}"] = lambda r=runner: r._held

    base_kb = sampler.sample()
    n = points // PPC
    offsets = np.arange(PPC) * 0.01
    values = (25.0 + np.arange(PPC) * 0.001).tolist()
    quarters = {n * q // 4 for q in (1, 2, 3)}
    at_quarter = []
    start = time.perf_counter()
    for c in range(n):
        if rate:
            ahead = start + c / rate - time.perf_counter()
            if ahead > 0.002:
                time.sleep(ahead)
        ts = (offsets + (T0 + c * PPC * 0.01)).tolist()
        s.push(data_id, c, "temperature", ts, values, units="C")
        if c + 1 in quarters:
            at_quarter.append(sampler.sample())
    pushed = time.perf_counter()
    at_quarter.append(sampler.sample())

    out: dict[str, object] = {}
    if atlas != "none":  # wait until ATLAS has every chunk
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            rep = s.report(data_id).destinations["atlas"]
            if rep.chunks_pending == 0:
                break
            time.sleep(0.1)
        rep = s.report(data_id).destinations["atlas"]
        out["atlas_delivered"] = rep.chunks_delivered
        out["atlas_pending"] = rep.chunks_pending
    # Let the journal's writer catch up: done when the file stops growing and the queue is empty.
    size = -1
    if journal is not None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = journal_bytes(Path(spool_dir))
            if now == size and not journal._queue:
                break
            size = now
    settled = time.perf_counter()
    end_kb = sampler.sample()
    sampler.stop()
    out.update(
        points=n * PPC,
        base_kb=base_kb,
        peak_kb=sampler.peak_kb,
        end_kb=end_kb,
        maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        quarters_kb=at_quarter,
        journal_bytes=size,
        push_seconds=pushed - start,
        settle_seconds=settled - pushed,
        gauges=sampler.gauges,
        atomscale_delivered=s.report(data_id).destinations["atomscale"].chunks_delivered,
    )
    print(json.dumps(out), flush=True)
    os._exit(0)  # no atexit finalize: it would wait for the unreachable Atomscale


# --------------------------------------------------------------------------------------------------
# The parent


def run_case(spool: bool, atlas: bool, rate: int, points: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="labstream-memory-"))
    try:
        spool_dir = str(tmp / "spool") if spool else "none"
        if atlas:
            from _worker import AtlasProcess

            with AtlasProcess("shipped") as emu:
                address = f"{emu.env['LABSTREAM_ATLAS']}/{emu.env['LABSTREAM_ATLAS_KEY_GENERATOR']}"
                return _run_child(points, rate, spool_dir, address)
        return _run_child(points, rate, spool_dir, "none")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_child(points: int, rate: int, spool_dir: str, atlas: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(points), str(rate), spool_dir, atlas]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def main(quick: bool) -> None:
    cases = QUICK if quick else CASES
    started = time.perf_counter()
    results = []
    for label, spool, atlas, rate, points in cases:
        res = run_case(spool, atlas, rate, points)
        results.append((label, res))
        print(
            f"  {label} {points:,} points: peak {mib(res['peak_kb'])} MiB "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print()
    print(
        f"{'case':13} {'points':>11} {'base':>5} {'peak':>5} {'growth':>6} {'maxrss':>6} "
        f"{'at 25/50/75/100% of pushes':>27} {'journal MB':>10} {'B/pt':>5} {'push s':>6} "
        f"{'settle s':>8} {'max journal queue':>17} {'max held':>12}"
    )
    for label, r in results:
        quarters = "/".join(mib(x) for x in r["quarters_kb"])
        jb = r["journal_bytes"]
        jtxt = f"{jb / 1e6:10.1f} {jb / r['points']:5.1f}" if jb >= 0 else f"{'-':>10} {'-':>5}"
        g = r["gauges"]
        held = "/".join(str(v) for k, v in g.items() if k.startswith("held_"))
        print(
            f"{label:13} {r['points']:11,} {mib(r['base_kb']):>5} {mib(r['peak_kb']):>5} "
            f"{mib(r['peak_kb'] - r['base_kb']):>6} {mib(r['maxrss_kb']):>6} {quarters:>27} "
            f"{jtxt} {r['push_seconds']:6.1f} {r['settle_seconds']:8.1f} "
            f"{g.get('journal_queue', 0):>17,} {held:>12}"
        )
        if "atlas_delivered" in r:
            print(
                f"{'':13} ATLAS: {r['atlas_delivered']:,} chunks delivered, "
                f"{r['atlas_pending']} pending"
            )
    print("\nMiB unless noted; growth = peak - base; 'max held' = chunks in memory per runner")
    print("(atomscale[/atlas]); maxrss: the kernel's peak (getrusage), which also catches spikes")
    print("between two samples. Atomscale delivered nothing in every case (it is down).")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--child", nargs=4, metavar=("POINTS", "RATE", "SPOOL", "ATLAS"), help="internal"
    )
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2], args.child[3])
    else:
        main(args.quick)
