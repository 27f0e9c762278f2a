"""The ATLAS destination: performs what the session state machine decides, over grpc.aio.

All protocol rules live in :mod:`.session`; this sink only turns its actions into RPCs and feeds
the answers back. Every operation is resumable: an event is fed to the session once, and the
actions it produced are performed in order and removed only once done, so when the runner retries
after a transient failure the sink continues where it stopped, never writing a packet twice and
never reordering. gRPC errors are translated here: UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED and CANCELLED (a server stopping mid-call) are transient; anything else is final.

Packets are written with unary ``WriteDataPacket``: each call's OK is an acknowledgement, order is
kept by awaiting each one, and no call is left waiting for the answer that the streaming
``WriteDataPackets`` never sends after half-close (server 1.3.5).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import grpc
import grpc.aio

from ..._core.chunk import Chunk, concatenate, continues
from ..._core.journal import Journal
from ..._core.timebase import seconds_to_ns_scalar
from ...errors import DestinationError, RejectedError, TransientDestinationError
from ..base import Marker, StreamInfo
from . import rpc
from .config import Atlas
from .events import (
    Action,
    Answer,
    CallFailed,
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
    Rejected,
    SessionCreated,
    SessionEnded,
    WritePacket,
)
from .machine import AtlasSession, SessionState
from .rpc import NAME

log = logging.getLogger("labstream.destinations.atlas")

# A resumed session's packet ids start this far past the saved state's. The state is journaled
# after each write, so a crash between a write and that commit leaves ids in ATLAS the state does
# not know of; ids must keep increasing (a million packets is far more than one commit's lag).
RESUME_PACKET_ID_GAP = 1 << 20
_WRITE_PATH = "/ma.streaming.api.v1.PacketWriterService/WriteDataPacket"
_MAX_WRITE_TIMEOUT_S = 120.0
T = TypeVar("T")


@dataclass(eq=False)
class _Run:
    """One ATLAS session in progress: the state machine and the actions it still owes."""

    session: AtlasSession
    pending: deque[Action] = field(default_factory=deque)
    # Operations whose event was fed but whose actions may not all be done yet: a retry resumes
    # them instead of feeding again. Forgotten once done, so memory does not grow with the stream.
    fed: set[Hashable] = field(default_factory=set)
    rejected: dict[int, str] = field(default_factory=dict)  # chunk_index -> reason
    marker_rejections: list[str] = field(default_factory=list)
    closed: Closed | None = None
    formats_seen: int = 0
    opened: bool = False
    ending: bool = False  # Finalize was fed: nothing more can go into this session
    resumed_last_seq: int = 0  # chunks up to this seq were in ATLAS before a crash
    saved_seq: int = 0  # the last chunk the journaled state includes
    # finalize() closes from its own task while the runner's worker may be mid-chunk: one at a time
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class AtlasSink:
    """grpc.aio client of the Stream API and the key generator for one streamer."""

    name = NAME
    max_concurrency = 1  # one writer per streamer keeps packets in order
    takes_data_after_close = False
    # Points per batch of chunks (see send_chunks): a few hundred kB of packets, and what a crash
    # mid-write may repeat at most.
    max_batch_points = 10_000

    def __init__(
        self,
        settings: Atlas,
        *,
        journal: Journal | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        # Deferred import: generated code is only loaded when ATLAS is configured.
        from ..._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
        from ..._proto.ma.streaming.key_generator.v1 import (
            key_generator_pb2,
            key_generator_pb2_grpc,
        )

        self._api = api_pb2
        self._keys = key_generator_pb2
        self.settings = settings
        self._journal = journal
        self._now = now
        self._channel = self._open_channel(settings.address)
        assert settings.key_generator_address is not None
        self._key_channel = self._open_channel(settings.key_generator_address)
        self._sessions = api_pb2_grpc.SessionManagementServiceStub(self._channel)
        self._formats = api_pb2_grpc.DataFormatManagerServiceStub(self._channel)
        self._key_gen = key_generator_pb2_grpc.UniqueKeyGeneratorServiceStub(self._key_channel)
        # Writes send bytes the encoder built, without a protobuf object per packet.
        self._write = self._channel.unary_unary(
            _WRITE_PATH,
            request_serializer=None,
            response_deserializer=api_pb2.WriteDataPacketResponse.FromString,
        )
        self._runs: dict[str, _Run] = {}
        # A write's deadline: longer after each write that got no answer in time (see
        # _slower_writes), and never shorter again for this sink.
        self._write_timeout_s = settings.rpc_timeout_s

    def __repr__(self) -> str:
        return f"AtlasSink(address={self.settings.address!r})"

    def _open_channel(self, address: str) -> grpc.aio.Channel:
        return rpc.open_channel(self.settings, address)

    # -- Sink ----------------------------------------------------------------------------------

    def _run(self, data_id: str) -> _Run:
        run = self._runs.get(data_id)
        if run is None:
            run = self._runs[data_id] = _Run(AtlasSession(self.settings.protocol_options))
        return run

    async def open_stream(self, stream: StreamInfo) -> None:
        run = self._runs.get(stream.data_id)
        if run is None and self._journal is not None:
            run = self._resume(stream.data_id, self._journal)
        run = run or self._run(stream.data_id)
        if run.opened:
            return
        await self._drive(run, stream.data_id, "open", lambda: self._opened(stream))
        run.opened = True
        if self._journal is not None and run.session.state.session_key is not None:
            # The session key on disk before any data goes into the session: a process that
            # dies from here on is continued in this session by the next, never in a second one.
            self._save_state(run, stream.data_id, 0)
            await anyio.to_thread.run_sync(self._journal.sync)

    def _resume(self, data_id: str, journal: Journal) -> _Run | None:
        """Continue a session a previous process journaled: same key, ids and timelines."""
        saved = journal.atlas_state(data_id)
        if saved is None:
            return None
        state, last_seq = saved
        session = AtlasSession(self.settings.protocol_options, SessionState.from_dict(state))
        run = self._runs[data_id] = _Run(
            session, opened=True, resumed_last_seq=last_seq, saved_seq=last_seq
        )
        if session.state.phase == "closed":
            # Ended by the process that left it: nothing may be written to it any more.
            run.ending = True
            run.closed = Closed(ended=True)
            log.warning("ATLAS: session %s of %s was ended", session.state.session_key, data_id)
            return run
        session.state.next_packet_id += RESUME_PACKET_ID_GAP
        log.warning("ATLAS: resuming session %s of %s", session.state.session_key, data_id)
        return run

    async def send_chunk(self, chunk: Chunk) -> None:
        refused = await self.send_chunks((chunk,))
        if refused:
            raise refused[chunk.seq]

    async def send_chunks(self, chunks: Sequence[Chunk]) -> Mapping[int, DestinationError]:
        """Write chunks of one stream (in seq order), as few packets as the protocol allows.

        A packet holds one data format (one channel set), so the chunks are grouped by channel
        set, each group in time order, and each group goes as one chunk: one write, one session
        update. That is what keeps up with a backlog of many interleaved channels: the cost of a
        write is paid per format, not per chunk.
        """
        data_id = chunks[0].data_id
        run = self._runs[data_id]
        todo = [c for c in chunks if c.seq > run.resumed_last_seq]  # the rest was written before
        if not todo:  # a crash; the journal had not heard yet that it was done
            return {}
        if run.ending:
            raise RejectedError(
                "the ATLAS session was already ended (finalize's deadline passed before this "
                "chunk could be written)",
                destination=NAME,
                data_id=data_id,
                chunk_index=todo[0].chunk_index,
            )
        groups = _by_format(todo)
        keys = [("chunks", g[0].seq, g[-1].seq) for g in groups]
        for key, group in zip(keys, groups, strict=True):
            # A retry passes the same chunks: a group already fed is resumed, not fed again.
            await self._drive(run, data_id, key, functools.partial(_merged, group))
        run.fed.difference_update(keys)
        self._save_state(run, data_id, chunks[-1].seq)
        refused: dict[int, DestinationError] = {}
        for group in groups:
            reason = run.rejected.pop(group[0].chunk_index, None)
            if reason is None:
                continue
            for c in group:
                refused[c.seq] = RejectedError(
                    reason, destination=NAME, data_id=data_id, chunk_index=c.chunk_index
                )
        return refused

    async def send_marker(self, marker: Marker) -> None:
        run = self._runs[marker.data_id]
        if run.ending:
            raise RejectedError(
                "the ATLAS session was already ended", destination=NAME, data_id=marker.data_id
            )
        event = MarkerAdded(
            marker.label,
            marker.timestamp_ns,
            marker.end_time_ns,
            marker.marker_type,
            marker.description,
        )
        key = ("marker", id(marker))  # the runner holds the marker while it retries it
        await self._drive(run, marker.data_id, key, lambda: event)
        run.fed.discard(key)

    async def close_stream(self, stream: StreamInfo) -> None:
        run = self._runs.get(stream.data_id)
        if run is None and self._journal is not None:
            run = self._resume(stream.data_id, self._journal)
        run = run or self._run(stream.data_id)
        if run.closed is not None and run.closed.ended:
            return  # already ended (by this process, or one before it): never ended twice
        run.ending = True
        termination = seconds_to_ns_scalar(self._now())
        await self._drive(run, stream.data_id, "close", lambda: Finalize(termination))
        if run.closed is not None and not run.closed.ended:
            raise RejectedError(
                f"the ATLAS session was not ended: {run.closed.reason}",
                destination=NAME,
                data_id=stream.data_id,
            )
        self._save_state(run, stream.data_id, run.saved_seq)  # ended: no later process writes

    def _save_state(self, run: _Run, data_id: str, last_seq: int) -> None:
        """Journal the session after a write, so a later process continues it without repeats."""
        if self._journal is None or not run.session.idle:
            return
        # to_dict() is already a deep copy in plain values: no snapshot() copy first
        self._journal.save_atlas_state(data_id, run.session.state.to_dict(), last_seq)
        run.saved_seq = last_seq

    def marker_rejections(self, data_id: str) -> list[str]:
        run = self._runs.get(data_id)
        return list(run.marker_rejections) if run else []

    async def aclose(self) -> None:
        await self._channel.close()
        await self._key_channel.close()

    # -- driving the state machine -------------------------------------------------------------

    def _opened(self, stream: StreamInfo) -> Opened:
        details = {"labstream_data_id": stream.data_id, **self.settings.session_details}
        if stream.physical_sample:
            details["physical_sample"] = stream.physical_sample
        if stream.project_id:
            details["project_id"] = stream.project_id
        if stream.tags:
            details["tags"] = ", ".join(stream.tags)
        if stream.synth_source_id is not None:
            details["synth_source_id"] = str(stream.synth_source_id)
        return Opened(
            data_source=self.settings.data_source,
            stream=self.settings.stream,
            identifier=stream.stream_name or stream.data_id,
            details=details,
            creation_time_ns=stream.created_at_ns,
            utc_offset_ns=_utc_offset_ns(),
        )

    async def _drive(
        self, run: _Run, data_id: str, key: Hashable, make_event: Callable[[], Event]
    ) -> None:
        """Feed the event of operation ``key`` once, then perform every action owed, in order."""
        async with run.lock:
            if key not in run.fed:
                run.fed.add(key)
                run.pending.extend(run.session.handle(make_event()))
            done = 0
            while run.pending:
                action = run.pending[0]
                try:
                    follow_up = await self._perform(run, data_id, action)
                except TransientDestinationError as exc:
                    exc.made_progress = done > 0
                    raise
                run.pending.popleft()
                done += 1
                if follow_up is not None:
                    run.pending.extend(run.session.handle(follow_up))

    async def _perform(self, run: _Run, data_id: str, action: Action) -> Answer | None:
        """Perform one action; return the answer to feed back for calls.

        Raises:
            TransientDestinationError: try again later (the action stays at the head).
        """
        if isinstance(action, WritePacket):
            request = action.request_bytes()
            try:
                await self._rpc(
                    data_id,
                    action.packet_type,
                    lambda t: self._write(request, timeout=t),
                    timeout=self._write_timeout_s,
                )
            except TransientDestinationError as exc:
                if exc.status == "DEADLINE_EXCEEDED":
                    self._slower_writes(action.packet_type)
                raise
            except RejectedError as exc:
                # A write the server refuses for good: the rest of the session can still go on.
                log.error("ATLAS refused a %s packet: %s", action.packet_type, exc)
                if action.chunk_index is not None:
                    run.rejected[action.chunk_index] = str(exc)
            return None
        if isinstance(
            action, CreateSessionCall | GenerateKeyCall | GetFormatIdCall | EndSessionCall
        ):
            try:
                return await self._call(run, data_id, action)
            except RejectedError as exc:
                return CallFailed(str(exc))
        if isinstance(action, Rejected):
            log.error("ATLAS: %s", action.reason)
            if action.chunk_index is not None:
                run.rejected[action.chunk_index] = action.reason
            if action.marker_label is not None:
                run.marker_rejections.append(f"marker {action.marker_label!r}: {action.reason}")
        elif isinstance(action, Closed):
            run.closed = action
        elif not isinstance(action, ChunkDone):  # pragma: no cover - exhaustive above
            raise AssertionError(f"unknown action {action!r}")
        return None

    def _slower_writes(self, packet_type: str) -> None:
        """A write got no answer within its deadline. The server may still have stored it and
        be answering late (a slow server, not a dead one): the same packet is written again, but
        with twice the time to answer, so the stream moves on instead of repeating one packet
        until the server speeds up. Each repeat is a retry in the report."""
        before = self._write_timeout_s
        self._write_timeout_s = min(
            before * 2, max(_MAX_WRITE_TIMEOUT_S, self.settings.rpc_timeout_s)
        )
        log.warning(
            "ATLAS: a %s write got no answer within %.1f s; the server may have stored it, so "
            "it may be there twice; writes now wait up to %.1f s",
            packet_type,
            before,
            self._write_timeout_s,
        )

    async def _call(self, run: _Run, data_id: str, call: Any) -> Answer:
        api, s = self._api, self.settings
        if isinstance(call, CreateSessionCall):
            request = api.CreateSessionRequest(
                data_source=call.data_source,
                type=call.session_type,
                version=call.version,
                identifier=call.identifier,
                details=dict(call.details),
            )
            request.utc_offset.FromNanoseconds(call.utc_offset_ns)
            request.creation_time.FromNanoseconds(call.creation_time_ns)
            reply = await self._rpc(
                data_id, "CreateSession", lambda t: self._sessions.CreateSession(request, timeout=t)
            )
            if not reply.success or not reply.session_key:
                return CallFailed("CreateSession answered success=false")
            return SessionCreated(reply.session_key)
        if isinstance(call, GenerateKeyCall):
            key_request = self._keys.GenerateUniqueKeyRequest(type=self._keys.KEY_TYPE_STRING)
            key_reply = await self._rpc(
                data_id,
                "GenerateUniqueKey",
                lambda t: self._key_gen.GenerateUniqueKey(key_request, timeout=t),
            )
            if not key_reply.string_key:
                return CallFailed("the key generator answered no string key")
            return KeyGenerated(key_reply.string_key)
        if isinstance(call, GetFormatIdCall):
            format_request = api.GetParameterDataFormatIdRequest(
                data_source=call.data_source, parameters=list(call.parameters)
            )
            # The first call for a data source can stall while the server loads its essentials.
            deadline = s.first_format_timeout_s if run.formats_seen == 0 else s.rpc_timeout_s
            format_reply = await self._rpc(
                data_id,
                "GetParameterDataFormatId",
                lambda t: self._formats.GetParameterDataFormatId(format_request, timeout=t),
                timeout=deadline,
            )
            run.formats_seen += 1
            return FormatIdReceived(format_reply.data_format_identifier)
        end_request = api.EndSessionRequest(
            data_source=call.data_source, session_key=call.session_key
        )
        end_request.termination_time.FromNanoseconds(call.termination_time_ns)
        end_reply = await self._rpc(
            data_id, "EndSession", lambda t: self._sessions.EndSession(end_request, timeout=t)
        )
        return SessionEnded(bool(end_reply.success))

    async def _rpc(
        self,
        data_id: str,
        what: str,
        invoke: Callable[[float], Awaitable[T]],
        *,
        timeout: float | None = None,
    ) -> T:
        """Run one RPC with a deadline (:func:`.rpc.call`: errors translated there)."""
        return await rpc.call(invoke, what, timeout or self.settings.rpc_timeout_s, data_id)


def _merged(chunks: list[Chunk]) -> ChunkReady:
    return ChunkReady(concatenate(chunks))


def _by_format(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Group ``chunks`` (in seq order) into runs that can each travel as one chunk.

    A chunk joins the latest group that shares a channel with it when it continues that group's
    last chunk (same channels, later points, :func:`continues`); otherwise it starts a group of
    its own. Groups are written in the order they were started, so every channel's points still
    reach ATLAS in the order they were pushed.
    """
    groups: list[list[Chunk]] = []
    latest: dict[str, list[Chunk]] = {}  # channel name -> the latest group holding it
    for chunk in chunks:
        names = [c.name for c in chunk.channels]
        candidates = {id(g): g for g in (latest.get(n) for n in names) if g is not None}
        group = None
        if len(candidates) == 1:
            (only,) = candidates.values()
            if continues(only[-1], chunk):
                group = only
        if group is None:
            group = []
            groups.append(group)
        group.append(chunk)
        for name in names:
            latest[name] = group
    return groups


def _utc_offset_ns() -> int:
    """Local standard time minus UTC (the session's ``utc_offset``)."""
    return -time.timezone * 1_000_000_000
