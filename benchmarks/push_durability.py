"""What the durability contract costs push(), and whether the window holds in a burst.

Run:  .venv/bin/python benchmarks/push_durability.py            (about 30 s)
      .venv/bin/python benchmarks/push_durability.py --smoke    (a few seconds; not a measurement)

docs/durability.md promises: a chunk whose push() returned more than W ago
(``spool_max_unwritten_s``, 0.05 s) is committed to the journal; when the journal falls behind,
push() waits for it. With
``durability="commit"`` push() returns only after the chunk's commit. This measures, per mode,
push() latency (p50, p99, max) and the age of unwritten data: for every push, the time from
push() returning to the end of the group commit that wrote or settled its chunk; its maximum is
the oldest any returned push went uncommitted, the data a kill -9 could have lost.

Modes, each in a fresh process: ``nojournal`` (``spool=False``: the same-run baseline, nothing to
commit), ``window`` (the default) and ``commit``. Patterns: ``paced`` (2,000 pushes, one per ms)
and ``burst`` (10,000 back to back). labstream streams to local nginx and to its ATLAS emulator
(in a process of its own), 100-point chunks as lists, as benchmarks/durability_window.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PPC = 100
PATTERNS = {"paced": (2_000, 0.001), "burst": (10_000, 0.0)}
MODES = ("nojournal", "window", "commit")


def child(endpoint: str, pattern: str, mode: str, scale: float) -> None:
    from labstream import TimeseriesStreamer
    from labstream._core.journal import Journal

    commits: list[tuple[float, int]] = []  # (end of a commit, every seq up to it committed)
    original = Journal._commit

    def timed_commit(self: Journal, batch: list[tuple[object, ...]]) -> None:
        before = self.committed_seq
        original(self, batch)
        if self.committed_seq > before:
            commits.append((time.perf_counter(), self.committed_seq))

    Journal._commit = timed_commit  # type: ignore[method-assign]
    n, pace = PATTERNS[pattern]
    n = max(10, int(n * scale))
    t0 = 1.7e9
    ts = [[t0 + (c * PPC + i) * 0.01 for i in range(PPC)] for c in range(n)]
    vs = [[25.0 + i * 0.001 for i in range(PPC)] for _ in range(n)]
    options: dict[str, object] = {"spool": False}
    if mode != "nojournal":
        options = {"spool_dir": tempfile.mkdtemp(prefix="labstream-bench-"), "durability": mode}
    s = TimeseriesStreamer(
        "bench-key", endpoint, clock_sync=False, handle_sigterm=False, **options
    )  # fmt: skip
    data_id = s.initialize(stream_name=f"push-durability-{mode}")
    journal = s._core._journal
    first_seq = journal._next_seq if journal is not None else 0
    took: list[float] = []
    returned: list[float] = []
    start = time.perf_counter()
    for c in range(n):
        if pace:
            ahead = start + c * pace - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        before = time.perf_counter()
        s.push(data_id, c, "temperature", ts[c], vs[c], units="C")
        after = time.perf_counter()
        took.append((after - before) * 1e6)
        returned.append(after)
    report = s.finalize(data_id)
    ages: list[float] = []
    if journal is not None:
        journal.flush()
        i = 0
        for c, at in enumerate(returned):
            while commits[i][1] < first_seq + c:
                i += 1
            ages.append(max(0.0, commits[i][0] - at) * 1e3)
    result = {
        "ok": report.ok,
        "push_us": took,
        "age_ms": ages,
        "waits": report.journal_waits,
        "wait_s": report.journal_wait_s,
    }
    print(json.dumps(result), flush=True)
    os._exit(0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else 0.0


def main(rounds: int, smoke: bool) -> None:
    sys.path.insert(0, str(HERE))
    from _server import BenchServer
    from _worker import AtlasProcess

    scale = 0.05 if smoke else 1.0
    rows = []
    with BenchServer() as srv:
        print(
            f"server: {srv.kind}; {rounds} round(s) pooled{' (smoke: not a measurement)' * smoke}"
        )
        for pattern in PATTERNS:
            for mode in MODES:
                push_us: list[float] = []
                age_ms: list[float] = []
                waits = 0
                wait_s = 0.0
                for _ in range(rounds):
                    with AtlasProcess("nodecode") as atlas:
                        out = subprocess.run(
                            [sys.executable, __file__, "--child", srv.url, pattern, mode,
                             str(scale)],
                            capture_output=True, text=True, timeout=300, check=True,
                            env={**os.environ, **atlas.env},
                        )  # fmt: skip
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    if not res["ok"]:
                        raise RuntimeError(f"{pattern}/{mode}: not everything delivered")
                    push_us += res["push_us"]
                    age_ms += res["age_ms"]
                    waits += res["waits"]
                    wait_s += res["wait_s"]
                rows.append((pattern, mode, push_us, age_ms, waits, wait_s))
    print(
        f"{'pattern':7} {'mode':10} {'pushes':>7} {'push p50':>9} {'p99':>8} {'max':>9}"
        f" {'unwritten p99':>14} {'max':>8} {'waits':>7} {'waited':>8}"
    )
    for pattern, mode, push_us, age_ms, waits, wait_s in rows:
        ages = (
            f"{pct(age_ms, 0.99):11.1f} ms {max(age_ms):5.1f} ms"
            if age_ms
            else f"{'-':>14} {'-':>8}"
        )
        print(
            f"{pattern:7} {mode:10} {len(push_us):7} {pct(push_us, 0.5):6.0f} µs"
            f" {pct(push_us, 0.99):5.0f} µs {max(push_us):6.0f} µs {ages}"
            f" {waits:7} {wait_s:6.2f} s"
        )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--rounds", type=int, default=2)
        ap.add_argument("--smoke", action="store_true", help="5 %% of the pushes, one round")
        args = ap.parse_args()
        main(1 if args.smoke else args.rounds, args.smoke)
