"""Every ATLAS writer rule, checked on the session state machine alone (no server).

A tiny fake sink (:class:`Driver`) performs the actions: it records every action, answers calls
like a well-behaved server (or fails them on request) and feeds the answers back. Packet contents
are decoded with the generated protobuf classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import count
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from labstream._core.chunk import Chunk, make_chunk, validate_series
from labstream._proto.ma.streaming.api.v1 import api_pb2
from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2
from labstream.destinations.atlas import encoding as enc
from labstream.destinations.atlas.events import (
    Action,
    Answer,
    Call,
    CallFailed,
    ChannelSeen,
    ChunkDone,
    ChunkReady,
    Closed,
    CreateSessionCall,
    EndSessionCall,
    Event,
    Finalize,
    FormatIdReceived,
    GenerateKeyCall,
    GetFormatIdCall,
    KeyGenerated,
    MarkerAdded,
    Opened,
    Recovered,
    Rejected,
    SessionCreated,
    SessionEnded,
    WritePacket,
)
from labstream.destinations.atlas.machine import AtlasSession, SessionState
from labstream.destinations.atlas.options import MAIN_STREAM, AtlasOptions, ChannelOptions
from labstream.errors import AtlasProtocolError

T0 = 1_700_000_000.25  # epoch seconds
DS, STREAM = "Lab_MBE-1", "Stream1"
SESSION_KEY = "5b7d2c1e-0000-4000-8000-000000000001"
CALLS = (CreateSessionCall, GenerateKeyCall, GetFormatIdCall, EndSessionCall)


@pytest.fixture(scope="module")
def od() -> ModuleType:
    return open_data_pb2


@pytest.fixture(scope="module")
def api() -> ModuleType:
    return api_pb2


# ---------------------------------------------------------------------------------------------
# Helpers


def chunk(index: int, channels: dict[str, tuple[Any, Any]], *, multi: bool = False) -> Chunk:
    """A chunk built through labstream's own validation: name -> (timestamps_s, values)."""
    series = [
        validate_series("d", index, name, ts, vals, "°C", max_points=10**7)
        for name, (ts, vals) in channels.items()
    ]
    return make_chunk("d", index, series, multi=multi or len(series) > 1, offset_ns=0)


def grid(start: float, n: int, rate: float) -> np.ndarray:
    return start + np.arange(n) / rate


def one(index: int, ts: Any, vals: Any = None, name: str = "T") -> ChunkReady:
    ts = np.asarray(ts, dtype=np.float64)
    vals = np.arange(ts.size, dtype=np.float64) if vals is None else vals
    return ChunkReady(chunk(index, {name: (ts, vals)}))


def opened(**kw: Any) -> Opened:
    args: dict[str, Any] = {
        "data_source": DS,
        "stream": STREAM,
        "identifier": "growth-42",
        "details": {"physical_sample": "GaN-17", "project": "p1", "tags": "mbe,gan"},
        "creation_time_ns": 1_700_000_000 * 10**9,
    }
    args.update(kw)
    return Opened(**args)


class Driver:
    """A fake sink: performs actions, answers calls, records everything."""

    def __init__(
        self,
        options: AtlasOptions | None = None,
        *,
        fail: dict[type, str] | None = None,
        keys: Sequence[str] | None = None,
        state: SessionState | None = None,
    ) -> None:
        self.session = AtlasSession(options, state=state)
        self.log: list[Action] = []
        self.fail = dict(fail or {})
        self._keys = iter(keys) if keys is not None else (f"cfg-{i}" for i in count(1))
        self._formats: dict[tuple[str, ...], int] = {}
        self.auto = True

    def answer(self, call: Call) -> Answer:
        if type(call) in self.fail:
            return CallFailed(self.fail[type(call)])
        if isinstance(call, CreateSessionCall):
            return SessionCreated(SESSION_KEY)
        if isinstance(call, GenerateKeyCall):
            return KeyGenerated(next(self._keys))
        if isinstance(call, GetFormatIdCall):
            return FormatIdReceived(
                self._formats.setdefault(call.parameters, 1000 + len(self._formats))
            )
        return SessionEnded(True)

    def feed(self, *events: Event | Answer) -> list[Action]:
        start = len(self.log)
        for ev in events:
            actions = self.session.handle(ev)
            while actions:
                for a in actions[:-1]:  # a call is only ever the last action
                    assert not isinstance(a, CALLS), actions
                self.log.extend(actions)
                last = actions[-1]
                if self.auto and isinstance(last, CALLS):
                    actions = self.session.handle(self.answer(last))
                else:
                    actions = []
        return self.log[start:]

    # views of the log
    def writes(self, packet_type: str | None = None) -> list[WritePacket]:
        return [
            a
            for a in self.log
            if isinstance(a, WritePacket) and (packet_type is None or a.packet_type == packet_type)
        ]

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.log if isinstance(a, kind)]


def steps(log: Sequence[Action]) -> list[str]:
    """A readable trace: calls by name, writes as Type@stream."""
    out = []
    for a in log:
        if isinstance(a, WritePacket):
            out.append(f"{a.packet_type}@{a.stream or 'main'}")
        else:
            out.append(type(a).__name__)
    return out


def decode(od: ModuleType, w: WritePacket) -> Any:
    cls = getattr(od, f"{w.packet_type}Packet")
    return cls.FromString(w.content)


def column(msg: Any, j: int = 0) -> list[float]:
    return [s.value for s in msg.columns[j].double_samples.samples]


def started(options: AtlasOptions | None = None, **kw: Any) -> Driver:
    d = Driver(options, **kw)
    d.feed(opened())
    return d


# ---------------------------------------------------------------------------------------------
# The five steps, in exact order, on the right streams


def test_happy_path_order_streams_and_flags(od: ModuleType) -> None:
    d = Driver()
    d.feed(opened())
    c = chunk(
        0, {"T": (grid(T0, 10, 10.0), np.arange(10.0)), "P": (grid(T0, 10, 10.0), -np.ones(10))}
    )
    d.feed(ChunkReady(c), Finalize(termination_time_ns=1_700_000_100 * 10**9))
    assert steps(d.log) == [
        "CreateSessionCall",
        "NewSession@Stream1",
        "NewSession@main",
        "GenerateKeyCall",
        "Configuration@Stream1",
        "Configuration@main",
        "GetFormatIdCall",
        "PeriodicData@Stream1",
        "ChunkDone",
        "EndOfSession@Stream1",
        "EndOfSession@main",
        "EndSessionCall",
        "Closed",
    ]
    essential = {w.packet_type: w.is_essential for w in d.writes()}
    assert essential == {
        "NewSession": False,
        "Configuration": True,
        "PeriodicData": False,
        "EndOfSession": False,
    }
    assert d.of(Closed) == [Closed(ended=True)]
    create = d.of(CreateSessionCall)[0]
    assert (create.data_source, create.identifier, create.session_type, create.version) == (
        DS,
        "growth-42",
        "Session",
        1,
    )
    assert create.details["physical_sample"] == "GaN-17"
    ns = decode(od, d.writes("NewSession")[0])
    assert ns.data_source == DS and ns.creation_time.ToNanoseconds() == create.creation_time_ns
    eos = decode(od, d.writes("EndOfSession")[1])
    assert eos.data_source == DS and eos.termination_time.ToNanoseconds() == 1_700_000_100 * 10**9
    end = d.of(EndSessionCall)[0]
    assert (end.data_source, end.session_key) == (DS, SESSION_KEY)


def test_every_packet_id_increments_by_one_and_keys_match(od: ModuleType, api: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)), MarkerAdded("m", ns(T0 + 1)))
    d.feed(ChunkReady(chunk(1, {"P": (grid(T0 + 5, 5, 1.0), np.ones(5))})), Finalize(2 * 10**18))
    ws = d.writes()
    assert [w.packet_id for w in ws] == list(range(1, len(ws) + 1))
    for w in ws:
        assert w.session_key == SESSION_KEY and w.data_source == DS
        details = api.WriteDataPacketRequest.FromString(w.request_bytes()).detail
        assert details.session_key == details.message.session_key == SESSION_KEY
        assert details.message.id == w.packet_id
        assert details.message.type == w.packet_type
        assert details.message.is_essential == w.is_essential
        assert details.message.content == w.content
        assert details.stream == w.stream and details.data_source == DS


def test_data_goes_to_the_data_stream_only_everything_else_to_both() -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)), MarkerAdded("m", ns(T0)))
    d.feed(one(1, [T0 + 7, T0 + 8, T0 + 9.5]))
    d.feed(Finalize(2 * 10**18))
    by_type: dict[str, list[str]] = {}
    for w in d.writes():
        by_type.setdefault(w.packet_type, []).append(w.stream)
    assert by_type["PeriodicData"] == [STREAM]
    assert by_type["RowData"] == [STREAM]
    for both in ("NewSession", "Configuration", "Marker", "EndOfSession"):
        assert by_type[both] == [STREAM, MAIN_STREAM]
    assert all(w.is_essential for w in d.writes("Marker"))


# ---------------------------------------------------------------------------------------------
# Configuration


def test_configuration_has_one_group_and_full_definitions(od: ModuleType) -> None:
    d = started()
    d.feed(ChannelSeen("P_chamber", "Torr"))
    d.feed(one(0, grid(T0, 100, 10.0), np.linspace(20.0, 30.0, 100), name="T sub (°C)"))
    cfgs = [decode(od, w) for w in d.writes("Configuration")]
    assert cfgs[0] == cfgs[1]  # the same packet on both streams
    cfg = cfgs[0]
    assert cfg.config_id == "cfg-1"
    assert len(cfg.group_definitions) == 1
    group = cfg.group_definitions[0]
    assert (group.identifier, group.application_name) == ("labstream", "labstream")
    params = {p.name: p for p in cfg.parameter_definitions}
    assert set(params) == {"P_chamber", "T sub (°C)"}
    t = params["T sub (°C)"]
    assert t.identifier == "T_sub___C_:labstream"
    assert t.application_name == "labstream" and list(t.groups) == ["labstream"]
    assert t.units == "°C" and t.data_type == od.DATA_TYPE_FLOAT64
    assert list(t.frequencies) == [10.0]
    assert t.min_value == pytest.approx(19.0) and t.max_value == pytest.approx(31.0)
    assert (t.warning_min_value, t.warning_max_value) == (t.min_value, t.max_value)
    assert t.includes_row_data
    p = params["P_chamber"]
    assert p.units == "Torr" and list(p.frequencies) == [] and (p.min_value, p.max_value) == (0, 1)
    assert d.of(GenerateKeyCall)[0].parameters == ("P_chamber:labstream", "T_sub___C_:labstream")
    assert d.of(GetFormatIdCall)[0].parameters == ("T_sub___C_:labstream",)


def test_late_channel_gets_its_own_configuration_before_its_data(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)))
    before = len(d.log)
    d.feed(ChunkReady(chunk(1, {"P": (grid(T0, 5, 1.0), np.ones(5))})))
    assert steps(d.log[before:]) == [
        "GenerateKeyCall",
        "Configuration@Stream1",
        "Configuration@main",
        "GetFormatIdCall",
        "PeriodicData@Stream1",
        "ChunkDone",
    ]
    cfgs = [decode(od, w) for w in d.writes("Configuration")]
    assert [c.config_id for c in cfgs] == ["cfg-1", "cfg-1", "cfg-2", "cfg-2"]
    assert [p.identifier for p in cfgs[2].parameter_definitions] == ["P:labstream"]
    assert all(len(c.group_definitions) == 1 for c in cfgs)
    assert d.session.state.configs == {"cfg-1": ["T:labstream"], "cfg-2": ["P:labstream"]}
    # a known channel needs no new configuration
    d.feed(one(2, grid(T0 + 5, 5, 1.0)))
    assert len(d.writes("Configuration")) == 4


def test_duplicate_or_empty_config_id_is_asked_again() -> None:
    d = started(keys=["cfg-1", "cfg-1", "", "cfg-2"])
    d.feed(one(0, [T0, T0 + 1]))
    d.feed(ChunkReady(chunk(1, {"P": ([T0], [1.0])})))
    assert len(d.of(GenerateKeyCall)) == 4
    assert set(d.session.state.configs) == {"cfg-1", "cfg-2"}
    assert len(d.of(ChunkDone)) == 2


def test_key_generator_repeating_itself_rejects_the_chunk() -> None:
    d = started(keys=["cfg-1"] * 5 + ["cfg-9"])
    d.feed(one(0, [T0]))
    d.feed(ChunkReady(chunk(1, {"P": ([T0], [1.0])})))
    rejected = d.of(Rejected)
    assert [r.chunk_index for r in rejected] == [1]
    assert "already used" in rejected[0].reason
    d.feed(ChunkReady(chunk(2, {"P": ([T0 + 1], [1.0])})))  # the next chunk tries again
    assert d.session.state.channels["P"].config_id == "cfg-9"


def test_channel_options_override_the_definition(od: ModuleType) -> None:
    opts = AtlasOptions(
        application_name="MBE_lab",
        format_string="%5.1f",
        channels={
            "T": ChannelOptions(
                identifier="Substrate.Temperature",
                name="Substrate temperature",
                description="thermocouple",
                units="K",
                format_string="%6.2f",
                min_value=0.0,
                max_value=1500.0,
                warning_max_value=1200.0,
                frequency_hz=2.0,
            )
        },
    )
    d = started(opts)
    d.feed(one(0, grid(T0, 5, 1.0)), ChunkReady(chunk(1, {"P": ([T0, T0 + 0.3], [1.0, 2.0])})))
    (t,) = decode(od, d.writes("Configuration")[0]).parameter_definitions
    assert (t.identifier, t.name, t.description, t.units) == (
        "Substrate.Temperature",
        "Substrate temperature",
        "thermocouple",
        "K",
    )
    assert (t.format_string, t.min_value, t.max_value) == ("%6.2f", 0.0, 1500.0)
    assert (t.warning_min_value, t.warning_max_value) == (0.0, 1200.0)
    assert list(t.frequencies) == [2.0] and t.application_name == "MBE_lab"
    (p,) = decode(od, d.writes("Configuration")[2]).parameter_definitions
    assert p.identifier == "P:MBE_lab" and p.format_string == "%5.1f"
    assert list(p.frequencies) == [3.33333]  # row data: its mean rate, 6 digits


def test_identifier_collisions_are_disambiguated() -> None:
    d = started()
    d.feed(ChannelSeen("T a"), ChannelSeen("T_a"), ChannelSeen("T,a"))
    idents = [c.identifier for c in d.session.state.channels.values()]
    assert idents == ["T_a:labstream", "T_a_2:labstream", "T_a_3:labstream"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ChannelOptions(identifier="a,b"), "identifier"),
        (lambda: ChannelOptions(frequency_hz=0.0), "frequency_hz"),
        (lambda: AtlasOptions(application_name="my app"), "application_name"),
        (lambda: AtlasOptions(max_packet_bytes=5 * 2**20), "max_packet_bytes"),
        (lambda: AtlasOptions(max_packet_bytes=10), "cannot hold"),
    ],
)
def test_bad_options(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------------
# Data formats


def test_format_id_cached_per_ordered_parameter_list(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)), one(1, grid(T0 + 5, 5, 1.0)))
    assert len(d.of(GetFormatIdCall)) == 1
    ts = grid(T0 + 10, 5, 1.0)
    d.feed(ChunkReady(chunk(2, {"T": (ts, np.ones(5)), "P": (ts, np.ones(5))})))
    d.feed(ChunkReady(chunk(3, {"P": (ts + 5, np.ones(5)), "T": (ts + 5, np.ones(5))})))
    d.feed(ChunkReady(chunk(4, {"T": (ts + 10, np.ones(5)), "P": (ts + 10, np.ones(5))})))
    assert [c.parameters for c in d.of(GetFormatIdCall)] == [
        ("T:labstream",),
        ("T:labstream", "P:labstream"),
        ("P:labstream", "T:labstream"),
    ]
    fmts = [decode(od, w).data_format.data_format_identifier for w in d.writes("PeriodicData")]
    assert fmts == [1000, 1000, 1001, 1002, 1001]


# ---------------------------------------------------------------------------------------------
# Periodic timelines


def test_periodic_continuation_is_exact_across_chunks(od: ModuleType) -> None:
    d = started()
    ts = grid(T0, 3000, 60.0)  # 60 Hz: the interval is not a whole number of ns
    for i in range(30):
        d.feed(one(i, ts[i * 100 : (i + 1) * 100], np.full(100, float(i))))
    pkts = [decode(od, w) for w in d.writes("PeriodicData")]
    assert len(pkts) == 30 and not d.writes("RowData")
    ns = chunk(0, {"T": (ts, ts)}).channels[0].timestamps_ns
    tol = enc.noise_tolerance_ns(ns)
    for i, p in enumerate(pkts):
        assert len(p.columns[0].double_samples.samples) == 100
        assert abs(p.interval - 16_666_667) <= 1 + 2 * tol / 99  # noise of a 100-point mean
        assert abs(p.start_time - int(ns[i * 100])) <= tol  # stays on the real timestamps
        if i:
            prev = pkts[i - 1]
            assert p.start_time == prev.start_time + 100 * prev.interval  # exact arithmetic
    assert pkts[0].start_time == int(ns[0])


def test_single_point_chunks_continue_a_known_timeline(od: ModuleType) -> None:
    d = started()
    ts = grid(T0, 8, 2.0)
    d.feed(one(0, ts[:4]))
    for i in range(4, 8):
        d.feed(one(i, ts[i : i + 1]))
    pkts = [decode(od, w) for w in d.writes("PeriodicData")]
    assert len(pkts) == 5
    offsets = [p.start_time - pkts[0].start_time for p in pkts]
    assert offsets == [k * 5 * 10**8 for k in (0, 4, 5, 6, 7)]
    assert all(p.interval == 500_000_000 for p in pkts)


def test_single_point_without_timeline_is_row_data(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, [T0]), one(1, [T0 + 0.37]))
    rows = [decode(od, w) for w in d.writes("RowData")]
    ns = [chunk(0, {"T": ([t], [0.0])}).channels[0].timestamps_ns[0] for t in (T0, T0 + 0.37)]
    assert [list(r.timestamps) for r in rows] == [[ns[0]], [ns[1]]]


def test_gap_starts_a_new_timeline(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 10, 10.0)), one(1, grid(T0 + 1.5, 10, 10.0)))
    a, b = (decode(od, w) for w in d.writes("PeriodicData"))
    gap_start = chunk(1, {"T": ([T0 + 1.5], [0.0])}).channels[0].timestamps_ns[0]
    assert b.start_time == gap_start != a.start_time + 10 * a.interval
    # a 10-point mean at 1.7e9 s is only good to a few tens of ns
    assert abs(a.interval - 10**8) < 60 and abs(b.interval - 10**8) < 60
    assert d.session.state.timelines["T:labstream"].anchor_ns == gap_start


def test_overlap_starts_a_new_timeline(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 10, 10.0)), one(1, grid(T0 + 0.5, 10, 10.0)))
    a, b = (decode(od, w) for w in d.writes("PeriodicData"))
    assert b.start_time == chunk(1, {"T": ([T0 + 0.5], [0.0])}).channels[0].timestamps_ns[0]
    assert b.start_time < a.start_time + 10 * a.interval  # a new start, not the continuation


def test_rate_change_starts_a_new_timeline(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 10, 10.0)), one(1, grid(T0 + 1.0, 10, 20.0)))
    a, b = (decode(od, w) for w in d.writes("PeriodicData"))
    assert abs(a.interval - 10**8) < 60 and abs(b.interval - 5 * 10**7) < 60
    assert b.start_time == chunk(1, {"T": ([T0 + 1.0], [0.0])}).channels[0].timestamps_ns[0]
    assert d.session.state.timelines["T:labstream"].interval_ns == b.interval


@pytest.mark.parametrize("start", [T0 + k * 0.37 for k in range(5)])
def test_a_long_chunk_after_a_short_one_continues_the_timeline(
    od: ModuleType, start: float
) -> None:
    """A short first packet's interval carries float-seconds noise of several ns; a long packet
    after it (chunks queued behind a write travel as one) is the same rate and must continue the
    timeline exactly, not start a new one that overlaps the first (regression)."""
    d = started()
    ts = grid(start, 2_000, 10.0)
    d.feed(one(0, ts[:50]), one(1, ts[50:]))
    a, b = (decode(od, w) for w in d.writes("PeriodicData"))
    assert b.start_time == a.start_time + 50 * a.interval
    assert d.session.state.timelines["T:labstream"].samples == 2_000


def test_irregular_chunk_is_row_data_with_exact_timestamps(od: ModuleType) -> None:
    d = started()
    ts = T0 + np.array([0.0, 0.1, 0.25, 0.3, 0.9])
    vals = np.array([1.0, np.nan, np.inf, -0.0, 5.0])
    d.feed(one(0, ts, vals))
    (row,) = [decode(od, w) for w in d.writes("RowData")]
    assert list(row.timestamps) == chunk(0, {"T": (ts, vals)}).channels[0].timestamps_ns.tolist()
    got = [r.double_samples.samples[0] for r in row.rows]
    assert [s.status for s in got] == [1, 2, 3, 1, 1]
    assert np.array_equal([s.value for s in got], vals, equal_nan=True)
    assert "T:labstream" not in d.session.state.timelines


def test_row_data_breaks_the_timeline(od: ModuleType) -> None:
    d = started()
    d.feed(
        one(0, grid(T0, 4, 1.0)), one(1, [T0 + 4, T0 + 4.1, T0 + 6]), one(2, grid(T0 + 7, 4, 1.0))
    )
    p0, p2 = (decode(od, w) for w in d.writes("PeriodicData"))
    assert len(d.writes("RowData")) == 1
    timeline = d.session.state.timelines["T:labstream"]
    assert (timeline.anchor_ns, timeline.samples) == (p2.start_time, 4)  # a new timeline
    assert p0.interval == p2.interval == 10**9
    assert p2.start_time == chunk(2, {"T": ([T0 + 7], [0.0])}).channels[0].timestamps_ns[0]


def test_slower_than_uint32_interval_is_row_data(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1 / 5.0)))  # every 5 s: more than 4.294967295 s
    assert not d.writes("PeriodicData")
    (row,) = [decode(od, w) for w in d.writes("RowData")]
    assert len(row.timestamps) == 5
    d.feed(one(1, grid(T0 + 100, 5, 1 / 4.0)))  # every 4 s: fits
    assert decode(od, d.writes("PeriodicData")[0]).interval == 4_000_000_000


def test_long_chunk_split_under_budget_continues_exactly(od: ModuleType) -> None:
    d = started(AtlasOptions(max_packet_bytes=16 * 1024))
    ts = grid(T0, 5000, 1000.0)
    d.feed(one(0, ts[:3000]), one(1, ts[3000:]))
    pkts = [decode(od, w) for w in d.writes("PeriodicData")]
    assert len(pkts) > 2
    assert all(len(w.content) <= 16 * 1024 for w in d.writes("PeriodicData"))
    counts = [len(p.columns[0].double_samples.samples) for p in pkts]
    assert sum(counts) == 5000
    for prev, p, n in zip(pkts, pkts[1:], counts, strict=False):
        assert p.start_time == prev.start_time + n * prev.interval
    done = d.of(ChunkDone)
    assert sum(c.packets for c in done) == len(pkts)
    assert all(w.chunk_index in (0, 1) for w in d.writes("PeriodicData"))


# ---------------------------------------------------------------------------------------------
# Multi-channel chunks


def test_multi_with_shared_timestamps_is_one_packet_with_n_columns(od: ModuleType) -> None:
    d = started()
    ts = grid(T0, 50, 10.0)
    chans = {name: (ts, np.full(50, float(k))) for k, name in enumerate(["T", "P", "Rate"])}
    d.feed(ChunkReady(chunk(0, chans, multi=True)))
    (pkt,) = [decode(od, w) for w in d.writes("PeriodicData")]
    assert len(pkt.columns) == 3
    assert [column(pkt, j)[0] for j in range(3)] == [0.0, 1.0, 2.0]
    assert d.of(GetFormatIdCall)[0].parameters == ("T:labstream", "P:labstream", "Rate:labstream")
    # irregular shared timestamps: one RowData packet with one value per parameter per row
    irregular = T0 + 10 + np.array([0.0, 0.3, 0.35])
    d.feed(ChunkReady(chunk(1, {"T": (irregular, [1, 2, 3]), "P": (irregular, [4, 5, 6])})))
    (row,) = [decode(od, w) for w in d.writes("RowData")]
    assert [[s.value for s in r.double_samples.samples] for r in row.rows] == [
        [1, 4],
        [2, 5],
        [3, 6],
    ]


def test_multi_with_different_timestamps_is_one_packet_per_channel(od: ModuleType) -> None:
    d = started()
    c = chunk(0, {"T": (grid(T0, 10, 10.0), np.ones(10)), "P": (grid(T0, 5, 5.0), np.ones(5))})
    d.feed(ChunkReady(c))
    pkts = [decode(od, w) for w in d.writes("PeriodicData")]
    assert [len(p.columns) for p in pkts] == [1, 1]
    assert [round(p.interval, -3) for p in pkts] == [100_000_000, 200_000_000]
    assert d.of(ChunkDone) == [ChunkDone(0, 2)]
    assert len(d.of(GenerateKeyCall)) == 1  # both new channels in one configuration


# ---------------------------------------------------------------------------------------------
# Markers


def ns(t: float) -> int:
    return int(chunk(0, {"x": ([t], [0.0])}).channels[0].timestamps_ns[0])


def test_marker_inside_data_is_written_to_both_streams_essential(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 11, 1.0)))
    d.feed(MarkerAdded("Step 1", ns(T0 + 2), ns(T0 + 5), "Step", "ramp to 600"))
    m1, m2 = d.writes("Marker")
    assert (m1.stream, m2.stream) == (STREAM, MAIN_STREAM) and m1.is_essential
    msg = decode(od, m1)
    assert (msg.label, msg.timestamp, msg.end_time) == ("Step 1", ns(T0 + 2), ns(T0 + 5))
    assert (msg.type, msg.description, msg.source) == ("Step", "ramp to 600", "labstream")


def test_marker_is_held_until_data_covers_it(od: ModuleType) -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)), MarkerAdded("later", ns(T0 + 7)))
    assert not d.writes("Marker")
    assert len(d.session.state.held_markers) == 1
    d.feed(one(1, grid(T0 + 5, 2, 1.0)))  # data up to T0+6: still not covered
    assert not d.writes("Marker")
    d.feed(one(2, grid(T0 + 7, 2, 1.0)))
    assert steps(d.log[-4:]) == [
        "PeriodicData@Stream1",
        "Marker@Stream1",
        "Marker@main",
        "ChunkDone",
    ]
    assert decode(od, d.writes("Marker")[0]).end_time == ns(T0 + 7)  # a point marker
    assert d.session.state.held_markers == []


def test_marker_before_any_data_waits_for_the_first_data() -> None:
    d = started()
    d.feed(MarkerAdded("start", ns(T0)), one(0, grid(T0, 3, 1.0)))
    assert steps(d.log)[-4:] == [
        "PeriodicData@Stream1",
        "Marker@Stream1",
        "Marker@main",
        "ChunkDone",
    ]


def test_uncoverable_markers_are_refused_at_finalize() -> None:
    d = started()
    d.feed(one(0, grid(T0, 5, 1.0)))
    d.feed(MarkerAdded("too late", ns(T0 + 60)), MarkerAdded("too long", ns(T0 + 1), ns(T0 + 9)))
    d.feed(Finalize(2 * 10**18))
    refused = d.of(Rejected)
    assert [r.marker_label for r in refused] == ["too late", "too long"]
    assert all("outside the data's time range" in r.reason for r in refused)
    assert not d.writes("Marker")
    assert steps(d.log)[-4:] == [
        "EndOfSession@Stream1",
        "EndOfSession@main",
        "EndSessionCall",
        "Closed",
    ]


def test_marker_with_no_data_at_all_is_refused() -> None:
    d = started()
    d.feed(MarkerAdded("lonely", ns(T0)), Finalize(2 * 10**18))
    (r,) = d.of(Rejected)
    assert "no data was written" in r.reason


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (MarkerAdded("", 1), "label"),
        (MarkerAdded("m", -1), "timestamp_ns"),
        (MarkerAdded("m", 10, 5), "end_time_ns"),
    ],
)
def test_bad_markers_raise_before_anything(marker: MarkerAdded, message: str) -> None:
    d = started()
    with pytest.raises(ValueError, match=message):
        d.session.handle(marker)
    assert d.session.idle


# ---------------------------------------------------------------------------------------------
# Failures and finalize


def test_create_session_failure_rejects_everything_and_ends_nothing() -> None:
    d = Driver(fail={CreateSessionCall: "UNAVAILABLE after 5 attempts"})
    d.feed(opened(), one(0, [T0]), MarkerAdded("m", ns(T0)), Finalize(2 * 10**18))
    assert not d.writes()
    assert steps(d.log) == ["CreateSessionCall", "Rejected", "Rejected", "Closed"]
    r_chunk, r_marker = d.of(Rejected)
    assert r_chunk.chunk_index == 0 and "UNAVAILABLE" in r_chunk.reason
    assert r_marker.marker_label == "m"
    (closed,) = d.of(Closed)
    assert not closed.ended and "no session key" in closed.reason and "UNAVAILABLE" in closed.reason


def test_create_session_with_empty_key_is_a_failure() -> None:
    d = Driver()
    d.auto = False
    d.feed(opened())
    d.feed(SessionCreated(""), Finalize(1))
    assert d.session.state.session_key is None
    assert "empty session_key" in d.of(Closed)[0].reason


def test_finalize_with_no_data_still_ends_the_session() -> None:
    d = started()
    d.feed(Finalize(2 * 10**18))
    assert steps(d.log) == [
        "CreateSessionCall",
        "NewSession@Stream1",
        "NewSession@main",
        "EndOfSession@Stream1",
        "EndOfSession@main",
        "EndSessionCall",
        "Closed",
    ]


def test_finalize_before_opened_says_there_is_nothing_to_end() -> None:
    d = Driver()
    d.feed(Finalize(1))
    (closed,) = d.of(Closed)
    assert not closed.ended and "never opened" in closed.reason


def test_key_generator_failure_rejects_the_chunk_then_recovers() -> None:
    d = started(fail={GenerateKeyCall: "key generator down"})
    d.feed(one(0, grid(T0, 3, 1.0)))
    (r,) = d.of(Rejected)
    assert r.chunk_index == 0 and "key generator down" in r.reason
    assert not d.writes("Configuration")
    del d.fail[GenerateKeyCall]
    d.feed(one(1, grid(T0 + 3, 3, 1.0)), Finalize(2 * 10**18))
    assert steps(d.log)[-10:] == [
        "GenerateKeyCall",
        "Configuration@Stream1",
        "Configuration@main",
        "GetFormatIdCall",
        "PeriodicData@Stream1",
        "ChunkDone",
        "EndOfSession@Stream1",
        "EndOfSession@main",
        "EndSessionCall",
        "Closed",
    ]


def test_format_id_failure_rejects_the_chunk_and_is_not_cached() -> None:
    d = started(fail={GetFormatIdCall: "DEADLINE_EXCEEDED"})
    d.feed(one(0, grid(T0, 3, 1.0)))
    assert d.of(Rejected)[0].chunk_index == 0
    assert d.session.state.format_ids == {}
    del d.fail[GetFormatIdCall]
    d.feed(one(1, grid(T0 + 3, 3, 1.0)))
    assert len(d.of(GetFormatIdCall)) == 2 and d.of(ChunkDone) == [ChunkDone(1, 1)]
    assert len(d.writes("Configuration")) == 2  # configured once: the config did not fail


def test_end_session_failure_is_reported_in_closed() -> None:
    d = started(fail={EndSessionCall: "UNAVAILABLE"})
    d.feed(one(0, [T0]), Finalize(2 * 10**18))
    assert len(d.writes("EndOfSession")) == 2
    assert d.of(Closed) == [Closed(ended=False, reason="EndSession failed: UNAVAILABLE")]
    d2 = started()
    d2.auto = False
    d2.feed(Finalize(1))
    d2.feed(SessionEnded(success=False))
    assert d2.of(Closed)[0].reason == "EndSession failed: answered success=false"


def test_events_wait_behind_an_outstanding_call() -> None:
    d = Driver()
    d.auto = False
    d.feed(opened())
    # the sink keeps feeding while CreateSession is in flight: nothing comes out yet
    assert d.session.handle(one(0, grid(T0, 3, 1.0))) == []
    assert d.session.handle(Finalize(2 * 10**18)) == []
    assert not d.session.idle and isinstance(d.session.awaiting, CreateSessionCall)
    d.auto = True
    d.feed(SessionCreated(SESSION_KEY))
    assert steps(d.log) == [
        "CreateSessionCall",
        "NewSession@Stream1",
        "NewSession@main",
        "GenerateKeyCall",
        "Configuration@Stream1",
        "Configuration@main",
        "GetFormatIdCall",
        "PeriodicData@Stream1",
        "ChunkDone",
        "EndOfSession@Stream1",
        "EndOfSession@main",
        "EndSessionCall",
        "Closed",
    ]
    assert d.session.closed


def test_protocol_misuse_is_an_error() -> None:
    d = Driver()
    with pytest.raises(AtlasProtocolError, match="before Opened"):
        d.session.handle(one(0, [T0]))
    with pytest.raises(AtlasProtocolError, match="no call is outstanding"):
        d.session.handle(SessionCreated("k"))
    d.session.handle(opened())
    with pytest.raises(AtlasProtocolError, match="does not answer"):
        d.session.handle(KeyGenerated("k"))
    with pytest.raises(AtlasProtocolError, match="Opened twice"):
        d.session.handle(opened())
    d.feed(SessionCreated("k"), Finalize(1))
    with pytest.raises(AtlasProtocolError, match="after Finalize"):
        d.session.handle(one(0, [T0]))


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"data_source": "lab.mbe"}, ValueError),
        ({"data_source": ""}, ValueError),
        ({"stream": ""}, ValueError),
        ({"stream": "Stream 1"}, ValueError),
        ({"stream": "x" * 101}, ValueError),
        ({"identifier": " "}, ValueError),
        ({"details": {"n": 1}}, TypeError),
    ],
)
def test_opened_is_validated(kw: dict[str, Any], error: type[Exception]) -> None:
    s = AtlasSession()
    with pytest.raises(error):
        s.handle(opened(**kw))
    assert s.state.phase == "new" and s.idle


# ---------------------------------------------------------------------------------------------
# Durable state


def test_state_is_json_serialisable_and_resumes_exactly(od: ModuleType) -> None:
    d = started()
    ts = grid(T0, 40, 10.0)
    d.feed(one(0, ts[:20]), MarkerAdded("held", ns(T0 + 30)))
    saved = json.dumps(d.session.snapshot().to_dict())

    resumed = Driver(state=SessionState.from_dict(json.loads(saved)), keys=["cfg-new"])
    resumed.feed(one(1, ts[20:]), MarkerAdded("inside", ns(T0 + 1)), Finalize(2 * 10**18))
    # no new CreateSession / NewSession / Configuration / format lookup: all came from the state
    assert steps(resumed.log)[:2] == ["GetFormatIdCall", "PeriodicData@Stream1"] or steps(
        resumed.log
    )[:1] == ["PeriodicData@Stream1"]
    assert not resumed.of(CreateSessionCall) and not resumed.writes("Configuration")
    first_id = resumed.writes()[0].packet_id
    assert first_id == d.writes()[-1].packet_id + 1
    before = decode(od, d.writes("PeriodicData")[-1])
    after = decode(od, resumed.writes("PeriodicData")[0])
    assert after.start_time == before.start_time + 20 * before.interval
    assert [r.marker_label for r in resumed.of(Rejected)] == ["held"]
    assert resumed.of(Closed) == [Closed(ended=True)]


def test_a_resumed_session_goes_on_after_what_the_server_holds() -> None:
    """What a reader found beyond the snapshot (Recovered): ids continue after it, a landed
    Configuration is not written again, and an EndOfSession that landed is not written twice."""
    d = started()
    ts = grid(T0, 40, 10.0)
    d.feed(one(0, ts[:20]))
    saved = d.session.snapshot()
    # After the snapshot the crashed process configured channel P (cfg-9) and ended the data
    # stream; the resumed process learns it from the reader.
    resumed = Driver(state=saved, keys=["cfg-new"])
    last = d.writes()[-1].packet_id + 5
    resumed.feed(
        Recovered(
            last_packet_id=last,
            configs={"cfg-9": ("P:labstream",)},
            missing_configs=((MAIN_STREAM, b"landed-on-one-stream-only"),),
            ended_streams=frozenset({STREAM}),
        )
    )
    (completed,) = resumed.writes("Configuration")
    assert (completed.stream, completed.content, completed.packet_id) == (
        MAIN_STREAM,
        b"landed-on-one-stream-only",
        last + 1,
    )
    resumed.feed(one(1, ts[20:], name="P"), Finalize(2 * 10**18))
    assert len(resumed.writes("Configuration")) == 1  # P was configured before the crash
    assert [w.stream for w in resumed.writes("EndOfSession")] == [MAIN_STREAM]
    assert resumed.of(Closed) == [Closed(ended=True)]
    ids = [w.packet_id for w in resumed.writes()]
    assert ids == sorted(ids) and ids[0] > last


def test_a_resumed_session_does_not_write_again_what_it_holds(od: ModuleType) -> None:
    """A log read again after a crash hands the resumed session chunks it wrote before: each
    channel's points up to its latest written sample are left out and counted; later ones go on.
    A channel the process before wrote after the snapshot is known from the reader (last_ns)."""
    d = started()
    ts = grid(T0, 40, 10.0)
    d.feed(one(0, ts[:20]))
    resumed = Driver(state=d.session.snapshot(), keys=["cfg-new"])
    p_landed = ns(T0 + 5)
    resumed.feed(
        Recovered(last_packet_id=d.writes()[-1].packet_id, last_ns={"P:labstream": p_landed})
    )

    resumed.feed(one(0, ts[:20]))  # all of it is there already
    resumed.feed(one(1, ts[10:30]))  # half of it is
    resumed.feed(one(2, grid(T0, 100, 10.0), name="P"))  # P up to T0 + 5 s landed
    done = resumed.of(ChunkDone)
    assert [(c.chunk_index, c.skipped_points) for c in done] == [(0, 20), (1, 10), (2, 51)]
    assert done[0].packets == 0
    written = [decode(od, w) for w in resumed.writes("PeriodicData")]
    before = decode(od, d.writes("PeriodicData")[-1])
    assert written[0].start_time == before.start_time + 20 * before.interval  # T goes on
    assert p_landed < written[-1].start_time < ns(T0 + 5.1) + 1_000  # P: after what landed


def test_snapshot_needs_an_idle_session() -> None:
    d = Driver()
    d.auto = False
    d.feed(opened())
    with pytest.raises(AtlasProtocolError, match="idle"):
        d.session.snapshot()
    state = SessionState(phase="creating")
    with pytest.raises(ValueError, match="creating"):
        AtlasSession(state=state)
