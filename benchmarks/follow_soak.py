"""``labstream follow`` on a log written at 10 Hz, across a rotation and a kill -9: is every row
stored exactly once at both destinations, and is follow's memory flat?

Run:  .venv/bin/python benchmarks/follow_soak.py               (10 minutes)
      .venv/bin/python benchmarks/follow_soak.py --minutes 2  (a quicker look)

Everything runs as a user would run it, each in a process of its own: ``labstream atomscale
serve`` and ``labstream atlas serve --record FILE``, a writer appending one row every 0.1 s to a
CSV log (``time,temp,pressure``; ``temp`` is the row number), and ``labstream follow LOG``. At 40 %
of the run follow is killed with SIGKILL and started again with the same command; at 60 % the
writer rotates the log (renames it and starts a new file at the same path, as logrotate does).
At the end the writer stops, follow finalizes on SIGTERM, and the rows are counted where they
were stored: every stream the Atomscale emulator holds, and every session of the ATLAS record.
follow's resident memory is read from /proc every 10 s (per process: the kill starts a new one).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from emulator_memory import free_port, status_mb  # noqa: E402

T0 = 1_767_225_600.0  # 2026-01-01, the log's first row
KEY = "soak-key"


def serve(argv: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """Start a ``labstream ... serve --json`` process; return it and its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "labstream.cli", *argv, "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, ready


class Writer(threading.Thread):
    """Appends one row every ``period`` s; rotates the log when asked."""

    def __init__(self, log: Path, period: float) -> None:
        super().__init__(daemon=True)
        self.log, self.period = log, period
        self.rows = 0
        self.stop = threading.Event()
        self.rotate = threading.Event()

    def run(self) -> None:
        f = self.log.open("a")
        f.write("time,temp,pressure\n")
        start = time.monotonic()
        while not self.stop.is_set():
            if self.rotate.is_set():
                self.rotate.clear()
                f.close()
                self.log.rename(self.log.with_suffix(".csv.1"))
                f = self.log.open("a")
                f.write("time,temp,pressure\n")
            f.write(f"{T0 + self.rows * 0.1:.1f},{self.rows},{2 * self.rows}\n")
            f.flush()
            self.rows += 1
            time.sleep(max(0.0, start + self.rows * self.period - time.monotonic()))
        f.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="rows per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="labstream-soak-"))
    env = {
        **os.environ,
        "LABSTREAM_SPOOL_DIR": str(work / "spool"),
        "LABSTREAM_STATE_DIR": str(work / "state"),
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    record = work / "atlas.jsonl"
    atomscale, a_ready = serve(["atomscale", "serve", "--port", str(free_port())])
    atlas_port, key_port = free_port(), free_port()
    atlas, _ = serve(
        [
            *("atlas", "serve", "--port", str(atlas_port)),
            *("--key-generator-port", str(key_port), "--record", str(record)),
        ]
    )
    log = work / "run.csv"
    follow_cmd = [
        sys.executable, "-m", "labstream.cli", "follow", str(log),
        "--atomscale", "--endpoint", str(a_ready["url"]), "--api-key", KEY,
        "--atlas", f"127.0.0.1:{atlas_port}", "--atlas-key-generator", f"127.0.0.1:{key_port}",
        "--points-per-chunk", "50", "--flush", "1", "--status-interval", "3600",
    ]  # fmt: skip
    writer = Writer(log, 1.0 / args.rate)
    writer.start()
    time.sleep(0.5)
    total_s = args.minutes * 60
    rss: list[tuple[float, int, float]] = []  # (elapsed s, pid, MB)
    started = time.monotonic()

    def follow() -> subprocess.Popen[bytes]:
        out = (work / "follow.log").open("ab")
        return subprocess.Popen(follow_cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    proc = follow()
    killed = rotated = False
    while (elapsed := time.monotonic() - started) < total_s:
        time.sleep(min(10.0, total_s - elapsed))
        elapsed = time.monotonic() - started
        if proc.poll() is None:
            rss.append((elapsed, proc.pid, status_mb(proc.pid)[0]))
        if not killed and elapsed >= 0.4 * total_s:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
            print(f"{elapsed:6.0f} s  follow killed with SIGKILL, started again", flush=True)
            proc = follow()
        if not rotated and elapsed >= 0.6 * total_s:
            writer.rotate.set()
            rotated = True
            print(f"{elapsed:6.0f} s  log rotated", flush=True)
    writer.stop.set()
    writer.join()
    time.sleep(3.0)  # follow reads the last rows
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    written = writer.rows

    streams = httpx.get(f"{a_ready['url']}/_emulator/streams", timeout=30).json()["streams"]
    atomscale_rows: Counter[int] = Counter()
    for data_id in streams:
        stored = httpx.get(f"{a_ready['url']}/_emulator/streams/{data_id}", timeout=60).json()
        atomscale_rows.update(int(v) for v in stored["channels"]["temp"]["values"])
    for server in (atlas, atomscale):  # the ATLAS record is on disk already
        server.terminate()
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"{server.args[3]} serve did not stop within 30 s of SIGTERM; killed")
            server.kill()
            server.communicate()

    from labstream.testing.atlas import load_record
    from labstream.testing.atlas_checker import check_session

    atlas_rows: Counter[int] = Counter()
    failed: list[str] = []
    sessions = load_record(record)
    for session in sessions.values():
        report = check_session(session)
        failed += [c.name for c in report.failed]
        param = report.parameters.get("temp:labstream")
        if param is not None:
            atlas_rows.update(int(v) for v in param.values)

    print(f"\nrows written: {written:,} over {total_s / 60:.1f} min; follow exit code {code}")
    for name, rows in (("atomscale", atomscale_rows), ("atlas", atlas_rows)):
        missing = written - len([r for r in range(written) if rows[r]])
        twice = sum(n - 1 for n in rows.values() if n > 1)
        print(
            f"{name:9}  streams/sessions {len(streams) if name == 'atomscale' else len(sessions)}"
            f"  stored {sum(rows.values()):,}  missing {missing:,}  twice {twice:,}"
        )
    print(f"ATLAS checks failed: {sorted(set(failed)) or 'none'}")
    by_pid: dict[int, list[float]] = {}
    for _, pid, mb in rss:
        by_pid.setdefault(pid, []).append(mb)
    for pid, mbs in by_pid.items():
        half = len(mbs) // 2
        late = sum(mbs[half:]) / max(1, len(mbs) - half)
        print(
            f"follow pid {pid}: RSS first {mbs[0]:.1f} MB, last {mbs[-1]:.1f} MB, "
            f"max {max(mbs):.1f} MB, mean of the last half {late:.1f} MB"
        )
    print(f"(work files in {work})")


if __name__ == "__main__":
    main()
