"""The durable journal: an accepted chunk not yet confirmed by every destination is kept on disk.

Why: a process can die (power cut, ``kill -9``), a destination can be down for hours. The journal
keeps each chunk and, per destination, whether it is still pending, so a later process resumes
delivery, and a runner whose destination is down can leave its backlog on disk instead of in memory.

How: SQLite in WAL mode, owned by one writer thread. ``push()`` only appends the validated chunk to
an in-memory queue (it is built, clock-corrected, only if it has to be written); the writer
commits whatever accumulated every few milliseconds in one transaction (group commit), so a push
costs microseconds. A chunk that every destination confirms within ``write_delay_s`` of being
added is never written: on a healthy link that is nearly every paced chunk, which spares the disk
a write and a delete per chunk. Any other chunk is on disk within about ``write_delay_s +
commit_interval_s`` of being added. The writer gets little CPU while pushes come back to back, so
a pushing thread asks :meth:`Journal.overdue` and waits for the commit when a chunk is about to be
unwritten for longer than ``max_unwritten_s`` (the durability window of docs/durability.md).
Delivery outcomes go through the same queue. Reads (recovery, spilled backlog, status) use their own
connection. The API key is never written: destinations are recorded by name and address only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from ..errors import JournalError, JournalFull
from .chunk import ChannelSeries, Chunk
from .process import process_alive

__all__ = [
    "FILE_NAME",
    "LIVE_OWNERS",
    "MAX_UNWRITTEN_S",
    "WRITER_WAIT_S",
    "ChunkToBuild",
    "Journal",
    "SpoolStatus",
    "StoredStream",
    "chunk_size",
    "decode_body",
    "encode_body",
]

log = logging.getLogger("labstream._core.journal")

# Chunk data queued for the writer before push() waits for it: bounds memory when pushes outrun
# the disk, while an ordinary burst still goes through without a wait.
MAX_QUEUED_BYTES = 32 * 1024**2
MAX_OWED = 65_536  # chunks whose owing destinations the writer keeps in memory
WRITER_WAIT_S = 2.0
# Long enough for both destinations to confirm a chunk on a healthy link (ATLAS confirms a batch
# per write), short enough that a crash loses little: see docs/durability.md, "When".
WRITE_DELAY_S = 0.03
# The durability window W: a chunk whose push() returned more than this long ago is committed
# (on disk, or confirmed by every destination). push() waits for the writer when it falls behind.
MAX_UNWRITTEN_S = 0.05
# More chunks than this waiting for the writer is a burst: few of them are confirmed within the
# write delay, and holding them would make one commit too long to fit in the window.
MAX_HELD = 32
# Uncommitted chunk data past which a push waits for the writer: what one commit must take
# within the window when a burst stops (or the process is killed) right after it.
MAX_UNWRITTEN_BYTES = 4 * 1024**2
# Chunk data kept in memory only, when the disk cannot take it (a failed write, or less free space
# than the floor): new chunks are refused beyond it.
MAX_MEMORY_BYTES = 256 * 1024**2
FILE_NAME = "journal.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    data_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,            -- StreamInfo fields as JSON
    destinations TEXT NOT NULL,    -- {"atomscale": "<endpoint>", "atlas": "<address>"}
    created_at REAL NOT NULL,
    finalize_requested INTEGER NOT NULL DEFAULT 0,
    closed TEXT NOT NULL DEFAULT '[]',  -- destinations that confirmed the close
    owner TEXT NOT NULL,            -- "<pid>:<token>" of the streamer writing it
    last_chunk_index INTEGER NOT NULL DEFAULT -1  -- every chunk up to it is on disk or delivered
);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY,
    data_id TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    multi INTEGER NOT NULL,
    offset_ns INTEGER NOT NULL,
    points INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,           -- 'pending' or 'rejected'
    reason TEXT,
    PRIMARY KEY (seq, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (destination, state, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL         -- 'last_seq': sequence numbers are never reused
);
CREATE TABLE IF NOT EXISTS chunk_runs (
    data_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    runs TEXT NOT NULL,            -- [[first, last], ...]: chunk indexes the journal took
    PRIMARY KEY (data_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS atlas_sessions (
    data_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,           -- SessionState.to_dict() after the last completed chunk
    last_seq INTEGER NOT NULL      -- the last chunk that state includes
);
"""


# -- chunk bodies ------------------------------------------------------------------------------


def chunk_size(points: int) -> int:
    """What a chunk counts against the spool cap: its samples plus a fixed allowance for its
    header. One formula for adding and removing, so the count never drifts."""
    return 16 * points + 64


_SIZE_SQL = "16 * points + 64"


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def encode_body(chunk: Chunk) -> bytes:
    """A chunk's channels as bytes: a JSON header, then each channel's int64 ns and f64 values."""
    header = orjson.dumps([[c.name, c.units, c.size] for c in chunk.channels])
    parts = [struct.pack("<I", len(header)), header]
    for c in chunk.channels:
        parts.append(c.timestamps_ns.astype("<i8", copy=False).tobytes())
        parts.append(c.values.astype("<f8", copy=False).tobytes())
    return b"".join(parts)


def decode_body(
    body: bytes, data_id: str, chunk_index: int, multi: bool, offset_ns: int, seq: int
) -> Chunk:
    (n,) = struct.unpack_from("<I", body)
    header = orjson.loads(body[4 : 4 + n])
    pos = 4 + n
    channels = []
    for name, units, size in header:
        ts = np.frombuffer(body, dtype="<i8", count=size, offset=pos).astype(np.int64)
        pos += 8 * size
        values = np.frombuffer(body, dtype="<f8", count=size, offset=pos).astype(np.float64)
        pos += 8 * size
        ts.flags.writeable = False
        values.flags.writeable = False
        channels.append(ChannelSeries(name, units, ts, values))
    return Chunk(data_id, chunk_index, tuple(channels), multi, offset_ns, seq)


# -- the journal -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredStream:
    """A stream as the journal remembers it."""

    data_id: str
    info: dict[str, Any]
    destinations: dict[str, str]
    created_at: float
    finalize_requested: bool
    closed: tuple[str, ...]
    owner: str  # "<pid>:<token>" of the streamer that created it
    # Every chunk of the stream up to this index was on disk or delivered everywhere when the
    # streamer stopped (chunks pushed in index order: where a re-run takes over); -1: none.
    last_chunk_index: int = -1

    @property
    def owner_alive(self) -> bool:
        """Whether the streamer that wrote this stream may still be running."""
        pid_text = self.owner.partition(":")[0]
        if not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return self.owner in LIVE_OWNERS  # the whole "<pid>:<token>", as added
        return process_alive(pid)


# Owners ("<pid>:<token>") of the streamers alive in this process.
LIVE_OWNERS: set[str] = set()


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """Per stream and destination: what the journal still holds."""

    data_id: str
    stream_name: str | None
    destination: str
    pending_chunks: int
    pending_points: int
    rejected_chunks: int
    oldest_pending_age_s: float | None
    finalize_requested: bool
    closed: bool
    # (channel, first, last): chunk indexes missing from the journal's record of the stream
    gaps: tuple[tuple[str, int, int], ...] = ()


class ChunkToBuild(Protocol):
    """A chunk the streamer has taken but not built yet (``streamer.Accepted``)."""

    @property
    def seq(self) -> int: ...

    @property
    def data_id(self) -> str: ...

    @property
    def chunk_index(self) -> int: ...

    @property
    def channel_names(self) -> tuple[str, ...]: ...

    @property
    def points(self) -> int: ...

    def build(self) -> Chunk: ...


class Journal:
    """The on-disk journal of one spool directory.

    Args:
        directory: created with owner-only permissions if missing.
        max_bytes: cap on the chunk data held; new chunks are refused beyond it.
        min_free_bytes: refuse new chunks when the disk has less free space than this.
        retention_s: chunks no destination can deliver (rejected, or pending this long) are purged.
        commit_interval_s: group-commit period of the writer thread.
        write_delay_s: how long after it was added the writer holds a chunk some destination
            has not confirmed yet before writing it; one confirmed by all destinations in that
            time is never written. Default: ``WRITE_DELAY_S``, shortened to fit
            ``max_unwritten_s``.
        max_unwritten_s: the durability window W: :meth:`overdue` tells a pushing thread to
            wait for the writer when a chunk added more than about W ago is not committed.
        max_memory_bytes: cap on the chunk data kept in memory only while the disk cannot take
            it (default ``MAX_MEMORY_BYTES``); new chunks are refused beyond it.

    Raises:
        JournalError: the journal cannot be opened (the message names the path).
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 2 * 1024**3,
        min_free_bytes: int = 256 * 1024**2,
        retention_s: float = 7 * 24 * 3600.0,
        commit_interval_s: float = 0.01,
        write_delay_s: float | None = None,
        max_unwritten_s: float = MAX_UNWRITTEN_S,
        max_memory_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.retention_s = retention_s
        self._interval = commit_interval_s
        if write_delay_s is None:  # held chunks must leave room for a commit within W
            write_delay_s = min(WRITE_DELAY_S, max(0.0, max_unwritten_s - 2 * commit_interval_s))
        self._write_delay = write_delay_s
        self.max_unwritten_s = max_unwritten_s
        # A push waits once the oldest uncommitted chunk is this old: a commit still fits in W.
        self._wait_after = max(0.0, max_unwritten_s - commit_interval_s)
        try:
            self._open()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal at {self.path}: {exc}") from exc
        self._bytes_lock = threading.Lock()  # updated by pushing threads and the writer
        self._queued_bytes = 0  # chunk data queued for the writer, not taken yet
        self._read_lock = threading.Lock()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        # Writer thread only: chunks taken but not written yet, in seq order, as (chunk,
        # destinations still owing, when it was added).
        self._held: deque[tuple[Chunk | ChunkToBuild, tuple[str, ...], float]] = deque()
        self._write_all = False  # set by flush(): write what is held now
        # Chunks up to this seq are written at once, without their delay: a push waits for them.
        self._write_through = 0
        # (seq, when added) of chunks not known to be committed, oldest first; appended and
        # trimmed under the streamer's lock (add_chunk, overdue).
        self._added: deque[tuple[int, float]] = deque()
        self._given_up = 0  # a wait for this seq timed out: no waits until the writer is there
        self._hurry = threading.Event()  # a push waits for the commit: no pause to accumulate
        # How late the writer's recent commits ended past their chunks' due time (GIL, disk):
        # chunks are held that much less, so that they are still committed within W.
        self._late = 0.0
        # Writer thread only: chunk index runs per (data_id, channel) of the chunks taken
        # (committed or settled), written with the next transaction that writes anything.
        self._runs: dict[tuple[str, str], list[list[int]]] = {}
        self._runs_dirty: set[tuple[str, str]] = set()
        # Writer thread only: chunks delivered or stored past a held one, for the stream marks.
        self._unmarked: list[tuple[int, str, int]] = []
        self._taken_seq = self._stored_seq = self._next_seq - 1  # highest seq taken / on disk
        self.first_seq = self._next_seq  # chunks below it were accepted by an earlier process
        self._committed = threading.Condition()
        self.committed_seq = self._next_seq - 1
        self._free_checked_at = 0.0
        # Writer thread only: recent chunks this process wrote -> points << 8 | a bit per
        # destination still owing, so a confirmation needs no SELECT to know whether the chunk
        # can go. Bounded (~100 bytes an entry): a backlog beyond it is looked up on disk.
        self._owed: dict[int, int] = {}
        self._dest_bits: dict[str, int] = {}
        self._free_ok = True
        # Chunks the disk could not take (a failed write, or less free space than the floor):
        # seq -> (chunk, destinations still owing). Delivered from here like chunks on disk, but
        # lost when the process ends: counted per stream as not durable, and as dropped if
        # still undelivered at close.
        self._memory: dict[int, tuple[Chunk, set[str]]] = {}
        self._memory_lock = threading.Lock()
        self.memory_bytes = 0
        self.max_memory_bytes = MAX_MEMORY_BYTES if max_memory_bytes is None else max_memory_bytes
        self._not_durable: dict[str, list[Any]] = {}  # data_id -> [chunks, points, reason]
        self._write_failing: str | None = None  # why the last write failed, until one succeeds
        self._read_failing = False
        self._thread = threading.Thread(target=self._writer, name="labstream-journal", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            self.directory.chmod(0o700)
        self._write = self._connect()
        self._write.executescript(_SCHEMA)
        columns = {r[1] for r in self._write.execute("PRAGMA table_info(streams)")}
        if "last_chunk_index" not in columns:  # a journal from before the column
            self._write.execute(
                "ALTER TABLE streams ADD COLUMN last_chunk_index INTEGER NOT NULL DEFAULT -1"
            )
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").chmod(0o600)
        row = self._write.execute(
            f"SELECT COALESCE(MAX(seq), 0), COALESCE(SUM({_SIZE_SQL}), 0) FROM chunks"
        ).fetchone()
        meta = self._write.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        # Delivered chunks are deleted, so the highest seq ever used is kept apart.
        self._next_seq = max(int(row[0]), int(meta[0]) if meta else 0) + 1
        self._bytes = int(row[1])
        self._read = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    # -- accepting (any thread) ----------------------------------------------------------------

    def next_seq(self) -> int:
        """Reserve the next sequence number (callers hold the streamer's lock)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def reserve(self, nbytes: int) -> None:
        """Count a chunk of ``nbytes`` about to be added; raise :class:`JournalFull` instead
        when it would break a bound.

        When the writer thread falls behind (pushes faster than the disk takes them), wait
        briefly for it rather than queue without bound in memory; refuse if it stays behind.
        """
        if self._queued_bytes > MAX_QUEUED_BYTES:
            deadline = time.monotonic() + WRITER_WAIT_S
            self._wake.set()
            while self._queued_bytes > MAX_QUEUED_BYTES // 2 and time.monotonic() < deadline:
                time.sleep(self._interval / 4)
            if self._queued_bytes > MAX_QUEUED_BYTES:
                raise JournalFull(
                    f"the journal writer is {_size(self._queued_bytes)} behind for "
                    f"{WRITER_WAIT_S:.0f} s (disk too slow for this rate?)"
                )
        if self._bytes + nbytes > self.max_bytes:
            raise JournalFull(
                f"spool cap reached ({_size(self._bytes)} held, cap {_size(self.max_bytes)} "
                f"in {self.directory})"
            )
        now = time.monotonic()
        if now - self._free_checked_at > 1.0:  # statvfs at most once a second
            self._free_checked_at = now
            self._check_free()
        # Below the floor the queued chunks go to memory too (unless confirmed first).
        in_memory = self.memory_bytes + (0 if self._free_ok else self._queued_bytes)
        if in_memory and in_memory + nbytes > self.max_memory_bytes:
            raise JournalFull(
                f"the disk cannot take more ({self.durability_off or 'see the log'}) and the "
                f"chunks kept in memory instead reached their bound ({_size(in_memory)}, "
                f"bound {_size(self.max_memory_bytes)})"
            )
        with self._bytes_lock:
            self._bytes += nbytes
            self._queued_bytes += nbytes

    @property
    def durability_off(self) -> str | None:
        """Why new chunks are kept in memory only right now, or None while the disk takes them."""
        if not self._free_ok:
            return self._low_disk
        return self._write_failing

    @property
    def _low_disk(self) -> str:
        return f"less than {_size(self.min_free_bytes)} free on the disk of {self.directory}"

    def _check_free(self) -> None:
        """Below the free-space floor the journal stops writing chunks (a full disk must not stop
        delivery): new ones are kept in memory, within ``max_memory_bytes``, and said so."""
        try:
            free_ok = shutil.disk_usage(self.directory).free >= self.min_free_bytes
        except OSError:
            free_ok = False
        if free_ok == self._free_ok:
            return
        self._free_ok = free_ok
        if not free_ok:
            log.warning(
                "journal: %s: durability is off; new chunks are kept in memory only (up to %s) "
                "and still delivered, but a crash loses them",
                self._low_disk,
                _size(self.max_memory_bytes),
            )
        else:
            log.warning("journal: free space is back on %s: durability is on again", self.directory)

    def not_durable(self, data_id: str) -> tuple[int, int, str | None]:
        """(chunks, points, why) of a stream the disk could not take, kept in memory instead."""
        with self._memory_lock:
            counts = self._not_durable.get(data_id)
            return (counts[0], counts[1], counts[2]) if counts else (0, 0, None)

    def memory_pending(self, destination: str, data_id: str) -> tuple[int, int]:
        """(chunks, points) of a stream still owed to ``destination`` held in memory only: lost
        when this process ends."""
        chunks = points = 0
        with self._memory_lock:
            for chunk, owing in self._memory.values():
                if chunk.data_id == data_id and destination in owing:
                    chunks += 1
                    points += chunk.points
        return chunks, points

    def _keep_in_memory(self, kept: list[tuple[Chunk, tuple[str, ...]]], reason: str) -> int:
        """Hold chunks the disk did not take; returns their bytes (they leave the disk's count)."""
        nbytes = 0
        with self._memory_lock:
            for chunk, owing in kept:
                self._memory[chunk.seq] = (chunk, set(owing))
                nbytes += chunk_size(chunk.points)
                counts = self._not_durable.setdefault(chunk.data_id, [0, 0, reason])
                counts[0] += 1
                counts[1] += chunk.points
                counts[2] = reason
            self.memory_bytes += nbytes
        return nbytes

    def _settle_in_memory(self, seq: int, destination: str) -> bool:
        """A destination is done with a chunk (delivered or rejected); False if it is not held in
        memory. Rejections of such chunks are logged and reported, not kept."""
        with self._memory_lock:
            entry = self._memory.get(seq)
            if entry is None:
                return False
            entry[1].discard(destination)
            if not entry[1]:
                del self._memory[seq]
                self.memory_bytes -= chunk_size(entry[0].points)
        return True

    def add_stream(
        self, data_id: str, info: dict[str, Any], destinations: dict[str, str], owner: str
    ) -> None:
        self._put(
            ("stream", data_id, orjson.dumps(info), orjson.dumps(destinations), time.time(), owner)
        )

    def update_stream_info(self, data_id: str, info: dict[str, Any]) -> None:
        """Replace a stream's StreamInfo fields (a destination's own id learnt later)."""
        self._put(("info", data_id, orjson.dumps(info)))

    def adopt(self, data_id: str, owner: str) -> None:
        """Take over a stream left by a streamer that is gone."""
        self._put(("adopt", data_id, owner))

    def add_chunk(self, chunk: Chunk | ChunkToBuild, destinations: tuple[str, ...]) -> None:
        """Queue the chunk for the next group commit, pending for every destination.

        Its bytes were counted by :meth:`reserve`, when the streamer took it.
        """
        now = time.monotonic()
        self._added.append((chunk.seq, now))
        self._put(("chunk", chunk, destinations, now))

    def overdue(self) -> int | None:
        """The seq to wait for when a chunk added more than about ``max_unwritten_s`` ago is not
        committed yet, or more chunks (``MAX_HELD``) or data (``MAX_UNWRITTEN_BYTES``) than one
        commit takes within the window: the newest chunk added, so one wait covers a burst.
        Else None.

        Called under the streamer's lock, before it adds a chunk; cheap.
        """
        added = self._added
        committed = self.committed_seq
        while added and added[0][0] <= committed:
            added.popleft()
        if not added or committed < self._given_up:
            return None
        if (
            time.monotonic() - added[0][1] <= self._wait_after
            and len(added) <= MAX_HELD
            and self._queued_bytes <= MAX_UNWRITTEN_BYTES
        ):
            return None
        return added[-1][0]

    def wait_committed(self, seq: int, timeout: float = WRITER_WAIT_S) -> bool:
        """Have the writer commit every chunk up to ``seq`` now, and wait for it.

        False when it did not within ``timeout``: later calls then return at once (and
        :meth:`overdue` asks for no wait) until the writer has caught up with ``seq``.
        """
        if self.committed_seq >= seq:
            return True
        if self.committed_seq < self._given_up:
            return False
        with self._bytes_lock:  # pushing threads may ask at once: keep the highest
            self._write_through = max(self._write_through, seq)
        self._hurry.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._committed:
            while self.committed_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._given_up = max(self._given_up, seq)
                    log.warning(
                        "journal: the writer did not commit within %.1f s (disk too slow?); "
                        "push() does not wait for it until it catches up",
                        timeout,
                    )
                    return False
                self._committed.wait(left)
        return True

    def gaps(self, data_id: str) -> list[tuple[str, int, int]]:
        """(channel, first, last) of every range of chunk indexes missing between the lowest
        and the highest index the journal has recorded taking for that channel of the stream."""
        rows = self._rows(
            "SELECT channel, runs FROM chunk_runs WHERE data_id=? ORDER BY channel", (data_id,)
        )
        out: list[tuple[str, int, int]] = []
        for channel, text in rows:
            runs = sorted(orjson.loads(text))
            out.extend(
                (channel, before[1] + 1, after[0] - 1)
                for before, after in itertools.pairwise(runs)
                if after[0] > before[1] + 1
            )
        return out

    def _stored_runs(self, key: tuple[str, str]) -> list[list[int]]:
        try:
            row = self._write.execute(
                "SELECT runs FROM chunk_runs WHERE data_id=? AND channel=?", key
            ).fetchone()
        except sqlite3.Error:
            return []
        return [list(run) for run in orjson.loads(row[0])] if row else []

    def _note_taken(self, chunk: Chunk | ChunkToBuild) -> None:
        """Record the chunk's index among the runs of each of its channels (writer thread)."""
        index = chunk.chunk_index
        names = (
            tuple(c.name for c in chunk.channels)
            if isinstance(chunk, Chunk)
            else chunk.channel_names
        )
        for name in names:
            key = (chunk.data_id, name)
            runs = self._runs.get(key)
            if runs is None:  # a stream this process resumed: continue its record
                runs = self._runs[key] = self._stored_runs(key)
            self._runs_dirty.add(key)
            if runs and runs[-1][0] <= index:  # the usual case: at or after the last run
                last = runs[-1]
                if index <= last[1]:
                    continue
                if index == last[1] + 1:
                    last[1] = index
                else:
                    runs.append([index, index])
                continue
            runs.append([index, index])
            runs.sort()
            merged: list[list[int]] = []
            for run in runs:
                if merged and run[0] <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], run[1])
                else:
                    merged.append(run)
            runs[:] = merged

    def delivered(self, seq: int, destination: str) -> None:
        self._put(("delivered", seq, destination))

    def rejected(self, seq: int, destination: str, reason: str) -> None:
        self._put(("rejected", seq, destination, reason))

    def finalize_requested(self, data_id: str) -> None:
        self._put(("finalize", data_id))

    def closed(self, data_id: str, destination: str) -> None:
        self._put(("closed", data_id, destination))

    def save_atlas_state(self, data_id: str, state: dict[str, Any], last_seq: int) -> None:
        self._put(("atlas", data_id, orjson.dumps(state), last_seq))

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far (stream records, outcomes, ATLAS states) is
        committed; chunks still held within ``write_delay_s`` are not forced out. False when the
        writer did not get there within ``timeout`` (a failed write also releases the wait: the
        report says the journal is not durable)."""
        done = threading.Event()
        self._put(("barrier", done))
        self._hurry.set()  # no pause to let a burst accumulate

        return done.wait(timeout)

    def _put(self, item: tuple[Any, ...]) -> None:
        self._queue.append(item)
        # set() takes a lock; when the writer is already woken (it clears the flag before it
        # drains the queue), this item is in its next drain anyway.
        if not self._wake.is_set():
            self._wake.set()

    # -- the writer thread ---------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            hold = self._write_delay - self._late
            due = self._held[0][2] + hold - time.monotonic() if self._held else None
            woken = self._wake.wait(timeout=None if due is None else max(due, 0.0))
            if woken and not self._stopping and self._write_through <= self.committed_seq:
                # Let a burst accumulate: one commit for all of it. Not past the moment the
                # oldest held chunk is due, nor once a push waits for the commit.
                pause = self._interval
                if self._held:
                    pause = min(pause, max(self._held[0][2] + hold - time.monotonic(), 0.0))
                self._hurry.wait(pause)
            self._hurry.clear()
            self._wake.clear()
            self._commit_queued()
            # A disk that keeps failing would keep its bookkeeping queued forever.
            if self._stopping and (not self._queue or self._write_failing) and not self._held:
                return

    def _commit_queued(self) -> None:
        # A method of its own so that the batch is let go on return: held until the next wake-up,
        # it kept the last commit's chunks in memory after delivery.
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if not batch and not self._held:
            return
        try:
            self._commit(batch)
        except Exception:
            # A bug, not the disk (_commit handles failed writes): keep the thread alive.
            log.exception("journal: %d operations not processed", len(batch))
            for item in batch:
                if item[0] == "barrier":
                    item[1].set()

    def _commit(self, batch: list[tuple[Any, ...]]) -> None:
        now = time.monotonic()
        flushing = self._write_all
        self._write_all = False
        hold = self._write_delay - self._late
        oldest_written: float | None = None  # when the oldest chunk this commit writes was added
        top = None
        freed = 0  # bytes that leave the disk's count: settled in memory, or kept in memory
        freed_on_disk = 0  # bytes of chunks this write deletes: counted only if it succeeds
        taken = 0  # bytes that leave the writer's memory: written, or settled without the disk
        # Confirmations of chunks still in memory are settled here, before anything is written:
        # a chunk every destination confirmed never touches the disk (on a healthy link that is
        # most chunks), and a destination that confirmed gets no pending row.
        confirmed: dict[int, set[str]] = {}
        must_write: set[int] = set()  # rejected: kept on disk with the reason
        arrived = {chunk.seq for chunk, _, _ in self._held}
        for item in batch:
            kind = item[0]
            if kind == "delivered":
                confirmed.setdefault(item[1], set()).add(item[2])
            elif kind == "chunk":
                arrived.add(item[1].seq)
            elif kind == "rejected":
                must_write.add(item[1])
        # Write what is held when asked to, when closing, in a burst, or when memory is short.
        write_all = (
            flushing
            or self._stopping
            or self._queued_bytes > MAX_QUEUED_BYTES // 2
            or len(arrived) > MAX_HELD
        )
        # Chunks and confirmations go in a few executemany() calls per commit, not statements
        # per chunk: each statement takes the GIL back from the event loop.
        chunk_rows: list[tuple[Any, ...]] = []
        stored: list[tuple[Chunk, tuple[str, ...]]] = []  # the chunks of chunk_rows
        kept: list[tuple[Chunk, tuple[str, ...]]] = []  # for memory: the disk is low
        pending_rows: list[tuple[int, str]] = []
        done_rows: list[tuple[int, str]] = []
        dropped: list[tuple[int]] = []
        unknown: list[int] = []  # written by an earlier process: ask the database
        others: list[tuple[Any, ...]] = []
        atlas_states: dict[str, tuple[Any, ...]] = {}
        barriers: list[threading.Event] = []  # sync() callers, released after this commit
        owed = self._owed
        memory = self._memory
        to_disk = self._free_ok
        held: deque[tuple[Chunk | ChunkToBuild, tuple[str, ...], float]] = deque()
        # (seq, data_id, chunk_index) delivered or stored, with those a held chunk kept back
        safe: list[tuple[int, str, int]] = self._unmarked
        # Held chunks are older than the queued ones: seq order is kept.
        chunks = [*self._held, *(i[1:] for i in batch if i[0] == "chunk")]
        for chunk, dests, added_at in chunks:
            early = confirmed.get(chunk.seq, ())
            owing = tuple(d for d in dests if d not in early)
            if not owing:
                size = chunk_size(chunk.points)
                freed += size
                taken += size
                top = chunk.seq
                self._note_taken(chunk)
                safe.append((chunk.seq, chunk.data_id, chunk.chunk_index))
                continue
            if (
                not write_all
                and chunk.seq > self._write_through
                and now - added_at < hold
                and chunk.seq not in must_write
            ):
                held.append((chunk, owing, added_at))
                continue
            if oldest_written is None:
                oldest_written = added_at
            if not isinstance(chunk, Chunk):
                chunk = chunk.build()  # only now: most chunks never need it
            taken += chunk_size(chunk.points)
            top = chunk.seq
            if not to_disk:
                kept.append((chunk, owing))
                continue
            self._note_taken(chunk)
            stored.append((chunk, owing))
            safe.append((chunk.seq, chunk.data_id, chunk.chunk_index))
            chunk_rows.append(
                (
                    chunk.seq,
                    chunk.data_id,
                    chunk.chunk_index,
                    int(chunk.multi),
                    chunk.offset_ns,
                    chunk.points,
                    encode_body(chunk),
                    time.time(),
                )
            )
            pending_rows.extend((chunk.seq, d) for d in owing)
            if len(owed) < MAX_OWED:
                owed[chunk.seq] = chunk.points << 8 | self._bits(owing)
        self._held = held
        with self._bytes_lock:
            self._queued_bytes -= taken
        if kept:
            freed += self._keep_in_memory(kept, self._low_disk)
        # Only the chunks below the oldest one held count as committed (on disk or settled).
        if chunks:
            self._taken_seq = chunks[-1][0].seq
        if held and top is not None:
            top = min(top, held[0][0].seq - 1)
        for item in batch:
            kind = item[0]
            if kind == "chunk":
                continue
            if kind == "delivered":
                seq, destination = item[1], item[2]
                if seq in arrived:
                    continue  # settled above, with its chunk
                if memory and self._settle_in_memory(seq, destination):
                    continue
                done_rows.append((seq, destination))
                entry = owed.get(seq)
                if entry is None:
                    unknown.append(seq)
                    continue
                entry &= ~self._bits((destination,))
                if entry & 0xFF:
                    owed[seq] = entry
                else:
                    del owed[seq]
                    dropped.append((seq,))
                    freed_on_disk += chunk_size(entry >> 8)
            elif kind == "atlas":
                atlas_states[item[1]] = item  # only the latest state of a session is kept
            elif kind == "barrier":
                barriers.append(item[1])
            else:
                if kind == "rejected":  # kept on disk with its reason: the database decides
                    if memory and self._settle_in_memory(item[1], item[2]):
                        continue
                    owed.pop(item[1], None)
                others.append(item)
        others.extend(atlas_states.values())
        marks: dict[str, int] = {}
        # Not past a chunk still held: a crash loses that one.
        limit = self._held[0][0].seq if self._held else None
        self._unmarked = []
        for seq, data_id, index in safe:
            if limit is None or seq < limit:
                marks[data_id] = max(marks.get(data_id, -1), index)
            else:
                self._unmarked.append((seq, data_id, index))
        others.extend(("mark", data_id, index) for data_id, index in marks.items())
        if chunk_rows or done_rows or dropped or unknown or others:
            try:
                freed += self._write_to_disk(
                    chunk_rows, pending_rows, done_rows, dropped, unknown, others
                )
            except Exception as exc:  # the disk is full, read-only, gone...
                with contextlib.suppress(sqlite3.Error):
                    self._write.execute("ROLLBACK")
                self._write_failed(exc, stored, batch, arrived)
                freed += self._keep_in_memory(stored, f"a journal write failed: {exc}")
            else:
                freed += freed_on_disk
                if self._write_failing is not None:
                    self._write_failing = None
                    log.warning("journal: writes to %s succeed again: durability is on", self.path)
        # else nothing to store: every chunk was settled in memory, or is still held. The
        # highest seq taken is recorded with the next write; until then no row refers to it.
        with self._bytes_lock:
            self._bytes = max(0, self._bytes - freed)
        if oldest_written is not None and not write_all:
            # Past the due time by the end of the commit: the next chunks are held that much
            # less. Forgotten slowly, so one quiet commit does not undo it.
            late = time.monotonic() - oldest_written - self._write_delay
            self._late = min(self._write_delay, max(late, self._late * 0.9, 0.0))
        if top is not None:
            with self._committed:
                self.committed_seq = max(self.committed_seq, top)
                self._committed.notify_all()
        for barrier in barriers:
            barrier.set()

    def _write_failed(
        self,
        exc: Exception,
        stored: list[tuple[Chunk, tuple[str, ...]]],
        batch: list[tuple[Any, ...]],
        arrived: set[int],
    ) -> None:
        """A write failed: its chunks are kept in memory (the caller does it) and still delivered;
        the rest (confirmations, stream records) is tried again with the next write."""
        for chunk, _ in stored:
            self._owed.pop(chunk.seq, None)
        retry = [
            item
            for item in batch
            if item[0] not in ("chunk", "barrier")
            and not (item[0] == "delivered" and item[1] in arrived)
        ]
        if len(self._queue) + len(retry) > MAX_OWED:
            # Bounded: past it, confirmations are let go. Their chunks stay pending on disk
            # and a later process sends them again (Atomscale replaces a re-sent chunk).
            retry = [item for item in retry if item[0] != "delivered"]
        self._queue.extendleft(reversed(retry))
        if self._write_failing is None:
            log.error(
                "journal: a write to %s failed (%s: %s): %d chunk(s) kept in memory only, still "
                "delivered; durability is off until a write succeeds",
                self.path,
                type(exc).__name__,
                exc,
                len(stored),
            )
        else:
            log.debug("journal: a write to %s failed again: %s", self.path, exc)
        self._write_failing = f"a write to {self.path} failed: {exc}"

    def _write_to_disk(
        self,
        chunk_rows: list[tuple[Any, ...]],
        pending_rows: list[tuple[int, str]],
        done_rows: list[tuple[int, str]],
        dropped: list[tuple[int]],
        unknown: list[int],
        others: list[tuple[Any, ...]],
    ) -> int:
        """One transaction; returns the bytes freed by chunks of an earlier process."""
        db = self._write
        freed = 0
        db.execute("BEGIN")
        if chunk_rows:
            db.executemany("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?)", chunk_rows)
            db.executemany(
                "INSERT OR REPLACE INTO deliveries VALUES (?,?,'pending',NULL)", pending_rows
            )
        if done_rows:
            db.executemany("DELETE FROM deliveries WHERE seq=? AND destination=?", done_rows)
        if dropped:
            db.executemany("DELETE FROM chunks WHERE seq=?", dropped)
        for seq in unknown:
            freed += self._drop_if_done(seq)
        for item in others:
            kind = item[0]
            if kind == "rejected":
                # The rejected destination stays owed: the chunk is kept, with the reason.
                db.execute(
                    "UPDATE deliveries SET state='rejected', reason=? "
                    "WHERE seq=? AND destination=?",
                    (item[3], item[1], item[2]),
                )
            elif kind == "stream":
                db.execute(
                    "INSERT OR IGNORE INTO streams "
                    "(data_id, info, destinations, created_at, owner) VALUES (?,?,?,?,?)",
                    item[1:6],
                )
            elif kind == "adopt":
                db.execute("UPDATE streams SET owner=? WHERE data_id=?", (item[2], item[1]))
            elif kind == "info":
                db.execute("UPDATE streams SET info=? WHERE data_id=?", (item[2], item[1]))
            elif kind == "mark":
                db.execute(
                    "UPDATE streams SET last_chunk_index=MAX(last_chunk_index, ?) WHERE data_id=?",
                    (item[2], item[1]),
                )
            elif kind == "finalize":
                db.execute("UPDATE streams SET finalize_requested=1 WHERE data_id=?", item[1:2])
            elif kind == "closed":
                row = db.execute("SELECT closed FROM streams WHERE data_id=?", item[1:2]).fetchone()
                if row is not None:
                    closed = sorted({*orjson.loads(row[0]), item[2]})
                    db.execute(
                        "UPDATE streams SET closed=? WHERE data_id=?",
                        (orjson.dumps(closed).decode(), item[1]),
                    )
            elif kind == "atlas":
                db.execute(
                    "INSERT OR REPLACE INTO atlas_sessions (data_id, state, last_seq) "
                    "VALUES (?,?,?)",
                    item[1:4],
                )
        for key in self._runs_dirty:
            db.execute(
                "INSERT OR REPLACE INTO chunk_runs VALUES (?,?,?)",
                (*key, orjson.dumps(self._runs[key]).decode()),
            )
        # Sequence numbers are never reused: an ATLAS session state, for one, names the last
        # chunk it includes, which may be one that was settled without the disk.
        if self._taken_seq > self._stored_seq:
            db.execute(
                "INSERT INTO meta VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=MAX(value, excluded.value)",
                (self._taken_seq,),
            )
        db.execute("COMMIT")
        self._stored_seq = self._taken_seq
        self._runs_dirty.clear()
        return freed

    def _bits(self, destinations: Sequence[str]) -> int:
        """One bit per destination name (labstream has two; the low byte holds them)."""
        mask = 0
        for d in destinations:
            bit = self._dest_bits.get(d)
            if bit is None:
                bit = self._dest_bits[d] = 1 << len(self._dest_bits)
            mask |= bit
        return mask

    def _drop_if_done(self, seq: int) -> int:
        """Delete a chunk no destination still needs; return the bytes freed."""
        db = self._write
        if db.execute("SELECT 1 FROM deliveries WHERE seq=? LIMIT 1", (seq,)).fetchone():
            return 0
        row = db.execute("SELECT points FROM chunks WHERE seq=?", (seq,)).fetchone()
        db.execute("DELETE FROM chunks WHERE seq=?", (seq,))
        return chunk_size(int(row[0])) if row else 0

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is committed, held chunks written."""
        deadline = time.monotonic() + timeout
        self._write_all = True
        self._wake.set()
        while (self._queue or self._held) and time.monotonic() < deadline:
            if self._write_failing is not None and not self._held:
                break  # what is queued is the failed writes' bookkeeping: it waits for the disk
            time.sleep(self._interval / 2)
        with self._committed:
            self._committed.wait(timeout=min(self._interval * 4, 0.1))

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the database."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._write.close()
        with self._read_lock:
            self._read.close()

    # -- reading (recovery, backlog, status) ---------------------------------------------------

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, args).fetchall()

    def pending_chunks(
        self, destination: str, data_id: str, after_seq: int, limit: int
    ) -> list[Chunk]:
        """Chunks of a stream still pending for ``destination``, in order: committed ones, and
        those kept in memory because the disk could not take them."""
        try:
            rows = self._rows(
                "SELECT c.seq, c.chunk_index, c.multi, c.offset_ns, c.body FROM deliveries d "
                "JOIN chunks c ON c.seq = d.seq WHERE d.destination=? AND d.state='pending' "
                "AND c.data_id=? AND d.seq>? ORDER BY d.seq LIMIT ?",
                (destination, data_id, after_seq, limit),
            )
        except sqlite3.Error as exc:
            # Nothing rather than the chunks in memory alone, which would skip those on disk:
            # the caller asks again, and delivery goes on once the disk reads again.
            if not self._read_failing:
                log.error("journal: cannot read %s (%s); retrying", self.path, exc)
            self._read_failing = True
            return []
        self._read_failing = False
        chunks = [decode_body(r[4], data_id, r[1], bool(r[2]), r[3], r[0]) for r in rows]
        if self._memory:  # and those the disk could not take
            with self._memory_lock:
                extra = [
                    chunk
                    for seq, (chunk, owing) in self._memory.items()
                    if seq > after_seq and chunk.data_id == data_id and destination in owing
                ]
            if extra:
                chunks = sorted([*chunks, *extra], key=lambda c: c.seq)[:limit]
        return chunks

    def pending_summary(self, destination: str, data_id: str) -> tuple[int, int, int]:
        """(chunks, points, highest seq) still pending for a destination."""
        row = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(c.points), 0), COALESCE(MAX(c.seq), 0) "
            "FROM deliveries d JOIN chunks c ON c.seq=d.seq "
            "WHERE d.destination=? AND d.state='pending' AND c.data_id=?",
            (destination, data_id),
        )[0]
        return int(row[0]), int(row[1]), int(row[2])

    def chunk_indexes(self, data_id: str) -> set[int]:
        """Indexes of a stream's chunks on disk: each is still owed to (or was refused by) some
        destination, and every other destination confirmed it."""
        rows = self._rows("SELECT DISTINCT chunk_index FROM chunks WHERE data_id=?", (data_id,))
        return {int(r[0]) for r in rows}

    def streams(self) -> list[StoredStream]:
        rows = self._rows(
            "SELECT data_id, info, destinations, created_at, finalize_requested, closed, owner, "
            "last_chunk_index FROM streams ORDER BY created_at"
        )
        return [
            StoredStream(
                data_id=r[0],
                info=orjson.loads(r[1]),
                destinations=orjson.loads(r[2]),
                created_at=r[3],
                finalize_requested=bool(r[4]),
                closed=tuple(orjson.loads(r[5])),
                owner=r[6],
                last_chunk_index=int(r[7]),
            )
            for r in rows
        ]

    def atlas_state(self, data_id: str) -> tuple[dict[str, Any], int] | None:
        """The ATLAS session state saved after the last completed chunk, and that chunk's seq."""
        rows = self._rows("SELECT state, last_seq FROM atlas_sessions WHERE data_id=?", (data_id,))
        if not rows:
            return None
        state, last_seq = rows[0]
        return orjson.loads(state), int(last_seq)

    def status(self) -> list[SpoolStatus]:
        """What every stream still has in the journal, per destination."""
        now = time.time()
        out = []
        for s in self.streams():
            gaps = tuple(self.gaps(s.data_id))
            for dest in s.destinations:
                pending = self._rows(
                    "SELECT COUNT(*), COALESCE(SUM(c.points), 0), MIN(c.created_at) "
                    "FROM deliveries d JOIN chunks c ON c.seq=d.seq WHERE c.data_id=? "
                    "AND d.destination=? AND d.state='pending'",
                    (s.data_id, dest),
                )[0]
                rejected = self._rows(
                    "SELECT COUNT(*) FROM deliveries d JOIN chunks c ON c.seq=d.seq "
                    "WHERE c.data_id=? AND d.destination=? AND d.state='rejected'",
                    (s.data_id, dest),
                )[0][0]
                out.append(
                    SpoolStatus(
                        s.data_id,
                        s.info.get("stream_name"),
                        dest,
                        int(pending[0]),
                        int(pending[1]),
                        int(rejected),
                        None if pending[2] is None else now - float(pending[2]),
                        s.finalize_requested,
                        dest in s.closed,
                        gaps,
                    )
                )
        return out

    def purge(self, data_id: str) -> int:
        """Forget a stream and everything held for it; return the chunks removed."""
        self.flush()
        try:
            return self._purge(data_id)
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot purge {data_id} from the journal at {self.path}: {exc}"
            ) from exc

    def _purge(self, data_id: str) -> int:
        db = self._connect()  # not the writer's connection: that one belongs to its thread
        try:
            db.execute("BEGIN")
            n = db.execute("SELECT COUNT(*) FROM chunks WHERE data_id=?", (data_id,)).fetchone()[0]
            db.execute(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM chunks WHERE data_id=?)",
                (data_id,),
            )
            db.execute("DELETE FROM chunks WHERE data_id=?", (data_id,))
            db.execute("DELETE FROM atlas_sessions WHERE data_id=?", (data_id,))
            db.execute("DELETE FROM chunk_runs WHERE data_id=?", (data_id,))
            db.execute("DELETE FROM streams WHERE data_id=?", (data_id,))
            db.execute("COMMIT")
        finally:
            db.close()
        return int(n)

    def forget_finished(self) -> list[str]:
        """Remove streams that are closed everywhere with nothing pending, and data past retention.

        Returns the data_ids removed.
        """
        self.flush()
        cutoff = time.time() - self.retention_s
        done = []
        for s in self.streams():
            left = self._rows(
                "SELECT COUNT(*) FROM deliveries d JOIN chunks c ON c.seq=d.seq "
                "WHERE c.data_id=? AND (d.state='pending' OR c.created_at>?)",
                (s.data_id, cutoff),
            )[0][0]
            everywhere = set(s.destinations) <= set(s.closed)
            expired = s.created_at < cutoff and not s.owner_alive
            if (everywhere and not left) or expired:
                if expired and left:
                    log.warning("journal: %s is past retention; dropping what it holds", s.data_id)
                self.purge(s.data_id)
                done.append(s.data_id)
        return done
