"""A process that dies in the middle of an ATLAS batch, and the one that continues the session.

The first sink writes some packets of a batch and dies (its write function raises after `k`
writes: what reached the server stays there, as with kill -9). A second sink on the same journal
resumes the session and is given the chunks again, as the runner gives every chunk the journal
does not mark delivered. What counts is what the emulator holds, per channel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from labstream import Atlas, TimeseriesStreamer
from labstream._core.chunk import ChannelSeries, Chunk
from labstream._core.journal import Journal, chunk_size
from labstream.destinations.atlas.sink import AtlasSink
from labstream.destinations.base import StreamInfo
from labstream.testing.atlas import AtlasEmulator, AtlasFaultPlan
from labstream.testing.atlas import run_in_thread as atlas_in_thread
from labstream.testing.atlas_checker import check_session, format_report

T0_NS = 1_760_000_000_000_000_000
STEP_NS = 10_000_000  # 100 Hz
N = 20  # points per chunk
ALL = 5  # writes the batch makes
INFO = StreamInfo("d", stream_name="resume-mid-batch", created_at_ns=T0_NS)


class ProcessKilledError(Exception):
    """The process died here."""


def chunk(seq: int, channel: str, k: int) -> Chunk:
    """Chunk ``seq - 1``: the `k`-th N points of `channel`, right after its previous ones."""
    ts = T0_NS + (np.arange(N, dtype=np.int64) + k * N) * STEP_NS
    values = np.arange(N, dtype=np.float64) + k * N
    ts.flags.writeable = values.flags.writeable = False
    return Chunk("d", seq - 1, (ChannelSeries(channel, "V", ts, values),), False, 0, seq)


# Chunks 1-2 go whole. The batch of chunks 3-8 interleaves A and B and brings a new channel C:
# a Configuration on both streams and one data packet per channel, so a crash can come between
# any two of its writes.
FIRST = [chunk(1, "A", 0), chunk(2, "B", 0)]
BATCH = [
    chunk(3, "A", 1), chunk(4, "B", 1), chunk(5, "C", 0),
    chunk(6, "A", 2), chunk(7, "B", 2), chunk(8, "C", 1),
]  # fmt: skip
LAST = [chunk(9, "A", 3), chunk(10, "C", 2)]


def expected() -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for c in (*FIRST, *BATCH, *LAST):
        out.setdefault(f"{c.channels[0].name}:labstream", []).extend(c.channels[0].values)
    return out


@pytest.fixture
def emu() -> Iterator[AtlasEmulator]:
    with atlas_in_thread() as running:
        yield running


def settings(emu: AtlasEmulator, read_back: bool = True) -> Atlas:
    return Atlas(
        address=emu.address,
        key_generator_address=emu.key_generator_address,
        read_back=read_back,
        read_back_idle_s=0.3,
    )


def dies_after(sink: AtlasSink, writes: int) -> None:
    """From now on, `sink` dies when it is about to make write number ``writes + 1``; with
    ``ALL``, once every write of the batch is done, before the state after it is journaled."""
    if writes == ALL:

        def save(*args: Any) -> None:
            raise ProcessKilledError

        sink._save_state = save  # type: ignore[method-assign]
        return
    real = sink._write
    made = 0

    def write(request: bytes, timeout: float) -> Any:
        nonlocal made
        if made == writes:
            raise ProcessKilledError
        made += 1
        return real(request, timeout=timeout)

    sink._write = write  # type: ignore[assignment]


def crash_mid_batch(
    emu: AtlasEmulator, spool: Path, writes: int, read_back: bool, reader: bool = True
) -> AtlasSink:
    """Run both processes; return the second sink (it holds the count of points sent again).
    ``reader=False``: the server answers no reader call."""

    async def first() -> None:
        journal = Journal(spool)
        for c in (*FIRST, *BATCH):  # accepted by this process; LAST comes from the next one
            journal.reserve(chunk_size(c.points))
            journal.add_chunk(c, ("atlas",))
        sink = AtlasSink(settings(emu, read_back), journal=journal)
        try:
            await sink.open_stream(INFO)
            assert await sink.send_chunks(FIRST) == {}
            dies_after(sink, writes)
            with pytest.raises(ProcessKilledError):
                await sink.send_chunks(BATCH)
        finally:
            await sink.aclose()
            # What the dead process journaled before its last write; nothing is queued after it.
            journal.close()

    async def second() -> AtlasSink:
        journal = Journal(spool)
        sink = AtlasSink(settings(emu, read_back), journal=journal)
        try:
            await sink.open_stream(INFO)
            assert await sink.send_chunks(BATCH) == {}
            assert await sink.send_chunks(LAST) == {}
            await sink.close_stream(INFO)
        finally:
            await sink.aclose()
            journal.close()
        return sink

    if not reader:
        emu.faults = AtlasFaultPlan(down=True, methods=("ConnectionManagerService/*",))
    anyio.run(first)
    return anyio.run(second)


@pytest.mark.parametrize("writes", [0, 1, 2, 3, 4, ALL])
def test_a_crash_mid_batch_leaves_every_point_in_atlas_exactly_once(
    emu: AtlasEmulator, tmp_path: Path, writes: int
) -> None:
    sink = crash_mid_batch(emu, tmp_path, writes, read_back=True)
    (session,) = emu.sessions.values()  # continued, never a second one
    checked = check_session(session)
    assert checked.clean, format_report(checked, verbose=True)
    got = {k: list(v.values) for k, v in checked.parameters.items()}
    assert got == expected()
    assert sink.maybe_duplicated("d") == 0


def test_the_batch_goes_whole_in_the_original_run_so_the_crash_points_cover_it(
    emu: AtlasEmulator,
) -> None:
    """The parametrised crash points above fall inside the batch: it makes 5 writes."""

    async def run() -> int:
        sink = AtlasSink(settings(emu))
        made = 0
        real = sink._write

        def write(request: bytes, timeout: float) -> Any:
            nonlocal made
            made += 1
            return real(request, timeout=timeout)

        try:
            await sink.open_stream(INFO)
            await sink.send_chunks(FIRST)
            sink._write = write  # type: ignore[assignment]
            await sink.send_chunks(BATCH)
        finally:
            await sink.aclose()
        return made

    assert anyio.run(run) == ALL  # Configuration x2 (C), then A, B and C data


@pytest.mark.parametrize(("writes", "read_back"), [(3, False), (4, True)])
def test_without_a_reader_the_batch_in_flight_is_sent_again_and_counted(
    emu: AtlasEmulator, tmp_path: Path, writes: int, read_back: bool
) -> None:
    """Reading back switched off, or a server whose reader does not answer."""
    sink = crash_mid_batch(emu, tmp_path, writes, read_back=read_back, reader=False)
    (session,) = emu.sessions.values()
    checked = check_session(session)
    got = {k: list(v.values) for k, v in checked.parameters.items()}
    sent = sum(len(v) for v in expected().values())
    repeated = sum(len(v) for v in got.values()) - sent
    assert 0 < repeated <= sink.maybe_duplicated("d")
    assert sink.maybe_duplicated("d") == sum(c.points for c in BATCH)
    for name, values in expected().items():  # nothing missing
        assert set(got[name]) == set(values)


def test_the_report_of_the_resumed_stream_counts_what_may_be_there_twice(
    emu: AtlasEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamer dies while its ATLAS write is in flight; the next one, on a server without a
    reader, sends that batch again and its report says how many points that was."""
    from .test_journal import QUICK, crash, series

    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABSTREAM_SPOOL_DIR", str(tmp_path))
    where = settings(emu)
    emu.faults = AtlasFaultPlan(down=True, methods=("ConnectionManagerService/*",))
    first = TimeseriesStreamer(atlas=where, retry=QUICK, handle_sigterm=False)
    data_id = first.initialize(stream_name="dies-mid-write")
    first.push(data_id, 0, "T", *series(0, 10))
    first._thread.call(first._core.wait_delivered, data_id, 10)
    (runner,) = first._core._runners
    sink = runner.sink
    assert isinstance(sink, AtlasSink)

    async def never_answers(request: bytes, timeout: float) -> Any:
        await anyio.sleep_forever()

    sink._write = never_answers  # type: ignore[assignment]
    first.push(data_id, 1, "T", *series(1, 10))
    deadline = time.monotonic() + 5
    while not any(k[0] == "chunks" for k in sink._runs[data_id].fed):  # the write is in flight
        assert time.monotonic() < deadline
        time.sleep(0.01)
    crash(first)

    with TimeseriesStreamer(atlas=where, retry=QUICK, handle_sigterm=False) as second:
        report = second.finalize(data_id, timeout=10)
    assert report.ok, str(report)
    assert report["atlas"].points_maybe_duplicated == 10
    assert "maybe duplicated: 10 point(s)" in str(report)
    (session,) = emu.sessions.values()
    checked = check_session(session)
    assert checked.parameters["T:labstream"].values == [float(i) for i in range(20)]


# -- a crash between CreateSession and the journal -------------------------------------------------


@pytest.mark.parametrize("writes", [0, 1, 2])
def test_a_crash_right_after_create_session_is_continued_in_that_session(
    emu: AtlasEmulator, tmp_path: Path, writes: int
) -> None:
    """The process dies after CreateSession answered and before its key was journaled: after
    `writes` of the two NewSession packets (2: both, then before the journal commit)."""

    async def first() -> None:
        journal = Journal(tmp_path)
        sink = AtlasSink(settings(emu), journal=journal)
        real = sink._write
        made = 0

        def write(request: bytes, timeout: float) -> Any:
            nonlocal made
            if made == writes:
                raise ProcessKilledError
            made += 1
            return real(request, timeout=timeout)

        def save(*args: Any) -> None:
            raise ProcessKilledError

        sink._write = write  # type: ignore[assignment]
        sink._save_state = save  # type: ignore[method-assign]
        try:
            with pytest.raises(ProcessKilledError):
                await sink.open_stream(INFO)
        finally:
            await sink.aclose()
            journal.close()

    async def second() -> None:
        journal = Journal(tmp_path)
        sink = AtlasSink(settings(emu), journal=journal)
        try:
            await sink.open_stream(INFO)
            for batch in (FIRST, BATCH, LAST):
                assert await sink.send_chunks(batch) == {}
            await sink.close_stream(INFO)
        finally:
            await sink.aclose()
            journal.close()

    anyio.run(first)
    assert len(emu.sessions) == 1
    anyio.run(second)
    (session,) = emu.sessions.values()  # the one the dead process created, not a second one
    checked = check_session(session)
    assert checked.clean, format_report(checked, verbose=True)
    assert {k: list(v.values) for k, v in checked.parameters.items()} == expected()
