"""The durable journal: nothing accepted is lost when a destination is down, the process stops, or
the memory window is full; bounds are enforced with counted refusals; secrets stay off disk."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from labstream import Atlas, RetryPolicy, StreamStateError, TimeseriesStreamer
from labstream._core.chunk import ChannelSeries, Chunk
from labstream._core.journal import FILE_NAME, LIVE_OWNERS, Journal, decode_body, encode_body
from labstream.testing.atlas import run_in_thread as atlas_in_thread
from labstream.testing.atlas_checker import SessionReport, check_session, format_report
from labstream.testing.fake import FakeAtomscale, Recorded

from . import API_KEY

T0 = 1_760_000_000.0
QUICK = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0, cooldown_s=0.02)


def series(c: int, n: int = 100) -> tuple[list[float], list[float]]:
    return [T0 + c * n * 0.1 + i * 0.1 for i in range(n)], [float(c * n + i) for i in range(n)]


def crash(streamer: TimeseriesStreamer) -> None:
    """Stop a streamer the way kill -9 would: no finalize, no close, nothing more delivered.

    What the writer thread already committed stays; the subprocess test in test_reliability.py
    does the real kill -9.
    """
    core = streamer._core
    assert core._journal is not None
    core._journal.flush()
    LIVE_OWNERS.discard(core._owner)
    streamer._closed = True
    streamer._thread.stop()
    core._journal.close()


def small_chunk(seq: int) -> Chunk:
    """Chunk ``seq - 1`` of stream "d", three points, with its journal seq."""
    ts = np.arange(3, dtype=np.int64) + 1_760_000_000_000_000_000 + seq * 10
    return Chunk("d", seq - 1, (ChannelSeries("T", "C", ts, np.ones(3)),), False, 0, seq)


def on_disk_seqs(j: Journal) -> list[int]:
    return [r[0] for r in j._rows("SELECT seq FROM chunks ORDER BY seq", ())]


def chunks_down(fake: FakeAtomscale) -> None:
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(503) if rec.path.startswith("/tool-state/stream/chunk") else None
        )
    )


def test_body_round_trip() -> None:
    ts = np.array([1_760_000_000_123_456_789, 1_760_000_000_223_456_789], dtype=np.int64)
    vals = np.array([np.nan, -0.0])
    chunk = Chunk(
        "d", 7, (ChannelSeries("T", "C", ts, vals), ChannelSeries("P", None, ts, vals)), True, 5, 42
    )
    back = decode_body(encode_body(chunk), "d", 7, True, 5, 42)
    assert [c.name for c in back.channels] == ["T", "P"]
    assert back.channels[1].units is None
    assert back.channels[0].timestamps_ns.tolist() == ts.tolist()
    assert np.array_equal(back.channels[0].values, vals, equal_nan=True)
    assert np.signbit(back.channels[0].values[1])


def test_chunks_outlive_a_down_destination_and_a_later_streamer_delivers_them(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    chunks_down(fake)
    first = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = first.initialize(stream_name="outage")
    for c in range(10):
        first.push(data_id, c, "T", *series(c))
    first.close(timeout=0.2)
    closing = first.report(data_id)["atomscale"]
    assert (closing.chunks_pending, closing.chunks_dropped) == (10, 0)  # kept, not dropped

    fake.responders.clear()  # Atomscale is back
    second = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    assert second.recovered_streams() == [data_id]
    second.wait_delivered(data_id, 10)
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(1000)]
    assert fake.finalized.count(data_id) >= 1


def test_pushed_chunks_reach_the_disk_while_the_event_loop_is_busy(
    streamer_factory: Callable[..., TimeseriesStreamer],
) -> None:
    """In a burst the event loop falls behind the pushes (it builds and delivers every chunk); a
    crash then must not lose what it had not reached yet. push() hands chunks to the journal
    itself."""
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    journal = streamer._core._journal
    assert journal is not None
    busy, loop_held = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        loop_held.set()
        busy.wait(10)

    streamer._core._loop.call_soon_threadsafe(hold_the_loop)
    assert loop_held.wait(10)
    try:
        for c in range(20):
            streamer.push(data_id, c, "T", *series(c))
        journal.flush()
        # (chunks, points, highest seq) still pending for Atomscale: all of them, on disk
        assert journal.pending_summary("atomscale", data_id) == (20, 2_000, 20)
    finally:
        busy.set()
    assert streamer.finalize(data_id).ok


def test_a_crashed_stream_is_resumed_and_accepts_finalize(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    release = threading.Event()

    async def hold(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(hold)
    first = streamer_factory(clock_sync=False)
    data_id = first.initialize(stream_name="crash")
    for c in range(20):
        first.push(data_id, c, "T", *series(c))
    crash(first)
    release.set()

    second = streamer_factory(clock_sync=False)
    report = second.finalize(data_id, timeout=10)
    assert report.ok, str(report)
    assert report["atomscale"].chunks_delivered == 20
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(2000)]
    assert fake.finalized == [data_id]
    with pytest.raises(StreamStateError, match="already finalized"):
        second.push(data_id, 99, "T", *series(99))


def test_memory_window_spills_to_disk_and_reads_back_in_order(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    release = threading.Event()

    async def hold(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(hold)
    streamer = streamer_factory(clock_sync=False, memory_window_chunks=8, max_concurrency=2)
    data_id = streamer.initialize()
    for c in range(200):
        streamer.push(data_id, c, "T", *series(c))
    runner = streamer._core._runners[0]
    assert runner._held <= 8
    release.set()
    report = streamer.finalize(data_id, timeout=20)
    assert report.ok, str(report)
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(20_000)]


def test_spool_cap_refuses_new_chunks_counted_and_keeps_the_rest(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    release = threading.Event()

    async def hold(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(hold)
    streamer = streamer_factory(clock_sync=False, spool_max_bytes=20_000)
    data_id = streamer.initialize()
    for c in range(30):
        streamer.push(data_id, c, "T", *series(c))  # never raises: the loop keeps running
    release.set()
    report = streamer.finalize(data_id, timeout=10)
    assert report.refused_chunks > 0
    assert report.refusal_reason is not None
    assert "spool cap reached" in report.refusal_reason
    dest = report["atomscale"]
    assert dest.chunks_accepted + report.refused_chunks == 30
    assert dest.chunks_delivered == dest.chunks_accepted  # nothing accepted was lost
    assert not report.ok
    assert "refused before storing" in str(report)


def test_spool_files_are_private_and_hold_no_secret(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale, isolated_spool: Path
) -> None:
    chunks_down(fake)
    streamer = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = streamer.initialize(stream_name="secret check")
    streamer.push(data_id, 0, "T", *series(0))
    streamer.close(timeout=0.1)
    assert stat.S_IMODE(isolated_spool.stat().st_mode) == 0o700
    assert stat.S_IMODE((isolated_spool / FILE_NAME).stat().st_mode) == 0o600
    for path in isolated_spool.iterdir():
        assert API_KEY.encode() not in path.read_bytes()


def test_spool_false_writes_nothing(
    streamer_factory: Callable[..., TimeseriesStreamer], isolated_spool: Path
) -> None:
    streamer = streamer_factory(clock_sync=False, spool=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *series(0))
    assert streamer.finalize(data_id).ok
    assert list(isolated_spool.iterdir()) == []


def crash_then_resume_on_atlas(
    monkeypatch: pytest.MonkeyPatch, state_saved_up_to: int = 5
) -> SessionReport:
    """Chunks 0-4 to ATLAS, the session state journaled only up to ``state_saved_up_to`` (as
    when a crash comes between a write and its commit), a crash, then chunks 5-7 from a second
    streamer and finalize. Returns the check of the one session."""
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with atlas_in_thread() as emu:
        where = Atlas(address=emu.address, key_generator_address=emu.key_generator_address)
        first = TimeseriesStreamer(atlas=where, retry=QUICK, handle_sigterm=False)
        data_id = first.initialize(stream_name="resume-me")
        for c in range(5):
            if c == state_saved_up_to:
                first.wait_delivered(data_id, 10)
                journal = first._core._journal
                assert journal is not None
                monkeypatch.setattr(journal, "save_atlas_state", lambda *args: None)
            first.push(data_id, c, "T", *series(c, 10))
        first.wait_delivered(data_id, 10)
        crash(first)

        with TimeseriesStreamer(atlas=where, retry=QUICK, handle_sigterm=False) as second:
            for c in range(5, 8):
                second.push(data_id, c, "T", *series(c, 10))
            report = second.finalize(data_id, timeout=10)
        assert report.ok, str(report)
        (session,) = emu.sessions.values()  # the same session: no second CreateSession
        return check_session(session)


def test_atlas_session_continues_after_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = crash_then_resume_on_atlas(monkeypatch)
    assert checked.clean, format_report(checked, verbose=True)
    assert checked.parameters["T:labstream"].values == [float(i) for i in range(80)]


def test_a_resumed_atlas_session_never_reuses_a_packet_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash can come after an ATLAS write and before the session state it leads to is
    committed: the next process resumes from an older state, and its packets must still come
    after the ones ATLAS already has."""
    checked = crash_then_resume_on_atlas(monkeypatch, state_saved_up_to=3)
    assert checked.check("packet_ids_increasing").passed, format_report(checked, verbose=True)
    # (The resumed timeline does not know the lost writes either: the next packet may start a
    # few ns off their grid, which periodic_no_overlap reports. Only a crash does this.)
    assert checked.parameters["T:labstream"].values == [float(i) for i in range(80)]


def test_a_writer_that_falls_behind_bounds_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushing faster than the disk: push() waits briefly, then refuses (counted), never queues
    without bound."""
    import labstream._core.journal as journal_module

    monkeypatch.setattr(journal_module, "MAX_QUEUED_BYTES", 4 * journal_module.chunk_size(1))
    monkeypatch.setattr(journal_module, "WRITER_WAIT_S", 0.05)
    journal = journal_module.Journal(tmp_path)
    stall = threading.Event()
    monkeypatch.setattr(journal, "_commit", lambda batch: stall.wait(5))
    try:
        ts = np.array([1_760_000_000_000_000_000], dtype=np.int64)
        chunk = Chunk("d", 0, (ChannelSeries("T", None, ts, np.array([1.0])),), False, 0, 1)
        refused = None
        for _ in range(50):
            try:
                journal.reserve(journal_module.chunk_size(chunk.points))
            except journal_module.JournalFull as full:
                refused = str(full)
                break
            journal.add_chunk(chunk, ("atomscale",))
        assert refused is not None
        assert "journal writer is" in refused
        assert len(journal._queue) <= 5  # at most the bound, and the chunk that crossed it
    finally:
        stall.set()
        journal.close()


@pytest.mark.parametrize("remembered", [65_536, 1], ids=["in-memory", "looked-up-on-disk"])
def test_a_chunk_leaves_the_journal_once_every_destination_confirmed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remembered: int
) -> None:
    """Across commits, and across processes: held until the last destination confirms; a
    rejection keeps it. The writer remembers who owes what for a bounded number of chunks and
    asks the database for the others: both ways give the same result."""
    import labstream._core.journal as journal_module

    monkeypatch.setattr(journal_module, "MAX_OWED", remembered)

    def on_disk(j: Journal) -> dict[str, int]:
        j.flush()
        return {dest: j.pending_summary(dest, "d")[0] for dest in ("atomscale", "atlas")}

    def held(j: Journal) -> list[int]:
        j.flush()
        return on_disk_seqs(j)

    j = Journal(tmp_path)
    for seq in (1, 2, 3):
        j.add_chunk(small_chunk(seq), ("atomscale", "atlas"))
    assert on_disk(j) == {"atomscale": 3, "atlas": 3}
    j.delivered(1, "atomscale")
    j.delivered(2, "atomscale")
    j.delivered(2, "atlas")  # chunk 2 is done
    j.rejected(3, "atlas", "bad")
    assert on_disk(j) == {"atomscale": 1, "atlas": 1}
    assert held(j) == [1, 3]  # atlas owes 1; 3 was rejected by atlas: kept, with the reason
    j.add_chunk(small_chunk(4), ("atomscale", "atlas"))
    j.delivered(4, "atomscale")  # within the same group commit: only atlas is owed on disk
    assert on_disk(j) == {"atomscale": 1, "atlas": 2}  # atomscale still owes 3
    j.delivered(4, "atlas")
    assert held(j) == [1, 3]
    j.close()

    again = Journal(tmp_path)  # a later process confirms what the first one wrote
    again.delivered(1, "atlas")
    again.delivered(3, "atomscale")
    assert on_disk(again) == {"atomscale": 0, "atlas": 0}
    assert held(again) == [3]
    again.close()


def test_chunks_every_destination_confirms_within_the_write_delay_never_reach_the_disk(
    tmp_path: Path,
) -> None:
    """On a healthy link a chunk is confirmed soon after it is pushed: writing it, then deleting
    it, would be wasted work. The others are written when the delay ends, or on close."""
    j = Journal(tmp_path, write_delay_s=3600)
    for seq in (1, 2, 3):
        j.add_chunk(small_chunk(seq), ("atomscale", "atlas"))
    j.delivered(1, "atomscale")
    j.delivered(1, "atlas")  # chunk 1: done
    j.delivered(2, "atomscale")  # chunk 2: ATLAS still owes it; chunk 3: both do
    deadline = time.monotonic() + 10
    while (j._queue or j.committed_seq < 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert j.committed_seq == 1  # settled without the disk; 2 and 3 are held, not committed
    assert on_disk_seqs(j) == []
    j.close()  # writes what it holds: a closing streamer keeps what is owed

    again = Journal(tmp_path)
    assert on_disk_seqs(again) == [2, 3]
    assert again.pending_summary("atlas", "d")[0] == 2
    assert again.pending_summary("atomscale", "d")[0] == 1
    again.close()


def test_a_chunk_no_destination_confirms_is_on_disk_once_the_write_delay_ends(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path, write_delay_s=0.05)
    j.add_chunk(small_chunk(1), ("atomscale",))
    deadline = time.monotonic() + 10
    while j.committed_seq < 1 and time.monotonic() < deadline:  # no flush(): the writer alone
        time.sleep(0.005)
    assert on_disk_seqs(j) == [1]
    j.close()


def test_a_seq_an_atlas_state_names_is_never_reused_though_its_chunk_skipped_the_disk(
    tmp_path: Path,
) -> None:
    """The resumed ATLAS session skips chunks up to the seq its saved state names: a later
    process must not give that seq to a new chunk, even when no chunk row ever held it."""
    j = Journal(tmp_path)
    for seq in (1, 2, 3):
        j.add_chunk(small_chunk(seq), ("atlas",))
        j.delivered(seq, "atlas")
    j.flush()
    j.save_atlas_state("d", {"session": "state"}, 3)
    j.close()

    again = Journal(tmp_path)
    assert on_disk_seqs(again) == []
    assert again.atlas_state("d") == ({"session": "state"}, 3)
    assert again.next_seq() == 4
    again.close()


def test_the_journal_knows_up_to_which_chunk_a_stream_is_safe(tmp_path: Path) -> None:
    """What a re-run of `labstream push` continues from: chunks delivered everywhere (never
    written) and chunks on disk count; nothing is counted past a chunk not on disk yet."""
    j = Journal(tmp_path, write_delay_s=60.0)
    j.add_stream("d", {"data_id": "d"}, {"atlas": "x"}, "1:t")
    for seq in (1, 2):
        j.add_chunk(small_chunk(seq), ("atlas",))
    j.delivered(1, "atlas")
    j.delivered(2, "atlas")
    j.add_chunk(small_chunk(3), ("atlas",))  # held back by write_delay_s: lost in a crash
    j.add_chunk(small_chunk(4), ("atlas",))
    j.delivered(4, "atlas")  # delivered, but after one a crash would lose
    assert j.sync()
    (stream,) = j.streams()
    assert stream.last_chunk_index == 1  # chunk_index of seq 2
    j.flush()
    (stream,) = j.streams()
    assert stream.last_chunk_index == 3
    j.close()


def test_a_journal_from_before_the_chunk_mark_opens_with_none_known(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute(
        "CREATE TABLE streams (data_id TEXT PRIMARY KEY, info TEXT NOT NULL, destinations TEXT "
        "NOT NULL, created_at REAL NOT NULL, finalize_requested INTEGER NOT NULL DEFAULT 0, "
        "closed TEXT NOT NULL DEFAULT '[]', owner TEXT NOT NULL)"
    )
    db.execute("INSERT INTO streams (data_id, info, destinations, created_at, owner) "
               "VALUES ('d', '{}', '{}', 0, '1:t')")  # fmt: skip
    db.commit()
    db.close()
    j = Journal(tmp_path)
    (stream,) = j.streams()
    assert stream.last_chunk_index == -1
    j.close()
