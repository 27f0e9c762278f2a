"""The hand-written ATLAS packet bytes parse back, through the generated protobuf classes, to
exactly what was encoded (bit for bit, NaN/inf/-0.0/subnormals included), and long chunks split
under the request budget without breaking the periodic timeline."""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from labstream._core.timebase import seconds_to_ns
from labstream._proto.ma.streaming.api.v1 import api_pb2
from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2
from labstream.destinations.atlas import encoding as enc

T0_NS = 1_700_000_000_123_456_789
SPECIAL = np.array(
    [
        0.0,
        -0.0,
        np.nan,
        -np.nan,
        np.inf,
        -np.inf,
        5e-324,  # smallest subnormal
        -2.2250738585072009e-308,  # largest subnormal, negative
        2.2250738585072014e-308,  # smallest normal
        1.7976931348623157e308,
        -1.7976931348623157e308,
        1e-300,
        3.141592653589793,
        -42.0,
    ]
)


@pytest.fixture(scope="module")
def od() -> ModuleType:
    return open_data_pb2


@pytest.fixture(scope="module")
def api() -> ModuleType:
    return api_pb2


def bits(values: Any) -> list[int]:
    return [struct.unpack("<Q", struct.pack("<d", float(v)))[0] for v in values]


def expected_status(values: np.ndarray) -> list[int]:
    return [2 if np.isnan(v) else 3 if np.isinf(v) else 1 for v in values]


def column_values(col: Any) -> tuple[list[float], list[int]]:
    samples = col.double_samples.samples
    return [s.value for s in samples], [s.status for s in samples]


# ---------------------------------------------------------------------------------------------
# Round trips


def test_periodic_special_values_round_trip_bit_for_bit(od: ModuleType) -> None:
    content = enc.encode_periodic(7, T0_NS, 16_666_667, [SPECIAL])
    msg = od.PeriodicDataPacket.FromString(content)
    assert msg.data_format.WhichOneof("format") == "data_format_identifier"
    assert msg.data_format.data_format_identifier == 7
    assert msg.start_time == T0_NS
    assert msg.interval == 16_666_667
    assert len(msg.columns) == 1
    values, statuses = column_values(msg.columns[0])
    assert bits(values) == bits(SPECIAL)
    assert statuses == expected_status(SPECIAL)
    assert statuses[2] == od.DATA_STATUS_MISSING and statuses[4] == od.DATA_STATUS_ERROR


def test_periodic_multi_column(od: ModuleType) -> None:
    cols = [np.arange(5.0), -np.arange(5.0) * 1e10, np.array([np.nan, 1, 2, np.inf, 4])]
    msg = od.PeriodicDataPacket.FromString(enc.encode_periodic(3, T0_NS, 1_000_000, cols))
    assert len(msg.columns) == 3
    for col, want in zip(msg.columns, cols, strict=True):
        values, statuses = column_values(col)
        assert bits(values) == bits(want)
        assert statuses == expected_status(want)


def test_a_packet_after_one_with_nan_and_inf_is_all_valid(od: ModuleType) -> None:
    """Small packets start from a kept template: one packet's MISSING/ERROR statuses must not
    leak into the next packet of the same shape, in either layout."""
    bad = [np.array([np.nan, 1.0, np.inf]), np.array([2.0, -np.inf, 3.0])]
    good = [np.array([4.0, 5.0, 6.0]), np.array([7.0, 8.0, 9.0])]
    ts = np.array([T0_NS, T0_NS + 5, T0_NS + 7], dtype=np.int64)
    for _ in range(2):
        periodic = od.PeriodicDataPacket.FromString(enc.encode_periodic(3, T0_NS, 10, bad))
        rows = od.RowDataPacket.FromString(enc.encode_rows(3, ts, bad))
        assert [column_values(c)[1] for c in periodic.columns] == [[2, 1, 3], [1, 3, 1]]
        assert [[s.status for s in r.double_samples.samples] for r in rows.rows] == [
            [2, 1],
            [1, 3],
            [3, 1],
        ]
        periodic = od.PeriodicDataPacket.FromString(enc.encode_periodic(3, T0_NS, 10, good))
        rows = od.RowDataPacket.FromString(enc.encode_rows(3, ts, good))
        assert [column_values(c) for c in periodic.columns] == [
            ([4.0, 5.0, 6.0], [1, 1, 1]),
            ([7.0, 8.0, 9.0], [1, 1, 1]),
        ]
        assert [[(s.value, s.status) for s in r.double_samples.samples] for r in rows.rows] == [
            [(4.0, 1), (7.0, 1)],
            [(5.0, 1), (8.0, 1)],
            [(6.0, 1), (9.0, 1)],
        ]
        assert list(rows.timestamps) == ts.tolist()


def test_periodic_wire_size_is_13_bytes_per_sample() -> None:
    n = 1000
    a = enc.encode_periodic(1, T0_NS, 10, [np.zeros(n)])
    b = enc.encode_periodic(1, T0_NS, 10, [np.zeros(2 * n)])
    assert len(b) - len(a) == 13 * n + 2  # + a byte more in each of the two length varints


def test_periodic_zero_defaults_and_uint64_extremes(od: ModuleType) -> None:
    msg = od.PeriodicDataPacket.FromString(
        enc.encode_periodic(2**64 - 1, 0, enc.UINT32_MAX, [np.array([1.0])])
    )
    assert msg.data_format.data_format_identifier == 2**64 - 1
    assert msg.start_time == 0
    assert msg.interval == enc.UINT32_MAX
    zero = od.PeriodicDataPacket.FromString(enc.encode_periodic(0, 5, 1, [np.array([1.0])]))
    # format id 0 is still a set oneof member (present on the wire)
    assert zero.data_format.WhichOneof("format") == "data_format_identifier"


def test_rows_round_trip_multi_column(od: ModuleType) -> None:
    ts = np.array([T0_NS, T0_NS + 3, T0_NS + 1_000_000_007], dtype=np.int64)
    cols = [np.array([1.5, np.nan, -0.0]), np.array([np.inf, 5e-324, 1e308])]
    msg = od.RowDataPacket.FromString(enc.encode_rows(9, ts, cols))
    assert msg.data_format.data_format_identifier == 9
    assert list(msg.timestamps) == ts.tolist()
    assert len(msg.rows) == 3
    for i, row in enumerate(msg.rows):
        values, statuses = column_values(row)
        want = np.array([cols[0][i], cols[1][i]])
        assert bits(values) == bits(want)
        assert statuses == expected_status(want)


def test_rows_special_values_single_column(od: ModuleType) -> None:
    ts = T0_NS + np.arange(SPECIAL.size, dtype=np.int64) * 123
    msg = od.RowDataPacket.FromString(enc.encode_rows(1, ts, [SPECIAL]))
    got = [row.double_samples.samples[0].value for row in msg.rows]
    assert bits(got) == bits(SPECIAL)


def test_sample_statuses() -> None:
    assert enc.sample_statuses([1.0, np.nan, np.inf, -np.inf, -0.0]).tolist() == [1, 2, 3, 3, 1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: enc.encode_periodic(1, 0, 0, [np.ones(2)]), "interval_ns"),
        (lambda: enc.encode_periodic(1, 0, enc.UINT32_MAX + 1, [np.ones(2)]), "interval_ns"),
        (lambda: enc.encode_periodic(1, -1, 1, [np.ones(2)]), "start_ns"),
        (lambda: enc.encode_periodic(1, 0, 1, []), "at least one column"),
        (lambda: enc.encode_periodic(1, 0, 1, [np.ones(2), np.ones(3)]), "same length"),
        (lambda: enc.encode_periodic(1, 0, 1, [np.ones(0)]), "at least one sample"),
        (lambda: enc.encode_rows(1, np.array([1, 2]), [np.ones(3)]), "timestamps"),
        (lambda: enc.encode_rows(1, np.array([-1]), [np.ones(1)]), "non-negative"),
    ],
)
def test_bad_arguments_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    data=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 4)),
        elements=finite_or_not,
    ),
    format_id=st.integers(0, 2**64 - 1),
    start=st.integers(0, 2**63 - 1),
    interval=st.integers(1, enc.UINT32_MAX),
)
def test_property_round_trip(
    od: ModuleType, data: np.ndarray, format_id: int, start: int, interval: int
) -> None:
    cols = [data[:, j] for j in range(data.shape[1])]
    p = od.PeriodicDataPacket.FromString(enc.encode_periodic(format_id, start, interval, cols))
    assert (p.data_format.data_format_identifier, p.start_time, p.interval) == (
        format_id,
        start,
        interval,
    )
    for col, want in zip(p.columns, cols, strict=True):
        values, statuses = column_values(col)
        assert bits(values) == bits(want)
        assert statuses == expected_status(want)
    ts = np.sort(np.abs(data[:, 0].view(np.int64)) % 2**62).astype(np.int64)
    r = od.RowDataPacket.FromString(enc.encode_rows(format_id, ts, cols))
    assert list(r.timestamps) == ts.tolist()
    for i, row in enumerate(r.rows):
        values, _ = column_values(row)
        assert bits(values) == bits(data[i])


# ---------------------------------------------------------------------------------------------
# Low-volume messages: byte-equal to the generated serialiser


def test_new_session_and_end_of_session_bytes(od: ModuleType) -> None:
    ns = od.NewSessionPacket(data_source="Lab_1")
    ns.creation_time.FromNanoseconds(T0_NS)
    assert enc.encode_new_session("Lab_1", T0_NS) == ns.SerializeToString()
    ns.utc_offset.FromNanoseconds(-3_600_000_000_000 - 5)
    assert enc.encode_new_session("Lab_1", T0_NS, -3_600_000_000_005) == ns.SerializeToString()
    parsed = od.NewSessionPacket.FromString(enc.encode_new_session("X", T0_NS, 7_200 * 10**9))
    assert parsed.utc_offset.ToNanoseconds() == 7_200 * 10**9
    eos = od.EndOfSessionPacket(data_source="Lab_1")
    eos.termination_time.FromNanoseconds(T0_NS + 1)
    assert enc.encode_end_of_session("Lab_1", T0_NS + 1) == eos.SerializeToString()


def test_marker_bytes(od: ModuleType) -> None:
    want = od.MarkerPacket(
        timestamp=T0_NS, end_time=T0_NS + 10, label="Step 2 °C", type="Step", source="labstream"
    ).SerializeToString()
    got = enc.encode_marker(
        timestamp_ns=T0_NS,
        end_time_ns=T0_NS + 10,
        label="Step 2 °C",
        marker_type="Step",
        source="labstream",
    )
    assert got == want


def test_configuration_bytes(od: ModuleType) -> None:
    p = enc.ParameterSpec(
        identifier="T_sub:labstream",
        name="T sub",
        application_name="labstream",
        units="°C",
        description="substrate",
        groups=("labstream",),
        format_string="%.6g",
        min_value=-0.0,
        max_value=1200.0,
        warning_min_value=0.0,
        warning_max_value=1100.0,
        frequencies=(10.0,),
        includes_row_data=True,
    )
    q = enc.ParameterSpec(identifier="P:labstream", name="P", application_name="labstream")
    g = enc.GroupSpec(identifier="labstream", name="labstream", application_name="labstream")
    want = od.ConfigurationPacket(
        config_id="cfg-1",
        parameter_definitions=[
            od.ParameterDefinition(
                identifier="T_sub:labstream",
                name="T sub",
                application_name="labstream",
                description="substrate",
                groups=["labstream"],
                units="°C",
                data_type=od.DATA_TYPE_FLOAT64,
                format_string="%.6g",
                min_value=-0.0,
                max_value=1200.0,
                warning_max_value=1100.0,
                frequencies=[10.0],
                includes_row_data=True,
            ),
            od.ParameterDefinition(
                identifier="P:labstream",
                name="P",
                application_name="labstream",
                data_type=od.DATA_TYPE_FLOAT64,
            ),
        ],
        group_definitions=[
            od.GroupDefinition(
                identifier="labstream", name="labstream", application_name="labstream"
            )
        ],
    ).SerializeToString()
    assert enc.encode_configuration("cfg-1", [p, q], g) == want


def test_envelope_bytes(od: ModuleType, api: ModuleType) -> None:
    content = enc.encode_periodic(1, T0_NS, 10, [np.arange(3.0)])
    packet = enc.encode_packet("PeriodicData", "key-1", False, content, 41)
    want_packet = od.Packet(type="PeriodicData", session_key="key-1", content=content, id=41)
    assert packet == want_packet.SerializeToString()
    essential = enc.encode_packet("Configuration", "k", True, b"\x0a\x01x", 0)
    assert (
        essential
        == od.Packet(
            type="Configuration", session_key="k", is_essential=True, content=b"\x0a\x01x"
        ).SerializeToString()
    )
    details = enc.encode_data_packet_details(packet, "Lab_1", "Stream1", "key-1")
    want_details = api.DataPacketDetails(
        message=want_packet, data_source="Lab_1", stream="Stream1", session_key="key-1"
    )
    assert details == want_details.SerializeToString()
    main = enc.encode_data_packet_details(packet, "Lab_1", "", "key-1")
    assert api.DataPacketDetails.FromString(main).stream == ""
    assert (
        enc.encode_write_data_packet_request(details)
        == api.WriteDataPacketRequest(detail=want_details).SerializeToString()
    )
    assert (
        enc.encode_write_data_packets_request([details, details])
        == api.WriteDataPacketsRequest(details=[want_details, want_details]).SerializeToString()
    )


@settings(max_examples=200, deadline=None)
@given(
    packet_type=st.sampled_from(["PeriodicData", "RowData", "Marker", "Configuration"]),
    session_key=st.text(max_size=40),
    is_essential=st.booleans(),
    content=st.binary(max_size=300),
    packet_id=st.integers(0, 2**64 - 1),
    data_source=st.text(max_size=20),
    stream=st.text(max_size=20),
)
def test_one_join_write_request_is_the_generated_message(
    od: ModuleType,
    api: ModuleType,
    packet_type: str,
    session_key: str,
    is_essential: bool,
    content: bytes,
    packet_id: int,
    data_source: str,
    stream: str,
) -> None:
    """What the sink sends for every packet: the same bytes as the generated classes write,
    empty strings, empty content and a zero id (all left out) included."""
    mine = enc.encode_write_request(
        packet_type, session_key, is_essential, content, packet_id, data_source, stream
    )
    packet = od.Packet(
        type=packet_type,
        session_key=session_key,
        is_essential=is_essential,
        content=content,
        id=packet_id,
    )
    details = api.DataPacketDetails(
        message=packet, data_source=data_source, stream=stream, session_key=session_key
    )
    assert mine == api.WriteDataPacketRequest(detail=details).SerializeToString()


# ---------------------------------------------------------------------------------------------
# Splitting under the byte budget


def test_periodic_split_under_budget_keeps_timeline_exact(od: ModuleType) -> None:
    n, budget = 100_000, 64 * 1024
    cols = [np.arange(n, dtype=np.float64), np.sin(np.arange(n, dtype=np.float64))]
    pkts = enc.encode_periodic_packets(5, T0_NS, 16_666_667, cols, budget)
    assert len(pkts) > 1
    assert sum(p.count for p in pkts) == n
    got: list[list[float]] = [[], []]
    for i, p in enumerate(pkts):
        assert len(p.content) <= budget
        assert p.packet_type == "PeriodicData"
        msg = od.PeriodicDataPacket.FromString(p.content)
        assert msg.start_time == T0_NS + p.offset * 16_666_667 == p.first_ns
        assert p.last_ns == p.first_ns + (p.count - 1) * 16_666_667
        if i:
            prev = pkts[i - 1]
            assert msg.start_time == prev.first_ns + prev.count * 16_666_667
        for j in range(2):
            got[j].extend(column_values(msg.columns[j])[0])
    assert got[0] == cols[0].tolist() and got[1] == cols[1].tolist()


def test_row_split_under_budget(od: ModuleType) -> None:
    n, budget = 20_000, 32 * 1024
    ts = T0_NS + np.cumsum(np.random.default_rng(1).integers(1, 10**6, n)).astype(np.int64)
    cols = [np.arange(n, dtype=np.float64)] * 3
    pkts = enc.encode_row_packets(5, ts, cols, budget)
    assert len(pkts) > 1
    all_ts: list[int] = []
    for p in pkts:
        assert len(p.content) <= budget
        msg = od.RowDataPacket.FromString(p.content)
        assert (msg.timestamps[0], msg.timestamps[-1]) == (p.first_ns, p.last_ns)
        all_ts.extend(msg.timestamps)
    assert all_ts == ts.tolist()


def test_default_budget_keeps_whole_request_under_4_mib(api: ModuleType) -> None:
    n = 400_000  # 5.2 MB of samples in one column
    pkts = enc.encode_periodic_packets(1, T0_NS, 1_000_000, [np.ones(n)])
    assert len(pkts) == 2
    for p in pkts:
        assert len(p.content) <= enc.DEFAULT_MAX_CONTENT_BYTES
        key = "0" * 36
        request = enc.encode_write_request(
            "PeriodicData", key, False, p.content, 2**63, "D" * 100, "S" * 100
        )
        assert len(request) < enc.MAX_REQUEST_BYTES
        api.WriteDataPacketRequest.FromString(request)


@pytest.mark.parametrize("k", [1, 2, 7, 50])
@pytest.mark.parametrize("budget", [2000, 64 * 1024, enc.DEFAULT_MAX_CONTENT_BYTES])
def test_packet_capacity_is_within_budget(k: int, budget: int) -> None:
    n = enc.max_periodic_samples(k, budget)
    ids = 2**64 - 1
    full = enc.encode_periodic(ids, 2**63, enc.UINT32_MAX, [np.zeros(n)] * k)
    assert len(full) <= budget
    assert budget - len(full) < 13 * k + 40  # one more sample would not fit (nearly tight)
    rows = enc.max_rows(k, budget)
    full_rows = enc.encode_rows(ids, np.arange(rows, dtype=np.int64), [np.zeros(rows)] * k)
    assert len(full_rows) <= budget


def test_budget_too_small() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        enc.max_periodic_samples(3, 50)
    with pytest.raises(ValueError, match="cannot hold"):
        enc.max_rows(3, 50)


# ---------------------------------------------------------------------------------------------
# Periodic detection


def grid_ns(rate_hz: float, n: int, t0: float = 1_700_000_000.25) -> np.ndarray:
    """Timestamps as a user computes them (float seconds), converted like labstream does."""
    return seconds_to_ns(t0 + np.arange(n) / rate_hz)


def test_noise_tolerance_near_2023_and_after_2038() -> None:
    assert enc.noise_tolerance_ns(np.array([1_700_000_000 * 10**9])) == 241
    assert enc.noise_tolerance_ns(np.array([2_200_000_000 * 10**9])) == 479


@pytest.mark.parametrize("rate", [0.25, 1.0, 3.0, 10.0, 60.0, 100.0, 1000.0, 20_000.0])
def test_float_grids_are_periodic(rate: float) -> None:
    ts = grid_ns(rate, 500)
    sp = enc.detect_spacing(ts)
    assert sp.periodic, sp.reason
    assert abs(sp.interval_ns - 1e9 / rate) <= 1


def test_accumulated_float_steps_are_periodic() -> None:
    t, out = 1_700_000_000.0, []
    for _ in range(1000):
        out.append(t)
        t += 0.1  # rounding is systematic: every step is the same float distance
    sp = enc.detect_spacing(seconds_to_ns(np.array(out)))
    assert sp.periodic
    assert abs(sp.interval_ns - 100_000_000) < 300


def test_jitter_is_not_periodic() -> None:
    ts = grid_ns(100.0, 200) + np.random.default_rng(0).integers(-5_000, 5_000, 200)
    sp = enc.detect_spacing(ts)
    assert not sp.periodic and sp.reason == "uneven steps"


def test_slow_drift_is_not_periodic() -> None:
    # each step within the step tolerance, but the first half runs 400 ns/step fast
    steps = np.r_[np.full(500, 1_000_000 + 200), np.full(499, 1_000_000 - 200)]
    ts = T0_NS + np.r_[0, np.cumsum(steps)].astype(np.int64)
    sp = enc.detect_spacing(ts)
    assert not sp.periodic and sp.reason == "drifting steps"


def test_interval_limit_is_uint32() -> None:
    ok = T0_NS + np.arange(5, dtype=np.int64) * enc.UINT32_MAX
    assert enc.detect_spacing(ok).interval_ns == enc.UINT32_MAX
    too_slow = T0_NS + np.arange(5, dtype=np.int64) * (enc.UINT32_MAX + 1)
    sp = enc.detect_spacing(too_slow)
    assert not sp.periodic and "uint32" in sp.reason


def test_degenerate_spacing() -> None:
    assert enc.detect_spacing(np.array([T0_NS])).reason == "single point"
    assert enc.detect_spacing(np.array([T0_NS] * 3)).reason == "repeated timestamps"
    with pytest.raises(ValueError, match="no timestamps"):
        enc.detect_spacing(np.array([], dtype=np.int64))


def test_fits_grid_allows_noise_and_integer_rounding() -> None:
    ts = grid_ns(60.0, 1000)
    tol = enc.noise_tolerance_ns(ts)
    assert enc.fits_grid(ts, int(ts[0]), 16_666_667, tol)
    assert not enc.fits_grid(ts, int(ts[0]) + 2 * tol, 16_666_667, tol)
    assert not enc.fits_grid(ts, int(ts[0]), 16_666_700, tol)
