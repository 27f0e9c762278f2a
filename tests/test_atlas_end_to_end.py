"""ATLAS end to end: the real client against the local Stream API, whose protocol checker must find
every session clean, with exactly the data that was pushed."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from labstream import Atlas, RetryPolicy, TimeseriesStreamer
from labstream._core.timebase import seconds_to_ns
from labstream.testing.atlas import AtlasEmulator, AtlasFaultPlan, run_in_thread
from labstream.testing.atlas_checker import SessionReport, check_session, format_report
from labstream.testing.fake import FakeAtomscale

T0 = 1_760_000_000.0
QUICK = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, jitter_s=0, cooldown_s=0.05)


@pytest.fixture
def atlas() -> Iterator[AtlasEmulator]:
    with run_in_thread() as emu:
        yield emu


def settings(emu: AtlasEmulator, **kw: object) -> Atlas:
    return Atlas(
        address=emu.address,
        key_generator_address=emu.key_generator_address,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def atlas_only(
    atlas: AtlasEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TimeseriesStreamer]]:
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    made: list[TimeseriesStreamer] = []

    def make(**kw: object) -> TimeseriesStreamer:
        kw.setdefault("atlas", settings(atlas))
        kw.setdefault("retry", QUICK)
        kw.setdefault("handle_sigterm", False)
        s = TimeseriesStreamer(**kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(timeout=5)


def the_session(emu: AtlasEmulator) -> SessionReport:
    (session,) = emu.sessions.values()
    report = check_session(session)
    assert report.clean, format_report(report, verbose=True)
    return report


def grid(start: float, n: int, hz: float) -> list[float]:
    return [start + i / hz for i in range(n)]


def ns(seconds: list[float]) -> list[int]:
    return [int(v) for v in seconds_to_ns(np.asarray(seconds))]


def close_ns(got: list[int], seconds: list[float], tolerance_ns: int = 500) -> bool:
    """Periodic packets rebuild times as start + i*interval: within float-seconds noise."""
    diff = np.abs(np.asarray(got, dtype=np.int64) - np.asarray(ns(seconds), dtype=np.int64))
    return len(got) == len(seconds) and int(diff.max()) <= tolerance_ns


def test_two_periodic_channels(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with streamer.stream(stream_name="MBE-growth-42", physical_sample="GaN-001") as s:
        for c in range(5):
            ts = grid(T0 + c * 10, 100, 10.0)
            s.push(c, "substrate_temperature", ts, [600.0 + i for i in range(100)], units="C")
            s.push(c, "chamber_pressure", ts, [1e-9 * (i + 1) for i in range(100)], units="mbar")
    assert s.report is not None
    assert s.report.ok, str(s.report)
    report = the_session(atlas)
    temp = report.parameters["substrate_temperature:labstream"]
    assert close_ns(temp.timestamps_ns, [t for c in range(5) for t in grid(T0 + c * 10, 100, 10.0)])
    assert temp.values == [600.0 + i for _ in range(5) for i in range(100)]
    assert temp.units == "C"
    assert report.parameters["chamber_pressure:labstream"].units == "mbar"
    session = next(iter(atlas.sessions.values()))
    assert session.identifier == "MBE-growth-42"
    assert session.details["physical_sample"] == "GaN-001"
    assert session.details["labstream_data_id"] == s.data_id
    periodic = [p for p in session.packets if p.type == "PeriodicData"]
    # A backlog of one channel's chunks goes as one packet: at most one per chunk and channel.
    assert 2 <= len(periodic) <= 10


def test_push_multi_shares_one_packet_and_nan_inf_get_statuses(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with streamer.stream(stream_name="multi") as s:
        for c in range(3):
            ts = grid(T0 + c * 5, 50, 10.0)
            values = [float(i) for i in range(50)]
            values[7], values[8] = math.nan, math.inf
            s.push_multi(
                c,
                {
                    "T": {"timestamps": ts, "values": values, "units": "C"},
                    "P": {"timestamps": ts, "values": [2.0] * 50, "units": "mbar"},
                },
            )
    report = the_session(atlas)
    session = next(iter(atlas.sessions.values()))
    data = [p for p in session.packets if p.type == "PeriodicData"]
    # One packet per chunk, or fewer when chunks queued behind a write travel together; either
    # way each packet holds both channels.
    assert 1 <= len(data) <= 3
    assert all(len(p.content.columns) == 2 for p in data)  # type: ignore[union-attr]
    t = report.parameters["T:labstream"]
    assert (t.statuses[7], t.statuses[8], t.statuses[9]) == (2, 3, 1)  # MISSING, ERROR, VALID
    assert math.isnan(t.values[7])
    assert t.values[8] == math.inf
    assert len(t.values) == 150
    assert math.isnan(t.values[57]) and t.values[108] == math.inf  # chunks 1 and 2 too


def test_masked_values_reach_atlas_as_missing(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with streamer.stream(stream_name="masked") as s:
        values = np.ma.masked_array(np.arange(50.0), mask=[i in (3, 4) for i in range(50)])
        s.push(0, "T", np.array(grid(T0, 50, 10.0)), values, units="C")
    t = the_session(atlas).parameters["T:labstream"]
    assert (t.statuses[2], t.statuses[3], t.statuses[4], t.statuses[5]) == (1, 2, 2, 1)
    assert math.isnan(t.values[3]) and math.isnan(t.values[4])  # not 3.0 and 4.0
    assert t.values[5] == 5.0


def test_irregular_channel_goes_as_row_data(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    rng = np.random.default_rng(1)
    ts = list(T0 + np.cumsum(rng.uniform(0.05, 2.0, 40)))
    streamer = atlas_only()
    with streamer.stream(stream_name="irregular") as s:
        s.push(0, "rate", ts[:20], list(range(20)))
        s.push(1, "rate", ts[20:], list(range(20, 40)))
        s.push(2, "slow", grid(T0, 5, 0.1), [1.0] * 5)  # every 10 s: beyond uint32 ns intervals
    report = the_session(atlas)
    session = next(iter(atlas.sessions.values()))
    data = [p.type for p in session.packets if p.type in ("RowData", "PeriodicData")]
    assert set(data) == {"RowData"}
    assert 2 <= len(data) <= 3  # "rate"'s two chunks may travel as one packet
    assert report.parameters["rate:labstream"].timestamps_ns == ns(ts)  # rows: exact ns
    assert report.parameters["rate:labstream"].values == [float(i) for i in range(40)]


def test_channel_added_mid_stream_gets_its_own_configuration(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with streamer.stream(stream_name="late-channel") as s:
        s.push(0, "T", grid(T0, 10, 1.0), [1.0] * 10)
        s.push(1, "T", grid(T0 + 10, 10, 1.0), [2.0] * 10)
        s.push(0, "shutter", grid(T0 + 12, 5, 1.0), [1.0] * 5)
    report = the_session(atlas)
    session = next(iter(atlas.sessions.values()))
    configs = [p for p in session.packets if p.type == "Configuration"]
    assert len(configs) == 4  # two configurations, each on the data stream and the main stream
    assert len({p.content.config_id for p in configs}) == 2  # type: ignore[union-attr]
    assert report.parameters["shutter:labstream"].values == [1.0] * 5


def test_marker_reaches_both_streams_inside_the_data(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with streamer.stream(stream_name="markers") as s:
        s.mark("Ga shutter open", timestamp=T0 + 3)  # held until data covers it
        s.push(0, "T", grid(T0, 10, 1.0), [1.0] * 10)
        s.mark("growth step", timestamp=T0 + 4, end_time=T0 + 6, description="GaN layer")
        s.mark("never covered", timestamp=T0 + 500)
    report = the_session(atlas)
    assert {m.label for m in report.markers} == {"Ga shutter open", "growth step"}
    for m in report.markers:
        assert set(m.streams) == {"Stream1", ""}
    assert s.report is not None
    (refused,) = s.report["atlas"].marker_rejections
    assert "never covered" in refused


def test_user_exception_still_ends_the_session(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    with pytest.raises(RuntimeError, match="pump tripped"), streamer.stream(stream_name="x") as s:
        s.push(0, "T", grid(T0, 10, 1.0), [1.0] * 10)
        raise RuntimeError("pump tripped")
    report = the_session(atlas)
    assert report.check("end_of_session_on_every_stream").passed
    assert report.check("end_session_called").passed
    assert report.parameters["T:labstream"].values == [1.0] * 10


def test_stream_api_down_at_start_then_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    port, kg_port = _free_port(), _free_port()
    address = Atlas(address=f"127.0.0.1:{port}", key_generator_address=f"127.0.0.1:{kg_port}")
    with TimeseriesStreamer(atlas=address, retry=QUICK, handle_sigterm=False) as streamer:
        data_id = streamer.initialize(stream_name="late-server")
        for c in range(3):
            streamer.push(data_id, c, "T", grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
        assert streamer.report(data_id)["atlas"].chunks_delivered == 0
        deadline = time.monotonic() + 5
        while streamer.report(data_id)["atlas"].retries == 0:  # it tried, and found no server
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # the server comes up on its address: the held session and chunks go through
        with run_in_thread(port=port, key_generator_port=kg_port) as emulator:
            report = streamer.finalize(data_id, timeout=20)
            sessions = emulator.sessions
    assert report.ok, str(report)
    assert report["atlas"].retries > 0
    (session,) = sessions.values()
    checked = check_session(session)
    assert checked.clean, format_report(checked, verbose=True)
    assert checked.parameters["T:labstream"].values == [0.0] * 10 + [1.0] * 10 + [2.0] * 10


def test_transient_unavailable_is_retried_without_duplicates(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    atlas.faults = AtlasFaultPlan(unavailable_fraction=0.3, seed=5)
    streamer = atlas_only()
    with streamer.stream(stream_name="flaky") as s:
        for c in range(20):
            s.push(c, "T", grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
    assert s.report is not None
    assert s.report.ok, str(s.report)
    assert s.report["atlas"].retries > 0
    report = the_session(atlas)
    assert report.parameters["T:labstream"].values == [
        float(c) for c in range(20) for _ in range(10)
    ]


def test_same_instant_in_both_destinations(
    atlas: AtlasEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAtomscale(clock_offset_s=1.25)  # the reference clock is ahead of this host
    streamer = TimeseriesStreamer(
        api_key="k",
        endpoint="http://atomscale.test",
        http_transport=fake.transport(),
        atlas=settings(atlas),
        retry=QUICK,
        handle_sigterm=False,
    )
    try:
        with streamer.stream(stream_name="both") as s:
            s.push(0, "T", grid(T0, 20, 10.0), [1.0] * 20)
        assert s.report is not None
        assert s.report.ok, str(s.report)
        offset = streamer.clock_status().offset_s
        assert offset == pytest.approx(1.25, abs=0.05)
    finally:
        streamer.close()
    atlas_ns = the_session(atlas).parameters["T:labstream"].timestamps_ns
    atomscale_s = fake.points(s.data_id, "T")[0]
    for a_ns, a_s, pushed in zip(atlas_ns, atomscale_s, grid(T0, 20, 10.0), strict=True):
        assert a_ns / 1e9 == pytest.approx(a_s, abs=5e-7)  # same instant in both
        assert a_s - pushed == pytest.approx(offset, abs=5e-7)  # corrected once


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_atlas_report_command_reads_a_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from labstream.cli import main

    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    record = tmp_path / "atlas.jsonl"
    with (
        run_in_thread(record_path=record) as emu,
        TimeseriesStreamer(atlas=settings(emu), handle_sigterm=False) as streamer,
        streamer.stream(stream_name="recorded") as s,
    ):
        s.push(0, "T", grid(T0, 10, 1.0), [1.0] * 10)
    assert main(["atlas", "report", str(record)]) == 0
    out = capsys.readouterr().out
    assert "identifier 'recorded'" in out
    assert "CLEAN" in out


def test_atlas_down_for_the_whole_stream_never_delays_atomscale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeAtomscale()
    dead = Atlas(
        address=f"127.0.0.1:{_free_port()}", key_generator_address=f"127.0.0.1:{_free_port()}"
    )
    with TimeseriesStreamer(
        api_key="k",
        endpoint="http://atomscale.test",
        http_transport=fake.transport(),
        atlas=dead,
        clock_sync=False,
        retry=QUICK,
        handle_sigterm=False,
    ) as streamer:
        data_id = streamer.initialize(stream_name="half-down")
        for c in range(20):
            streamer.push(data_id, c, "T", grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
        # Atomscale gets everything while ATLAS has nothing (bounded wait, no timing assertion).
        for _ in range(1000):
            if streamer.report(data_id)["atomscale"].chunks_delivered == 20:
                break
            time.sleep(0.01)
        assert streamer.report(data_id)["atlas"].chunks_delivered == 0
        report = streamer.finalize(data_id, timeout=0.5)
    assert report["atomscale"].complete
    assert report["atomscale"].points_delivered == 200
    assert fake.finalized == [data_id]
    atlas = report["atlas"]
    assert atlas.chunks_delivered == 0
    assert not atlas.closed
    assert "UNAVAILABLE" in (atlas.close_error or "")
    assert not report.ok


def test_a_chunk_over_4_mib_is_split_under_the_limit(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    n = 400_000  # 13 bytes a sample: ~5.2 MB in one chunk
    streamer = atlas_only(points_per_chunk=n)
    ts = (T0 + np.arange(n) / 1000.0).tolist()
    with streamer.stream(stream_name="big") as s:
        s.push(0, "fast", ts, np.arange(n, dtype=np.float64))
    assert s.report is not None
    assert s.report.ok, str(s.report)
    report = the_session(atlas)
    session = next(iter(atlas.sessions.values()))
    data = [p for p in session.packets if p.type == "PeriodicData"]
    assert len(data) >= 2
    assert report.parameters["fast:labstream"].values == list(np.arange(n, dtype=np.float64))


def test_the_sink_does_not_keep_what_it_delivered(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    streamer = atlas_only()
    data_id = streamer.initialize(stream_name="long")
    for c in range(50):
        streamer.push(data_id, c, "T", grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
    streamer.wait_delivered(data_id, 10)
    sink = streamer._core._runners[0].sink
    run = sink._runs[data_id]  # type: ignore[attr-defined]
    assert len(run.fed) <= 1  # only "open": delivered chunks are forgotten (memory stays flat)
    assert streamer.finalize(data_id).ok


def test_a_backlog_goes_out_in_fewer_larger_packets(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    """Chunks queued behind a stalled write travel together once it goes through: one packet for
    many chunks, the same samples and timeline as chunk by chunk, nothing twice."""
    streamer = atlas_only()
    atlas.faults = AtlasFaultPlan(down=True, methods=("*/WriteDataPacket",))
    with streamer.stream(stream_name="backlog") as s:
        for c in range(12):
            s.push(c, "T", grid(T0 + c * 10, 100, 10.0), [float(c * 100 + i) for i in range(100)])
        s.push(12, "P", grid(T0, 3, 1.0), [1.0, 2.0, 3.0])  # another channel: a group of its own
        deadline = time.monotonic() + 10
        while streamer.report(s.data_id)["atlas"].retries < 2:  # the first write is failing
            assert time.monotonic() < deadline, "ATLAS writes never failed"
            time.sleep(0.005)
        atlas.faults = AtlasFaultPlan()
    assert s.report is not None and s.report.ok, str(s.report)
    report = the_session(atlas)  # the protocol checks: ids, timelines, no overlap, no duplicate
    temp = report.parameters["T:labstream"]
    assert temp.values == [float(i) for i in range(1200)]
    assert close_ns(temp.timestamps_ns, grid(T0, 1200, 10.0))
    session = next(iter(atlas.sessions.values()))
    periodic = [p for p in session.packets if p.type == "PeriodicData"]
    assert len(periodic) < 12  # merged: at most one packet per 10,000 points once unblocked
    assert sum(len(p.content.columns[0].double_samples.samples) for p in periodic) == 1203  # type: ignore[union-attr]


def test_a_backlog_at_finalizes_deadline_is_written_before_the_session_ends(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    """ATLAS slower than finalize's deadline: nothing is counted as rejected, the session is not
    ended under the backlog (ATLAS would ignore what follows), the report says how far behind
    ATLAS is, and the session ends once every chunk is in."""
    streamer = atlas_only()
    data_id = streamer.initialize(stream_name="slow-atlas")
    time.sleep(0.2)  # the session is open before the writes slow down
    atlas.faults = AtlasFaultPlan(latency_s=0.05, methods=("PacketWriterService/*",))
    for c in range(20):  # interleaved channels: each write can carry only one of them
        for name in ("A", "B", "C"):
            streamer.push(data_id, c, name, grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
    report = streamer.finalize(data_id, timeout=0.05)["atlas"]
    assert report.chunks_rejected == 0 and report.chunks_dropped == 0
    assert not report.closed
    assert (report.close_error or "").startswith("not closed yet: ")
    assert "behind at finalize's deadline" in (report.close_error or "")
    for _ in range(500):  # bounded wait for the runner to finish and end the session
        (session,) = atlas.sessions.values()
        if session.end_session_seqs:
            break
        time.sleep(0.02)
    assert len(session.end_session_seqs) == 1  # ended, once
    checked = the_session(atlas)
    for name in ("A", "B", "C"):
        assert checked.parameters[f"{name}:labstream"].values == [
            float(c) for c in range(20) for _ in range(10)
        ]
    # The backlog went as few packets as its channel sets allow, not one per chunk.
    data = [p for p in session.packets if p.type in ("PeriodicData", "RowData")]
    assert len(data) < 60


def test_a_write_answered_after_its_deadline_is_not_repeated_forever(
    atlas: AtlasEmulator, atlas_only: Callable[..., TimeseriesStreamer]
) -> None:
    """The server stores each write but answers it later than the RPC deadline: the write is
    repeated with a longer deadline each time, so the stream moves on (each packet is stored at
    most a few times, not once per attempt until the server speeds up)."""
    streamer = atlas_only(atlas=settings(atlas, rpc_timeout_s=0.1))
    data_id = streamer.initialize(stream_name="late-answers")
    atlas.faults = AtlasFaultPlan(late_answer_s=0.3, methods=("PacketWriterService/*",))
    for c in range(3):
        streamer.push(data_id, c, "T", grid(T0 + c * 10, 10, 1.0), [float(c)] * 10)
    report = streamer.finalize(data_id, timeout=30)
    assert report.ok, str(report)
    (session,) = atlas.sessions.values()
    ids = [p.packet.id for p in session.packets if p.type == "PeriodicData"]
    repeats = {i: ids.count(i) for i in set(ids)}
    assert max(repeats.values()) <= 3, repeats  # 0.1 s, 0.2 s, then 0.4 s > 0.3 s: answered
    assert report["atlas"].retries >= 1
