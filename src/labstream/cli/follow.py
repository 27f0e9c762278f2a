"""``labstream follow``: stream a growing instrument log live, and continue after a restart.

Why it exists: many instruments never run a Python script; their control software writes a CSV
log that grows during the run, often a new file per run. Following such a log is ``tail -F``
with a stream at the end: new rows are sent as they are written, a line is only read once its
newline is there, and a log that is rotated (renamed and recreated) or truncated is noticed by its
inode and size. Following a directory picks up each new log as a new stream.

What a restart may rely on: a checkpoint per followed target (a small JSON file, written
atomically, in the spool directory next to the journal it depends on) records the current file
(device and inode), the stream, what was *pushed* (saved before each push), what each
destination *confirmed*, each as (byte offset, line, rows, chunks), and where each chunk not
confirmed everywhere ends. A push waits for the destinations that were caught up to confirm it,
so on a healthy link the marks agree within a round trip. A restart continues the same stream,
which the streamer's recovery takes over from the journal (and delivers what the journal holds
of it); the log is read again from the last chunk every destination has or the journal holds,
cut into the same chunks, so a chunk on its way at a ``kill -9`` is sent again under its own
index (Atomscale replaces it; ATLAS may hold it twice), and the restart says so. The rows still
to send are in the log itself, so memory stays flat: at most one chunk of rows and one read
(1 MiB) are held.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import LabstreamError, StreamStateError
from .common import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UsageError,
    add_destination_args,
    add_read_args,
    add_run_args,
    add_stream_args,
    destination_identities,
    make_streamer,
    read_options,
    resolve_config,
    say,
    select_destinations,
)
from .logfiles import CsvRows, LogFile, LogFileError, open_log

if TYPE_CHECKING:
    from .. import StreamReport, TimeseriesStreamer

__all__ = [
    "Checkpoint",
    "FollowError",
    "FollowSettings",
    "Follower",
    "Mark",
    "Tail",
    "add_commands",
]

CHECKPOINT_VERSION = 1
READ_BYTES = 1 << 20  # one read of a log; also the longest line accepted
MAX_FINISHED = 1000  # finished logs a directory checkpoint remembers
# A file is known by its device, inode and first bytes: a new log may get the inode of a deleted
# one, but not its first line (the header, then the first row and its time).
HEAD_BYTES = 4096
# How long a push waits for the destinations that were caught up to confirm it: on a healthy
# link a few milliseconds, after which a restart has nothing to guess about.
CONFIRM_WAIT_S = 2.0
# Ends of chunks not yet confirmed everywhere a checkpoint keeps, so a restart cuts the log into
# the same chunks; beyond it (a destination refusing for days) a restart starts a new stream.
MAX_CHUNK_ENDS = 4096

OnBadRow = Literal["skip", "stop"]
Emit = Callable[[dict[str, Any]], None]


class FollowError(LabstreamError):
    """Following cannot go on (a bad row with ``--on-bad-row stop``, an unreadable log...)."""


# --------------------------------------------------------------------------------------------------
# Reading a growing file


class Tail:
    """Complete lines appended to one open file, from a byte offset on.

    The file stays open, so a rename (rotation) does not lose its last rows; :meth:`replaced`
    tells when the path now names another file, :meth:`truncated` when the file shrank below
    what was read.
    """

    def __init__(
        self,
        path: Path,
        offset: int = 0,
        line: int = 0,
        watch: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.clock = clock
        self.watch = watch or path  # the name a rotation gives to a new file
        self.handle = path.open("rb")
        st = os.fstat(self.handle.fileno())
        self.dev, self.ino = st.st_dev, st.st_ino
        self.handle.seek(offset)
        self.consumed = offset  # end of the last complete line returned
        self.line = line  # its number (1-based)
        self.buffer = b""  # what follows it: a line without its newline yet
        self.grown_at = clock()

    def close(self) -> None:
        self.handle.close()

    def read_lines(self) -> list[tuple[int, bytes, int]]:
        """The complete lines written since the last call: (line number, text, end offset).

        Raises:
            FollowError: a line longer than 1 MiB without a newline.
        """
        data = self.handle.read(READ_BYTES)
        if not data:
            return []
        self.grown_at = self.clock()
        data = self.buffer + data
        out: list[tuple[int, bytes, int]] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self.line += 1
            self.consumed += end + 1 - start
            out.append((self.line, data[start:end].rstrip(b"\r"), self.consumed))
            start = end + 1
        self.buffer = data[start:]
        if len(self.buffer) > READ_BYTES:
            raise FollowError(
                f"{self.path}, line {self.line + 1}: longer than {READ_BYTES} bytes without a "
                "newline; is it a text log?"
            )
        return out

    def rest(self) -> tuple[int, bytes, int] | None:
        """The last line when it has no newline, taken as complete (the log is finished; read
        the complete lines first)."""
        if not self.buffer.strip():
            return None
        self.line += 1
        self.consumed += len(self.buffer)
        text, self.buffer = self.buffer.rstrip(b"\r"), b""
        return self.line, text, self.consumed

    def at_end(self) -> bool:
        return os.fstat(self.handle.fileno()).st_size <= self.handle.tell()

    def truncated(self) -> bool:
        return os.fstat(self.handle.fileno()).st_size < self.handle.tell()

    def replaced(self) -> bool:
        """The path names another file now (rotation), and this one was read to its end."""
        try:
            st = self.watch.stat()
        except OSError:
            return False  # renamed away, not recreated yet: keep reading the old one
        return (st.st_dev, st.st_ino) != (self.dev, self.ino) and self.at_end()


def _ready(path: Path) -> bool:
    """A header and one complete data line are there (the time format is read from that row)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(READ_BYTES)
    except OSError:
        return False
    lines = [ln for ln in head.split(b"\n")[:-1] if ln.strip() and not ln.lstrip().startswith(b"#")]
    return len(lines) >= 2


# --------------------------------------------------------------------------------------------------
# The checkpoint


@dataclass(slots=True)
class Mark:
    """A point in the current file: bytes and lines read, rows sent, chunks of the stream."""

    offset: int = 0
    line: int = 0
    rows: int = 0
    chunks: int = 0


@dataclass(slots=True)
class Checkpoint:
    """Where following a target stands; saved atomically after every change."""

    path: Path
    target: str
    file: str | None = None
    dev: int = 0
    ino: int = 0
    data_id: str | None = None
    stream_name: str | None = None
    stream_first_line: int = 0
    finalized: bool = True
    finalize_requested: bool = False  # the stream is being closed: a restart cannot continue it
    pushed: Mark = field(default_factory=Mark)
    confirmed: Mark = field(default_factory=Mark)  # by every destination
    by_destination: dict[str, Mark] = field(default_factory=dict)  # each one's confirmed mark
    head: list[Any] = field(default_factory=list)  # [length, sha1] of the file's first bytes
    finished: list[list[Any]] = field(default_factory=list)  # [dev, ino, length, sha1] each
    # the end of each chunk after ``confirmed`` (its ``chunks`` is the chunk's index + 1)
    chunk_ends: list[Mark] = field(default_factory=list)
    bad_rows: int = 0
    started: bool = False  # a directory was looked at once (its older logs skipped)

    @staticmethod
    def location(directory: Path, identity: Mapping[str, Any]) -> Path:
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
        return directory / f"follow-{hashlib.sha256(blob).hexdigest()[:24]}.json"

    @classmethod
    def load(cls, path: Path, target: str) -> Checkpoint:
        """The saved checkpoint, or a fresh one when there is none.

        Raises:
            FollowError: the file exists but cannot be read (never guessed past: that could send
                rows twice or skip them).
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, target)
        try:
            data = json.loads(text)
            if data.pop("version") != CHECKPOINT_VERSION:
                raise ValueError("another version")
            pushed, confirmed = Mark(**data.pop("pushed")), Mark(**data.pop("confirmed"))
            by = {k: Mark(**v) for k, v in data.pop("by_destination").items()}
            ends = [Mark(**m) for m in data.pop("chunk_ends", [])]
            return cls(
                path, pushed=pushed, confirmed=confirmed, by_destination=by, chunk_ends=ends, **data
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise FollowError(
                f"the checkpoint {path} cannot be read ({exc}); move it away to start over "
                "(rows already sent would then be sent again)"
            ) from exc

    def save(self) -> None:
        data = asdict(self)
        del data["path"]
        data["version"] = CHECKPOINT_VERSION
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the checkpoint for this process: two followers of one target would send every
        row twice.

        Raises:
            FollowError: another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.with_suffix(".lock").open("a+")
        try:
            try:
                _lock(handle)
            except OSError as exc:
                holder = "another process"
                with contextlib.suppress(OSError):
                    handle.seek(0)
                    holder = handle.read().strip() or holder
                raise FollowError(
                    f"{self.target} is already followed (by process {holder}) with these "
                    "destinations and options; stop that one first"
                ) from exc
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

    def is_finished(self, path: Path, st: os.stat_result) -> bool:
        return any(_same_id(path, st, entry) for entry in self.finished)

    def is_current(self, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return _same_id(path, st, [self.dev, self.ino, *self.head])

    def finish_file(self) -> None:
        self.finished.append([self.dev, self.ino, *self.head])
        del self.finished[:-MAX_FINISHED]
        self.file = None
        self.pushed = Mark()
        self.confirmed = Mark()
        self.by_destination = {}
        self.chunk_ends = []


# --------------------------------------------------------------------------------------------------
# The follower


@dataclass(frozen=True, slots=True)
class FollowSettings:
    """What ``labstream follow`` was asked to do (see ``labstream follow --help``)."""

    target: Path
    options: Any  # logfiles.ReadOptions
    stream_name: str | None = None
    physical_sample: str | None = None
    project: str | None = None
    tags: tuple[str, ...] = ()
    pattern: str = "*"
    idle_s: float | None = None
    exit_when_idle: bool = False
    flush_s: float = 1.0
    poll_s: float = 0.2
    status_s: float = 30.0
    on_bad_row: OnBadRow = "skip"
    max_pending_chunks: int = 256
    finalize_timeout: float = 60.0


class Follower:
    """Follows one file or directory into streams, one step per :meth:`step` (tests drive it)."""

    def __init__(
        self,
        streamer: TimeseriesStreamer,
        settings: FollowSettings,
        checkpoint: Checkpoint,
        emit: Emit,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.streamer = streamer
        self.s = settings
        self.cp = checkpoint
        self.emit = emit
        self.clock = clock
        self.directory = settings.target.is_dir()
        self.ppc = streamer.points_per_chunk
        self.tail: Tail | None = None
        self.log: LogFile | None = None
        self.rows: CsvRows | None = None
        self.batch_end = (0, 0)  # (offset, line) after the rows held in self.rows
        self.batch_since = 0.0
        self.last_status = clock()
        self.done = False  # --exit-when-idle and the log is finished
        # After a restart: the chunks of the earlier run read again, each (end, send it again?,
        # rows), so every row gets the chunk index it had.
        self.replay: deque[tuple[Mark, bool, int]] = deque()
        # Chunks each destination is to have accepted in this process: those recovery found
        # pending in the journal, plus the pushes since.
        self.base: dict[str, int] = {}
        self.sent = 0
        self.all_ok = True  # every stream finalized so far was complete everywhere

    # -- the loop ----------------------------------------------------------------------------

    def run(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Follow until stopped (Ctrl-C, SIGTERM) or, with ``exit_when_idle``, idle."""
        try:
            self.resume()
            while not self.done:
                if not self.step():
                    sleep(self.s.poll_s)
        finally:
            self.stop()

    def step(self) -> bool:
        """Read what is new and send it; True when there may be more to read at once."""
        if self.tail is None and not self._open_next():
            self._status()
            return False
        assert self.tail is not None
        if self.log is None and not self._open_log():
            if self.directory and self.tail is not None and self._newer() is not None:
                self._finish(take_rest=False, reason="a newer log appeared (this one has no rows)")
            return False
        lines = self.tail.read_lines()
        for number, text, end in lines:
            self._take(number, text, end)
        if (
            self.rows is not None
            and len(self.rows)
            and not self.replay
            and (self.clock() - self.batch_since >= self.s.flush_s)
        ):
            self._push()
        self._poll()
        self._status()
        if lines:
            return True
        self._check_end()
        return False

    def _check_end(self) -> None:
        """Rotation, truncation, a newer log, idleness: the current stream may be finished."""
        tail = self.tail
        assert tail is not None
        if tail.truncated():
            self.emit({"event": "truncated", "file": str(tail.path), "at": tail.consumed})
            self._finish(take_rest=False, reason="truncated")
            self._forget_finished_entry()  # the same file is read again from its start
            return
        if not self.directory and tail.replaced():
            self._finish(take_rest=True, reason="rotated")
            return
        if self.directory and self._newer() is not None and tail.at_end():
            self._finish(take_rest=True, reason="a newer log appeared")
            return
        idle = self.s.idle_s
        if idle is None or self.clock() - tail.grown_at < idle or not tail.at_end():
            return
        if self.directory:
            self._finish(take_rest=True, reason=f"idle for {idle:g} s")
            self.done = self.s.exit_when_idle and self._newer() is None
        elif self.cp.data_id is not None or self.s.exit_when_idle:
            # One log: its stream ends; should it grow again, a new stream continues it.
            self._end_stream(take_rest=self.s.exit_when_idle, reason=f"idle for {idle:g} s")
            self.done = self.s.exit_when_idle

    # -- choosing and opening logs -------------------------------------------------------------

    def _candidates(self) -> list[tuple[float, str, Path, os.stat_result]]:
        out = []
        for path in self.s.target.glob(self.s.pattern):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if os.path.isfile(path) and not self.cp.is_finished(path, st):
                out.append((st.st_mtime, path.name, path, st))
        return sorted(out, key=lambda c: (c[0], c[1]))

    def _newer(self) -> Path | None:
        """In a directory: the oldest unfinished log other than the current one."""
        for _, _, path, st in self._candidates():
            if (st.st_dev, st.st_ino) != (self.cp.dev, self.cp.ino):
                return path
        return None

    def _open_next(self) -> bool:
        """Open the log to follow next; False when there is none yet."""
        cp = self.cp
        if self.directory:
            found = self._candidates()
            if not found:
                return False
            path, st = found[0][2], found[0][3]  # the oldest unfinished one
        else:
            path = self.s.target
            try:
                st = path.stat()
            except OSError:
                return False
            if cp.is_finished(path, st):
                return False
        if cp.file is None or not cp.is_current(path):
            cp.file, cp.dev, cp.ino = str(path), st.st_dev, st.st_ino
            cp.head = _head(path)
            cp.pushed, cp.confirmed, cp.data_id, cp.finalized = Mark(), Mark(), None, True
            cp.by_destination = {}
            cp.save()
        self.tail = Tail(path, cp.confirmed.offset, cp.confirmed.line, clock=self.clock)
        if (self.tail.dev, self.tail.ino) != (cp.dev, cp.ino):  # replaced in between
            self.tail.close()
            self.tail = None
            return False
        return True

    def _open_log(self) -> bool:
        tail = self.tail
        assert tail is not None
        if not _ready(tail.path):
            return False
        try:
            log = open_log(tail.path, self.s.options)
            if log.kind != "csv":
                raise LogFileError(tail.path, "follow reads text logs (CSV); push Parquet files")
        except LogFileError as exc:
            if not self.directory:
                raise FollowError(str(exc)) from exc
            # One unreadable log must not stop a directory's service: say why, go on.
            self.emit({"event": "bad_log", "file": str(tail.path), "message": str(exc)})
            self._finish(take_rest=False, reason="cannot be read")
            return False
        self.log, self.rows = log, log.csv_rows()
        if self.cp.confirmed.offset == 0:
            self.emit(
                {
                    "event": "log",
                    "file": str(tail.path),
                    "time_column": log.time_column,
                    "time_format": log.time_format,
                    "channels": [c.name for c in log.channels],
                    "skipped_columns": list(log.skipped_columns),
                }
            )
        return True

    # -- rows -> chunks ------------------------------------------------------------------------

    def _take(self, number: int, text: bytes, end: int) -> None:
        log, rows = self.log, self.rows
        assert log is not None
        assert rows is not None
        if number > log.header_line:
            try:
                row = next(csv.reader([text.decode(log.options.encoding)], delimiter=log.delimiter))
            except StopIteration:
                row = []
            except (UnicodeDecodeError, csv.Error) as exc:
                self._bad(LogFileError(log.path, f"cannot read the line: {exc}", line=number))
                row = []
            try:
                if rows.add(row, number) and len(rows) == 1:
                    self.batch_since = self.clock()
            except LogFileError as exc:
                self._bad(exc)
        self.batch_end = (end, number)
        if self.replay:
            if end >= self.replay[0][0].offset:
                self._replay_chunk()
        elif len(rows) >= self.ppc:
            self._push()
        elif not len(rows) and self.cp.data_id is None:
            # Nothing held: the header and skipped lines count as read.
            self.cp.pushed.offset, self.cp.pushed.line = end, number
            self.cp.confirmed.offset, self.cp.confirmed.line = end, number

    def _bad(self, exc: LogFileError) -> None:
        self.cp.bad_rows += 1
        self.emit(
            {
                "event": "bad_row",
                "file": exc.path,
                "line": exc.line,
                "column": exc.column,
                "message": exc.message,
                "action": self.s.on_bad_row,
            }
        )
        if self.s.on_bad_row == "stop":
            raise FollowError(f"{exc}; stopping (--on-bad-row stop)")

    def _start_stream(self) -> str:
        log, cp = self.log, self.cp
        assert log is not None
        # A rotated file keeps the name of the log it was (mbe.csv.1 is still "mbe").
        name = self.s.stream_name or (log.path if self.directory else self.s.target).stem
        if self.directory and self.s.stream_name:
            name = f"{self.s.stream_name} - {log.path.stem}"
        if cp.confirmed.rows:
            name = f"{name} (from line {cp.confirmed.line + 1})"
        data_id = self.streamer.initialize(
            name,
            physical_sample=self.s.physical_sample,
            project_id=self.s.project,
            tags=list(self.s.tags) or None,
        )
        cp.data_id, cp.stream_name, cp.finalized = data_id, name, False
        cp.finalize_requested = False
        cp.stream_first_line = cp.confirmed.line + 1
        cp.pushed.chunks = cp.confirmed.chunks = 0
        cp.by_destination = {d: _copy(cp.pushed) for d in self.streamer.destinations}
        cp.chunk_ends = []
        self.base, self.sent = {}, 0
        cp.save()
        self.emit({"event": "stream", "file": str(log.path), "data_id": data_id, "name": name})
        return data_id

    def _push(self) -> None:
        log, rows, cp = self.log, self.rows, self.cp
        assert log is not None
        assert rows is not None
        report = self._wait_for_room()
        data_id = cp.data_id or self._start_stream()
        # The destinations that had confirmed everything: the push waits for them to confirm
        # this chunk too, so a restart finds them settled. A lagging destination is not waited
        # for (its chunks are in the journal, which a restart takes into account).
        healthy = (
            set(self.streamer.destinations)
            if report is None
            else {n for n, d in report.destinations.items() if d.chunks_pending == 0}
        )
        batch = rows.take()
        index = cp.pushed.chunks
        # Saved before the push: a restart then knows of every chunk that may have been sent,
        # and where each one ends.
        cp.pushed = Mark(
            self.batch_end[0], self.batch_end[1], cp.pushed.rows + len(batch), index + 1
        )
        cp.chunk_ends.append(_copy(cp.pushed))
        del cp.chunk_ends[:-MAX_CHUNK_ENDS]
        if cp.head and cp.head[0] < HEAD_BYTES and self.tail is not None:
            cp.head = _head(self.tail.path)  # more of the start is known now
        cp.save()
        self._send(data_id, index, batch)
        deadline = time.monotonic() + CONFIRM_WAIT_S
        while True:
            report = self._poll()
            if report is None or time.monotonic() > deadline:
                return
            if all(report.destinations[n].chunks_pending == 0 for n in healthy):
                return
            time.sleep(0.002)

    def _send(self, data_id: str, index: int, batch: Any) -> None:
        log = self.log
        assert log is not None
        payload = {
            c.name: {"timestamps": batch.timestamps, "values": batch.values[c.name]}
            | ({"units": c.units} if c.units else {})
            for c in log.channels
        }
        try:
            self.streamer.push_multi(data_id, index, payload)
        except (ValueError, TypeError) as exc:
            raise FollowError(
                f"{log.path}, lines {batch.first_line}-{batch.last_line}: cannot be sent: {exc}"
            ) from exc
        self.sent += 1

    def _replay_chunk(self) -> None:
        """A chunk of the earlier run, read again: sent again under its own index when no
        destination is sure to have it, else let go (its rows are there, or in the journal)."""
        rows, cp = self.rows, self.cp
        assert rows is not None
        assert self.log is not None
        end, send, expected = self.replay.popleft()
        batch = rows.take()
        if len(batch) != expected or end.offset != self.batch_end[0]:
            raise FollowError(
                f"{self.log.path}: the lines up to {end.line} changed since they were sent as "
                f"chunk {end.chunks - 1} of stream {cp.data_id}; move the checkpoint "
                f"{cp.path} away to start over"
            )
        if send:
            assert cp.data_id is not None
            self._send(cp.data_id, end.chunks - 1, batch)

    # -- confirmations, back-pressure, status --------------------------------------------------

    def _report(self) -> StreamReport | None:
        if self.cp.data_id is None or self.cp.finalized:
            return None
        return self.streamer.report(self.cp.data_id)

    def _poll(self) -> StreamReport | None:
        report = self._report()
        cp = self.cp
        if report is None:
            if cp.data_id is None and cp.pushed != cp.confirmed:
                cp.confirmed = _copy(cp.pushed)
            return None
        if self._settle(report):
            cp.save()
        return report

    def _settle(self, report: StreamReport) -> bool:
        """Move each destination's confirmed mark to what it confirmed; True if one moved."""
        cp = self.cp
        moved = False
        if self.replay:  # the earlier run's chunks are not all sent again yet
            return False
        for name, d in report.destinations.items():
            expected = self.base.get(name, 0) + self.sent
            done = d.chunks_accepted == expected and not d.chunks_pending
            if done and not d.chunks_dropped and cp.by_destination.get(name) != cp.pushed:
                cp.by_destination[name] = _copy(cp.pushed)
                moved = True
        if moved:
            cp.confirmed = _copy(min(cp.by_destination.values(), key=lambda m: m.offset))
            cp.chunk_ends = [m for m in cp.chunk_ends if m.chunks > cp.confirmed.chunks]
        return moved

    def _wait_for_room(self) -> StreamReport | None:
        """Read no further while a destination holds ``max_pending_chunks`` unconfirmed: the
        rows wait in the log itself, not in memory."""
        report = self._poll()
        while report is not None and self._pending(report) >= self.s.max_pending_chunks:
            time.sleep(min(self.s.poll_s, 0.05))
            self._status()
            report = self._poll()
        return report

    @staticmethod
    def _pending(report: StreamReport) -> int:
        return max((d.chunks_pending for d in report.destinations.values()), default=0)

    def status(self) -> dict[str, Any]:
        cp = self.cp
        report = self._report()
        dests = {}
        if report is not None:
            for name, d in report.destinations.items():
                dests[name] = {
                    "pending_chunks": d.chunks_pending,
                    "delivered_points": d.points_delivered,
                    "rejected_points": d.points_rejected,
                    "last_error": d.last_error,
                }
        return {
            "event": "status",
            "file": cp.file,
            "data_id": cp.data_id,
            "line": cp.pushed.line,
            "rows_sent": cp.pushed.rows,
            "rows_confirmed": cp.confirmed.rows,
            "bad_rows": cp.bad_rows,
            "destinations": dests,
        }

    def _status(self) -> None:
        now = self.clock()
        if now - self.last_status >= self.s.status_s:
            self.last_status = now
            self.emit(self.status())

    # -- ends ----------------------------------------------------------------------------------

    def _finalize(self, timeout: float) -> StreamReport | None:
        cp = self.cp
        if cp.data_id is None or cp.finalized:
            return None
        cp.finalize_requested = True
        cp.save()
        report = self.streamer.finalize(cp.data_id, timeout)
        cp.finalized = all(d.closed for d in report.destinations.values())
        self.all_ok = self.all_ok and report.ok
        self._settle(report)
        cp.save()
        self.emit(
            {
                "event": "finalized",
                "file": cp.file,
                "data_id": cp.data_id,
                "ok": report.ok,
                "rows": cp.confirmed.rows,
                "destinations": {
                    n: {
                        "delivered_points": d.points_delivered,
                        "rejected_points": d.points_rejected,
                        "pending_points": d.points_pending,
                        "dropped_points": d.points_dropped,
                        "closed": d.closed,
                    }
                    for n, d in report.destinations.items()
                },
            }
        )
        return report

    def _send_rest_and_finalize(self, *, take_rest: bool, reason: str) -> None:
        """Send the partial last line (with ``take_rest``) and the rows held, then finalize."""
        tail = self.tail
        assert tail is not None
        if take_rest and self.log is not None:
            last = tail.rest()
            if last is not None:
                self._take(*last)
        if self.rows is not None and len(self.rows):
            self._push()
        self.emit({"event": "finished", "file": str(tail.path), "reason": reason})
        self._finalize(self.s.finalize_timeout)

    def _finish(self, *, take_rest: bool, reason: str) -> None:
        """The current log is done: send what is left, finalize its stream, forget the file."""
        tail, cp = self.tail, self.cp
        assert tail is not None
        if take_rest and self.log is not None:
            while lines := tail.read_lines():
                for line in lines:
                    self._take(*line)
        self._send_rest_and_finalize(take_rest=take_rest, reason=reason)
        cp.finish_file()
        cp.data_id = None
        cp.save()
        tail.close()
        self.tail, self.log, self.rows = None, None, None

    def _end_stream(self, *, take_rest: bool, reason: str) -> None:
        """Finalize the stream and keep reading the same file (a new stream if it grows)."""
        self._send_rest_and_finalize(take_rest=take_rest, reason=reason)
        self.cp.data_id = None
        self.cp.save()

    def _forget_finished_entry(self) -> None:
        if self.cp.finished:
            self.cp.finished.pop()
            self.cp.save()

    def stop(self) -> None:
        """Send the complete rows held, finalize the stream; the checkpoint stays for a restart."""
        # Rows held while the earlier run's chunks are read again belong to one of them: they
        # are not sent as a chunk of their own (a restart reads them again).
        if self.rows is not None and len(self.rows) and not self.replay:
            with contextlib.suppress(FollowError):
                self._push()
        self._finalize(self.s.finalize_timeout)
        self.cp.save()
        if self.tail is not None:
            self.tail.close()

    # -- restart -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Settle what an earlier run left, and reopen its file where it was confirmed (under its
        new name when it was rotated meanwhile, so its last rows come before the next log)."""
        cp = self.cp
        if cp.file is None:
            if self.directory and not cp.started:
                self._skip_older_logs()
            return
        path = Path(cp.file)
        if not cp.is_current(path):
            moved = _find_current(path.parent, cp)
            if moved is None:
                self.emit(
                    {
                        "event": "lost",
                        "file": cp.file,
                        "message": f"{cp.file} (followed before) is gone; what it held after "
                        f"line {cp.confirmed.line} cannot be sent",
                    }
                )
                if cp.data_id is not None and cp.pushed != cp.confirmed:
                    self._settle_earlier(cp.data_id)
                cp.finish_file()
                cp.data_id, cp.finalized = None, True
                cp.save()
                return
            path = moved
            cp.file = str(path)
        if cp.data_id is not None and self._continue(path):
            return
        if cp.data_id is not None and cp.pushed != cp.confirmed:
            self._settle_earlier(cp.data_id)
        # A stream another process created cannot be continued: what follows goes to a new one.
        cp.data_id, cp.finalized = None, True
        cp.pushed = _copy(cp.confirmed)
        cp.save()
        self.emit(
            {
                "event": "resumed",
                "file": cp.file,
                "line": cp.confirmed.line,
                "rows": cp.confirmed.rows,
            }
        )
        watch = None if self.directory else self.s.target
        self.tail = Tail(
            path, cp.confirmed.offset, cp.confirmed.line, watch=watch, clock=self.clock
        )

    def _continue(self, path: Path) -> bool:
        """Continue the earlier run's stream, which this streamer took over from the journal
        (it delivers what the journal holds). The log is read again from the end of the last
        chunk every destination has or the journal holds, and cut into the same chunks: a chunk
        no destination is sure to have is sent again under its own index, which Atomscale
        stores in its place. False when the stream cannot be continued (no journal, other
        destinations, chunk ends not known): the caller then starts a new stream."""
        cp = self.cp
        data_id = cp.data_id
        if (
            data_id is None
            or cp.finalize_requested
            or data_id not in self.streamer.recovered_streams()
        ):
            return False
        start = cp.confirmed
        ends = [m for m in cp.chunk_ends if m.chunks > start.chunks]
        if [m.chunks for m in ends] != list(range(start.chunks + 1, cp.pushed.chunks + 1)) or (
            ends and ends[-1] != cp.pushed
        ):
            return False
        held = self.streamer.held_chunk_indexes(data_id)
        names = set(cp.by_destination) | set(self.streamer.destinations)
        send = [
            m.chunks - 1 not in held
            and any(cp.by_destination.get(n, start).chunks < m.chunks for n in names)
            for m in ends
        ]
        first = send.index(True) if True in send else len(ends)
        read_from = ends[first - 1] if first else start
        before = read_from
        for end, push in zip(ends[first:], send[first:], strict=True):
            self.replay.append((end, push, end.rows - before.rows))
            before = end
        report = self.streamer.report(data_id)
        self.base = {n: d.chunks_accepted for n, d in report.destinations.items()}
        self.sent = 0
        cp.finalized = False
        cp.save()
        in_journal = [m.chunks - 1 for m in ends if m.chunks - 1 in held]
        if in_journal:
            self.emit(
                {
                    "event": "journal",
                    "data_id": data_id,
                    "message": f"labstream's journal holds {len(in_journal)} chunk(s) of stream "
                    f"{data_id} some destination has not confirmed, and delivers them there; "
                    "they are not sent again",
                }
            )
        resent = [m.chunks - 1 for m, again in zip(ends, send, strict=True) if again]
        if resent:
            lines = [read_from.line + 1, ends[resent[-1] - start.chunks].line]
            self.emit(
                {
                    "event": "resend",
                    "file": cp.file,
                    "data_id": data_id,
                    "chunks": resent,
                    "lines": lines,
                    "message": f"chunk(s) {', '.join(map(str, resent))} (lines {lines[0]}-"
                    f"{lines[1]}) were being sent when the earlier run stopped; they are sent "
                    "again under the same indexes (Atomscale replaces a chunk it had; ATLAS may "
                    "hold one it had twice)",
                }
            )
        self.emit(
            {
                "event": "resumed",
                "file": cp.file,
                "data_id": data_id,
                "line": read_from.line,
                "rows": read_from.rows,
            }
        )
        watch = None if self.directory else self.s.target
        self.tail = Tail(path, read_from.offset, read_from.line, watch=watch, clock=self.clock)
        return True

    def _skip_older_logs(self) -> None:
        """First start on a directory: the logs already there are finished runs, except the
        newest, which may be the one being written."""
        found = self._candidates()
        for _, _, path, st in found[:-1]:
            self.cp.finished.append([st.st_dev, st.st_ino, *_head(path)])
            self.emit(
                {
                    "event": "skipped",
                    "file": str(path),
                    "message": "older than the newest log; not followed (use labstream push)",
                }
            )
        del self.cp.finished[:-MAX_FINISHED]
        self.cp.started = True
        self.cp.save()

    def _settle_earlier(self, data_id: str) -> None:
        """The earlier run pushed chunks some destination did not confirm. Per destination:
        does labstream's journal hold every one of them (it delivers them to the earlier stream
        itself)? If not, they are read again, from the earliest such destination's mark."""
        cp = self.cp
        try:
            report: StreamReport | None = self.streamer.report(data_id)
        except StreamStateError:
            report = None  # the journal holds nothing of it
        names = set(cp.by_destination) | set(self.streamer.destinations)
        behind: list[str] = []
        held = 0
        for name in sorted(names):
            mark = cp.by_destination.get(name, cp.confirmed)
            unconfirmed = cp.pushed.chunks - mark.chunks
            d = None if report is None else report.destinations.get(name)
            if not unconfirmed:
                continue
            if d is not None and d.chunks_accepted == unconfirmed and not d.chunks_dropped:
                held = max(held, unconfirmed)
                continue
            behind.append(name)
        if held:
            self.emit(
                {
                    "event": "journal",
                    "data_id": data_id,
                    "message": f"labstream's journal holds the last {held} chunk(s) of stream "
                    f"{data_id} and delivers them there; they are not sent again",
                }
            )
        if not behind:
            cp.confirmed = _copy(cp.pushed)
            return
        start = min(
            (cp.by_destination.get(n, cp.confirmed) for n in behind), key=lambda m: m.offset
        )
        cp.confirmed = _copy(start)
        self.emit(
            {
                "event": "resend",
                "file": cp.file,
                "data_id": data_id,
                "destinations": behind,
                "lines": [start.line + 1, cp.pushed.line],
                "message": f"lines {start.line + 1}-{cp.pushed.line} were sent to stream "
                f"{data_id} just before the earlier run stopped, and {', '.join(behind)} had not "
                "confirmed them; they are sent again, so a destination may hold some twice",
            }
        )


def _copy(mark: Mark) -> Mark:
    return Mark(mark.offset, mark.line, mark.rows, mark.chunks)


def _lock(handle: Any) -> None:
    """An exclusive, non-blocking lock on an open file, released when it is closed.

    Raises:
        OSError: another process holds it.
    """
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _head(path: Path) -> list[Any]:
    """[length, sha1] of a file's first bytes (up to HEAD_BYTES)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(HEAD_BYTES)
    except OSError:
        data = b""
    return [len(data), hashlib.sha1(data).hexdigest()]


@functools.lru_cache(maxsize=4096)
def _head_matches(path: str, mtime_ns: int, length: int, digest: str) -> bool:
    """Whether a file starts with the bytes of that length and hash (cached while unchanged)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(length)
    except OSError:
        return False
    return len(data) == length and hashlib.sha1(data).hexdigest() == digest


def _same_id(path: Path, st: os.stat_result, entry: list[Any]) -> bool:
    if len(entry) != 4 or (st.st_dev, st.st_ino) != (entry[0], entry[1]):
        return False
    return _head_matches(str(path), st.st_mtime_ns, int(entry[2]), str(entry[3]))


def _find_current(directory: Path, cp: Checkpoint) -> Path | None:
    """The checkpoint's file under another name in a directory (a rotated log keeps its inode
    and its first bytes)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            with contextlib.suppress(OSError):
                if entry.is_file() and cp.is_current(Path(entry.path)):
                    return Path(entry.path)
    return None


# --------------------------------------------------------------------------------------------------
# The command


def add_commands(sub: Any) -> None:
    """Register ``follow``."""
    follow = sub.add_parser(
        "follow",
        help="stream a growing CSV/text log (or each new log in a directory) live",
        description="Stream a log that an instrument is still writing: new rows are sent as "
        "they are written, across rotation and truncation. With a directory, each new log "
        "becomes a new stream. A restart continues where the last run stopped.",
    )
    follow.add_argument("target", metavar="FILE|DIR", help="the log, or a directory of logs")
    add_read_args(follow)
    add_stream_args(follow)
    group = follow.add_argument_group("follow")
    group.add_argument(
        "--glob",
        default="*",
        metavar="PATTERN",
        help="with a directory: the logs to follow, e.g. '*.csv' (default: every file)",
    )
    group.add_argument(
        "--idle",
        type=float,
        metavar="S",
        help="a log that has not grown for S seconds is finished: its stream is finalized "
        "(default: only when a newer log appears, or on rotation)",
    )
    group.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once the log is finished by --idle (for one run's log)",
    )
    group.add_argument(
        "--flush",
        type=float,
        default=1.0,
        metavar="S",
        help="send rows at the latest S seconds after they were written, in a chunk smaller "
        "than --points-per-chunk if need be (default 1)",
    )
    group.add_argument(
        "--poll", type=float, default=0.2, metavar="S", help="look for new rows every S s (0.2)"
    )
    group.add_argument(
        "--status-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="print a status line every S seconds (default 30)",
    )
    group.add_argument(
        "--on-bad-row",
        choices=("skip", "stop"),
        default="skip",
        help="a row that cannot be read is reported (file, line, column) and skipped, or stops "
        "the stream (default skip)",
    )
    group.add_argument(
        "--json", action="store_true", help="events and status as JSON lines on stdout"
    )
    add_run_args(follow.add_argument_group("run"))
    add_destination_args(follow)
    follow.set_defaults(func=_follow)


def _event_text(event: dict[str, Any]) -> str:
    """One follow event as a sentence."""
    kind = event["event"]
    if kind == "log":
        return (
            f"{event['file']}: time column {event['time_column']!r} ({event['time_format']}), "
            f"channels: {', '.join(event['channels'])}"
        )
    if kind == "stream":
        return f"{event['file']}: streaming to {event['name']!r} ({event['data_id']})"
    if kind == "bad_row":
        where = [event["file"], f"line {event['line']:,}"]
        if event["column"]:
            where.append(f"column {event['column']!r}")
        action = "skipped" if event["action"] == "skip" else "stopping"
        return f"bad row: {', '.join(where)}: {event['message']} ({action})"
    if kind == "status":
        dests = "; ".join(
            f"{n}: {d['pending_chunks']:,} chunk(s) pending"
            + (f" (last error: {d['last_error']})" if d["last_error"] else "")
            for n, d in event["destinations"].items()
        )
        return (
            f"{event['file'] or 'waiting for a log'}: line {event['line']:,}, "
            f"{event['rows_sent']:,} rows sent, {event['rows_confirmed']:,} confirmed, "
            f"{event['bad_rows']:,} bad" + (f"; {dests}" if dests else "")
        )
    if kind == "finished":
        return f"{event['file']}: finished ({event['reason']})"
    if kind == "finalized":
        parts = [
            f"{n}: {d['delivered_points']:,} points delivered"
            + (f", {d['rejected_points']:,} rejected" if d["rejected_points"] else "")
            + (f", {d['pending_points']:,} still pending" if d["pending_points"] else "")
            + (f", {d['dropped_points']:,} dropped" if d["dropped_points"] else "")
            for n, d in event["destinations"].items()
        ]
        return f"stream {event['data_id']} finalized: {event['rows']:,} rows; " + "; ".join(parts)
    if kind == "truncated":
        return f"{event['file']}: truncated; reading it again from its start as a new stream"
    if kind == "resumed":
        return (
            f"{event['file']}: continuing after line {event['line']:,} "
            f"({event['rows']:,} rows sent before)"
        )
    message = str(event.get("message", event))
    file = event.get("file")
    return message if not file or message.startswith(str(file)) else f"{file}: {message}"


def _follow(args: argparse.Namespace) -> int:
    from ..settings import default_spool_dir

    cfg = resolve_config(args)
    options = read_options(args, cfg)
    target = Path(args.target)
    if not target.exists():
        raise UsageError(f"{target}: no such file or directory")
    for flag, value in (("--flush", args.flush), ("--poll", args.poll), ("--idle", args.idle)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be a positive number of seconds")
    if args.exit_when_idle and args.idle is None:
        raise UsageError("--exit-when-idle needs --idle S")
    dests = select_destinations(args, cfg)
    identities = destination_identities(cfg, dests)
    streamer = make_streamer(cfg, dests)
    identity = {
        "target": str(target.resolve()),
        "destinations": sorted(f"{k}={v}" for k, v in identities.items()),
        "read": [
            options.time_column,
            options.time_format,
            options.time_unit,
            str(options.timezone),
            options.start,
            list(options.channels),
            options.delimiter,
            options.encoding,
        ],
        "points_per_chunk": streamer.points_per_chunk,
        "glob": args.glob,
    }
    settings = FollowSettings(
        target=target,
        options=options,
        stream_name=args.stream_name,
        physical_sample=cfg["push.physical_sample"],
        project=cfg["push.project"],
        tags=tuple(cfg["push.tags"] or ()),
        pattern=args.glob,
        idle_s=args.idle,
        exit_when_idle=args.exit_when_idle,
        flush_s=args.flush,
        poll_s=args.poll,
        status_s=args.status_interval,
        on_bad_row=args.on_bad_row,
        max_pending_chunks=int(cfg["push.max_pending_chunks"]),
        finalize_timeout=float(cfg["push.finalize_timeout"]),
    )

    def emit(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            say(_event_text(event))

    code = EXIT_OK
    try:
        location = Checkpoint.location(default_spool_dir() / "follow", identity)
        checkpoint = Checkpoint(location, identity["target"])
        with checkpoint.locked():
            follower = Follower(
                streamer, settings, Checkpoint.load(location, checkpoint.target), emit
            )
            try:
                follower.run()
            except (KeyboardInterrupt, SystemExit) as exc:
                code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
        if code == EXIT_OK and not follower.all_ok:
            code = EXIT_INCOMPLETE
    except FollowError as exc:
        say(f"error: {exc}")
        code = EXIT_USAGE
    except LabstreamError as exc:
        say(f"error: {exc}")
        code = EXIT_INCOMPLETE
    finally:
        streamer.close(timeout=cfg["push.finalize_timeout"])
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        say("stopped; run the same command again to continue where it stopped")
    return code
