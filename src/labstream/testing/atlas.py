"""A local ATLAS Stream API (gRPC) that records every packet and can misbehave on demand.

Why it exists: the real Stream API (Motion Applied's MA.Streaming server) needs Kafka, validates
nothing a writer sends, and never answers a ``WriteDataPackets`` stream (server 1.3.5). A client can
therefore "succeed" against it while ATLAS shows nothing. This emulator speaks the same services on
the same gRPC paths (generated from the published protocol), so any client written against the real
server -- labstream's sink, the vendor's Python samples -- runs against it unchanged, and it keeps
what the real server throws away: every packet exactly as received, every RPC, in arrival order.
:mod:`labstream.testing.atlas_checker` then judges that recording against ATLAS's rules.

Behaviour (see ``shared/specs/atlas-protocol.md``; choices of the emulator are marked so):

* ``SessionManagementService``: CreateSession returns a GUID key and ``success=true``; the other
  session RPCs answer ``success=false`` with status OK for an unknown key; EndSession twice is
  harmless. Session info is immediately consistent (the real server is eventually consistent).
  GetSessionStart/StopNotification stream the sessions created/ended after the call (an empty
  data source means every data source: emulator choice).
* ``DataFormatManagerService``: a format id is a stable hash of (data source, ordered parameter
  list) -- the same across restarts and emulator instances; the reverse lookups answer what was
  issued (an unknown id gives an empty list / empty event, status OK: emulator choice). An empty
  parameter list or event name is ``INVALID_ARGUMENT`` (emulator choice).
* ``PacketWriterService``: unary writes answer OK without validation; ``WriteDataPackets`` accepts
  every batch and, like server 1.3.5, never answers after the client half-closes: the call ends by
  client cancellation, deadline or emulator shutdown (``UNAVAILABLE``), unless
  ``answer_write_stream=True``. ``WriteInfoPacket(s)`` behave the same way and are recorded apart.
  Every request message is limited to 4 MiB (``RESOURCE_EXHAUSTED`` beyond).
* Topics as server 1.3.5 keeps them (topic-based mode, one partition each): the main stream is
  topic ``{DataSource}``, a named stream ``S`` is ``{DataSource}.{S}``, and every ``is_essential``
  packet is copied to ``{DataSource}_essential``; a record's offset is its position in its topic,
  its key the outer ``DataPacketDetails.session_key``. GetCurrentSessions lists every session of
  the data source, ended ones included (1.3.5 does not filter them). GetSessionInfo lists the data
  source's named streams (never ``""``) and the offsets its topics had at CreateSession
  (``topic_partition_offsets`` keyed ``"{topic}:0"``, ``main_offset``, ``essentials_offset``; the
  NewSessionPacket of CreateSession carries all of them in its map).
* ``ConnectionManagerService``: connection ids 1, 2, 3, ... with their details (emulator choice:
  the real server hashes the request with a random number).
  ``PacketReaderService``: ReadPackets serves the connection's named streams (all of the data
  source's, new ones included, when none are listed) and the main stream unless excluded, from
  each stream's offset (-1 latest at the time of the call, 0 earliest, else that position), merged
  in arrival order, then live until the client cancels; with a ``session_key`` it skips every record
  whose key differs. ReadEssentials does the same over the essentials topic from
  ``essentials_offset``. ReadDataPackets keeps data packets with a parameter that an include
  pattern matches (all when none) and no exclude pattern does (``re.search``), events likewise,
  markers when ``include_markers``. Responses are batches of up to 500 packets / 1 MiB; a
  response's ``stream`` is the stream the packet was written to (for essentials too) and its
  ``submit_time`` the arrival time. Emulator choices: an unknown or closed connection is
  ``NOT_FOUND``; an offset below -1 or a bad pattern is ``INVALID_ARGUMENT``; CloseConnection ends
  that connection's reads (OK); shutting down ends them ``UNAVAILABLE``.
* ``UniqueKeyGeneratorService`` on its own server and port: ``KEY_TYPE_STRING`` -> GUID,
  ``KEY_TYPE_ULONG`` -> 1, 2, 3, ...; anything else ``INVALID_ARGUMENT``.

Faults (`AtlasFaultPlan`) answer ``UNAVAILABLE`` -- down, every n-th call, a seeded share of calls
-- and add latency, for chosen methods. "Down at start" is a fixed port not yet started, or a plan
with ``down=True`` replaced later; `AtlasEmulator.restart` stops and restarts the Stream API on the
same port mid-session, keeping everything recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import grpc
import orjson
from google.protobuf import api_pb2 as wkt_api_pb2
from google.protobuf import (
    empty_pb2,
    field_mask_pb2,
    json_format,
    struct_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message

from .._proto.ma.streaming.api.v1 import api_pb2
from .._proto.ma.streaming.key_generator.v1 import key_generator_pb2
from .._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from ._spill import Spill as _Spill
from ._threaded import started_in_thread
from .atlas_checker import (
    DATA_TYPES,
    FormatRecord,
    RecordedPacket,
    RecordedSession,
    SessionReport,
    check_sessions,
    decode_content,
    format_report,
)

__all__ = [
    "DEFAULT_KEY_GENERATOR_PORT",
    "DEFAULT_PORT",
    "MAX_REQUEST_BYTES",
    "AtlasEmulator",
    "AtlasFaultPlan",
    "RecordedCall",
    "RecordedInfoPacket",
    "RecordedPacket",
    "RecordedSession",
    "load_record",
    "main",
    "run_in_thread",
    "serve",
]

DEFAULT_PORT: Final = 13579
DEFAULT_KEY_GENERATOR_PORT: Final = 15379
#: The real server's per-request message limit (ASP.NET gRPC default).
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024

#: Every well-known type loaded into the default descriptor pool, so that a packet's `Any` holding
#: one (the vendor sample's MetadataPacket wraps a StringValue) is recorded as JSON.
_WELL_KNOWN_TYPES: Final = (
    wkt_api_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    type_pb2,
    wrappers_pb2,
)

_API: Final = "ma.streaming.api.v1"
_KEYGEN: Final = "ma.streaming.key_generator.v1"
_STOP_GRACE_S: Final = 1.0
# A read response is a batch: at most this many packets, and no more once this many bytes are in
# (a client accepts 4 MiB per message by default).
_BATCH_PACKETS: Final = 500
_BATCH_BYTES: Final = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Fault plan


@dataclass(frozen=True, slots=True)
class AtlasFaultPlan:
    """Which RPCs fail with ``UNAVAILABLE`` or are slowed, for methods matching `methods`.

    `methods` are ``fnmatch`` patterns over ``"Service/Method"`` (e.g. ``"PacketWriterService/*"``,
    ``"*/CreateSession"``, ``"UniqueKeyGeneratorService/*"``); the default matches every RPC of
    both servers. Matching calls are numbered 1, 2, ... from the moment the plan is installed and
    decided on arrival: `down` fails all of them; else every `unavailable_every`-th; else a share
    `unavailable_fraction` drawn from ``random.Random(seed)`` (one draw per matching call, so the
    fate of call *n* depends only on `seed` and *n*). `latency_s` delays every matching call;
    `late_answer_s` delays its answer after it was handled (a write is stored, then answered late).
    A failed call records nothing but the call itself.
    """

    down: bool = False
    unavailable_every: int = 0
    unavailable_fraction: float = 0.0
    seed: int = 0
    latency_s: float = 0.0
    late_answer_s: float = 0.0
    methods: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        if not isinstance(self.down, bool):
            raise ValueError("down must be a bool")
        every = self.unavailable_every
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"unavailable_every must be an int >= 0, got {every!r}")
        if not 0.0 <= self.unavailable_fraction <= 1.0:
            raise ValueError(
                f"unavailable_fraction must be in [0, 1], got {self.unavailable_fraction}"
            )
        if not 0.0 <= self.latency_s < float("inf"):
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")
        if not 0.0 <= self.late_answer_s < float("inf"):
            raise ValueError(f"late_answer_s must be >= 0, got {self.late_answer_s}")
        if isinstance(self.methods, str) or not all(isinstance(m, str) for m in self.methods):
            raise ValueError("methods must be a sequence of 'Service/Method' patterns")
        object.__setattr__(self, "methods", tuple(self.methods))

    def applies_to(self, method: str) -> bool:
        """Whether ``"Service/Method"`` is subject to this plan."""
        return any(fnmatch.fnmatchcase(method, pattern) for pattern in self.methods)


# --------------------------------------------------------------------------------------------------
# What the emulator keeps


@dataclass(slots=True)
class RecordedCall:
    """One RPC as the emulator saw it (updated while a streaming call runs).

    Attributes:
        seq: emulator-wide arrival number (shared with packets).
        service, method: short names, e.g. ``"SessionManagementService"``, ``"CreateSession"``.
        request, response: the messages (None for client-streaming calls, failed calls, and
            the write RPCs' requests, whose packets are recorded as `RecordedPacket`).
        code: final gRPC status name (``"OK"``, ``"UNAVAILABLE"``, ``"CANCELLED"``, ...); None while
            the call runs.
        fault: the injected fault (``"down"``, ``"unavailable_every"``, ``"unavailable_fraction"``).
        packets, batches: packets and stream messages received by a write call.
        half_closed: client-streaming calls: whether the request stream ended -- the client
            half-closed, or gRPC broke the stream (a message over 4 MiB: the client sees
            ``RESOURCE_EXHAUSTED``, the call here ends ``CANCELLED``).
        answered: whether the emulator sent a response.
    """

    seq: int
    service: str
    method: str
    received_ns: int
    request: Message | None = None
    response: Message | None = None
    code: str | None = None
    details: str = ""
    fault: str | None = None
    packets: int = 0
    batches: int = 0
    half_closed: bool | None = None
    answered: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "rpc",
            "seq": self.seq,
            "service": self.service,
            "method": self.method,
            "received_ns": self.received_ns,
            "code": self.code,
            "details": self.details,
            "fault": self.fault,
            "packets": self.packets,
            "batches": self.batches,
            "half_closed": self.half_closed,
            "answered": self.answered,
            "request": _to_dict(self.request),
            "response": _to_dict(self.response),
        }


@dataclass(frozen=True, slots=True)
class RecordedInfoPacket:
    """A packet written with ``WriteInfoPacket(s)`` (system topic; not part of any session)."""

    seq: int
    rpc: str
    call_id: int
    info_type: int
    packet: Message


@dataclass(frozen=True, slots=True)
class _Held:
    """A packet as the emulator keeps it: the envelope (or where a spill file holds it) and where
    it came from. The content is decoded only when read (`recorded`): decoded samples take about
    four times their bytes."""

    seq: int
    rpc: str
    call_id: int
    received_ns: int
    data_source: str
    stream: str
    details_session_key: str
    type: str
    held: Any  # the Packet, or its (offset, length) in `spill`
    spill: _Spill | None = None

    @property
    def packet(self) -> Any:
        if self.spill is None:
            return self.held
        return od.Packet.FromString(self.spill.get(self.held))

    def content(self) -> tuple[Message | None, str | None]:
        packet = self.packet
        return decode_content(packet.type, bytes(packet.content))

    def recorded(self) -> RecordedPacket:
        packet = self.packet
        content, problem = decode_content(packet.type, bytes(packet.content))
        return RecordedPacket(
            seq=self.seq,
            rpc=self.rpc,
            call_id=self.call_id,
            received_ns=self.received_ns,
            data_source=self.data_source,
            stream=self.stream,
            details_session_key=self.details_session_key,
            packet=packet,
            content=content,
            content_error=problem,
        )


@dataclass(slots=True)
class _Session:
    key: str
    data_source: str
    identifier: str
    session_type: str
    version: int
    details: dict[str, str]
    associates: list[str]
    utc_offset: Any
    creation_time: Any
    created_seq: int | None
    #: "{topic}:{partition}" -> the topic's next offset when the session was created
    offsets: dict[str, int] = field(default_factory=dict)
    termination_time: Any = None
    end_seqs: list[int] = field(default_factory=list)
    packets: list[_Held] = field(default_factory=list)


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


def _to_dict(message: Message | None) -> dict[str, Any] | None:
    if message is None:
        return None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _content_json(content: Message | None) -> dict[str, Any] | None:
    """A packet's content as JSON for the record; None when an `Any` in it holds a type nobody
    registered (the record's ``content_b64`` keeps the bytes either way)."""
    try:
        return _to_dict(content)
    except TypeError:
        return None


def stream_topic(data_source: str, stream: str) -> str:
    """The Kafka topic of a stream in server 1.3.5's topic-based mode: the main stream ``""`` is
    ``{data_source}``, a named stream ``S`` is ``{data_source}.{S}``."""
    return f"{data_source}.{stream}" if stream else data_source


def essentials_topic(data_source: str) -> str:
    """The topic every ``is_essential`` packet of `data_source` is copied to."""
    return f"{data_source}_essential"


def _named_stream(data_source: str, topic: str) -> str | None:
    """The stream of `topic` if it matches ``^{data_source}\\.[^.]*$`` (how the server lists a
    data source's named streams), else None."""
    prefix = f"{data_source}."
    if topic.startswith(prefix) and "." not in topic[len(prefix) :]:
        return topic[len(prefix) :]
    return None


def _format_id(kind: str, data_source: str, names: Sequence[str]) -> int:
    """A stable, non-zero uint64 per (kind, data source, ordered names)."""
    digest = hashlib.blake2b(orjson.dumps([kind, data_source, list(names)]), digest_size=8)
    return int.from_bytes(digest.digest(), "big") or 1


class _State:
    """Everything recorded, and the rules that derive sessions, formats and keys from RPCs.

    Derived state is updated only by `apply_rpc` (from a finished call's request and response) and
    `add_packet`, so the live server and `load_record` (replaying a ``--record`` file) agree.
    """

    def __init__(self, *, spill: bool = False) -> None:
        self.lock = threading.Lock()
        self.spill = _Spill("labstream-atlas-") if spill else None
        self.seq = 0
        self.calls: list[RecordedCall] = []
        self.packets: list[_Held] = []
        self.info_packets: list[RecordedInfoPacket] = []
        self.sessions: dict[str, _Session] = {}
        self.formats: dict[tuple[str, str, int], FormatRecord] = {}  # (data_source, kind, id)
        self.issued_keys: set[str] = set()
        self.next_ulong = 1
        self.connections: dict[int, Any] = {}
        self.last_connection = 0
        #: topic -> its records in offset order (the offset is the index; one partition per topic)
        self.topics: dict[str, list[_Held]] = {}
        self.record: IO[bytes] | None = None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def write(self, make: Callable[[], dict[str, Any]]) -> None:
        """Append a record line; ``make`` builds it only when recording (it costs ~0.5 ms)."""
        if self.record is not None:
            self.record.write(orjson.dumps(make()) + b"\n")
            self.record.flush()

    def apply_rpc(self, call: RecordedCall) -> None:
        """Update sessions/formats/keys after a successful call (caller holds the lock)."""
        req: Any = call.request
        resp: Any = call.response
        if call.code != "OK" or req is None or resp is None:
            return
        m = call.method
        if m == "CreateSession" and resp.success:
            self.sessions[resp.session_key] = _Session(
                key=resp.session_key,
                data_source=req.data_source,
                identifier=req.identifier,
                session_type=req.type,
                version=req.version,
                details=dict(req.details),
                associates=list(req.associate_session_key),
                utc_offset=req.utc_offset,
                creation_time=resp.new_session.creation_time,
                created_seq=call.seq,
                offsets=dict(resp.new_session.topic_partition_offsets),
            )
        elif m == "EndSession" and resp.success:
            s = self.sessions[req.session_key]
            s.end_seqs.append(call.seq)
            if s.termination_time is None:
                s.termination_time = resp.end_session.termination_time
        elif m == "UpdateSessionIdentifier" and resp.success:
            self.sessions[req.session_key].identifier = req.identifier
        elif m == "UpdateSessionDetails" and resp.success:
            self.sessions[req.session_key].details.update(req.details)
        elif m == "AddAssociateSession" and resp.success:
            self.sessions[req.session_key].associates.append(req.associate_session_key)
        elif m == "GetParameterDataFormatId":
            key = (req.data_source, "parameter", resp.data_format_identifier)
            self.formats.setdefault(
                key,
                FormatRecord(
                    req.data_source,
                    resp.data_format_identifier,
                    "parameter",
                    parameters=tuple(req.parameters),
                    seq=call.seq,
                ),
            )
        elif m == "GetEventDataFormatId":
            key = (req.data_source, "event", resp.data_format_identifier)
            self.formats.setdefault(
                key,
                FormatRecord(
                    req.data_source,
                    resp.data_format_identifier,
                    "event",
                    event=req.event,
                    seq=call.seq,
                ),
            )
        elif m == "GenerateUniqueKey":
            which = resp.WhichOneof("key")
            if which == "string_key":
                self.issued_keys.add(resp.string_key)
            elif which == "ulong_key":
                self.issued_keys.add(str(resp.ulong_key))
                self.next_ulong = max(self.next_ulong, resp.ulong_key + 1)
        elif m == "NewConnection":
            self.connections[resp.connection.id] = req.details
            self.last_connection = max(self.last_connection, resp.connection.id)
        elif m == "CloseConnection":
            self.connections.pop(req.connection.id, None)

    def add_packet(
        self,
        *,
        seq: int,
        rpc: str,
        call_id: int,
        received_ns: int,
        detail: Any,
    ) -> None:
        """Record one DataPacketDetails (caller holds the lock)."""
        packet = detail.message
        spill = self.spill
        # Interned: a long session repeats the same few names in every one of its packets.
        rec = _Held(
            seq,
            rpc,
            call_id,
            received_ns,
            sys.intern(detail.data_source),
            sys.intern(detail.stream),
            sys.intern(detail.session_key),
            sys.intern(packet.type),
            packet if spill is None else spill.put(packet.SerializeToString()),
            spill,
        )
        self.packets.append(rec)
        self.topics.setdefault(stream_topic(rec.data_source, rec.stream), []).append(rec)
        if packet.is_essential:
            self.topics.setdefault(essentials_topic(rec.data_source), []).append(rec)
        key = detail.session_key or packet.session_key
        session = self.sessions.get(key)
        if session is None:  # packets for a key no CreateSession returned: kept all the same
            session = self.sessions[key] = _Session(
                key, detail.data_source, "", "", 0, {}, [], None, None, None
            )
        session.packets.append(rec)

        def line() -> dict[str, Any]:
            content, problem = decode_content(packet.type, bytes(packet.content))
            return {
                "kind": "packet",
                "seq": seq,
                "rpc": rpc,
                "call_id": call_id,
                "received_ns": received_ns,
                "data_source": rec.data_source,
                "stream": rec.stream,
                "details_session_key": rec.details_session_key,
                "type": packet.type,
                "session_key": packet.session_key,
                "is_essential": packet.is_essential,
                "id": packet.id,
                "content_b64": base64.b64encode(packet.content).decode("ascii"),
                "content": _content_json(content) if problem is None else None,
                "content_error": problem,
            }

        self.write(line)

    def topic_offsets(self, data_source: str) -> dict[str, int]:
        """``"{topic}:0"`` -> next offset, every topic of `data_source` (caller holds the lock)."""
        names = {data_source, essentials_topic(data_source)}
        return {
            f"{topic}:0": len(records)
            for topic, records in self.topics.items()
            if topic in names or _named_stream(data_source, topic) is not None
        }

    def named_streams(self, data_source: str) -> list[str]:
        """The named streams of `data_source`, as the server lists them (caller holds the lock)."""
        return [
            name for topic in self.topics if (name := _named_stream(data_source, topic)) is not None
        ]

    def snapshot(self) -> dict[str, RecordedSession]:
        """Immutable copies of every session (caller holds the lock)."""
        formats = tuple(self.formats.values())
        keys = frozenset(self.issued_keys)
        return {
            key: RecordedSession(
                session_key=key,
                data_source=s.data_source if s.created_seq is not None else None,
                identifier=s.identifier,
                details=dict(s.details),
                created_seq=s.created_seq,
                end_session_seqs=tuple(s.end_seqs),
                packets=tuple(p.recorded() for p in s.packets),
                formats=formats,
                issued_keys=keys,
            )
            for key, s in self.sessions.items()
        }


# Request/response classes and kind of every RPC, from the compiled descriptors: the emulator serves
# exactly the published paths.
def _rpc_table() -> dict[tuple[str, str], tuple[type[Message], type[Message], bool, bool]]:
    table: dict[tuple[str, str], tuple[type[Message], type[Message], bool, bool]] = {}
    for module in (api_pb2, key_generator_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                table[(service.name, m.name)] = (
                    getattr(module, m.input_type.name),
                    getattr(module, m.output_type.name),
                    m.client_streaming,
                    m.server_streaming,
                )
    return table


_RPCS: Final = _rpc_table()
_SERVICE_PACKAGE: Final = {
    "PacketWriterService": _API,
    "DataFormatManagerService": _API,
    "SessionManagementService": _API,
    "ConnectionManagerService": _API,
    "PacketReaderService": _API,
    "UniqueKeyGeneratorService": _KEYGEN,
}

_Unary = Callable[[Any, RecordedCall], Awaitable[Message]]


# --------------------------------------------------------------------------------------------------
# The emulator


class AtlasEmulator:
    """An in-memory ATLAS Stream API plus key generator on ``grpc.aio``.

    Use ``async with`` or `start`/`stop`. State is guarded by a `threading.Lock`: another thread
    (see `run_in_thread`) may read `sessions`, `packets`, `calls`, `reports` and set `faults`
    while the servers run.

    Packets are kept as received (about 14 bytes of memory per double sample) and decoded when
    read. With ``spill=True`` their bytes go to an unlinked temporary file instead, and memory
    keeps under 1 KB per packet (where it is, and the call that wrote it) whatever the packet
    holds: what ``labstream atlas serve`` does, so that it can run for days (the disk holds the
    packets' bytes).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        key_generator_port: int = 0,
        faults: AtlasFaultPlan | None = None,
        answer_write_stream: bool = False,
        record_path: str | Path | None = None,
        spill: bool = False,
    ) -> None:
        self.host = host
        self._port = port or None
        self._key_port = key_generator_port or None
        self._requested = (port, key_generator_port)
        self.answer_write_stream = answer_write_stream
        self.record_path = Path(record_path) if record_path is not None else None
        self._state = _State(spill=spill)
        self._plan = AtlasFaultPlan()
        self._rng = random.Random(0)
        self._matched = 0
        self._fault_counts: Counter[str] = Counter()
        self.faults = faults if faults is not None else AtlasFaultPlan()
        self._api: grpc.aio.Server | None = None
        self._keygen: grpc.aio.Server | None = None
        self._closing: asyncio.Event | None = None
        self._subscribers: list[tuple[str, str, asyncio.Queue[tuple[str, str] | None]]] = []
        self._packets_added = asyncio.Event()  # replaced on every wake-up of the readers
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start both servers (the Stream API and the key generator).

        A port given as 0 is chosen on the first start and reused by later starts, so a restart
        lands on the same addresses. `OSError` if a port is taken.
        """
        if self._api is not None or self._keygen is not None:
            raise RuntimeError("emulator already started")
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        if self.record_path is not None and self._state.record is None:
            self._state.record = self.record_path.open("ab")
        try:
            await self.start_key_generator()
            await self.start_stream_api()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop both servers (idempotent). Everything recorded stays readable."""
        await self.stop_stream_api()
        await self.stop_key_generator()
        with self._state.lock:
            record, self._state.record = self._state.record, None
        if record is not None:
            record.close()

    async def start_stream_api(self) -> None:
        """Start only the Stream API server (on its earlier port after a stop)."""
        if self._api is not None:
            raise RuntimeError("Stream API already started")
        if self._closing is None or self._closing.is_set():
            self._closing = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        server = self._new_server()
        server.add_generic_rpc_handlers(self._api_handlers())
        self._port = await self._bind(server, self._port)
        self._api = server

    async def stop_stream_api(self) -> None:
        """Stop only the Stream API: hung write streams end ``UNAVAILABLE``, sessions are kept."""
        server, self._api = self._api, None
        if server is None:
            return
        if self._closing is not None:
            self._closing.set()
        for _, _, queue in list(self._subscribers):
            queue.put_nowait(None)
        self._wake_readers()
        await server.stop(_STOP_GRACE_S)

    async def start_key_generator(self) -> None:
        """Start only the key generator server."""
        if self._keygen is not None:
            raise RuntimeError("key generator already started")
        server = self._new_server()
        server.add_generic_rpc_handlers(
            [self._service("UniqueKeyGeneratorService", {"GenerateUniqueKey": self._generate_key})]
        )
        self._key_port = await self._bind(server, self._key_port)
        self._keygen = server

    async def stop_key_generator(self) -> None:
        server, self._keygen = self._keygen, None
        if server is not None:
            await server.stop(_STOP_GRACE_S)

    async def restart(self, *, down_for_s: float = 0.0, key_generator: bool = False) -> None:
        """Stop the Stream API (and the key generator, if asked), wait, start it on the same port.

        Recorded sessions, formats and keys survive: a client's session continues across it.
        """
        await self.stop_stream_api()
        if key_generator:
            await self.stop_key_generator()
        if down_for_s > 0:
            await asyncio.sleep(down_for_s)
        if key_generator:
            await self.start_key_generator()
        await self.start_stream_api()

    async def __aenter__(self) -> AtlasEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _new_server(self) -> grpc.aio.Server:
        return grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                # A second server on a taken port must fail, not share it silently.
                ("grpc.so_reuseport", 0),
            ]
        )

    async def _bind(self, server: grpc.aio.Server, port: int | None) -> int:
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = int(server.add_insecure_port(f"{host}:{port or 0}"))
        except RuntimeError as exc:
            raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot bind {host}:{port}")
        await server.start()
        return bound

    @property
    def running(self) -> bool:
        """Whether the Stream API server is up."""
        return self._api is not None

    @property
    def port(self) -> int:
        """The Stream API port (known once started, or given at construction)."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def key_generator_port(self) -> int:
        if self._key_port is None:
            raise RuntimeError("emulator not started")
        return self._key_port

    @property
    def address(self) -> str:
        """``host:port`` of the Stream API, for ``grpc.aio.insecure_channel``."""
        return self._addr(self.port)

    @property
    def key_generator_address(self) -> str:
        return self._addr(self.key_generator_port)

    def _addr(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the servers run on: ``run_coroutine_threadsafe(emu.restart(), emu.loop)``."""
        return self._loop

    # -- faults ------------------------------------------------------------------------------------

    @property
    def faults(self) -> AtlasFaultPlan:
        return self._plan

    @faults.setter
    def faults(self, plan: AtlasFaultPlan) -> None:
        """Install `plan` (thread-safe): call numbering and the random sequence restart."""
        if not isinstance(plan, AtlasFaultPlan):
            raise TypeError("faults must be an AtlasFaultPlan")
        with self._state.lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)
            self._matched = 0

    @property
    def fault_counts(self) -> dict[str, int]:
        """Injected faults by kind (``down``, ``unavailable_every``, ``unavailable_fraction``,
        ``latency``) since construction."""
        with self._state.lock:
            return dict(self._fault_counts)

    # -- readback ----------------------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, RecordedSession]:
        """session key -> an immutable snapshot of what was recorded for it."""
        with self._state.lock:
            return self._state.snapshot()

    @property
    def packets(self) -> list[RecordedPacket]:
        """Every packet received, all sessions and streams, in arrival order."""
        with self._state.lock:
            held = list(self._state.packets)
        return [p.recorded() for p in held]

    def packets_on(self, data_source: str, stream: str) -> list[RecordedPacket]:
        """Packets received for (data_source, stream), in arrival order."""
        with self._state.lock:
            held = [
                p
                for p in self._state.packets
                if p.data_source == data_source and p.stream == stream
            ]
        return [p.recorded() for p in held]

    @property
    def calls(self) -> list[RecordedCall]:
        """Every RPC in arrival order (the objects of running streaming calls are live)."""
        with self._state.lock:
            return list(self._state.calls)

    @property
    def info_packets(self) -> list[RecordedInfoPacket]:
        with self._state.lock:
            return list(self._state.info_packets)

    @property
    def issued_keys(self) -> frozenset[str]:
        with self._state.lock:
            return frozenset(self._state.issued_keys)

    def reports(self) -> list[SessionReport]:
        """The protocol report of every recorded session."""
        return check_sessions(self.sessions)

    def format_reports(self, *, verbose: bool = False) -> str:
        return format_report(self.reports(), verbose=verbose)

    # -- gRPC plumbing -----------------------------------------------------------------------------

    def _api_handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            self._service(
                "SessionManagementService",
                {
                    "CreateSession": self._create_session,
                    "EndSession": self._end_session,
                    "GetCurrentSessions": self._current_sessions,
                    "GetSessionInfo": self._session_info,
                    "UpdateSessionIdentifier": self._update_identifier,
                    "UpdateSessionDetails": self._update_details,
                    "AddAssociateSession": self._add_associate,
                    "GetSessionStartNotification": self._start_notifications,
                    "GetSessionStopNotification": self._stop_notifications,
                },
            ),
            self._service(
                "DataFormatManagerService",
                {
                    "GetParameterDataFormatId": self._parameter_format_id,
                    "GetEventDataFormatId": self._event_format_id,
                    "GetParametersList": self._parameters_list,
                    "GetEvent": self._get_event,
                },
            ),
            self._service(
                "PacketWriterService",
                {
                    "WriteDataPacket": self._write_data_packet,
                    "WriteDataPackets": self._write_data_packets,
                    "WriteInfoPacket": self._write_info_packet,
                    "WriteInfoPackets": self._write_info_packets,
                },
            ),
            self._service(
                "ConnectionManagerService",
                {
                    "NewConnection": self._new_connection,
                    "GetConnection": self._get_connection,
                    "CloseConnection": self._close_connection,
                },
            ),
            self._service(
                "PacketReaderService",
                {
                    "ReadPackets": self._read_packets,
                    "ReadEssentials": self._read_essentials,
                    "ReadDataPackets": self._read_data_packets,
                },
            ),
        ]

    def _service(self, service: str, impls: dict[str, Any]) -> grpc.GenericRpcHandler:
        handlers = {}
        for method, impl in impls.items():
            req_cls, resp_cls, client_streaming, server_streaming = _RPCS[(service, method)]
            kw = {
                "request_deserializer": req_cls.FromString,
                "response_serializer": resp_cls.SerializeToString,
            }
            if client_streaming:
                handlers[method] = grpc.stream_unary_rpc_method_handler(
                    self._wrap_client_stream(service, method, resp_cls, impl), **kw
                )
            elif server_streaming:
                handlers[method] = grpc.unary_stream_rpc_method_handler(
                    self._wrap_server_stream(service, method, impl), **kw
                )
            else:
                handlers[method] = grpc.unary_unary_rpc_method_handler(
                    self._wrap_unary(service, method, impl), **kw
                )
        return grpc.method_handlers_generic_handler(
            f"{_SERVICE_PACKAGE[service]}.{service}", handlers
        )

    def _begin(self, service: str, method: str, request: Message | None) -> RecordedCall:
        """Number and record a call, and decide its fault before anything is awaited."""
        now = time.time_ns()
        with self._state.lock:
            call = RecordedCall(self._state.next_seq(), service, method, now, request)
            self._state.calls.append(call)
            plan = self._plan
            if plan.applies_to(f"{service}/{method}"):
                self._matched += 1
                roll = self._rng.random()
                if plan.down:
                    call.fault = "down"
                elif plan.unavailable_every and self._matched % plan.unavailable_every == 0:
                    call.fault = "unavailable_every"
                elif roll < plan.unavailable_fraction:
                    call.fault = "unavailable_fraction"
                if call.fault:
                    self._fault_counts[call.fault] += 1
                if plan.latency_s > 0:
                    self._fault_counts["latency"] += 1
                    call.details = f"latency {plan.latency_s}"
        return call

    async def _gate(self, call: RecordedCall) -> None:
        plan = self._plan
        if plan.latency_s > 0 and plan.applies_to(f"{call.service}/{call.method}"):
            await asyncio.sleep(plan.latency_s)
        if call.fault is not None:
            raise _AbortError(grpc.StatusCode.UNAVAILABLE, f"injected fault: {call.fault}")

    async def _late(self, call: RecordedCall) -> None:
        """A slow server: the call was handled (a write is stored), and the answer comes late."""
        plan = self._plan
        if plan.late_answer_s > 0 and plan.applies_to(f"{call.service}/{call.method}"):
            await asyncio.sleep(plan.late_answer_s)

    def _finish(
        self,
        call: RecordedCall,
        code: grpc.StatusCode,
        details: str = "",
        response: Message | None = None,
    ) -> None:
        with self._state.lock:
            call.code = code.name
            call.details = details
            call.response = response
            call.answered = response is not None
            if call.method in ("WriteDataPacket", "WriteDataPackets", "WriteInfoPacket"):
                call.request = None  # its packets are recorded on their own
            self._state.apply_rpc(call)
            self._state.write(call.to_json)

    def _cancelled(self, call: RecordedCall, context: Any) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        self._finish(call, code, "ended by the client")

    def _wrap_unary(self, service: str, method: str, impl: _Unary) -> Any:
        async def handle(request: Message, context: grpc.aio.ServicerContext) -> Message:
            call = self._begin(service, method, request)
            try:
                await self._gate(call)
                response = await impl(request, call)
                await self._late(call)
            except _AbortError as exc:
                self._finish(call, exc.code, exc.details)
                await context.abort(exc.code, exc.details)
                raise  # unreachable: abort raises
            except asyncio.CancelledError:
                self._cancelled(call, context)
                raise
            self._finish(call, grpc.StatusCode.OK, response=response)
            return response

        return handle

    def _wrap_client_stream(
        self,
        service: str,
        method: str,
        resp_cls: type[Message],
        impl: Callable[[Any, RecordedCall], None],
    ) -> Any:
        async def handle(
            requests: AsyncIterator[Message], context: grpc.aio.ServicerContext
        ) -> Message:
            call = self._begin(service, method, None)
            call.half_closed = False
            try:
                await self._gate(call)
                async for request in requests:
                    call.batches += 1
                    impl(request, call)
                call.half_closed = True
                if self.answer_write_stream:
                    response = resp_cls()
                    self._finish(call, grpc.StatusCode.OK, response=response)
                    return response
                # Server 1.3.5: the response never comes. Wait for cancel, deadline or shutdown.
                closing = self._closing
                if closing is not None:
                    await closing.wait()
                raise _AbortError(grpc.StatusCode.UNAVAILABLE, "emulator shutting down")
            except _AbortError as exc:
                self._finish(call, exc.code, exc.details)
                await context.abort(exc.code, exc.details)
                raise
            except asyncio.CancelledError:
                self._cancelled(call, context)
                raise

        return handle

    def _wrap_server_stream(
        self, service: str, method: str, impl: Callable[[Any], AsyncIterator[Message]]
    ) -> Any:
        async def handle(
            request: Message, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Message]:
            call = self._begin(service, method, request)
            try:
                await self._gate(call)
                responses = impl(request)
                # Headers now: the client's wait_for_connection() returns once it is subscribed.
                await context.send_initial_metadata(())
                async for response in responses:
                    yield response
            except _AbortError as exc:
                self._finish(call, exc.code, exc.details)
                await context.abort(exc.code, exc.details)
                raise
            except asyncio.CancelledError:
                self._cancelled(call, context)
                raise
            self._finish(call, grpc.StatusCode.OK)

        return handle

    # -- SessionManagementService ------------------------------------------------------------------

    async def _create_session(self, req: Any, call: RecordedCall) -> Message:
        key = str(uuid.uuid4())
        creation = req.creation_time if req.HasField("creation_time") else None
        new_session = od.NewSessionPacket(data_source=req.data_source, utc_offset=req.utc_offset)
        if creation is not None:
            new_session.creation_time.CopyFrom(creation)
        else:
            new_session.creation_time.GetCurrentTime()
        new_session.session_info.CopyFrom(
            od.SessionInfoPacket(
                data_source=req.data_source,
                identifier=req.identifier,
                type=req.type,
                version=req.version,
                associate_session_keys=list(req.associate_session_key),
                details=dict(req.details),
                utc_offset=req.utc_offset,
                creation_time=new_session.creation_time,
            )
        )
        with self._state.lock:
            new_session.topic_partition_offsets.update(self._state.topic_offsets(req.data_source))
        self._notify("start", req.data_source, key)
        return api_pb2.CreateSessionResponse(session_key=key, new_session=new_session, success=True)

    def _known(self, key: str) -> _Session | None:
        with self._state.lock:
            s = self._state.sessions.get(key)
            return s if s is not None and s.created_seq is not None else None

    async def _end_session(self, req: Any, call: RecordedCall) -> Message:
        s = self._known(req.session_key)
        if s is None:
            return api_pb2.EndSessionResponse(success=False)
        end = od.EndOfSessionPacket(data_source=s.data_source)
        if req.HasField("termination_time"):
            end.termination_time.CopyFrom(req.termination_time)
        else:
            end.termination_time.GetCurrentTime()
        if not s.end_seqs:
            self._notify("stop", s.data_source, s.key)
        return api_pb2.EndSessionResponse(end_session=end, success=True)

    async def _current_sessions(self, req: Any, call: RecordedCall) -> Message:
        # Ended sessions too: server 1.3.5 does not filter on completion, whatever the name says.
        with self._state.lock:
            keys = [
                s.key
                for s in self._state.sessions.values()
                if s.created_seq is not None
                and (not req.data_source or s.data_source == req.data_source)
            ]
        return api_pb2.GetCurrentSessionsResponse(session_keys=keys, success=True)

    async def _session_info(self, req: Any, call: RecordedCall) -> Message:
        s = self._known(req.session_key)
        if s is None:
            return api_pb2.GetSessionInfoResponse(success=False)
        main, essentials = f"{s.data_source}:0", f"{essentials_topic(s.data_source)}:0"
        with self._state.lock:
            resp = api_pb2.GetSessionInfoResponse(
                data_source=s.data_source,
                identifier=s.identifier,
                type=s.session_type,
                version=s.version,
                associate_session_keys=list(s.associates),
                is_complete=bool(s.end_seqs),
                # The data source's named streams (its topics), never the main stream "".
                streams=self._state.named_streams(s.data_source),
                topic_partition_offsets={
                    k: v for k, v in s.offsets.items() if k not in (main, essentials)
                },
                main_offset=s.offsets.get(main, 0),
                essentials_offset=s.offsets.get(essentials, 0),
                details=dict(s.details),
                success=True,
            )
            if s.utc_offset is not None:
                resp.utc_offset.CopyFrom(s.utc_offset)
            if s.creation_time is not None:
                resp.creation_time.CopyFrom(s.creation_time)
            if s.termination_time is not None:
                resp.termination_time.CopyFrom(s.termination_time)
        return resp

    async def _update_identifier(self, req: Any, call: RecordedCall) -> Message:
        ok = self._known(req.session_key) is not None
        return api_pb2.UpdateSessionIdentifierResponse(success=ok)

    async def _update_details(self, req: Any, call: RecordedCall) -> Message:
        ok = self._known(req.session_key) is not None
        return api_pb2.UpdateSessionDetailsResponse(success=ok)

    async def _add_associate(self, req: Any, call: RecordedCall) -> Message:
        ok = self._known(req.session_key) is not None
        return api_pb2.AddAssociateSessionResponse(success=ok)

    def _notify(self, kind: str, data_source: str, key: str) -> None:
        for sub_kind, sub_source, queue in list(self._subscribers):
            if sub_kind == kind and (not sub_source or sub_source == data_source):
                queue.put_nowait((key, data_source))

    def _subscribe(self, kind: str, req: Any) -> AsyncIterator[Message]:
        """Register a notification subscriber now; the returned iterator streams its answers."""
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        entry = (kind, str(req.data_source), queue)
        self._subscribers.append(entry)
        cls = (
            api_pb2.GetSessionStartNotificationResponse
            if kind == "start"
            else api_pb2.GetSessionStopNotificationResponse
        )

        async def answers() -> AsyncIterator[Message]:
            try:
                while (item := await queue.get()) is not None:
                    yield cls(session_key=item[0], data_source=item[1])
            finally:
                self._subscribers.remove(entry)

        return answers()

    def _start_notifications(self, req: Any) -> AsyncIterator[Message]:
        return self._subscribe("start", req)

    def _stop_notifications(self, req: Any) -> AsyncIterator[Message]:
        return self._subscribe("stop", req)

    # -- DataFormatManagerService ------------------------------------------------------------------

    async def _parameter_format_id(self, req: Any, call: RecordedCall) -> Message:
        if not req.parameters:
            raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, "no parameters")
        fid = _format_id("parameter", req.data_source, list(req.parameters))
        return api_pb2.GetParameterDataFormatIdResponse(data_format_identifier=fid)

    async def _event_format_id(self, req: Any, call: RecordedCall) -> Message:
        if not req.event:
            raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, "no event")
        fid = _format_id("event", req.data_source, [req.event])
        return api_pb2.GetEventDataFormatIdResponse(data_format_identifier=fid)

    async def _parameters_list(self, req: Any, call: RecordedCall) -> Message:
        with self._state.lock:
            rec = self._state.formats.get(
                (req.data_source, "parameter", req.data_format_identifier)
            )
        return api_pb2.GetParametersListResponse(parameters=list(rec.parameters) if rec else [])

    async def _get_event(self, req: Any, call: RecordedCall) -> Message:
        with self._state.lock:
            rec = self._state.formats.get((req.data_source, "event", req.data_format_identifier))
        return api_pb2.GetEventResponse(event=rec.event if rec else "")

    # -- PacketWriterService -----------------------------------------------------------------------

    def _record_details(self, details: Sequence[Any], call: RecordedCall) -> None:
        now = time.time_ns()
        with self._state.lock:
            for detail in details:
                self._state.add_packet(
                    seq=self._state.next_seq(),
                    rpc=call.method,
                    call_id=call.seq,
                    received_ns=now,
                    detail=detail,
                )
                call.packets += 1

    async def _write_data_packet(self, req: Any, call: RecordedCall) -> Message:
        self._record_details([req.detail], call)
        self._wake_readers()
        return api_pb2.WriteDataPacketResponse()

    def _write_data_packets(self, req: Any, call: RecordedCall) -> None:
        self._record_details(list(req.details), call)
        self._wake_readers()

    def _record_info(self, req: Any, call: RecordedCall) -> None:
        with self._state.lock:
            seq = self._state.next_seq()
            self._state.info_packets.append(
                RecordedInfoPacket(seq, call.method, call.seq, int(req.type), req.message)
            )
            call.packets += 1
            self._state.write(
                lambda: {
                    "kind": "info",
                    "seq": seq,
                    "rpc": call.method,
                    "call_id": call.seq,
                    "info_type": int(req.type),
                    "packet": _to_dict(req.message),
                }
            )

    async def _write_info_packet(self, req: Any, call: RecordedCall) -> Message:
        self._record_info(req, call)
        return api_pb2.WriteInfoPacketResponse()

    def _write_info_packets(self, req: Any, call: RecordedCall) -> None:
        self._record_info(req, call)

    # -- ConnectionManagerService ----------------------------------------------------------------

    async def _new_connection(self, req: Any, call: RecordedCall) -> Message:
        with self._state.lock:
            cid = self._state.last_connection + 1
        return api_pb2.NewConnectionResponse(connection=api_pb2.Connection(id=cid))

    async def _get_connection(self, req: Any, call: RecordedCall) -> Message:
        with self._state.lock:
            details = self._state.connections.get(req.connection.id)
        return api_pb2.GetConnectionResponse(details=details)

    async def _close_connection(self, req: Any, call: RecordedCall) -> Message:
        with self._state.lock:
            known = req.connection.id in self._state.connections
        self._wake_readers()  # its reads end once apply_rpc has removed it
        return api_pb2.CloseConnectionResponse(success=known)

    # -- PacketReaderService -----------------------------------------------------------------------

    def _read_packets(self, req: Any) -> AsyncIterator[Message]:
        return self._read(req.connection.id, api_pb2.ReadPacketsResponse, essentials=False)

    def _read_essentials(self, req: Any) -> AsyncIterator[Message]:
        return self._read(req.connection.id, api_pb2.ReadEssentialsResponse, essentials=True)

    def _read_data_packets(self, req: Any) -> AsyncIterator[Message]:
        r = req.request
        return self._read(
            r.connection.id,
            api_pb2.ReadDataPacketsResponse,
            essentials=False,
            keep=self._data_filter(r),
        )

    def _wake_readers(self) -> None:
        woken, self._packets_added = self._packets_added, asyncio.Event()
        woken.set()

    async def _read(
        self,
        cid: int,
        cls: Any,
        *,
        essentials: bool,
        keep: Callable[[_Held], bool] | None = None,
    ) -> AsyncIterator[Message]:
        """Serve a connection's topics from their offsets, then live until cancelled (or the
        connection is closed, or the emulator stops)."""
        closing = self._closing
        with self._state.lock:
            details = self._state.connections.get(cid)
            if details is None:
                raise _AbortError(
                    grpc.StatusCode.NOT_FOUND, f"no open connection {cid} (NewConnection first)"
                )
            cursors = self._cursors(details, essentials)
        while True:
            woken = self._packets_added
            with self._state.lock:
                if cid not in self._state.connections:
                    return
                if not essentials and not details.streams:  # "all streams": new ones too
                    for name in self._state.named_streams(details.data_source):
                        cursors.setdefault(stream_topic(details.data_source, name), 0)
                batch, advanced = self._take(cursors, details.session_key, keep)
            if batch:
                yield cls(response=batch)
                continue
            if advanced:  # all skipped: let writers in before the next pass
                await asyncio.sleep(0)
                continue
            if closing is None or closing.is_set():
                raise _AbortError(grpc.StatusCode.UNAVAILABLE, "emulator shutting down")
            await woken.wait()

    def _cursors(self, details: Any, essentials: bool) -> dict[str, int]:
        """topic -> the offset to read next, from a connection's details (caller holds the lock)."""
        ds = details.data_source
        if essentials:
            wanted = [(essentials_topic(ds), details.essentials_offset, "essentials_offset")]
        else:
            names = list(details.streams) or self._state.named_streams(ds)
            offsets = list(details.stream_offsets)
            # A listed stream is always "{ds}.{name}" (1.3.5's rule applied as is): a "" listed
            # there names a topic nobody writes to; the main stream comes through main_offset.
            wanted = [
                (f"{ds}.{name}", offsets[i] if i < len(offsets) else 0, f"stream_offsets[{i}]")
                for i, name in enumerate(names)
            ]
            if not details.exclude_main_stream:
                wanted.append((ds, details.main_offset, "main_offset"))
        cursors: dict[str, int] = {}
        for topic, offset, what in wanted:
            if offset < -1:
                raise _AbortError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} is {offset}: an offset is -1 (latest), 0 (earliest) or a position",
                )
            latest = len(self._state.topics.get(topic, ()))
            cursors[topic] = latest if offset == -1 else offset
        return cursors

    def _take(
        self,
        cursors: dict[str, int],
        session_key: str,
        keep: Callable[[_Held], bool] | None,
    ) -> tuple[list[api_pb2.PacketResponse], bool]:
        """The next batch over `cursors`, in arrival order across topics, and whether any cursor
        moved (a pass may skip every record it looks at).

        A record whose key is not `session_key` (when one is given) is skipped, as the real
        server's reader drops it. Caller holds the lock.
        """
        pending = []
        for topic, start in cursors.items():
            records = self._state.topics.get(topic, ())
            stop = min(len(records), start + _BATCH_PACKETS)
            pending += [(records[i].seq, topic, i) for i in range(start, stop)]
        pending.sort()
        out: list[api_pb2.PacketResponse] = []
        size = 0
        for _, topic, i in pending[:_BATCH_PACKETS]:
            if size >= _BATCH_BYTES:
                break
            rec = self._state.topics[topic][i]
            cursors[topic] = i + 1
            if session_key and rec.details_session_key != session_key:
                continue
            if keep is not None and not keep(rec):
                continue
            packet: Any = rec.packet
            response = api_pb2.PacketResponse(packet=packet, stream=rec.stream)
            response.submit_time.FromNanoseconds(rec.received_ns)
            out.append(response)
            size += response.ByteSize()
        return out, bool(pending)

    def _data_filter(self, r: Any) -> Callable[[_Held], bool]:
        """ReadDataPackets' selection: data packets with a parameter the include patterns match
        (all when none) and the exclude patterns do not; events likewise; markers if asked."""

        def compiled(field_name: str) -> list[re.Pattern[str]]:
            out = []
            for i, pattern in enumerate(getattr(r, field_name)):
                try:
                    out.append(re.compile(pattern))
                except re.error as exc:
                    raise _AbortError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field_name}[{i}] {pattern!r} is not a regular expression: {exc}",
                    ) from None
            return out

        params = (compiled("include_parameters"), compiled("exclude_parameters"))
        events = (compiled("include_events"), compiled("exclude_events"))
        markers = bool(r.include_markers)

        def wanted(names: Sequence[str], patterns: tuple[list[re.Pattern[str]], ...]) -> bool:
            include, exclude = patterns
            return any(
                (not include or any(p.search(n) for p in include))
                and not any(p.search(n) for p in exclude)
                for n in names
            )

        def keep(rec: _Held) -> bool:
            if rec.type == "Marker":
                return markers
            if rec.type == "Event":
                return wanted(self._names_of(rec, "event"), events)
            if rec.type in DATA_TYPES:  # samples (events are handled above)
                return wanted(self._names_of(rec, "parameter"), params)
            return False

        return keep

    def _names_of(self, rec: _Held, kind: str) -> tuple[str, ...]:
        """The parameters (or event) a data packet's format resolves to (caller holds the lock)."""
        fmt: Any = getattr(rec.content()[0], "data_format", None)
        if fmt is None:
            return ()
        which = fmt.WhichOneof("format")
        if which == "parameter_identifiers":
            return tuple(fmt.parameter_identifiers.parameter_identifiers)
        if which == "event_identifier":
            return (fmt.event_identifier,)
        if which != "data_format_identifier":
            return ()
        known = self._state.formats.get((rec.data_source, kind, fmt.data_format_identifier))
        if known is None:
            return ()
        return known.parameters if kind == "parameter" else (known.event,)

    # -- UniqueKeyGeneratorService -----------------------------------------------------------------

    async def _generate_key(self, req: Any, call: RecordedCall) -> Message:
        if req.type == key_generator_pb2.KEY_TYPE_STRING:
            return key_generator_pb2.GenerateUniqueKeyResponse(string_key=str(uuid.uuid4()))
        if req.type == key_generator_pb2.KEY_TYPE_ULONG:
            with self._state.lock:
                value = self._state.next_ulong
                self._state.next_ulong += 1
            return key_generator_pb2.GenerateUniqueKeyResponse(ulong_key=value)
        raise _AbortError(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported key type {req.type}")


# --------------------------------------------------------------------------------------------------
# Reading a --record file back


def load_record(path: str | Path) -> dict[str, RecordedSession]:
    """Rebuild the sessions of a ``--record`` JSON-lines file (for `check_sessions` offline)."""
    state = _State()
    with Path(path).open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            obj = orjson.loads(line)
            kind = obj.get("kind")
            if kind == "packet":
                packet = od.Packet(
                    type=obj["type"],
                    session_key=obj["session_key"],
                    is_essential=obj["is_essential"],
                    content=base64.b64decode(obj["content_b64"]),
                    id=obj["id"],
                )
                detail = api_pb2.DataPacketDetails(
                    message=packet,
                    data_source=obj["data_source"],
                    stream=obj["stream"],
                    session_key=obj["details_session_key"],
                )
                state.add_packet(
                    seq=obj["seq"],
                    rpc=obj["rpc"],
                    call_id=obj["call_id"],
                    received_ns=obj["received_ns"],
                    detail=detail,
                )
            elif kind == "rpc":
                spec = _RPCS.get((obj["service"], obj["method"]))
                if spec is None:
                    continue
                req_cls, resp_cls, _, _ = spec
                call = RecordedCall(
                    obj["seq"],
                    obj["service"],
                    obj["method"],
                    obj["received_ns"],
                    code=obj["code"],
                )
                if obj.get("request") is not None:
                    call.request = json_format.ParseDict(obj["request"], req_cls())
                if obj.get("response") is not None:
                    call.response = json_format.ParseDict(obj["response"], resp_cls())
                state.apply_rpc(call)
    return state.snapshot()


# --------------------------------------------------------------------------------------------------
# Running it outside an event loop


@contextlib.contextmanager
def run_in_thread(*, timeout_s: float = 10.0, **kwargs: Any) -> Iterator[AtlasEmulator]:
    """Run an emulator (``AtlasEmulator(**kwargs)``) on its own loop in a daemon thread.

    Yields it started; stops it on exit. Read state through its thread-safe properties; run its
    coroutines (e.g. `AtlasEmulator.restart`) with
    ``asyncio.run_coroutine_threadsafe(emu.restart(), emu.loop).result()``.
    """
    emulator = AtlasEmulator(**kwargs)
    with started_in_thread(emulator, name="atlas-emulator", timeout_s=timeout_s) as running:
        yield running


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    key_generator_port: int = DEFAULT_KEY_GENERATOR_PORT,
    record_path: str | Path | None = None,
    *,
    faults: AtlasFaultPlan | None = None,
    answer_write_stream: bool = False,
    spill: bool = True,
    json_lines: bool = False,
) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the addresses first and every session's report at
    the end.

    Packets' bytes are spilled to a temporary file (`AtlasEmulator`'s ``spill``) unless told not to.
    With ``json_lines``, one JSON line when ready (``event: ready``, both addresses and ports) and
    one on exit (``event: stopped``: each session's checks and samples per parameter).
    """
    from .atomscale import until_stopped

    emulator = AtlasEmulator(
        host=host,
        port=port,
        key_generator_port=key_generator_port,
        faults=faults,
        answer_write_stream=answer_write_stream,
        record_path=record_path,
        spill=spill,
    )

    async def main() -> None:
        async with emulator:
            if json_lines:
                ready = {
                    "event": "ready",
                    "address": emulator.address,
                    "host": host,
                    "port": emulator.port,
                    "key_generator_address": emulator.key_generator_address,
                    "key_generator_port": emulator.key_generator_port,
                }
                print(orjson.dumps(ready).decode(), flush=True)
            else:
                print(
                    f"ATLAS Stream API emulator on {emulator.address}, key generator on "
                    f"{emulator.key_generator_address} (Ctrl-C to stop)",
                    flush=True,
                )
            await until_stopped()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    if not json_lines:
        print(emulator.format_reports(), flush=True)
        return
    reports = emulator.reports()
    sessions = [
        {
            "session_key": r.session_key,
            "identifier": r.identifier,
            "data_source": r.data_source,
            "clean": r.clean,
            "ok": r.ok,
            "failed_checks": [c.to_json() for c in r.checks if not c.passed],
            "samples": {name: len(p.values) for name, p in r.parameters.items()},
            "markers": len(r.markers),
        }
        for r in reports
    ]
    stopped = {"event": "stopped", "ok": all(r.ok for r in reports), "sessions": sessions}
    print(orjson.dumps(stopped).decode(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labstream.testing.atlas [serve|check FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m labstream.testing.atlas")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run the emulator until Ctrl-C (the default)")
    check = sub.add_parser("check", help="print the protocol report of a --record file")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="JSON instead of text")
    check.add_argument("--verbose", action="store_true", help="list passed checks too")
    for p in (parser, run):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--key-generator-port", type=int, default=DEFAULT_KEY_GENERATOR_PORT)
        p.add_argument("--record", metavar="FILE", help="append every RPC and packet as JSON lines")
        p.add_argument("--answer-write-stream", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "check":
        reports = check_sessions(load_record(args.file))
        if args.json:
            sys.stdout.buffer.write(orjson.dumps([r.to_json() for r in reports]) + b"\n")
        else:
            print(format_report(reports, verbose=args.verbose))
        return 0 if all(r.ok for r in reports) else 1
    serve(
        args.host,
        args.port,
        args.key_generator_port,
        args.record,
        answer_write_stream=args.answer_write_stream,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
