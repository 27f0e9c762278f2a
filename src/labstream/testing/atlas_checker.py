"""Judge what an ATLAS writer sent: the vendor's pitfalls as named checks over recorded packets.

Why it exists: the real Stream API validates nothing. A packet on the wrong stream, a second
GroupDefinition, data before its configuration, a marker outside the data, timestamps in
milliseconds: all are accepted with status OK and silently useless in ATLAS (see
``shared/specs/atlas-protocol.md`` and the pitfall tables of the vendor's getting-started guide).
A test that only asserts "the server said OK" proves nothing, so the local emulator
(:mod:`labstream.testing.atlas`) records every packet and RPC exactly as received, and this module
replays the rules ATLAS applies downstream, one named check per rule, each failure pointing at the
packet id, stream and parameter concerned. It also reconstructs the data per parameter, so a test
can compare "what ATLAS got" with what was streamed.

Everything here is pure: functions over the recorded dataclasses defined below (the emulator
produces them; :func:`labstream.testing.atlas.load_record` rebuilds them from a ``--record``
file). It judges any client independently: nothing of labstream's own ATLAS session is imported.

Use::

    report = check_session(emulator.sessions[key])
    assert report.clean, format_report(report)
    report.parameters["Engine.Rpm"].values
"""

from __future__ import annotations

import datetime
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from .._proto.ma.streaming.open_data.v1 import open_data_pb2 as od

__all__ = [
    "CHECKS",
    "CONTENT_TYPES",
    "DATA_TYPES",
    "MAIN_STREAM",
    "CheckResult",
    "CheckSpec",
    "Finding",
    "FormatRecord",
    "MarkerData",
    "ParameterData",
    "RecordedPacket",
    "RecordedSession",
    "SessionReport",
    "Severity",
    "check_session",
    "check_sessions",
    "decode_content",
    "format_report",
]

MAIN_STREAM: Final = ""
"""The main stream: ATLAS discovers sessions there."""

#: ``Packet.type`` -> content message class: every ``*Packet`` of ``open_data`` without the suffix.
CONTENT_TYPES: Final[Mapping[str, type[Message]]] = {
    **{
        name.removesuffix("Packet"): getattr(od, name)
        for name in od.DESCRIPTOR.message_types_by_name
        if name.endswith("Packet") and name != "Packet"
    },
    "SystemStatus": od.SystemStatusMessage,
}
#: Packet types that carry samples (the data stream's business, not essential).
DATA_TYPES: Final = frozenset({"PeriodicData", "RowData", "SynchroData", "Event"})
_SAMPLE_TYPES: Final = frozenset({"PeriodicData", "RowData", "SynchroData"})

#: Plausible epoch-ns range: 1973-03-03 (1e17 ns) to 2100-01-01.
MIN_PLAUSIBLE_NS: Final = 10**17
MAX_PLAUSIBLE_NS: Final = 4_102_444_800 * 10**9
#: A periodic interval below this many ns (a rate above 1 MHz) looks like ms or µs.
MIN_PLAUSIBLE_INTERVAL_NS: Final = 1_000
#: Findings kept per check; the rest are counted in `CheckResult.omitted`.
MAX_FINDINGS: Final = 100

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

Severity = Literal["error", "warning"]


# --------------------------------------------------------------------------------------------------
# What was recorded (the checker's input)


@dataclass(frozen=True, slots=True)
class FormatRecord:
    """A data format id the server issued (``GetParameterDataFormatId``/``GetEventDataFormatId``).

    `seq` is the emulator-wide sequence number of the first RPC that asked for it.
    """

    data_source: str
    format_id: int
    kind: Literal["parameter", "event"]
    parameters: tuple[str, ...] = ()
    event: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class RecordedPacket:
    """One ``DataPacketDetails`` as the server received it.

    Attributes:
        seq: emulator-wide arrival number (RPCs and packets share the sequence).
        rpc: ``WriteDataPacket`` or ``WriteDataPackets``.
        call_id: the write RPC it came through (one id per call).
        received_ns: wall-clock arrival time, epoch ns.
        data_source, stream, details_session_key: the ``DataPacketDetails`` fields.
        packet: the decoded ``Packet`` envelope (``Packet.content`` holds the raw content bytes).
        content: the content decoded as the message ``packet.type`` names, or None when the type is
            unknown or the bytes do not decode.
        content_error: why `content` is None or not clean (unknown fields), else None.
    """

    seq: int
    rpc: str
    call_id: int
    received_ns: int
    data_source: str
    stream: str
    details_session_key: str
    packet: Message
    content: Message | None
    content_error: str | None = None

    @property
    def type(self) -> str:
        return str(getattr(self.packet, "type", ""))

    @property
    def session_key(self) -> str:
        return str(getattr(self.packet, "session_key", ""))

    @property
    def is_essential(self) -> bool:
        return bool(getattr(self.packet, "is_essential", False))

    @property
    def id(self) -> int:
        return int(getattr(self.packet, "id", 0))

    def where(self) -> str:
        return f"packet id {self.id} ({self.type or '<no type>'} on stream {self.stream!r})"


@dataclass(frozen=True, slots=True)
class RecordedSession:
    """Everything the server saw of one session key, as an immutable snapshot.

    Attributes:
        session_key: the key (``DataPacketDetails.session_key`` of its packets).
        data_source: from CreateSession; None when packets arrived for a key never created.
        identifier, details: from CreateSession (and later updates).
        created_seq: sequence number of the CreateSession that returned the key, or None.
        end_session_seqs: sequence numbers of successful EndSession calls for the key.
        packets: every packet of the session, all streams, in arrival order.
        formats: every data format id the server issued (all data sources).
        issued_keys: every key the key generator issued (string keys, and ulong keys as decimal).
    """

    session_key: str
    data_source: str | None
    identifier: str = ""
    details: Mapping[str, str] = field(default_factory=dict)
    created_seq: int | None = None
    end_session_seqs: tuple[int, ...] = ()
    packets: tuple[RecordedPacket, ...] = ()
    formats: tuple[FormatRecord, ...] = ()
    issued_keys: frozenset[str] = frozenset()

    def by_stream(self) -> dict[tuple[str, str], list[RecordedPacket]]:
        """(data_source, stream) -> packets in arrival order."""
        out: dict[tuple[str, str], list[RecordedPacket]] = {}
        for p in self.packets:
            out.setdefault((p.data_source, p.stream), []).append(p)
        return out

    @property
    def streams(self) -> list[str]:
        """Stream names used, in order of first appearance."""
        return list(dict.fromkeys(p.stream for p in self.packets))


def decode_content(packet_type: str, content: bytes) -> tuple[Message | None, str | None]:
    """Decode `content` as the message `packet_type` names: ``(message, problem)``.

    The message is None when the type is unknown or the bytes are not valid protobuf; a message
    with fields the schema does not know (e.g. a RowDataPacket sent as ``PeriodicData``) comes back
    with the problem naming them.
    """
    cls = CONTENT_TYPES.get(packet_type)
    if cls is None:
        return None, f"unknown packet type {packet_type!r}"
    message = cls()
    try:
        message.ParseFromString(content)
    except DecodeError as exc:
        return None, f"content is not a valid {cls.__name__}: {exc}"
    unknown = _unknown_fields(message, "")
    if unknown:
        return message, f"content has fields {cls.__name__} does not define: {', '.join(unknown)}"
    return message, None


def _unknown_fields(message: Message, path: str) -> list[str]:
    unknown = unknown_fields.UnknownFieldSet(message)
    found = [f"{path}#{unknown[i].field_number}" for i in range(len(unknown))]
    for fd, value in message.ListFields():
        entry = fd.message_type
        if fd.type != FieldDescriptor.TYPE_MESSAGE or entry is None:
            continue
        if entry.GetOptions().map_entry:
            value_fd = entry.fields_by_name["value"]
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                for k, v in value.items():
                    found += _unknown_fields(v, f"{path}{fd.name}[{k}].")
        elif fd.is_repeated:
            for i, v in enumerate(value):
                found += _unknown_fields(v, f"{path}{fd.name}[{i}].")
        else:
            found += _unknown_fields(value, f"{path}{fd.name}.")
    return found


# --------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: what is wrong, and where."""

    message: str
    packet_id: int | None = None
    stream: str | None = None
    parameter: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "packet_id": self.packet_id,
            "stream": self.stream,
            "parameter": self.parameter,
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one named check: passed when it has no findings."""

    name: str
    severity: Severity
    description: str
    findings: tuple[Finding, ...] = ()
    omitted: int = 0  # findings beyond MAX_FINDINGS, not kept

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "description": self.description,
            "passed": self.passed,
            "findings": [f.to_json() for f in self.findings],
            "omitted": self.omitted,
        }


@dataclass(slots=True)
class ParameterData:
    """What ATLAS got for one parameter: samples in arrival order (all streams).

    Values are floats (int32 and bool samples converted, string samples NaN). `configured` is
    whether some ConfigurationPacket of the session defined the parameter; `units` comes from it.
    """

    identifier: str
    timestamps_ns: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    packets: int = 0
    configured: bool = False
    units: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "timestamps_ns": list(self.timestamps_ns),
            "values": [None if math.isnan(v) else v for v in self.values],
            "statuses": list(self.statuses),
            "packets": self.packets,
            "configured": self.configured,
            "units": self.units,
        }


@dataclass(frozen=True, slots=True)
class MarkerData:
    """A marker as received: one entry per distinct marker, with the streams it went to."""

    label: str
    timestamp_ns: int
    end_time_ns: int
    marker_type: str
    description: str
    streams: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "timestamp_ns": self.timestamp_ns,
            "end_time_ns": self.end_time_ns,
            "type": self.marker_type,
            "description": self.description,
            "streams": list(self.streams),
        }


@dataclass(frozen=True, slots=True)
class SessionReport:
    """Every check's result for one session, plus the data ATLAS would have got."""

    session_key: str
    data_source: str | None
    identifier: str
    checks: tuple[CheckResult, ...]
    parameters: dict[str, ParameterData]
    markers: tuple[MarkerData, ...]
    #: stream -> packet type -> count
    packet_counts: dict[str, dict[str, int]]

    @property
    def clean(self) -> bool:
        """No check found anything (warnings included)."""
        return all(c.passed for c in self.checks)

    @property
    def ok(self) -> bool:
        """No error-severity check failed (warnings allowed)."""
        return all(c.passed for c in self.checks if c.severity == "error")

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> CheckResult:
        """The result of the check called `name` (`KeyError` if there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_key": self.session_key,
            "data_source": self.data_source,
            "identifier": self.identifier,
            "clean": self.clean,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "parameters": {k: v.to_json() for k, v in self.parameters.items()},
            "markers": [m.to_json() for m in self.markers],
            "packet_counts": {s: dict(c) for s, c in self.packet_counts.items()},
        }


# --------------------------------------------------------------------------------------------------
# The session as the checks see it


@dataclass(slots=True)
class _Data:
    """A sample or event packet with the parameters (or event) its format resolves to."""

    pkt: RecordedPacket
    content: Any
    format_id: int | None
    params: tuple[str, ...] | None  # None: unresolved (see problem)
    problem: str | None
    first_ns: int | None = None
    last_ns: int | None = None
    count: int = 0  # samples per column / rows / 1 for events


class _Ctx:
    def __init__(self, session: RecordedSession) -> None:
        self.s = session
        self.packets = list(session.packets)
        streams = session.streams
        self.data_streams = [s for s in streams if s != MAIN_STREAM]
        #: every stream the session must announce, configure and end: the main one and the data ones
        self.required = [MAIN_STREAM, *self.data_streams]
        self.formats: dict[tuple[str, int, str], FormatRecord] = {
            (f.data_source, f.format_id, f.kind): f for f in session.formats
        }
        # A packet whose content does not decode cleanly as its type is reported by
        # packet_type_matches_content and judged by nothing else: its fields are noise.
        usable = [p for p in self.packets if p.content is not None and p.content_error is None]
        self.configs = [p for p in usable if p.type == "Configuration"]
        self.markers = [p for p in usable if p.type == "Marker"]
        self.configured_params: dict[str, Any] = {}
        self.configured_events: set[str] = set()
        for p in self.configs:
            for d in getattr(p.content, "parameter_definitions", ()):
                self.configured_params.setdefault(d.identifier, d)
            for e in getattr(p.content, "event_definitions", ()):
                self.configured_events.add(e.identifier)
        self.data = [self._resolve(p) for p in usable if p.type in DATA_TYPES]
        times = [t for d in self.data if d.pkt.type != "Event" for t in (d.first_ns, d.last_ns)]
        known = [t for t in times if t is not None]
        self.data_range = (min(known), max(known)) if known else None

    def _resolve(self, p: RecordedPacket) -> _Data:
        c: Any = p.content
        if p.type == "Event":
            which = c.data_format.WhichOneof("format")
            d = _Data(p, c, None, None, None, c.timestamp, c.timestamp, 1)
            if which == "event_identifier":
                d.params = (c.data_format.event_identifier,)
            elif which == "data_format_identifier":
                d.format_id = int(c.data_format.data_format_identifier)
                rec = self.formats.get((p.data_source, d.format_id, "event"))
                if rec is None:
                    d.problem = self._unknown_format(p.data_source, d.format_id, "event")
                else:
                    d.params = (rec.event,)
            else:
                d.problem = "EventPacket has no data_format (neither an id nor an identifier)"
            return d
        which = c.data_format.WhichOneof("format")
        d = _Data(p, c, None, None, None)
        if which == "parameter_identifiers":
            d.params = tuple(c.data_format.parameter_identifiers.parameter_identifiers)
        elif which == "data_format_identifier":
            d.format_id = int(c.data_format.data_format_identifier)
            rec = self.formats.get((p.data_source, d.format_id, "parameter"))
            if rec is None:
                d.problem = self._unknown_format(p.data_source, d.format_id, "parameter")
            else:
                d.params = rec.parameters
        else:
            d.problem = f"{p.type}Packet has no data_format (neither an id nor a parameter list)"
        if p.type == "PeriodicData":
            n = _column_length(c.columns[0]) if c.columns else 0
            d.count = n
            if n:
                d.first_ns = int(c.start_time)
                d.last_ns = int(c.start_time) + (n - 1) * int(c.interval)
        elif p.type == "RowData":
            d.count = len(c.timestamps)
            if c.timestamps:
                d.first_ns, d.last_ns = min(c.timestamps), max(c.timestamps)
        else:  # SynchroData: start_time plus intervals (semantics of `intervals` not published)
            n = _column_length(c.columns[0]) if c.columns else 0
            d.count = n
            if n:
                d.first_ns = int(c.start_time)
                d.last_ns = int(c.start_time) + sum(int(i) for i in c.intervals)
        return d

    def _unknown_format(self, data_source: str, format_id: int, kind: str) -> str:
        rpc = "GetParameterDataFormatId" if kind == "parameter" else "GetEventDataFormatId"
        msg = (
            f"data format id {format_id} was never issued by {rpc} for data source {data_source!r}"
        )
        others = [
            f for f in self.s.formats if f.format_id == format_id and f.data_source != data_source
        ]
        other_kind = self.formats.get(
            (data_source, format_id, "event" if kind == "parameter" else "parameter")
        )
        if others:
            msg += f" (it was issued for data source {others[0].data_source!r})"
        elif other_kind is not None:
            msg += f" (it is an {other_kind.kind} format id)"
        return msg


def _column_length(column: Any) -> int:
    which = column.WhichOneof("list")
    return len(getattr(column, which).samples) if which else 0


def _sample_values(sample_list_owner: Any) -> tuple[list[float], list[int]]:
    which = sample_list_owner.WhichOneof("list")
    if which is None:
        return [], []
    samples = getattr(sample_list_owner, which).samples
    statuses = [int(s.status) for s in samples]
    if which == "string_samples":
        return [math.nan] * len(samples), statuses
    return [float(s.value) for s in samples], statuses


# --------------------------------------------------------------------------------------------------
# The checks


def _create_session(x: _Ctx) -> list[Finding]:
    if x.s.created_seq is None:
        first = x.packets[0] if x.packets else None
        return [
            Finding(
                f"no CreateSession returned session key {x.s.session_key!r}: packets were written "
                "for a session the server never created",
                packet_id=first.id if first else None,
                stream=first.stream if first else None,
                seq=first.seq if first else None,
            )
        ]
    return []


def _new_session(x: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    for stream in x.required:
        on_stream = [p for p in x.packets if p.stream == stream]
        idx = next((i for i, p in enumerate(on_stream) if p.type == "NewSession"), None)
        if idx is None:
            what = "the main stream" if stream == MAIN_STREAM else "data stream"
            out.append(
                Finding(f"no NewSession packet on {what} {stream!r}", stream=stream),
            )
        elif idx > 0:
            first = on_stream[0]
            out.append(
                Finding(
                    f"NewSession on stream {stream!r} came after {idx} other packet(s); the "
                    f"first was {first.where()}",
                    packet_id=on_stream[idx].id,
                    stream=stream,
                    seq=on_stream[idx].seq,
                )
            )
    return out


def _config_before_data(x: _Ctx) -> list[Finding]:
    configured: dict[str, set[str]] = defaultdict(set)
    events: dict[str, set[str]] = defaultdict(set)
    late: dict[tuple[str, str], list[RecordedPacket]] = {}
    # (stream, name) -> the other streams that had the definition when the first late packet came
    elsewhere: dict[tuple[str, str], list[str]] = {}
    data_by_seq = {d.pkt.seq: d for d in x.data}
    for p in x.packets:
        if p.type == "Configuration" and p.content is not None and p.content_error is None:
            c: Any = p.content
            configured[p.stream].update(d.identifier for d in c.parameter_definitions)
            events[p.stream].update(e.identifier for e in c.event_definitions)
            continue
        d = data_by_seq.get(p.seq)
        if d is None or d.params is None:
            continue
        defined = events if p.type == "Event" else configured
        for name in d.params:
            if name not in defined[p.stream]:
                if (p.stream, name) not in late:
                    elsewhere[(p.stream, name)] = [
                        s for s, names in defined.items() if s != p.stream and name in names
                    ]
                late.setdefault((p.stream, name), []).append(p)
    out = []
    for (stream, name), pkts in late.items():
        what = "event" if pkts[0].type == "Event" else "parameter"
        final = events if what == "event" else configured  # every definition, now all are seen
        others = elsewhere[(stream, name)]
        if others:
            when = f"configured on {_streams(others)} but not on {stream!r}"
            if name in final[stream]:
                when += ", which got it only later"
        elif name in (x.configured_events if what == "event" else x.configured_params):
            when = "defined only later in this session"
        else:
            when = "defined never in this session"
        out.append(
            Finding(
                f"{len(pkts)} data packet(s) of {what} {name!r} on stream {stream!r} before any "
                f"ConfigurationPacket defining it on that stream ({when}); the first is "
                f"{pkts[0].where()}",
                packet_id=pkts[0].id,
                stream=stream,
                parameter=name,
                seq=pkts[0].seq,
            )
        )
    return out


def _formats_resolved(x: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    reported: set[tuple[int | None, str]] = set()
    for d in x.data:
        p = d.pkt
        if d.problem is not None:
            if (d.format_id, d.problem) not in reported:
                reported.add((d.format_id, d.problem))
                out.append(Finding(f"{p.where()}: {d.problem}", p.id, p.stream, seq=p.seq))
            continue
        if d.format_id is None or d.params is None:
            continue
        is_event = p.type == "Event"
        defined = x.configured_events if is_event else x.configured_params
        for name in d.params:
            if name not in defined and (d.format_id, name) not in reported:
                reported.add((d.format_id, name))
                what = "event" if is_event else "parameter"
                out.append(
                    Finding(
                        f"data format id {d.format_id} (used first by {p.where()}) names {what} "
                        f"{name!r}, which no ConfigurationPacket of this session defines",
                        p.id,
                        p.stream,
                        name,
                        p.seq,
                    )
                )
    return out


def _one_group(x: _Ctx) -> list[Finding]:
    out = []
    for p in x.configs:
        c: Any = p.content
        n = len(c.group_definitions)
        if n != 1:
            why = (
                "ATLAS shows zero parameters"
                if n > 1
                else "ATLAS needs exactly one group to show the parameters"
            )
            out.append(
                Finding(
                    f"{p.where()}, config_id {c.config_id!r}, has {n} GroupDefinitions: {why}",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
    return out


def _config_every_stream(x: _Ctx) -> list[Finding]:
    streams: dict[str, list[str]] = {}
    first: dict[str, RecordedPacket] = {}
    for p in x.configs:
        cid = str(getattr(p.content, "config_id", ""))
        streams.setdefault(cid, [])
        if p.stream not in streams[cid]:
            streams[cid].append(p.stream)
        first.setdefault(cid, p)
    out = []
    for cid, sent in streams.items():
        missing = [s for s in x.required if s not in sent]
        if missing:
            p = first[cid]
            out.append(
                Finding(
                    f"configuration {cid!r} was sent on {_streams(sent)} but not on "
                    f"{_streams(missing)}: ATLAS ignores data and markers on a stream without "
                    "its configuration",
                    p.id,
                    missing[0],
                    seq=p.seq,
                )
            )
    return out


def _config_essential(x: _Ctx) -> list[Finding]:
    return [
        Finding(
            f"{p.where()}, config_id {getattr(p.content, 'config_id', '')!r}, is not essential "
            "(is_essential=false): it is not copied to the essentials topic",
            p.id,
            p.stream,
            seq=p.seq,
        )
        for p in x.configs
        if not p.is_essential
    ]


def _config_id_unique(x: _Ctx) -> list[Finding]:
    contents: dict[str, list[RecordedPacket]] = {}
    out = []
    for p in x.configs:
        c: Any = p.content
        if not c.config_id:
            out.append(Finding(f"{p.where()} has an empty config_id", p.id, p.stream, seq=p.seq))
            continue
        same = contents.setdefault(c.config_id, [])
        if all(q.content != c for q in same):
            same.append(p)
    for cid, variants in contents.items():
        if len(variants) > 1:
            ids = ", ".join(str(q.id) for q in variants)
            out.append(
                Finding(
                    f"config_id {cid!r} names {len(variants)} different configurations "
                    f"(packet ids {ids}): each configuration needs its own id",
                    variants[1].id,
                    variants[1].stream,
                    seq=variants[1].seq,
                )
            )
    return out


def _config_id_from_keygen(x: _Ctx) -> list[Finding]:
    out = []
    seen: set[str] = set()
    for p in x.configs:
        cid = str(getattr(p.content, "config_id", ""))
        if cid and cid not in x.s.issued_keys and cid not in seen:
            seen.add(cid)
            out.append(
                Finding(
                    f"config_id {cid!r} ({p.where()}) was not issued by the key generator: a "
                    "hard-coded id collides across sessions",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
    return out


def _guess_unit(t: int) -> str:
    if t < MIN_PLAUSIBLE_NS:
        if t < 10**11:
            return "seconds"
        if t < 10**14:
            return "milliseconds"
        return "microseconds"
    return "beyond the year 2100"


def _timestamps_ns(x: _Ctx) -> list[Finding]:
    out: list[Finding] = []

    def check(p: RecordedPacket, what: str, t: int) -> None:
        if not MIN_PLAUSIBLE_NS <= t < MAX_PLAUSIBLE_NS:
            out.append(
                Finding(
                    f"{p.where()}: {what} {t} is not epoch nanoseconds (looks like "
                    f"{_guess_unit(t)})",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )

    for d in x.data:
        c, p = d.content, d.pkt
        if p.type in ("PeriodicData", "SynchroData"):
            check(p, "start_time", int(c.start_time))
        if p.type == "PeriodicData" and d.count > 1 and 0 < c.interval < MIN_PLAUSIBLE_INTERVAL_NS:
            out.append(
                Finding(
                    f"{p.where()}: interval {c.interval} ns (above 1 MHz) looks like "
                    "milliseconds or microseconds",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
        elif p.type == "RowData" and c.timestamps:
            bad = [t for t in c.timestamps if not MIN_PLAUSIBLE_NS <= t < MAX_PLAUSIBLE_NS]
            if bad:
                check(p, f"{len(bad)} timestamp(s), first", int(bad[0]))
        elif p.type == "Event":
            check(p, "timestamp", int(c.timestamp))
    for p in x.markers:
        c = p.content
        check(p, "marker timestamp", int(getattr(c, "timestamp", 0)))
        end = int(getattr(c, "end_time", 0))
        if end:
            check(p, "marker end_time", end)
    return out


def _periodic_runs(x: _Ctx) -> Iterable[tuple[_Data, _Data, int]]:
    """Consecutive periodic packets of one parameter set on one stream: (a, b, b.start - due)."""
    last: dict[tuple[str, tuple[str, ...] | int | None], _Data] = {}
    for d in x.data:
        if d.pkt.type != "PeriodicData" or d.count == 0:
            continue
        key = (d.pkt.stream, d.params if d.params is not None else d.format_id)
        prev = last.get(key)
        last[key] = d
        if prev is not None:
            due = int(prev.content.start_time) + int(prev.content.interval) * prev.count
            yield prev, d, int(d.content.start_time) - due


def _params_of(d: _Data) -> str:
    return ", ".join(d.params) if d.params else f"format {d.format_id}"


def _periodic_no_overlap(x: _Ctx) -> list[Finding]:
    out = []
    for a, b, delta in _periodic_runs(x):
        if delta < 0:
            out.append(
                Finding(
                    f"{b.pkt.where()} [{_params_of(b)}] starts {-delta} ns before the previous "
                    f"packet (id {a.pkt.id}) ends (due start_time "
                    f"{int(b.content.start_time) - delta}, got {b.content.start_time}): overlap",
                    b.pkt.id,
                    b.pkt.stream,
                    b.params[0] if b.params else None,
                    b.pkt.seq,
                )
            )
    for d in x.data:
        if d.pkt.type == "PeriodicData" and d.count > 1 and d.content.interval == 0:
            out.append(
                Finding(
                    f"{d.pkt.where()}: interval 0 with {d.count} samples (all at one instant)",
                    d.pkt.id,
                    d.pkt.stream,
                    seq=d.pkt.seq,
                )
            )
    return out


def _periodic_contiguous(x: _Ctx) -> list[Finding]:
    return [
        Finding(
            f"{b.pkt.where()} [{_params_of(b)}] starts {delta} ns after the previous packet "
            f"(id {a.pkt.id}) ends: next start_time should be start + interval x count = "
            f"{int(b.content.start_time) - delta}",
            b.pkt.id,
            b.pkt.stream,
            b.params[0] if b.params else None,
            b.pkt.seq,
        )
        for a, b, delta in _periodic_runs(x)
        if delta > 0
    ]


def _samples_batched(x: _Ctx) -> list[Finding]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(list)
    first_single: dict[tuple[str, str], _Data] = {}
    for d in x.data:
        if d.pkt.type == "PeriodicData":
            key = (d.pkt.stream, _params_of(d))
            counts[key].append(d.count)
            if d.count == 1:
                first_single.setdefault(key, d)
    out = []
    for key, ns in counts.items():
        singles = sum(1 for n in ns if n == 1)
        if singles >= 2 and 2 * singles >= len(ns):
            d = first_single[key]
            out.append(
                Finding(
                    f"{singles} of {len(ns)} PeriodicDataPackets of [{key[1]}] on stream "
                    f"{key[0]!r} hold one sample: batch samples so ATLAS need not infer "
                    "continuity across packets",
                    d.pkt.id,
                    d.pkt.stream,
                    d.params[0] if d.params else None,
                    d.pkt.seq,
                )
            )
    return out


def _columns(x: _Ctx) -> list[Finding]:
    out = []
    for d in x.data:
        p, c = d.pkt, d.content
        if p.type in ("PeriodicData", "SynchroData"):
            lengths = [_column_length(col) for col in c.columns]
            problems = []
            if len(set(lengths)) > 1:
                problems.append(f"columns of unequal length {lengths}")
            if d.params is not None and len(lengths) != len(d.params):
                problems.append(f"{len(lengths)} column(s) for {len(d.params)} parameter(s)")
            if not lengths or max(lengths) == 0:
                problems.append("no samples")
        elif p.type == "RowData":
            problems = []
            if len(c.rows) != len(c.timestamps):
                problems.append(f"{len(c.timestamps)} timestamps but {len(c.rows)} rows")
            widths = sorted({_column_length(r) for r in c.rows})
            expected = len(d.params) if d.params is not None else None
            if expected is not None and any(w != expected for w in widths):
                problems.append(f"rows of {widths} value(s) for {expected} parameter(s)")
            elif len(widths) > 1:
                problems.append(f"rows of unequal width {widths}")
            if not c.timestamps:
                problems.append("no rows")
        else:
            continue
        if problems:
            out.append(Finding(f"{p.where()}: {'; '.join(problems)}", p.id, p.stream, seq=p.seq))
    return out


def _marker_key(c: Any) -> tuple[int, int, str, str, str]:
    return (int(c.timestamp), int(c.end_time), c.label, c.type, c.description)


def _markers_within_data(x: _Ctx) -> list[Finding]:
    out = []
    seen: set[tuple[int, int, str, str, str]] = set()
    for p in x.markers:
        key = _marker_key(p.content)
        if key in seen:
            continue
        seen.add(key)
        t0, end, label = key[0], key[1] or key[0], key[2]
        if x.data_range is None:
            where = "the session has no data"
        elif x.data_range[0] <= t0 and end <= x.data_range[1]:
            continue
        else:
            where = f"the data covers [{x.data_range[0]}, {x.data_range[1]}] ns"
        out.append(
            Finding(
                f"marker {label!r} at [{t0}, {end}] ns ({p.where()}) is outside the data's time "
                f"range ({where}): SQLRace drops it",
                p.id,
                p.stream,
                seq=p.seq,
            )
        )
    return out


def _markers_routed(x: _Ctx) -> list[Finding]:
    out = []
    copies: dict[tuple[int, int, str, str, str], list[RecordedPacket]] = {}
    config_seq: dict[str, int] = {}
    for p in x.configs:
        config_seq.setdefault(p.stream, p.seq)
    for p in x.markers:
        copies.setdefault(_marker_key(p.content), []).append(p)
        label = getattr(p.content, "label", "")
        if not p.is_essential:
            out.append(
                Finding(
                    f"marker {label!r}, {p.where()}, is not essential", p.id, p.stream, seq=p.seq
                )
            )
        if config_seq.get(p.stream, math.inf) > p.seq:
            out.append(
                Finding(
                    f"marker {label!r}, {p.where()}, precedes any ConfigurationPacket on its "
                    "stream: SQLRace drops it",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
    for key, pkts in copies.items():
        sent = list(dict.fromkeys(p.stream for p in pkts))
        missing = [s for s in x.required if s not in sent]
        if missing:
            out.append(
                Finding(
                    f"marker {key[2]!r} was sent on {_streams(sent)} but not on "
                    f"{_streams(missing)}",
                    pkts[0].id,
                    missing[0],
                    seq=pkts[0].seq,
                )
            )
    return out


def _ids_increasing(x: _Ctx) -> list[Finding]:
    out = []
    prev: RecordedPacket | None = None
    for p in x.packets:
        if prev is not None and p.id <= prev.id:
            out.append(
                Finding(
                    f"{p.where()} arrived after packet id {prev.id} ({prev.type} on stream "
                    f"{prev.stream!r}): ids must strictly increase across the session",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
        prev = p
    return out


def _session_keys(x: _Ctx) -> list[Finding]:
    out = []
    key = x.s.session_key
    for p in x.packets:
        problems = []
        if p.details_session_key != key:
            problems.append(f"DataPacketDetails.session_key is {p.details_session_key!r}")
        if p.session_key != key:
            problems.append(f"Packet.session_key is {p.session_key!r}")
        if problems:
            out.append(
                Finding(
                    f"{p.where()}: {' and '.join(problems)}, not the session key {key!r}",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
    return out


def _data_sources(x: _Ctx) -> list[Finding]:
    expected = x.s.data_source
    if expected is None:
        expected = x.packets[0].data_source if x.packets else ""
    out = []
    for p in x.packets:
        problems = []
        if p.data_source != expected:
            problems.append(f"DataPacketDetails.data_source is {p.data_source!r}")
        if p.type in ("NewSession", "EndOfSession") and p.content_error is None:
            inner = getattr(p.content, "data_source", "")
            if inner != expected:
                problems.append(f"{p.type}Packet.data_source is {inner!r}")
        if problems:
            out.append(
                Finding(
                    f"{p.where()}: {' and '.join(problems)}, not the session's data source "
                    f"{expected!r}",
                    p.id,
                    p.stream,
                    seq=p.seq,
                )
            )
    return out


def _types_match(x: _Ctx) -> list[Finding]:
    out: list[Finding] = []
    for p in x.packets:
        if p.content_error is None:
            continue
        hint = ""
        raw = bytes(getattr(p.packet, "content", b""))
        # Which type was meant? Only worth the decoding for the findings that are kept.
        clean_as = [
            t
            for t in sorted(CONTENT_TYPES)
            if len(out) < MAX_FINDINGS and t != p.type and raw and decode_content(t, raw)[1] is None
        ]
        if clean_as and len(clean_as) <= 3:
            hint = f"; it decodes cleanly as {', '.join(clean_as)}"
        out.append(
            Finding(f"{p.where()}: {p.content_error}{hint}", p.id, p.stream, seq=p.seq),
        )
    return out


def _end_of_session(x: _Ctx) -> list[Finding]:
    out = []
    for stream in x.required:
        on_stream = [p for p in x.packets if p.stream == stream]
        idx = next((i for i, p in enumerate(on_stream) if p.type == "EndOfSession"), None)
        if idx is None:
            out.append(Finding(f"no EndOfSession packet on stream {stream!r}", stream=stream))
        elif idx < len(on_stream) - 1:
            after = on_stream[idx + 1]
            out.append(
                Finding(
                    f"{len(on_stream) - idx - 1} packet(s) on stream {stream!r} after its "
                    f"EndOfSession (packet id {on_stream[idx].id}); the first is {after.where()}",
                    after.id,
                    stream,
                    seq=after.seq,
                )
            )
    return out


def _end_session(x: _Ctx) -> list[Finding]:
    if x.s.end_session_seqs:
        return []
    return [Finding(f"no successful EndSession RPC for session key {x.s.session_key!r}")]


def _order(x: _Ctx) -> list[Finding]:
    out = []
    created = x.s.created_seq
    if created is not None:
        early = [p for p in x.packets if p.seq < created]
        if early:
            out.append(
                Finding(
                    f"{len(early)} packet(s) arrived before CreateSession returned the key; the "
                    f"first is {early[0].where()}",
                    early[0].id,
                    early[0].stream,
                    seq=early[0].seq,
                )
            )
    issued: dict[tuple[str, int, str], int] = {
        (f.data_source, f.format_id, f.kind): f.seq for f in x.s.formats
    }
    reported: set[int] = set()
    for d in x.data:
        if d.format_id is None or d.format_id in reported:
            continue
        kind = "event" if d.pkt.type == "Event" else "parameter"
        seq = issued.get((d.pkt.data_source, d.format_id, kind))
        if seq is not None and seq > d.pkt.seq:
            reported.add(d.format_id)
            out.append(
                Finding(
                    f"{d.pkt.where()} uses data format id {d.format_id} before the client asked "
                    "for it",
                    d.pkt.id,
                    d.pkt.stream,
                    seq=d.pkt.seq,
                )
            )
    if x.s.end_session_seqs:
        end = x.s.end_session_seqs[0]
        late = [p for p in x.packets if p.seq > end]
        if late:
            out.append(
                Finding(
                    f"{len(late)} packet(s) arrived after EndSession; the first is "
                    f"{late[0].where()}",
                    late[0].id,
                    late[0].stream,
                    seq=late[0].seq,
                )
            )
    return out


def _non_essential(x: _Ctx) -> list[Finding]:
    return [
        Finding(
            f"{p.where()} is marked essential: the routing table says {p.type} is not",
            p.id,
            p.stream,
            seq=p.seq,
        )
        for p in x.packets
        if p.is_essential and (p.type in DATA_TYPES or p.type in ("NewSession", "EndOfSession"))
    ]


def _data_on_data_stream(x: _Ctx) -> list[Finding]:
    main = [d.pkt for d in x.data if d.pkt.stream == MAIN_STREAM]
    if not main:
        return []
    return [
        Finding(
            f"{len(main)} data packet(s) on the main stream '' (the first is {main[0].where()}): "
            "data belongs on a data stream",
            main[0].id,
            MAIN_STREAM,
            seq=main[0].seq,
        )
    ]


def _names(x: _Ctx) -> list[Finding]:
    out = []
    sources = {p.data_source for p in x.packets} | ({x.s.data_source} - {None})
    for ds in sorted(s for s in sources if s is not None):
        if not _NAME_RE.fullmatch(ds):
            out.append(Finding(f"data source {ds!r} is not [A-Za-z0-9_-] (a Kafka topic part)"))
    for stream in x.data_streams:
        if not _NAME_RE.fullmatch(stream):
            out.append(
                Finding(
                    f"stream {stream!r} is not [A-Za-z0-9_-] (a Kafka topic part)", None, stream
                )
            )
    return out


def _streams(names: Iterable[str]) -> str:
    return ", ".join(repr(s) for s in names)


def _stream_name(stream: str) -> str:
    """A stream as people read it: the main stream's name is empty."""
    return "'' (main)" if stream == MAIN_STREAM else repr(stream)


def _iso(ns: int) -> str:
    """Epoch ns as a UTC date and time, to the ms (next to the ns, for people)."""
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """A named rule: what it checks, how bad a violation is, and the function finding them."""

    name: str
    severity: Severity
    description: str
    run: Callable[[_Ctx], list[Finding]]


#: Every check, in report order.
CHECKS: Final[tuple[CheckSpec, ...]] = (
    CheckSpec(
        "create_session",
        "error",
        "a CreateSession RPC returned the session key the packets carry",
        _create_session,
    ),
    CheckSpec(
        "new_session_on_every_stream",
        "error",
        "NewSession is the first packet on the main stream '' and on every data stream",
        _new_session,
    ),
    CheckSpec(
        "configuration_before_data",
        "error",
        "every parameter/event is defined by a ConfigurationPacket on a stream before its data",
        _config_before_data,
    ),
    CheckSpec(
        "data_formats_resolved",
        "error",
        "data format ids were issued by the server and name only configured parameters",
        _formats_resolved,
    ),
    CheckSpec(
        "one_group_per_configuration",
        "error",
        "each ConfigurationPacket holds exactly one GroupDefinition",
        _one_group,
    ),
    CheckSpec(
        "configuration_on_every_stream",
        "error",
        "each configuration is sent on the main stream '' and on every data stream",
        _config_every_stream,
    ),
    CheckSpec(
        "configuration_essential",
        "error",
        "ConfigurationPackets are essential (is_essential=true)",
        _config_essential,
    ),
    CheckSpec(
        "config_id_unique",
        "error",
        "a config_id is non-empty and names one configuration only",
        _config_id_unique,
    ),
    CheckSpec(
        "config_id_from_key_generator",
        "error",
        "config_ids were issued by the key generator (not hard-coded)",
        _config_id_from_keygen,
    ),
    CheckSpec(
        "timestamps_in_ns",
        "error",
        "data, event and marker times are epoch nanoseconds; intervals are nanoseconds",
        _timestamps_ns,
    ),
    CheckSpec(
        "periodic_no_overlap",
        "error",
        "consecutive PeriodicDataPackets of a parameter set do not overlap in time",
        _periodic_no_overlap,
    ),
    CheckSpec(
        "periodic_contiguous",
        "warning",
        "consecutive PeriodicDataPackets continue exactly at start + interval x count "
        "(a gap: a pause in the data, or wall-clock batch timestamps)",
        _periodic_contiguous,
    ),
    CheckSpec(
        "samples_batched",
        "warning",
        "PeriodicDataPackets hold batches, not one sample each",
        _samples_batched,
    ),
    CheckSpec(
        "columns_consistent",
        "error",
        "columns/rows have equal lengths and one value per parameter of the format",
        _columns,
    ),
    CheckSpec(
        "markers_within_data",
        "error",
        "markers fall within the time range of the session's data",
        _markers_within_data,
    ),
    CheckSpec(
        "markers_routed",
        "error",
        "markers go to the main stream and every data stream, essential, after a configuration",
        _markers_routed,
    ),
    CheckSpec(
        "packet_ids_increasing",
        "error",
        "Packet.id strictly increases across the session's packets in arrival order",
        _ids_increasing,
    ),
    CheckSpec(
        "session_key_consistent",
        "error",
        "Packet.session_key equals DataPacketDetails.session_key equals the CreateSession key",
        _session_keys,
    ),
    CheckSpec(
        "data_source_consistent",
        "error",
        "DataPacketDetails.data_source (and NewSession/EndOfSession data_source) is the "
        "session's data source",
        _data_sources,
    ),
    CheckSpec(
        "packet_type_matches_content",
        "error",
        "Packet.type names a known message and the content decodes cleanly as it",
        _types_match,
    ),
    CheckSpec(
        "end_of_session_on_every_stream",
        "error",
        "EndOfSession is the last packet on the main stream '' and on every data stream",
        _end_of_session,
    ),
    CheckSpec(
        "end_session_called",
        "error",
        "an EndSession RPC ended the session",
        _end_session,
    ),
    CheckSpec(
        "order_of_operations",
        "error",
        "CreateSession, then packets, format ids before their data, nothing after EndSession",
        _order,
    ),
    CheckSpec(
        "non_essential_packets",
        "warning",
        "NewSession, data and EndOfSession packets are not essential",
        _non_essential,
    ),
    CheckSpec(
        "data_on_data_stream",
        "warning",
        "sample and event packets go to a data stream, not the main stream ''",
        _data_on_data_stream,
    ),
    CheckSpec(
        "names_kafka_safe",
        "warning",
        "data source and stream names match [A-Za-z0-9_-] (they become Kafka topic names)",
        _names,
    ),
)


# --------------------------------------------------------------------------------------------------
# Entry points


def check_session(session: RecordedSession) -> SessionReport:
    """Run every check of `CHECKS` on `session` and reconstruct its data per parameter."""
    ctx = _Ctx(session)
    results = []
    for spec in CHECKS:
        findings = spec.run(ctx)
        results.append(
            CheckResult(
                spec.name,
                spec.severity,
                spec.description,
                tuple(findings[:MAX_FINDINGS]),
                max(0, len(findings) - MAX_FINDINGS),
            )
        )
    counts: dict[str, dict[str, int]] = {}
    for p in ctx.packets:
        per = counts.setdefault(p.stream, {})
        per[p.type] = per.get(p.type, 0) + 1
    return SessionReport(
        session_key=session.session_key,
        data_source=session.data_source,
        identifier=session.identifier,
        checks=tuple(results),
        parameters=_parameters(ctx),
        markers=_markers(ctx),
        packet_counts=counts,
    )


def check_sessions(
    sessions: Mapping[str, RecordedSession] | Iterable[RecordedSession],
) -> list[SessionReport]:
    """`check_session` for each session (a mapping's values, or an iterable)."""
    values = sessions.values() if isinstance(sessions, Mapping) else sessions
    return [check_session(s) for s in values]


def _parameters(x: _Ctx) -> dict[str, ParameterData]:
    out: dict[str, ParameterData] = {}

    def entry(name: str) -> ParameterData:
        if name not in out:
            definition = x.configured_params.get(name)
            out[name] = ParameterData(
                name,
                configured=definition is not None,
                units=definition.units if definition is not None else None,
            )
        return out[name]

    for d in x.data:
        c = d.content
        if d.params is None or d.pkt.type not in ("PeriodicData", "RowData"):
            continue
        touched: set[str] = set()
        if d.pkt.type == "PeriodicData":
            for name, col in zip(d.params, c.columns, strict=False):
                values, statuses = _sample_values(col)
                e = entry(name)
                e.timestamps_ns.extend(
                    int(c.start_time) + i * int(c.interval) for i in range(len(values))
                )
                e.values.extend(values)
                e.statuses.extend(statuses)
                touched.add(name)
        else:
            for t, row in zip(c.timestamps, c.rows, strict=False):
                values, statuses = _sample_values(row)
                for name, v, st in zip(d.params, values, statuses, strict=False):
                    e = entry(name)
                    e.timestamps_ns.append(int(t))
                    e.values.append(v)
                    e.statuses.append(st)
                    touched.add(name)
        for name in touched:
            out[name].packets += 1
    return out


def _markers(x: _Ctx) -> tuple[MarkerData, ...]:
    streams: dict[tuple[int, int, str, str, str], list[str]] = {}
    for p in x.markers:
        sent = streams.setdefault(_marker_key(p.content), [])
        if p.stream not in sent:
            sent.append(p.stream)
    return tuple(
        MarkerData(key[2], key[0], key[1], key[3], key[4], tuple(s)) for key, s in streams.items()
    )


_STATUS_NAMES: Final = {0: "unspecified", 1: "valid", 2: "missing", 3: "error"}


def format_report(
    reports: SessionReport | Iterable[SessionReport], *, verbose: bool = False
) -> str:
    """Human-readable report(s): failed checks with their findings, then the data received.

    Passed checks are listed only with `verbose`.
    """
    if isinstance(reports, SessionReport):
        reports = [reports]
    blocks = [_format_one(r, verbose) for r in reports]
    return "\n\n".join(blocks) if blocks else "No ATLAS sessions were recorded."


def _format_one(r: SessionReport, verbose: bool) -> str:
    lines = [
        f"ATLAS session {r.session_key} (data source {r.data_source!r}, "
        f"identifier {r.identifier!r})"
    ]
    for stream, counts in r.packet_counts.items():
        parts = ", ".join(f"{t or '<none>'} {n}" for t, n in counts.items())
        lines.append(f"  stream {_stream_name(stream)}: {sum(counts.values())} packets ({parts})")
    failed = r.failed
    if not failed:
        lines.append(f"  CLEAN: all {len(r.checks)} protocol checks passed.")
    else:
        errors = sum(1 for c in failed if c.severity == "error")
        lines.append(
            f"  NOT CLEAN: {len(failed)} of {len(r.checks)} checks failed "
            f"({errors} error(s), {len(failed) - errors} warning(s))."
        )
    for c in r.checks:
        if c.passed:
            if verbose:
                lines.append(f"  pass  {c.name}: {c.description}")
            continue
        label = "FAIL" if c.severity == "error" else "WARN"
        lines.append(f"  {label}  {c.name}: {c.description}")
        for f in c.findings[:10]:
            lines.append(f"        - {f.message}")
        more = len(c.findings) - 10 + c.omitted
        if more > 0:
            lines.append(f"        ... and {more} more")
    if r.parameters:
        lines.append("  parameters received:")
        for name, p in r.parameters.items():
            finite = [v for v in p.values if not math.isnan(v)]
            span = ""
            if p.timestamps_ns:
                first, last = min(p.timestamps_ns), max(p.timestamps_ns)
                span = f"[{first} .. {last}] ns ({_iso(first)} .. {_iso(last)})"
            vals = f"values {min(finite):.6g} .. {max(finite):.6g}" if finite else "no values"
            st = Counter(_STATUS_NAMES.get(s, str(s)) for s in p.statuses)
            sts = ", ".join(f"{k} {n}" for k, n in sorted(st.items()))
            conf = "" if p.configured else " (NOT CONFIGURED)"
            lines.append(
                f"    {name}{conf}: {len(p.values)} samples in {p.packets} packet(s) {span}, "
                f"{vals}; status {sts}"
            )
    else:
        lines.append("  parameters received: none")
    for m in r.markers:
        lines.append(
            f"  marker {m.label!r} at [{m.timestamp_ns}, {m.end_time_ns or m.timestamp_ns}] ns "
            f"({_iso(m.timestamp_ns)}) "
            f"on {', '.join(_stream_name(s) for s in m.streams)}"
        )
    return "\n".join(lines)
