"""Tests for the ATLAS protocol checker: a clean session passes every check, and each rule broken
alone fails exactly its check with a finding that says where.

Sessions are built by hand with the generated message classes (no server), following the vendor's
five steps; each test changes one thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf.message import Message

from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from labstream.testing.atlas_checker import (
    CHECKS,
    FormatRecord,
    RecordedPacket,
    RecordedSession,
    SessionReport,
    check_session,
    check_sessions,
    decode_content,
    format_report,
)

DS = "Labstream_Test"
DATA = "Stream1"
MAIN = ""
KEY = "5d0f4c1e-0000-4000-8000-000000000001"
T0 = 1_700_000_000_000_000_000
IV = 10_000_000  # 100 Hz
TEMP, PRES = "Temp:labstream", "Pressure:labstream"


class Builder:
    """Records what a writer would send, as the emulator would record it."""

    def __init__(self) -> None:
        self.seq = 0
        self.next_id = 1
        self.packets: list[RecordedPacket] = []
        self.formats: list[FormatRecord] = []
        self.keys: set[str] = set()
        self.created: int | None = None
        self.ended: list[int] = []

    def _seq(self) -> int:
        self.seq += 1
        return self.seq

    def create(self) -> None:
        self.created = self._seq()

    def key(self) -> str:
        key = f"config-{len(self.keys) + 1}"
        self.keys.add(key)
        self._seq()
        return key

    def format_id(self, *params: str) -> int:
        fid = 1000 + len(self.formats)
        self.formats.append(FormatRecord(DS, fid, "parameter", tuple(params), seq=self._seq()))
        return fid

    def send(
        self,
        stream: str,
        content: Message,
        essential: bool = False,
        *,
        packet_type: str | None = None,
        raw: bytes | None = None,
        packet_id: int | None = None,
        session_key: str = KEY,
        details_key: str = KEY,
        data_source: str = DS,
    ) -> None:
        ptype = packet_type or type(content).__name__.removesuffix("Packet")
        body = raw if raw is not None else content.SerializeToString()
        packet = od.Packet(
            type=ptype,
            session_key=session_key,
            is_essential=essential,
            content=body,
            id=packet_id if packet_id is not None else self.next_id,
        )
        self.next_id += 1
        decoded, problem = decode_content(ptype, body)
        self.packets.append(
            RecordedPacket(
                seq=self._seq(),
                rpc="WriteDataPacket",
                call_id=0,
                received_ns=0,
                data_source=data_source,
                stream=stream,
                details_session_key=details_key,
                packet=packet,
                content=decoded,
                content_error=problem,
            )
        )

    def both(self, content: Message, essential: bool = False) -> None:
        for stream in (DATA, MAIN):
            self.send(stream, content, essential)

    def end_session(self) -> None:
        self.ended.append(self._seq())

    def session(self) -> RecordedSession:
        return RecordedSession(
            session_key=KEY,
            data_source=DS if self.created is not None else None,
            identifier="run-1",
            created_seq=self.created,
            end_session_seqs=tuple(self.ended),
            packets=tuple(self.packets),
            formats=tuple(self.formats),
            issued_keys=frozenset(self.keys),
        )


def config(config_id: str, *params: str, groups: int = 1) -> od.ConfigurationPacket:
    return od.ConfigurationPacket(
        config_id=config_id,
        parameter_definitions=[
            od.ParameterDefinition(
                identifier=p,
                name=p.split(":")[0],
                application_name="labstream",
                units="K",
                data_type=od.DATA_TYPE_FLOAT64,
                format_string="%.3f",
                min_value=0.0,
                max_value=100.0,
                warning_min_value=0.0,
                warning_max_value=100.0,
                groups=["labstream"],
                frequencies=[100.0],
            )
            for p in params
        ],
        group_definitions=[
            od.GroupDefinition(identifier=f"g{i}", name=f"Group {i}", application_name="labstream")
            for i in range(groups)
        ],
    )


def column(values: Sequence[float]) -> od.SampleColumn:
    samples = [od.DoubleSample(value=v, status=od.DATA_STATUS_VALID) for v in values]
    return od.SampleColumn(double_samples=od.DoubleSampleList(samples=samples))


def periodic(
    fid: int, start: int, *columns: Sequence[float], interval: int = IV
) -> od.PeriodicDataPacket:
    return od.PeriodicDataPacket(
        data_format=od.SampleDataFormat(data_format_identifier=fid),
        start_time=start,
        interval=interval,
        columns=[column(c) for c in columns],
    )


def rows(fid: int, timestamps: Sequence[int], values: Sequence[Sequence[float]]) -> Message:
    return od.RowDataPacket(
        data_format=od.SampleDataFormat(data_format_identifier=fid),
        timestamps=list(timestamps),
        rows=[
            od.SampleRow(
                double_samples=od.DoubleSampleList(
                    samples=[od.DoubleSample(value=v, status=od.DATA_STATUS_VALID) for v in row]
                )
            )
            for row in values
        ],
    )


def marker(t: int, label: str = "step 1") -> od.MarkerPacket:
    return od.MarkerPacket(timestamp=t, label=label, type="Step", description="growth step")


Hook = Callable[[Builder], None]


def clean(
    *,
    announce: Hook | None = None,
    configure: Hook | None = None,
    data: Hook | None = None,
    markers: Hook | None = None,
    end: Hook | None = None,
) -> Builder:
    """The five steps, each replaceable by a hook that does it differently."""
    b = Builder()
    b.create()
    if announce:
        announce(b)
    else:
        b.both(od.NewSessionPacket(data_source=DS))
    if configure:
        configure(b)
    else:
        b.both(config(b.key(), TEMP, PRES), essential=True)
    if data:
        data(b)
    else:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [20.0, 20.5, 21.0], [1.0, 1.1, 1.2]))
        b.send(DATA, periodic(fid, T0 + 3 * IV, [21.5, 22.0], [1.3, 1.4]))
        rid = b.format_id(TEMP)
        b.send(DATA, rows(rid, [T0 + 7 * IV, T0 + 9 * IV], [[23.0], [24.0]]))
    if markers:
        markers(b)
    else:
        b.both(marker(T0 + 2 * IV), essential=True)
    if end:
        end(b)
    else:
        b.both(od.EndOfSessionPacket(data_source=DS))
        b.end_session()
    return b


def failed(report: SessionReport) -> set[str]:
    return {c.name for c in report.failed}


def only_failure(b: Builder, name: str, *fragments: str) -> SessionReport:
    """Assert exactly check `name` fails, with a finding mentioning every fragment."""
    report = check_session(b.session())
    assert failed(report) == {name}, format_report(report)
    messages = " | ".join(f.message for f in report.check(name).findings)
    for fragment in fragments:
        assert fragment in messages, messages
    return report


# --------------------------------------------------------------------------------------------------
# The clean session


def test_clean_session_passes_every_check() -> None:
    report = check_session(clean().session())
    assert report.clean and report.ok, format_report(report)
    assert [c.name for c in report.checks] == [c.name for c in CHECKS]
    assert len(CHECKS) == len({c.name for c in CHECKS}) >= 20
    text = format_report(report)
    assert "CLEAN: all" in text and "FAIL" not in text
    assert report.packet_counts[DATA] == {
        "NewSession": 1,
        "Configuration": 1,
        "PeriodicData": 2,
        "RowData": 1,
        "Marker": 1,
        "EndOfSession": 1,
    }


def test_parameters_show_what_atlas_got() -> None:
    report = check_session(clean().session())
    temp, pres = report.parameters[TEMP], report.parameters[PRES]
    assert temp.timestamps_ns == [T0 + i * IV for i in (0, 1, 2, 3, 4, 7, 9)]
    assert temp.values == [20.0, 20.5, 21.0, 21.5, 22.0, 23.0, 24.0]
    assert temp.statuses == [od.DATA_STATUS_VALID] * 7
    assert temp.packets == 3 and temp.configured and temp.units == "K"
    assert pres.values == [1.0, 1.1, 1.2, 1.3, 1.4] and pres.packets == 2
    assert [(m.label, m.timestamp_ns, m.streams) for m in report.markers] == [
        ("step 1", T0 + 2 * IV, (DATA, MAIN))
    ]
    as_json = report.to_json()
    assert as_json["clean"] and as_json["parameters"][TEMP]["values"][0] == 20.0


def test_statuses_and_non_double_samples() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        ints = od.SampleColumn(
            int32_samples=od.Int32SampleList(
                samples=[od.Int32Sample(value=3, status=od.DATA_STATUS_ERROR)] * 2
            )
        )
        strings = od.SampleColumn(
            string_samples=od.StringSampleList(
                samples=[od.StringSample(value="x", status=od.DATA_STATUS_MISSING)] * 2
            )
        )
        b.send(
            DATA,
            od.PeriodicDataPacket(
                data_format=od.SampleDataFormat(data_format_identifier=fid),
                start_time=T0,
                interval=IV,
                columns=[ints, strings],
            ),
        )

    report = check_session(clean(data=data).session())
    assert report.parameters[TEMP].values == [3.0, 3.0]
    assert report.parameters[TEMP].statuses == [od.DATA_STATUS_ERROR] * 2
    assert all(math.isnan(v) for v in report.parameters[PRES].values)
    assert "status error 2" in format_report(report)


# --------------------------------------------------------------------------------------------------
# One broken rule per test


def test_create_session_missing() -> None:
    b = clean()
    b.created = None
    only_failure(b, "create_session", "no CreateSession returned session key")


@pytest.mark.parametrize("stream", [DATA, MAIN])
def test_new_session_missing_on_a_stream(stream: str) -> None:
    def announce(b: Builder) -> None:
        b.send(DATA if stream == MAIN else MAIN, od.NewSessionPacket(data_source=DS))

    report = only_failure(clean(announce=announce), "new_session_on_every_stream", "no NewSession")
    assert report.check("new_session_on_every_stream").findings[0].stream == stream


def test_new_session_late() -> None:
    def configure(b: Builder) -> None:
        cfg = config(b.key(), TEMP, PRES)
        b.send(MAIN, cfg, essential=True)
        b.send(DATA, cfg, essential=True)

    def announce(b: Builder) -> None:
        b.send(MAIN, od.NewSessionPacket(data_source=DS))

    b = Builder()
    b.create()
    announce(b)
    configure(b)
    b.send(DATA, od.NewSessionPacket(data_source=DS))  # after the configuration on DATA
    fid = b.format_id(TEMP, PRES)
    b.send(DATA, periodic(fid, T0, [1.0, 2.0], [3.0, 4.0]))
    b.both(od.EndOfSessionPacket(data_source=DS))
    b.end_session()
    only_failure(b, "new_session_on_every_stream", "came after 1 other packet")


def test_data_before_configuration_on_its_stream() -> None:
    def configure(b: Builder) -> None:
        b.send(MAIN, config(b.key(), TEMP, PRES), essential=True)

    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        b.send(DATA, b.packets[-2].content or od.ConfigurationPacket(), essential=True)  # late
        b.send(DATA, periodic(fid, T0 + 3 * IV, [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], [1.0] * 7))

    b = clean(configure=configure, data=data)
    report = check_session(b.session())
    assert failed(report) == {"configuration_before_data"}, format_report(report)
    findings = report.check("configuration_before_data").findings
    assert {f.parameter for f in findings} == {TEMP, PRES}
    assert all(f.stream == DATA and f.packet_id == 4 for f in findings)
    # it was on the main stream already: say so, not "defined later"
    assert "(configured on '' but not on 'Stream1', which got it only later)" in findings[0].message


def test_configuration_only_on_one_stream() -> None:
    def configure(b: Builder) -> None:
        b.send(MAIN, config(b.key(), TEMP, PRES), essential=True)

    b = clean(configure=configure)
    report = check_session(b.session())
    # no config on the data stream: its data and its marker are both ignored by ATLAS
    assert failed(report) == {
        "configuration_on_every_stream",
        "configuration_before_data",
        "markers_routed",
    }
    finding = report.check("configuration_on_every_stream").findings[0]
    assert finding.stream == DATA and "was sent on '' but not on 'Stream1'" in finding.message
    before = report.check("configuration_before_data").findings[0]
    assert "(configured on '' but not on 'Stream1')" in before.message


def test_configuration_missing_on_main_stream() -> None:
    def configure(b: Builder) -> None:
        b.send(DATA, config(b.key(), TEMP, PRES), essential=True)

    def markers(b: Builder) -> None:
        b.send(DATA, marker(T0 + 2 * IV), essential=True)
        b.send(MAIN, marker(T0 + 2 * IV), essential=True)

    report = check_session(clean(configure=configure, markers=markers).session())
    assert failed(report) == {"configuration_on_every_stream", "markers_routed"}
    assert "precedes any ConfigurationPacket" in report.check("markers_routed").findings[0].message


def test_unknown_format_id() -> None:
    def data(b: Builder) -> None:
        b.format_id(TEMP, PRES)
        b.send(DATA, periodic(424242, T0, [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]))

    only_failure(
        clean(data=data), "data_formats_resolved", "data format id 424242 was never issued"
    )


def test_format_id_of_unconfigured_parameter() -> None:
    def configure(b: Builder) -> None:
        b.both(config(b.key(), TEMP), essential=True)

    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))

    report = check_session(clean(configure=configure, data=data).session())
    assert failed(report) == {"data_formats_resolved", "configuration_before_data"}
    finding = report.check("data_formats_resolved").findings[0]
    assert finding.parameter == PRES and "no ConfigurationPacket of this session" in finding.message
    assert "never in this session" in report.check("configuration_before_data").findings[0].message


def test_format_id_of_another_data_source() -> None:
    def data(b: Builder) -> None:
        b.formats.append(FormatRecord("Other", 77, "parameter", (TEMP, PRES), seq=b._seq()))
        b.send(DATA, periodic(77, T0, [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]))

    only_failure(clean(data=data), "data_formats_resolved", "issued for data source 'Other'")


@pytest.mark.parametrize("groups", [0, 2])
def test_not_exactly_one_group(groups: int) -> None:
    def configure(b: Builder) -> None:
        b.both(config(b.key(), TEMP, PRES, groups=groups), essential=True)

    only_failure(
        clean(configure=configure), "one_group_per_configuration", f"has {groups} GroupDefinitions"
    )


def test_configuration_not_essential() -> None:
    def configure(b: Builder) -> None:
        b.both(config(b.key(), TEMP, PRES), essential=False)

    report = only_failure(clean(configure=configure), "configuration_essential", "not essential")
    assert len(report.check("configuration_essential").findings) == 2


def test_config_id_reused_for_another_configuration() -> None:
    def configure(b: Builder) -> None:
        cid = b.key()
        b.both(config(cid, TEMP), essential=True)
        b.both(config(cid, PRES), essential=True)

    only_failure(clean(configure=configure), "config_id_unique", "names 2 different configurations")


def test_config_id_not_from_key_generator() -> None:
    def configure(b: Builder) -> None:
        b.both(config("ConfigPacket", TEMP, PRES), essential=True)

    only_failure(
        clean(configure=configure),
        "config_id_from_key_generator",
        "'ConfigPacket'",
        "key generator",
    )


@pytest.mark.parametrize(
    ("scale", "unit"),
    [(10**9, "seconds"), (10**6, "milliseconds"), (10**3, "microseconds")],
)
def test_timestamps_not_in_ns(scale: int, unit: str) -> None:
    t0 = T0 // scale

    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, t0, [1.0, 2.0], [3.0, 4.0], interval=IV))

    def markers(b: Builder) -> None:
        b.both(marker(t0 + IV // 2), essential=True)

    report = only_failure(
        clean(data=data, markers=markers), "timestamps_in_ns", f"looks like {unit}"
    )
    assert len(report.check("timestamps_in_ns").findings) == 3  # data + the marker on both streams


def test_interval_not_in_ns() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        # 100 Hz written as 10 (ms); samples end up 10 ns apart
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [3.0, 4.0, 5.0], interval=10))

    def markers(b: Builder) -> None:
        b.both(marker(T0 + 10), essential=True)

    only_failure(clean(data=data, markers=markers), "timestamps_in_ns", "interval 10 ns")


def test_periodic_overlap() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        b.send(DATA, periodic(fid, T0 + 2 * IV + 5, [4.0, 5.0], [4.0, 5.0]))  # wall-clock jitter

    report = only_failure(clean(data=data), "periodic_no_overlap", f"starts {IV - 5} ns before")
    assert report.ok is False


def test_periodic_gap_is_a_warning() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        b.send(DATA, periodic(fid, T0 + 3 * IV + 7, [4.0, 5.0], [4.0, 5.0]))

    report = only_failure(clean(data=data), "periodic_contiguous", "starts 7 ns after")
    assert report.ok and not report.clean  # warnings only
    assert "WARN  periodic_contiguous" in format_report(report)


def test_one_sample_per_packet() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        for i in range(4):
            b.send(DATA, periodic(fid, T0 + i * IV, [float(i)], [float(i)]))

    only_failure(clean(data=data), "samples_batched", "4 of 4 PeriodicDataPackets")


def test_columns_of_unequal_length() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0]))

    only_failure(clean(data=data), "columns_consistent", "columns of unequal length [3, 2]")


def test_columns_not_matching_format_and_ragged_rows() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0]))
        b.send(DATA, rows(fid, [T0 + 3 * IV, T0 + 4 * IV], [[1.0, 2.0], [3.0]]))

    report = only_failure(clean(data=data), "columns_consistent", "1 column(s) for 2 parameter(s)")
    assert (
        "rows of [1, 2] value(s) for 2 parameter(s)"
        in report.check("columns_consistent").findings[1].message
    )


def test_marker_outside_the_data() -> None:
    def markers(b: Builder) -> None:
        b.both(marker(T0 + 60 * IV, "after the end"), essential=True)

    only_failure(clean(markers=markers), "markers_within_data", "'after the end'", "outside")


@pytest.mark.parametrize("problem", ["one stream", "not essential"])
def test_marker_routing(problem: str) -> None:
    def markers(b: Builder) -> None:
        if problem == "one stream":
            b.send(DATA, marker(T0 + 2 * IV), essential=True)
        else:
            b.both(marker(T0 + 2 * IV), essential=False)

    expected = "but not on ''" if problem == "one stream" else "is not essential"
    only_failure(clean(markers=markers), "markers_routed", expected)


def test_packet_ids_not_increasing() -> None:
    b = clean()
    b.packets[5] = replace(
        b.packets[5], packet=od.Packet(**{**_fields(b.packets[5].packet), "id": 2})
    )
    report = only_failure(b, "packet_ids_increasing", "packet id 2", "after packet id 5")
    assert report.check("packet_ids_increasing").findings[0].stream == DATA


def test_packet_session_key_differs_from_details() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), session_key="stale-key")

    only_failure(clean(data=data), "session_key_consistent", "Packet.session_key is 'stale-key'")


def test_data_source_differs() -> None:
    def announce(b: Builder) -> None:
        b.send(DATA, od.NewSessionPacket(data_source="Default"))
        b.send(MAIN, od.NewSessionPacket(data_source=DS))

    only_failure(
        clean(announce=announce),
        "data_source_consistent",
        "NewSessionPacket.data_source is 'Default'",
    )


def test_type_does_not_match_content() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        rid = b.format_id(TEMP)
        # RowData content labelled PeriodicData
        b.send(DATA, rows(rid, [T0 + 5 * IV], [[1.0]]), packet_type="PeriodicData")

    report = only_failure(
        clean(data=data), "packet_type_matches_content", "does not define", "decodes cleanly as"
    )
    assert "RowData" in report.check("packet_type_matches_content").findings[0].message


def test_unknown_type_and_corrupt_content() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        b.send(DATA, od.NewSessionPacket(), packet_type="Telemetry")
        b.send(DATA, od.NewSessionPacket(), packet_type="Marker", raw=b"\xff\xff\xff")

    report = only_failure(clean(data=data), "packet_type_matches_content", "unknown packet type")
    assert (
        "not a valid MarkerPacket"
        in report.check("packet_type_matches_content").findings[1].message
    )


def test_end_of_session_missing_on_main_stream() -> None:
    def end(b: Builder) -> None:
        b.send(DATA, od.EndOfSessionPacket(data_source=DS))
        b.end_session()

    report = only_failure(clean(end=end), "end_of_session_on_every_stream", "no EndOfSession")
    assert report.check("end_of_session_on_every_stream").findings[0].stream == MAIN


def test_packets_after_end_of_session() -> None:
    def end(b: Builder) -> None:
        b.both(od.EndOfSessionPacket(data_source=DS))
        b.send(MAIN, marker(T0 + 2 * IV, "late"), essential=True)
        b.send(DATA, marker(T0 + 2 * IV, "late"), essential=True)
        b.end_session()

    only_failure(clean(end=end), "end_of_session_on_every_stream", "after its EndOfSession")


def test_no_end_session_rpc() -> None:
    def end(b: Builder) -> None:
        b.both(od.EndOfSessionPacket(data_source=DS))

    only_failure(clean(end=end), "end_session_called", "no successful EndSession")


def test_packets_after_end_session_rpc() -> None:
    def end(b: Builder) -> None:
        b.end_session()
        b.both(od.EndOfSessionPacket(data_source=DS))

    only_failure(clean(end=end), "order_of_operations", "2 packet(s) arrived after EndSession")


def test_format_id_used_before_it_was_asked_for() -> None:
    def data(b: Builder) -> None:
        fid = 1000  # guessed from an earlier run, asked for only afterwards
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        assert b.format_id(TEMP, PRES) == fid

    only_failure(clean(data=data), "order_of_operations", "before the client asked for it")


def test_data_marked_essential() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), essential=True)

    report = only_failure(clean(data=data), "non_essential_packets", "is marked essential")
    assert report.ok and report.check("non_essential_packets").severity == "warning"


def test_data_on_the_main_stream() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        b.send(DATA, periodic(fid, T0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
        b.send(MAIN, periodic(fid, T0 + 3 * IV, [1.0, 2.0], [1.0, 2.0]))

    only_failure(clean(data=data), "data_on_data_stream", "on the main stream")


def test_names_not_kafka_safe() -> None:
    b = Builder()
    b.create()
    stream = "Stream.1"
    for s in (stream, MAIN):
        b.send(s, od.NewSessionPacket(data_source=DS))
    cfg = config(b.key(), TEMP)
    for s in (stream, MAIN):
        b.send(s, cfg, essential=True)
    fid = b.format_id(TEMP)
    b.send(stream, periodic(fid, T0, [1.0, 2.0]))
    for s in (stream, MAIN):
        b.send(s, od.EndOfSessionPacket(data_source=DS))
    b.end_session()
    only_failure(b, "names_kafka_safe", "stream 'Stream.1'")


def test_every_check_has_a_test_above() -> None:
    tested = {
        "create_session", "new_session_on_every_stream", "configuration_before_data",
        "data_formats_resolved", "one_group_per_configuration", "configuration_on_every_stream",
        "configuration_essential", "config_id_unique", "config_id_from_key_generator",
        "timestamps_in_ns", "periodic_no_overlap", "periodic_contiguous", "samples_batched",
        "columns_consistent", "markers_within_data", "markers_routed", "packet_ids_increasing",
        "session_key_consistent", "data_source_consistent", "packet_type_matches_content",
        "end_of_session_on_every_stream", "end_session_called", "order_of_operations",
        "non_essential_packets", "data_on_data_stream", "names_kafka_safe",
    }  # fmt: skip
    assert {c.name for c in CHECKS} == tested


# --------------------------------------------------------------------------------------------------
# Reports


def test_findings_are_capped_and_formatted() -> None:
    def data(b: Builder) -> None:
        fid = b.format_id(TEMP, PRES)
        for i in range(130):  # each packet restarts 1 ns early
            b.send(DATA, periodic(fid, T0 + i * (3 * IV - 1), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))

    report = check_session(clean(data=data).session())
    overlap = report.check("periodic_no_overlap")
    assert len(overlap.findings) == 100 and overlap.omitted == 29
    text = format_report(report)
    assert "NOT CLEAN" in text and "FAIL  periodic_no_overlap" in text
    assert "... and 119 more" in text
    assert report.to_json()["checks"][10]["omitted"] == 29


def test_report_of_several_sessions_and_none() -> None:
    reports = check_sessions([clean().session(), clean().session()])
    assert len(reports) == 2 and all(r.clean for r in reports)
    assert format_report([]) == "No ATLAS sessions were recorded."
    verbose = format_report(reports[0], verbose=True)
    assert "pass  create_session" in verbose
    with pytest.raises(KeyError):
        reports[0].check("no_such_check")


def test_decode_content() -> None:
    assert decode_content("Nope", b"") == (None, "unknown packet type 'Nope'")
    msg, problem = decode_content("Marker", marker(T0).SerializeToString())
    assert problem is None and msg == marker(T0)
    nested = od.PeriodicDataPacket(columns=[column([1.0])]).SerializeToString()
    # a Periodic column (field 4, a message) read as a RowDataPacket is an unknown field
    assert "#4" in (decode_content("RowData", nested)[1] or "")


def _fields(packet: Any) -> dict[str, Any]:
    return {f.name: v for f, v in packet.ListFields()}
