"""How long after push() returns a chunk is on disk (the journal's durability window).

Run:  .venv/bin/python benchmarks/durability_window.py        (about 20 s)

docs/durability.md promises that a pushed chunk is in the journal, committed, within a few tens
of ms, so that a crash (``kill -9``) loses at most that much. This measures it: for every push,
the time from push() returning to the end of the group commit that wrote the chunk (or settled it,
when both destinations confirmed it first; then it needs no disk). labstream streams to local
nginx and to its ATLAS emulator (no content decode, in a process of its own), journal on (the
default), 100-point chunks as lists. Two patterns:

  paced   3,000 pushes, one per millisecond
  burst   10,000 pushes back to back

It also prints the bytes the process wrote to storage per chunk (``/proc/self/io``, Linux): a
chunk confirmed everywhere within the journal's write delay is never written. Fresh process per
run; figures are pooled over the rounds. No baseline: the SDK has no journal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PPC = 100
PATTERNS = {"paced": (3_000, 0.001), "burst": (10_000, 0.0)}


def disk_bytes_written() -> int:
    """Bytes this process has caused to be written to storage (Linux ``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def child(endpoint: str, pattern: str) -> None:
    from labstream import TimeseriesStreamer
    from labstream._core.journal import Journal

    # (end of a commit, the seq every chunk up to which is now on disk or settled)
    commits: list[tuple[float, int]] = []
    original = Journal._commit

    def timed_commit(self: Journal, batch: list[tuple[object, ...]]) -> None:
        before = self.committed_seq
        original(self, batch)
        if self.committed_seq > before:
            commits.append((time.perf_counter(), self.committed_seq))

    Journal._commit = timed_commit  # type: ignore[method-assign]
    n, pace = PATTERNS[pattern]
    t0 = 1.7e9
    ts = [[t0 + (c * PPC + i) * 0.01 for i in range(PPC)] for c in range(n)]
    vs = [[25.0 + i * 0.001 for i in range(PPC)] for _ in range(n)]
    s = TimeseriesStreamer(
        "bench-key", endpoint, clock_sync=False, handle_sigterm=False,
        spool_dir=tempfile.mkdtemp(prefix="labstream-bench-"),
    )  # fmt: skip
    data_id = s.initialize(stream_name="durability-window")
    journal = s._core._journal
    assert journal is not None
    first_seq = journal._next_seq
    returned: list[float] = []
    written_before = disk_bytes_written()
    start = time.perf_counter()
    for c in range(n):
        if pace:
            ahead = start + c * pace - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        s.push(data_id, c, "temperature", ts[c], vs[c], units="C")
        returned.append(time.perf_counter())
    report = s.finalize(data_id)
    disk_per_chunk = (disk_bytes_written() - written_before) / n
    journal.flush()  # the last chunks' commit may come after their confirmations
    windows = []
    i = 0
    for c, at in enumerate(returned):  # commits are in time order, their seqs increasing
        while commits[i][1] < first_seq + c:
            i += 1
        windows.append((commits[i][0] - at) * 1e3)
    print(json.dumps({"ok": report.ok, "windows_ms": windows, "disk": disk_per_chunk}), flush=True)
    os._exit(0)


def main(rounds: int) -> None:
    sys.path.insert(0, str(HERE))
    from _server import BenchServer
    from _worker import AtlasProcess

    pooled: dict[str, list[float]] = {p: [] for p in PATTERNS}
    disk: dict[str, list[float]] = {p: [] for p in PATTERNS}
    with BenchServer() as srv:
        for _ in range(rounds):
            for pattern in PATTERNS:
                with AtlasProcess("nodecode") as atlas:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", srv.url, pattern],
                        capture_output=True, text=True, timeout=180, check=True,
                        env={**os.environ, **atlas.env},
                    )  # fmt: skip
                res = json.loads(out.stdout.strip().splitlines()[-1])
                if not res["ok"]:
                    raise RuntimeError(f"{pattern}: not everything delivered")
                pooled[pattern] += res["windows_ms"]
                disk[pattern].append(res["disk"])
    print(f"push() returned -> chunk settled in the journal, ms ({rounds} rounds pooled)")
    print(
        f"{'pattern':8} {'pushes':>7} {'p50':>6} {'p99':>6} {'p99.9':>6} {'max':>6}"
        "  disk writes per chunk (median)"
    )
    for pattern, ws in pooled.items():
        ws.sort()
        p50, p99, p999 = (ws[min(len(ws) - 1, int(f * (len(ws) - 1)))] for f in (0.5, 0.99, 0.999))
        print(
            f"{pattern:8} {len(ws):7} {p50:6.1f} {p99:6.1f} {p999:6.1f} {ws[-1]:6.1f}"
            f"  {statistics.median(disk[pattern]):,.0f} bytes"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--rounds", type=int, default=3)
        main(ap.parse_args().rounds)
