"""What a ``labstream push`` has achieved: on screen (progress bars, summary) and on disk (resume).

Why it exists: uploading a long instrument log takes minutes to hours, so the operator needs to see
per destination how far it is and how fast it goes, and an interrupted upload must not start over
nor duplicate what already arrived when the same command is run again.

The resume state is a small JSON file per (log file path, size, mtime, destinations, reading
options) in the user's state directory. It records the streams created for the file and, per
destination, a *settled mark*: file chunks ``[0, mark)`` were confirmed by that destination
(delivered, or rejected for good and listed). The mark only moves when the destination's report
shows nothing pending for chunks pushed so far, so it never claims more than was confirmed. See
``docs/cli.md`` for what a re-run does with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..report import DestinationReport, StreamReport

__all__ = [
    "Part",
    "ProgressView",
    "PushState",
    "format_duration",
    "summary_table",
]

STATE_VERSION = 1


@dataclass(slots=True)
class Part:
    """One stream a file was pushed into: file chunks from ``first_chunk`` on, renumbered from 0."""

    data_id: str
    first_chunk: int
    stream_name: str
    started_at: float
    finalized: bool = False
    chunks_pushed: int = 0


@dataclass(slots=True)
class PushState:
    """The resume record of one file for one set of destinations."""

    path: Path  # where it is stored
    file: str
    size: int
    mtime_ns: int
    destinations: list[str]
    total_chunks: int
    total_rows: int
    points_per_chunk: int
    parts: list[Part] = field(default_factory=list)
    settled: dict[str, int] = field(default_factory=dict)  # destination -> file chunks [0, n)
    rejected: dict[str, list[int]] = field(default_factory=dict)  # destination -> file chunks
    complete: bool = False
    updated_at: float = 0.0

    @staticmethod
    def key(identity: Mapping[str, Any]) -> str:
        """A stable file name for a state: a hash of what must match for a resume to be safe."""
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    @classmethod
    def load_or_new(
        cls,
        directory: Path,
        identity: Mapping[str, Any],
        *,
        file: str,
        size: int,
        mtime_ns: int,
        destinations: list[str],
        total_chunks: int,
        total_rows: int,
        points_per_chunk: int,
    ) -> PushState:
        """The saved state for this identity, or a fresh one (a damaged file counts as none)."""
        path = directory / f"push-{cls.key(identity)}.json"

        def fresh() -> PushState:
            return cls(
                path=path,
                file=file,
                size=size,
                mtime_ns=mtime_ns,
                destinations=destinations,
                total_chunks=total_chunks,
                total_rows=total_rows,
                points_per_chunk=points_per_chunk,
                settled={d: 0 for d in destinations},
                rejected={d: [] for d in destinations},
            )

        state = fresh()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return state
        try:
            if data["version"] != STATE_VERSION or data["total_chunks"] != total_chunks:
                return state
            state.parts = [Part(**p) for p in data["parts"]]
            state.settled = {d: int(data["settled"].get(d, 0)) for d in destinations}
            state.rejected = {
                d: [int(i) for i in data["rejected"].get(d, [])] for d in destinations
            }
            state.complete = bool(data["complete"])
            state.updated_at = float(data["updated_at"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return fresh()  # a damaged record: start over rather than trust it
        return state

    @property
    def resume_from(self) -> int:
        """The first file chunk some destination has not settled."""
        return min((self.settled.get(d, 0) for d in self.destinations), default=0)

    def settle(self, destination: str, mark: int, rejected: Iterable[int] = ()) -> bool:
        """Move a destination's settled mark forward (never back); True if it moved."""
        moved = False
        if mark > self.settled.get(destination, 0):
            self.settled[destination] = mark
            moved = True
        known = self.rejected.setdefault(destination, [])
        for index in rejected:
            if index not in known:
                known.append(index)
                moved = True
        return moved

    def save(self) -> None:
        """Write atomically (temporary file, then rename)."""
        self.updated_at = time.time()
        data = {
            "version": STATE_VERSION,
            "file": self.file,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "destinations": self.destinations,
            "total_chunks": self.total_chunks,
            "total_rows": self.total_rows,
            "points_per_chunk": self.points_per_chunk,
            "parts": [asdict(p) for p in self.parts],
            "settled": self.settled,
            "rejected": self.rejected,
            "complete": self.complete,
            "updated_at": self.updated_at,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# --------------------------------------------------------------------------------------------------
# On screen


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _rate(points: int, elapsed: float) -> float:
    return points / elapsed if elapsed > 0 else 0.0


class ProgressView:
    """Per-destination progress: points delivered of the total, rate, ETA.

    With a terminal and ``rich`` installed: live bars. Otherwise plain lines, at most one every
    ``interval`` seconds, so logs of unattended runs stay readable. ``enabled=False`` shows
    nothing.
    """

    def __init__(
        self,
        title: str,
        totals: Mapping[str, int],
        *,
        stream: IO[str] | None = None,
        enabled: bool = True,
        interval: float = 5.0,
    ) -> None:
        self._stream = stream or sys.stderr
        self._totals = dict(totals)
        self._enabled = enabled
        self._interval = interval
        self._started = time.monotonic()
        self._last_line = 0.0
        self._done: dict[str, int] = {d: 0 for d in totals}
        self._window: dict[str, int] = {}  # each destination's window, from its report
        self._printed: tuple[int, ...] | None = None
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled and _is_tty(self._stream):
            self._rich = _rich_progress(self._stream)
        if self._rich is not None:
            self._rich.console.print(title, highlight=False)
            self._rich.start()
            for name, total in self._totals.items():
                self._tasks[name] = self._rich.add_task(
                    f"  {name}", total=max(total, 1), rate="", eta=""
                )
        elif enabled:
            print(f"{title}: {_plain_totals(self._totals)}", file=self._stream, flush=True)

    def update(self, report: StreamReport, *, force: bool = False) -> None:
        for name, rep in report.destinations.items():
            self._done[name] = rep.points_delivered
            self._window[name] = rep.window
        if not self._enabled:
            return
        now = time.monotonic()
        if self._rich is not None:
            for name, task in self._tasks.items():
                done = self._done.get(name, 0)
                rate, eta = self._speed(name, now)
                self._rich.update(
                    task,
                    completed=done,
                    rate=f"{rate:,.0f} points/s{_in_flight(self._window.get(name, 0))}",
                    eta=f"ETA {format_duration(eta)}",
                )
            return
        if force or now - self._last_line >= self._interval:
            self._last_line = now
            self._print_lines(now)

    def _speed(self, name: str, now: float) -> tuple[float, float | None]:
        done = self._done.get(name, 0)
        rate = _rate(done, now - self._started)
        eta = (self._totals[name] - done) / rate if rate > 0 else None
        return rate, eta

    def _print_lines(self, now: float) -> None:
        snapshot = tuple(self._done.get(name, 0) for name in self._totals)
        if snapshot == self._printed:
            return  # nothing new to say
        self._printed = snapshot
        for name, total in self._totals.items():
            done = self._done.get(name, 0)
            rate, eta = self._speed(name, now)
            pct = 100.0 * done / total if total else 100.0
            print(
                f"  {name:<10} {done:>12,}/{total:,} points {pct:5.1f}%  "
                f"{rate:,.0f} points/s{_in_flight(self._window.get(name, 0))}  "
                f"ETA {format_duration(eta)}",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self._enabled:
            self._print_lines(time.monotonic())
            self._enabled = False


def _plain_totals(totals: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {t:,} points" for n, t in totals.items())


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich_progress(stream: IO[str]) -> Any:
    """A rich Progress on ``stream``, or None when rich is not installed."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
        )
    except ImportError:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        console=Console(file=stream),
        transient=False,
    )


# --------------------------------------------------------------------------------------------------
# The end


def summary_table(
    report: StreamReport,
    *,
    earlier: Mapping[str, int] | None = None,
    totals: Mapping[str, int] | None = None,
    title: str | None = None,
) -> str:
    """One line per destination: what this run's stream got, plus points settled earlier.
    ``title`` (the file, with several) heads it."""
    earlier = earlier or {}
    head = (
        f"{'destination':<12}{'accepted':>12}{'delivered':>12}{'retries':>9}{'rejected':>10}"
        f"{'pending':>10}{'dropped':>10}{'earlier':>12}  {'closed':<7}status"
    )
    lines = [f"{title + ': ' if title else ''}stream {report.data_id}", *report.notes(), head]
    for name, d in report.destinations.items():
        lines.append(
            f"{name:<12}{d.points_accepted:>12,}{d.points_delivered:>12,}{d.retries:>9,}"
            f"{d.points_rejected:>10,}{d.points_pending:>10,}{d.points_dropped:>10,}"
            f"{earlier.get(name, 0):>12,}  {'yes' if d.closed else 'NO':<7}"
            + _status(d, totals, name, earlier)
        )
        lines.extend(_details(d))
    return "\n".join(lines)


def _status(
    d: DestinationReport, totals: Mapping[str, int] | None, name: str, earlier: Mapping[str, int]
) -> str:
    if not d.complete:
        return "INCOMPLETE"
    if totals is not None and d.points_delivered + earlier.get(name, 0) < totals.get(name, 0):
        return "INCOMPLETE"
    return "complete"


def _details(d: DestinationReport) -> list[str]:
    out = [f"  rejected chunk {r.chunk_index} ({r.status}): {r.reason}" for r in d.rejections]
    if d.drop_reason:
        out.append(f"  dropped: {d.drop_reason}")
    if d.close_error:
        out.append(f"  close failed: {d.close_error}")
    elif d.last_error and not d.complete:
        out.append(f"  last error: {d.last_error}")
    return out


def _in_flight(window: int) -> str:
    """The destination's window, where more than one request may be in flight."""
    return f"  window {window:,}" if window > 1 else ""
