"""Read a session back from an ATLAS Stream API and judge what the server holds.

Why it exists: an OK from the real Stream API means only "queued"; the server validates nothing and
ATLAS silently ignores what breaks its rules. This asks the server itself -- the real one or
labstream's emulator -- through its reader service (``ConnectionManagerService`` and
``PacketReaderService``, as ATLAS's own reader does), and runs the project's protocol checker
(:mod:`labstream.testing.atlas_checker`) on the packets it gives back.

What the server keeps is the packets per stream, not the writer's RPCs: the checks that need the
RPCs' order (``order_of_operations``) or the key generator's answers
(``config_id_from_key_generator``) are left out and named as such. ``create_session`` and
``end_session_called`` are judged from the server's session info (it knows the key, and
``is_complete``).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc

from .._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from ..errors import LabstreamError
from ..testing.atlas_checker import (
    DATA_TYPES,
    MAIN_STREAM,
    FormatRecord,
    RecordedPacket,
    RecordedSession,
    SessionReport,
    check_session,
    decode_content,
    format_report,
)

__all__ = [
    "NOT_FROM_SERVER",
    "ServerSession",
    "Verified",
    "VerifyError",
    "format_verified",
    "list_sessions",
    "read_session",
    "verify",
]

#: Checks that need what only the writer's side saw; left out of a verdict from the server.
NOT_FROM_SERVER: Final = frozenset({"order_of_operations", "config_id_from_key_generator"})


class VerifyError(LabstreamError):
    """The server could not be asked, or does not have the session: said in a sentence."""


@dataclass(frozen=True, slots=True)
class ServerSession:
    """A session as ``GetSessionInfo`` describes it."""

    key: str
    data_source: str
    identifier: str
    is_complete: bool
    created_ns: int
    details: dict[str, str]
    info: Any  # the GetSessionInfoResponse

    def to_json(self) -> dict[str, Any]:
        return {
            "session_key": self.key,
            "data_source": self.data_source,
            "identifier": self.identifier,
            "complete": self.is_complete,
            "created_ns": self.created_ns,
            "details": dict(self.details),
            "streams": list(self.info.streams),
        }


@dataclass(frozen=True, slots=True)
class Verified:
    """The checker's report on what the server holds, and what was read."""

    session: ServerSession
    report: SessionReport
    packets: int
    essentials: int

    @property
    def clean(self) -> bool:
        return self.report.clean

    def to_json(self) -> dict[str, Any]:
        return {
            **self.session.to_json(),
            "packets_read": self.packets,
            "essentials_read": self.essentials,
            "not_judged": sorted(NOT_FROM_SERVER),
            "report": self.report.to_json(),
        }


class _Server:
    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        self.sessions = api_pb2_grpc.SessionManagementServiceStub(self.channel)
        self.connections = api_pb2_grpc.ConnectionManagerServiceStub(self.channel)
        self.reader = api_pb2_grpc.PacketReaderServiceStub(self.channel)
        self.formats = api_pb2_grpc.DataFormatManagerServiceStub(self.channel)

    def call(self, what: str, rpc: Any, request: Any) -> Any:
        try:
            return rpc(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise VerifyError(
                f"{what} at {self.address} failed: {code} ({details}); is the Stream API running "
                "there, and does it serve the reader services?"
            ) from exc

    def info(self, key: str) -> ServerSession | None:
        info = self.call(
            "GetSessionInfo",
            self.sessions.GetSessionInfo,
            api_pb2.GetSessionInfoRequest(session_key=key),
        )
        if not info.success:
            return None
        created = info.creation_time.ToNanoseconds() if info.HasField("creation_time") else 0
        return ServerSession(
            key,
            info.data_source,
            info.identifier,
            info.is_complete,
            created,
            dict(info.details),
            info,
        )


def list_sessions(
    address: str, data_source: str, *, timeout_s: float = 10.0
) -> list[ServerSession]:
    """Every session the server knows for `data_source`, oldest first."""
    server = _Server(address, timeout_s)
    try:
        return _list(server, data_source)
    finally:
        server.channel.close()


def _list(server: _Server, data_source: str) -> list[ServerSession]:
    answer = server.call(
        "GetCurrentSessions",
        server.sessions.GetCurrentSessions,
        api_pb2.GetCurrentSessionsRequest(data_source=data_source),
    )
    if not answer.success:
        raise VerifyError(f"GetCurrentSessions at {server.address} answered success=false")
    found = [s for k in answer.session_keys if (s := server.info(k)) is not None]
    return sorted(found, key=lambda s: s.created_ns)


def _find(server: _Server, data_source: str, session: str | None) -> ServerSession:
    """By key; else by identifier or labstream data_id among the data source's sessions; else
    the newest one."""
    if session:
        direct = server.info(session)
        if direct is not None:
            return direct
    known = _list(server, data_source)
    if session:
        known = [s for s in known if session in (s.identifier, s.details.get("labstream_data_id"))]
    if not known:
        which = f"session {session!r}" if session else "any session"
        raise VerifyError(
            f"{server.address} does not know {which} of data source {data_source!r} "
            "(`labstream atlas sessions` lists what it has)"
        )
    return known[-1]


def read_session(
    address: str,
    session: str | None = None,
    *,
    data_source: str = "Default",
    idle_s: float = 2.0,
    timeout_s: float = 10.0,
) -> tuple[ServerSession, RecordedSession, int]:
    """Read a session's packets back through the reader service.

    Returns the session's info, its packets as the checker's `RecordedSession` (in the order the
    server gave them), and the number of essentials read. Reading stops once every stream read has
    ended (EndOfSession) and nothing more came for a moment, or after `idle_s` without a packet.
    """
    server = _Server(address, timeout_s)
    try:
        found = _find(server, data_source, session)
        info = found.info
        streams = list(info.streams)
        details = api_pb2.ConnectionDetails(
            data_source=found.data_source,
            session_key=found.key,
            streams=streams,
            stream_offsets=[
                info.topic_partition_offsets.get(f"{found.data_source}.{s}:0", 0) for s in streams
            ],
            main_offset=info.main_offset,
            essentials_offset=info.essentials_offset,
        )
        conn = server.call(
            "NewConnection",
            server.connections.NewConnection,
            api_pb2.NewConnectionRequest(details=details),
        ).connection
        try:
            responses, essentials = _read(server, conn, idle_s)
        finally:
            server.call(
                "CloseConnection",
                server.connections.CloseConnection,
                api_pb2.CloseConnectionRequest(connection=conn),
            )
        recorded = _as_recorded(server, found, responses)
    finally:
        server.channel.close()
    return found, recorded, essentials


def _read(server: _Server, conn: Any, idle_s: float) -> tuple[list[Any], int]:
    got: queue.Queue[tuple[str, Any]] = queue.Queue()
    request = api_pb2.ReadPacketsRequest(connection=conn)
    calls = {
        "packets": server.reader.ReadPackets(request),
        "essentials": server.reader.ReadEssentials(api_pb2.ReadEssentialsRequest(connection=conn)),
    }

    def pump(name: str, call: Any) -> None:
        try:
            for message in call:
                for r in message.response:
                    got.put((name, r))
        except grpc.RpcError as exc:
            got.put(("error", (name, exc)))

    threads = [
        threading.Thread(target=pump, args=item, daemon=True, name=f"atlas-verify-{item[0]}")
        for item in calls.items()
    ]
    for t in threads:
        t.start()
    responses: list[Any] = []
    essentials = 0
    ended: dict[str, bool] = {}
    try:
        while True:
            # Once every stream has ended, a short quiet spell is enough (the essentials have no
            # end marker); before that, wait the whole idle time for more.
            done = MAIN_STREAM in ended and all(ended.values())
            try:
                name, r = got.get(timeout=min(idle_s, 0.25) if done else idle_s)
            except queue.Empty:
                break
            if name == "error":
                which, exc = r
                if exc.code() == grpc.StatusCode.CANCELLED:
                    continue
                raise VerifyError(
                    f"Read{which.capitalize()} at {server.address} failed: {exc.code().name} "
                    f"({exc.details()})"
                )
            if name == "essentials":
                essentials += 1
                continue
            responses.append(r)
            ended[r.stream] = ended.get(r.stream, False) or r.packet.type == "EndOfSession"
    finally:
        for call in calls.values():
            call.cancel()
        for t in threads:
            t.join(5)
    return responses, essentials


def _as_recorded(server: _Server, found: ServerSession, responses: list[Any]) -> RecordedSession:
    packets = []
    wanted: set[tuple[str, int]] = set()
    for seq, r in enumerate(responses, start=1):
        content, problem = decode_content(r.packet.type, bytes(r.packet.content))
        rec = RecordedPacket(
            seq=seq,
            rpc="ReadPackets",
            call_id=0,
            received_ns=r.submit_time.ToNanoseconds(),
            data_source=found.data_source,
            stream=r.stream,
            # the reader's session-key filter let only records keyed by the session through
            details_session_key=found.key,
            packet=r.packet,
            content=content,
            content_error=problem,
        )
        packets.append(rec)
        fmt: Any = getattr(content, "data_format", None) if rec.type in DATA_TYPES else None
        if fmt is not None and fmt.WhichOneof("format") == "data_format_identifier":
            kind = "event" if rec.type == "Event" else "parameter"
            wanted.add((kind, int(fmt.data_format_identifier)))
    return RecordedSession(
        session_key=found.key,
        data_source=found.data_source,
        identifier=found.identifier,
        details=found.details,
        created_seq=0,  # the server knows the key: it was created, before any packet
        end_session_seqs=(len(packets) + 1,) if found.is_complete else (),
        packets=tuple(packets),
        formats=tuple(_formats(server, found.data_source, wanted)),
    )


def _formats(
    server: _Server, data_source: str, wanted: set[tuple[str, int]]
) -> Iterator[FormatRecord]:
    """The server's answer for every format id the packets use (an unknown id gives nothing)."""
    for kind, fid in sorted(wanted):
        if kind == "parameter":
            names = server.call(
                "GetParametersList",
                server.formats.GetParametersList,
                api_pb2.GetParametersListRequest(
                    data_source=data_source, data_format_identifier=fid
                ),
            ).parameters
            if names:
                yield FormatRecord(data_source, fid, "parameter", parameters=tuple(names))
        else:
            event = server.call(
                "GetEvent",
                server.formats.GetEvent,
                api_pb2.GetEventRequest(data_source=data_source, data_format_identifier=fid),
            ).event
            if event:
                yield FormatRecord(data_source, fid, "event", event=event)


def verify(
    address: str,
    session: str | None = None,
    *,
    data_source: str = "Default",
    idle_s: float = 2.0,
    timeout_s: float = 10.0,
) -> Verified:
    """Read a session back (`read_session`) and check it, without the checks the server cannot
    answer (`NOT_FROM_SERVER`)."""
    found, recorded, essentials = read_session(
        address, session, data_source=data_source, idle_s=idle_s, timeout_s=timeout_s
    )
    report = check_session(recorded)
    judged = tuple(c for c in report.checks if c.name not in NOT_FROM_SERVER)
    return Verified(
        found, dataclasses.replace(report, checks=judged), len(recorded.packets), essentials
    )


def format_verified(v: Verified, address: str, *, verbose: bool = False) -> str:
    """What was read, the checker's report, and the checks left out."""
    state = "ended" if v.session.is_complete else "NOT ended (no EndSession yet)"
    head = (
        f"read from {address}: {v.packets} packets of session {v.session.key} ({state}), "
        f"{v.essentials} on the essentials topic"
    )
    tail = "not judged from the server (they need the writer's RPCs): " + ", ".join(
        sorted(NOT_FROM_SERVER)
    )
    return "\n".join([head, format_report(v.report, verbose=verbose), tail])


#: How far apart a sample's time on the server and its row's may be, beyond one offset for the
#: whole channel (a clock correction): periodic packets rebuild times as start + i x interval.
TIME_TOLERANCE_NS: Final = 1_000


@dataclass(frozen=True, slots=True)
class Compared:
    """One channel of a pushed log against what the server holds for it."""

    channel: str
    parameter: str
    rows: int  # in the log
    samples: int  # on the server
    different_values: int  # same position, another value (NaN equals NaN: a gap)
    different_times: int  # same position, a time off by more than the tolerance
    offset_ns: int  # the server's times minus the log's (a clock correction), at the median

    @property
    def same(self) -> bool:
        return self.rows == self.samples and not self.different_values and not self.different_times

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "same": self.same}


def compare_with_log(
    report: SessionReport, path: str, *, application: str = "labstream", time_unit: str = "s"
) -> list[Compared]:
    """Each channel of the log at ``path`` (read as ``labstream push`` reads it) against the
    parameter ``{channel}:{application}`` the server holds, row by row in time order.

    Raises:
        VerifyError: the log cannot be read.
    """
    import numpy as np

    from .._core.timebase import seconds_to_ns
    from .logfiles import LogFileError, ReadOptions, open_log

    try:
        log = open_log(path, ReadOptions(time_unit=time_unit))  # type: ignore[arg-type]
        times: list[Any] = []
        values: dict[str, list[Any]] = {c.name: [] for c in log.channels}
        for batch in log.batches(65_536):
            times.append(seconds_to_ns(batch.timestamps))
            for name, column in batch.values.items():
                values[name].append(column)
    except (LogFileError, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}") from exc
    file_ns = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
    out = []
    for name, parts in values.items():
        parameter = f"{name}:{application}"
        data = report.parameters.get(parameter)
        want = np.concatenate(parts) if parts else np.zeros(0)
        got_ns = np.asarray(data.timestamps_ns if data else [], dtype=np.int64)
        got = np.asarray(data.values if data else [], dtype=np.float64)
        order = np.argsort(got_ns, kind="stable")
        got_ns, got = got_ns[order], got[order]
        n = min(len(want), len(got))
        diff = got_ns[:n] - file_ns[:n]
        offset = int(np.median(diff)) if n else 0
        same_value = (got[:n] == want[:n]) | (np.isnan(got[:n]) & np.isnan(want[:n]))
        out.append(
            Compared(
                name,
                parameter,
                len(want),
                len(got),
                int(n - np.count_nonzero(same_value)),
                int(np.count_nonzero(np.abs(diff - offset) > TIME_TOLERANCE_NS)),
                offset,
            )
        )
    return out


def format_compared(compared: list[Compared], path: str) -> str:
    """One line per channel: the log's rows against the server's samples."""
    lines = [f"compared with {path}:"]
    for c in compared:
        if c.same:
            verdict = "same"
        else:
            problems = []
            if c.rows != c.samples:
                problems.append(f"{c.samples - c.rows:+,} samples")
            if c.different_values:
                problems.append(f"{c.different_values:,} other values")
            if c.different_times:
                problems.append(f"{c.different_times:,} other times")
            verdict = "DIFFERENT: " + ", ".join(problems)
        shift = (
            f" (times shifted {c.offset_ns / 1e9:+.6f} s: a clock correction)"
            if c.offset_ns
            else ""
        )
        lines.append(
            f"  {c.channel}: {c.rows:,} rows, {c.samples:,} on the server: {verdict}{shift}"
        )
    return "\n".join(lines)
