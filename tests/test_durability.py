"""The durability contract of push(): what a returned push() guarantees, kept in bursts too.

With the default ``durability="window"``, every chunk whose push() returned more than
``spool_max_unwritten_s`` (W) ago is committed to the journal: push() waits for the writer when it
falls further behind, and the report counts the waits. With ``durability="commit"`` push() returns
only after its chunk's commit. A recovered stream with chunk indexes missing says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from labstream import AsyncTimeseriesStreamer, TimeseriesStreamer
from labstream._core.journal import Journal
from labstream.cli import spool
from labstream.testing.fake import FakeAtomscale, Recorded

from . import API_KEY
from .test_journal import QUICK, chunks_down, crash, series


def hold_chunks(fake: FakeAtomscale) -> threading.Event:
    """Atomscale takes chunk uploads but answers none until the event is set: nothing is
    confirmed, so every chunk must go to disk."""
    release = threading.Event()

    async def hold(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(hold)
    return release


def test_with_durability_commit_a_returned_push_is_on_disk(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    release = hold_chunks(fake)
    s = streamer_factory(clock_sync=False, durability="commit")
    data_id = s.initialize(stream_name="commit")
    journal = s._core._journal
    assert journal is not None
    try:
        for c in range(20):
            s.push(data_id, c, "T", *series(c))
            # Read back through the journal's own reading connection: committed rows only.
            chunks, points, _ = journal.pending_summary("atomscale", data_id)
            assert (chunks, points) == (c + 1, 100 * (c + 1))
        ts, vs = series(20)
        s.push_multi(data_id, 20, {"T": {"timestamps": ts, "values": vs}})
        assert journal.pending_summary("atomscale", data_id)[0] == 21
    finally:
        release.set()
    report = s.finalize(data_id, timeout=10)
    assert report.ok, str(report)
    assert report.journal_waits == 21 and report.journal_wait_s > 0
    assert "waited for the journal: 21 push(es)" in str(report)


@pytest.mark.anyio
async def test_the_async_streamer_keeps_the_commit_contract(fake: FakeAtomscale) -> None:
    release = hold_chunks(fake)
    async with AsyncTimeseriesStreamer(
        API_KEY, "http://atomscale.test", http_transport=fake.transport(), clock_sync=False,
        durability="commit",
    ) as s:  # fmt: skip
        data_id = await s.initialize(stream_name="async commit")
        journal = s._journal
        assert journal is not None
        for c in range(5):
            await s.push(data_id, c, "T", *series(c))
            assert journal.pending_summary("atomscale", data_id)[0] == c + 1
        release.set()
        report = await s.finalize(data_id, timeout=10)
    assert report.ok and report.journal_waits == 5


def test_against_a_slow_disk_push_waits_so_nothing_older_than_w_is_unwritten(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each write takes 60 ms, more than W, and pushes come every half ms for 0.2 s: without
    the waits, chunks would stay unwritten longer than W."""
    original = Journal._write_to_disk

    def slow_write(self: Journal, *args: Any) -> int:
        time.sleep(0.06)
        return original(self, *args)

    monkeypatch.setattr(Journal, "_write_to_disk", slow_write)
    release = hold_chunks(fake)
    s = streamer_factory(clock_sync=False)
    data_id = s.initialize(stream_name="burst")
    journal = s._core._journal
    assert journal is not None
    w = journal.max_unwritten_s
    assert w == 0.05  # the documented default
    returned: list[float] = []
    first_seq = journal._next_seq
    try:
        for c in range(400):
            time.sleep(0.0005)
            s.push(data_id, c, "T", *series(c))
            now = time.monotonic()
            returned.append(now)
            committed = journal.committed_seq
            older = [i for i, t in enumerate(returned) if now - t > w]
            if older:  # chunk i has seq first_seq + i
                assert first_seq + older[-1] <= committed, (
                    f"push {c}: chunk {older[-1]}, returned {(now - returned[older[-1]]) * 1e3:.0f}"
                    f" ms ago, is not committed"
                )
    finally:
        release.set()
    report = s.finalize(data_id, timeout=20)
    assert report.ok, str(report)
    assert report.journal_waits > 0 and report.journal_wait_s > 0
    assert report.journal_wait_timeouts == 0
    assert "waited for the journal" in str(report)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("durability", "sync", "durability must be 'window' or 'commit', not 'sync'"),
        ("durability", None, "durability must be 'window' or 'commit', not None"),
        ("spool_max_unwritten_s", 0, "spool_max_unwritten_s must be a number of seconds > 0"),
        ("spool_max_unwritten_s", -1.0, "spool_max_unwritten_s"),
        ("spool_max_unwritten_s", float("nan"), "spool_max_unwritten_s"),
        ("spool_max_unwritten_s", "0.05", "spool_max_unwritten_s"),
        ("spool_max_unwritten_s", True, "spool_max_unwritten_s"),
    ],
    ids=["sync", "None", "zero", "negative", "nan", "str", "bool"],
)
def test_a_bad_durability_option_is_refused_by_name(
    streamer_factory: Callable[..., TimeseriesStreamer], option: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        streamer_factory(**{option: value})


def test_commit_durability_without_the_journal_is_refused(
    streamer_factory: Callable[..., TimeseriesStreamer],
) -> None:
    with pytest.raises(ValueError, match="durability='commit' needs the journal"):
        streamer_factory(durability="commit", spool=False)


def test_a_recovered_stream_with_missing_chunk_indexes_is_not_complete(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale, isolated_spool: Path
) -> None:
    """Chunks 5-7 never reached the journal (here: never pushed; after a crash: refused, or
    kept in memory while the disk failed). The recovering streamer cannot deliver them, and its
    report says which are missing instead of 'complete'."""
    chunks_down(fake)
    first = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = first.initialize(stream_name="holes")
    for c in [0, 1, 2, 3, 4, 8, 9]:
        first.push(data_id, c, "T", *series(c))
    crash(first)
    fake.responders.clear()
    rows = spool.status(isolated_spool)
    assert [r.gaps for r in rows] == [(("T", 5, 7),)]
    assert f"{data_id}: missing chunk indexes: T 5-7" in spool.format_status(rows, isolated_spool)

    second = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    report = second.finalize(data_id, timeout=10)
    assert report["atomscale"].chunks_delivered == 7
    assert report.gaps == (("T", 5, 7),)
    assert not report.ok
    text = str(report)
    assert text.startswith(f"stream {data_id}: INCOMPLETE")
    assert "missing chunk indexes (not in the journal the stream was recovered from): T 5-7" in (
        text
    )


def test_a_recovered_stream_without_holes_reports_none(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    chunks_down(fake)
    first = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = first.initialize(stream_name="whole")
    for c in range(6):
        first.push(data_id, c, "T", *series(c))
    crash(first)
    fake.responders.clear()
    report = streamer_factory(clock_sync=False, retry=QUICK, sleep=None).finalize(data_id, 10)
    assert report.ok and report.gaps == (), str(report)


def test_a_stream_resumed_and_pushed_to_keeps_the_record_of_the_first_process(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    """The second process's writer continues the journal's record of the stream instead of
    starting it afresh: the hole between what each process took still shows."""
    chunks_down(fake)
    first = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = first.initialize(stream_name="two lives")
    for c in range(5):
        first.push(data_id, c, "T", *series(c))
    crash(first)
    second = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    assert second.recovered_streams() == [data_id]
    for c in (8, 9):
        second.push(data_id, c, "T", *series(c))
    crash(second)
    fake.responders.clear()
    report = streamer_factory(clock_sync=False, retry=QUICK, sleep=None).finalize(data_id, 10)
    assert report["atomscale"].chunks_delivered == 7
    assert report.gaps == (("T", 5, 7),), str(report)
