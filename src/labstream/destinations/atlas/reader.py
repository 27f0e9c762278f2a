"""Read a session back from a Stream API: its info, its packets and the formats they use.

The real Stream API's OK means only "queued", so what the server holds can only be known by
asking its reader service (``ConnectionManagerService`` and ``PacketReaderService``, as ATLAS's
own reader does). The sink reads a session back when it resumes after a crash, to skip what
landed; ``labstream atlas verify`` reads one to judge it.

Synchronous gRPC: both callers run it off the event loop, and the reads are two server streams.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError, Message

from ..._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from ..._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from ...errors import DestinationError
from .options import MAIN_STREAM
from .rpc import NAME

__all__ = [
    "ReadBack",
    "ReadPacket",
    "ServerSession",
    "list_sessions",
    "read_session",
]

# Packet types whose content names a data format (the formats are read back with them).
_DATA_TYPES: Final = {
    "PeriodicData": od.PeriodicDataPacket,
    "RowData": od.RowDataPacket,
    "SynchroData": od.SynchroDataPacket,
}
_CONTENT_TYPES: Final[dict[str, type[Message]]] = {
    **_DATA_TYPES,
    "Configuration": od.ConfigurationPacket,
    "Event": od.EventPacket,
}


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
class ReadPacket:
    """One packet as the reader gave it. ``content`` is the decoded data, configuration or
    event packet, None for other types (or content that does not decode)."""

    stream: str
    packet: Any  # api_pb2.Packet
    submit_time_ns: int
    content: Any

    @property
    def type(self) -> str:
        return str(self.packet.type)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a session holds, in the order the server gave it.

    Attributes:
        parameter_formats: data format id -> its parameter identifiers, for every id the data
            packets use that the server knows.
        event_formats: event format id -> the server's event definition.
        essentials: how many essential packets (configurations) the server gave on their own.
    """

    session: ServerSession
    packets: tuple[ReadPacket, ...]
    essentials: int
    parameter_formats: dict[int, tuple[str, ...]]
    event_formats: dict[int, Any]


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
            raise DestinationError(
                f"{what} at {self.address} failed: {code} ({details}); is the Stream API running "
                "there, and does it serve the reader services?",
                destination=NAME,
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
    """Every session the server knows for ``data_source``, oldest first.

    Raises:
        DestinationError: the server could not be asked.
    """
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
        raise DestinationError(
            f"GetCurrentSessions at {server.address} answered success=false", destination=NAME
        )
    found = [s for k in answer.session_keys if (s := server.info(k)) is not None]
    return sorted(found, key=lambda s: s.created_ns)


def _find(server: _Server, data_source: str, session: str | None) -> ServerSession:
    """By key; else by identifier or labstream data_id; else the newest session."""
    if session:
        direct = server.info(session)
        if direct is not None:
            return direct
    known = _list(server, data_source)
    if session:
        known = [s for s in known if session in (s.identifier, s.details.get("labstream_data_id"))]
    if not known:
        which = f"session {session!r}" if session else "any session"
        raise DestinationError(
            f"{server.address} does not know {which} of data source {data_source!r} "
            "(`labstream atlas sessions` lists what it has)",
            destination=NAME,
        )
    return known[-1]


def read_session(
    address: str,
    session: str | None = None,
    *,
    data_source: str = "Default",
    idle_s: float = 2.0,
    timeout_s: float = 10.0,
) -> ReadBack:
    """Read a session's packets back through the reader service. ``session`` is a session key,
    else an identifier or labstream data_id among the data source's sessions; None: the newest.
    Reading stops once every stream read has ended (EndOfSession) and nothing more came for a
    moment, or after ``idle_s`` without a packet.

    Raises:
        DestinationError: the server could not be asked, or has no such session.
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
        packets = tuple(
            ReadPacket(r.stream, r.packet, r.submit_time.ToNanoseconds(), _decoded(r.packet))
            for r in responses
        )
        wanted = {
            ("event" if p.type == "Event" else "parameter", int(fmt.data_format_identifier))
            for p in packets
            if (fmt := _data_format(p)) is not None
        }
        parameters, events = _formats(server, found.data_source, wanted)
    finally:
        server.channel.close()
    return ReadBack(found, packets, essentials, parameters, events)


def _decoded(packet: Any) -> Any:
    cls = _CONTENT_TYPES.get(packet.type)
    if cls is None:
        return None
    message = cls()
    try:
        message.ParseFromString(bytes(packet.content))
    except DecodeError:
        return None
    return message


def _data_format(p: ReadPacket) -> Any:
    if p.type not in (*_DATA_TYPES, "Event") or p.content is None:
        return None
    fmt = p.content.data_format
    return fmt if fmt.WhichOneof("format") == "data_format_identifier" else None


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
        threading.Thread(target=pump, args=item, daemon=True, name=f"atlas-read-{item[0]}")
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
                raise DestinationError(
                    f"Read{which.capitalize()} at {server.address} failed: {exc.code().name} "
                    f"({exc.details()})",
                    destination=NAME,
                ) from exc
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


def _formats(
    server: _Server, data_source: str, wanted: set[tuple[str, int]]
) -> tuple[dict[int, tuple[str, ...]], dict[int, Any]]:
    """The server's answer for every format id the packets use (an unknown id gives nothing)."""
    parameters: dict[int, tuple[str, ...]] = {}
    events: dict[int, Any] = {}
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
                parameters[fid] = tuple(names)
        else:
            event = server.call(
                "GetEvent",
                server.formats.GetEvent,
                api_pb2.GetEventRequest(data_source=data_source, data_format_identifier=fid),
            ).event
            if event:
                events[fid] = event
    return parameters, events
