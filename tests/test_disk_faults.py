"""A hostile disk under the journal: failed writes, a full or low disk, a read-only or wrong path.

The journal never loses what it accepted: what the disk cannot take is kept in memory (within a
bound) and still delivered, the report says it was not durable, and what is really lost is counted
as dropped with the reason. Each test checks what the destination stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from labstream import JournalError, LabstreamError, RetryPolicy, TimeseriesStreamer
from labstream._core.journal import FILE_NAME, Journal, chunk_size
from labstream.testing.fake import FakeAtomscale, Recorded

T0 = 1_760_000_000.0
QUICK = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0, cooldown_s=0.02)


def series(c: int, n: int = 100) -> tuple[list[float], list[float]]:
    return [T0 + c * n * 0.1 + i * 0.1 for i in range(n)], [float(c * n + i) for i in range(n)]


def hold_chunks(fake: FakeAtomscale) -> threading.Event:
    """Chunk uploads wait until the returned event is set: a destination that falls behind."""
    release = threading.Event()

    async def hold(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(hold)
    return release


def break_writes(streamer: TimeseriesStreamer) -> Journal:
    """Every journal transaction fails the way a full disk makes it fail."""
    journal = streamer._core._journal
    assert journal is not None

    def full(*_: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    journal._write_to_disk = full  # type: ignore[method-assign]
    return journal


def test_chunks_a_failed_write_could_not_store_are_still_delivered_and_reported(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The memory window is full, so the runner reads its backlog back from the journal: the
    chunks the disk refused must come back from memory, not vanish."""
    release = hold_chunks(fake)
    streamer = streamer_factory(clock_sync=False, memory_window_chunks=4, max_concurrency=1)
    data_id = streamer.initialize()
    journal = break_writes(streamer)
    for c in range(60):
        streamer.push(data_id, c, "T", *series(c))
    journal.flush()
    release.set()
    report = streamer.finalize(data_id, timeout=10)
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(6000)]
    dest = report["atomscale"]
    assert (dest.chunks_delivered, dest.chunks_pending, dest.chunks_dropped) == (60, 0, 0)
    assert report.ok
    assert not report.durable
    assert report.not_durable_chunks >= 55  # all but the few in flight when the writes began
    assert report.not_durable_reason is not None
    assert "database or disk is full" in report.not_durable_reason
    assert "not durable" in str(report)
    assert any(
        r.levelno == logging.ERROR and str(journal.path) in r.getMessage() for r in caplog.records
    )


def test_chunks_lost_with_a_failed_write_are_counted_as_dropped_with_the_reason(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    """Destination down, disk failing, streamer closed: these chunks are in no journal. The report
    must not call them pending (kept for later): they are dropped, and it says why."""
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(503) if rec.path.startswith("/tool-state/stream/chunk") else None
        )
    )
    streamer = streamer_factory(clock_sync=False, retry=QUICK, sleep=None)
    data_id = streamer.initialize()
    break_writes(streamer)
    for c in range(10):
        streamer.push(data_id, c, "T", *series(c))
    streamer.close(timeout=0.2)
    dest = streamer.report(data_id)["atomscale"]
    assert (dest.chunks_pending, dest.chunks_dropped, dest.points_dropped) == (0, 10, 1000)
    assert dest.drop_reason is not None
    assert "not in the journal" in dest.drop_reason
    assert "database or disk is full" in dest.drop_reason


def test_below_the_free_space_floor_chunks_are_delivered_from_memory_and_said_so(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = hold_chunks(fake)
    streamer = streamer_factory(
        clock_sync=False, memory_window_chunks=4, spool_min_free_bytes=1 << 62
    )
    data_id = streamer.initialize()
    for c in range(30):
        streamer.push(data_id, c, "T", *series(c))
    journal = streamer._core._journal
    assert journal is not None
    journal.flush()
    assert journal.pending_summary("atomscale", data_id)[0] == 0  # nothing written to the disk
    release.set()
    report = streamer.finalize(data_id, timeout=10)
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(3000)]
    assert report.refused_chunks == 0
    assert report["atomscale"].chunks_delivered == 30
    assert not report.durable
    assert report.not_durable_chunks > 0
    assert report.not_durable_reason is not None
    assert "free on the disk of" in report.not_durable_reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("durability is off" in m for m in warnings), warnings


def test_kept_in_memory_only_up_to_a_bound_then_refused_and_counted(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import labstream._core.journal as journal_module

    monkeypatch.setattr(journal_module, "MAX_MEMORY_BYTES", 10 * chunk_size(100))
    release = hold_chunks(fake)
    streamer = streamer_factory(
        clock_sync=False, memory_window_chunks=4, spool_min_free_bytes=1 << 62
    )
    data_id = streamer.initialize()
    for c in range(30):
        streamer.push(data_id, c, "T", *series(c))
    release.set()
    report = streamer.finalize(data_id, timeout=10)
    dest = report["atomscale"]
    assert report.refused_chunks == 30 - dest.chunks_accepted > 0
    assert report.refusal_reason is not None
    assert "in memory instead reached their bound" in report.refusal_reason
    assert dest.chunks_accepted <= 11
    accepted_points = [float(i) for i in range(dest.points_accepted)]
    assert fake.points(data_id, "T")[1] == accepted_points  # every accepted chunk delivered


def test_the_report_line_and_the_cli_summary_say_not_durable() -> None:
    from labstream import DestinationReport, StreamReport
    from labstream.cli.progress import summary_table

    report = StreamReport(
        "d",
        {"atomscale": DestinationReport("atomscale", 1, 10, 1, 10, closed=True)},
        not_durable_chunks=1,
        not_durable_points=10,
        not_durable_reason="less than 256.0 MB free on the disk of /x",
    )
    for text in (str(report), summary_table(report)):
        assert "not durable: 1 chunk(s) / 10 point(s)" in text
        assert "less than 256.0 MB free" in text


# -- a real, tiny filesystem ---------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at ``path``; skips the test where it cannot be mounted (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_a_disk_that_fills_up_mid_stream_loses_nothing(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale, tmp_path: Path
) -> None:
    """The floor is off (0): the disk fills up under the journal's writes, which then fail."""
    with tmpfs(tmp_path / "disk", "320k") as disk:
        release = hold_chunks(fake)
        streamer = streamer_factory(
            clock_sync=False,
            memory_window_chunks=4,
            max_concurrency=1,
            spool_dir=disk,
            spool_min_free_bytes=0,
        )
        data_id = streamer.initialize()
        for c in range(400):  # ~1.7 kB each on disk: more than the filesystem holds
            streamer.push(data_id, c, "T", *series(c))
        journal = streamer._core._journal
        assert journal is not None
        journal.flush()
        release.set()
        report = streamer.finalize(data_id, timeout=20)
        streamer.close()
        assert fake.points(data_id, "T")[1] == [float(i) for i in range(40_000)]
        assert report["atomscale"].chunks_delivered == 400
        assert report.not_durable_chunks > 0, str(report)
        assert report.not_durable_reason is not None
        assert "full" in report.not_durable_reason


def test_a_journal_directory_that_is_a_file_is_named_in_the_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "spool"
    not_a_dir.write_text("")
    with pytest.raises(JournalError, match=str(not_a_dir)) as caught:
        Journal(not_a_dir)
    assert isinstance(caught.value, LabstreamError)
    assert isinstance(caught.value.__cause__, OSError)


def test_an_existing_journal_on_a_read_only_disk_is_named_in_the_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as disk:
        Journal(disk).close()
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(disk)], capture_output=True, check=False
        )
        if remount.returncode != 0:
            pytest.skip("cannot remount read-only")
        with pytest.raises(JournalError, match=str(disk / FILE_NAME)) as caught:
            Journal(disk)
        assert isinstance(caught.value.__cause__, sqlite3.Error | OSError)


def test_the_spool_commands_name_a_journal_path_they_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from labstream.cli import main

    not_a_dir = tmp_path / "spool"
    not_a_dir.write_text("")
    assert main(["spool", "status", "--spool-dir", str(not_a_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot open the journal at {not_a_dir / FILE_NAME}" in err
    assert "Traceback" not in err


def test_a_backlog_the_disk_cannot_read_for_a_while_is_delivered_once_it_reads_again(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner reads its backlog back from the journal; a failed read must neither stop the
    streamer nor skip chunks."""
    release = hold_chunks(fake)
    streamer = streamer_factory(clock_sync=False, memory_window_chunks=4, max_concurrency=1)
    data_id = streamer.initialize()
    for c in range(40):
        streamer.push(data_id, c, "T", *series(c))
    journal = streamer._core._journal
    assert journal is not None
    journal.flush()
    reads = {"failed": 0}
    rows = journal._rows

    def flaky(sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        if "c.body" in sql and reads["failed"] < 5:
            reads["failed"] += 1
            raise sqlite3.OperationalError("disk I/O error")
        return rows(sql, args)

    journal._rows = flaky  # type: ignore[method-assign]
    release.set()
    report = streamer.finalize(data_id, timeout=10)
    assert reads["failed"] == 5
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(4000)]
    assert report.ok and report.durable
    assert any(str(journal.path) in r.getMessage() for r in caplog.records)


def test_the_report_flags_a_low_disk_until_space_is_back(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A healthy link needs no disk, so no chunk is counted; the flag is up all the same."""
    streamer = streamer_factory(clock_sync=False, spool_min_free_bytes=1 << 62)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *series(0))
    streamer.wait_delivered(data_id, 10)
    low = streamer.report(data_id)
    assert not low.durable and low.not_durable_chunks == 0
    assert "not durable: the journal is not writing chunks: less than" in str(low)
    journal = streamer._core._journal
    assert journal is not None
    journal.min_free_bytes = 0  # space is back, seen at the next check
    journal._free_checked_at = 0.0
    streamer.push(data_id, 1, "T", *series(1))
    report = streamer.finalize(data_id, timeout=10)
    assert report.ok and report.durable, str(report)
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(200)]
    assert any("durability is on again" in r.getMessage() for r in caplog.records)
