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
from . import reader, rpc
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
    Recovered,
    Rejected,
    SessionCreated,
    SessionEnded,
    WritePacket,
)
from .machine import AtlasSession, Phase, SessionState, without_first
from .options import MAIN_STREAM
from .rpc import NAME

__all__ = ["AtlasSink"]

log = logging.getLogger("labstream.destinations.atlas")

# A resumed session's packet ids start this far past the saved state's. The state is journaled
# after each write, so a crash between a write and that commit leaves ids in ATLAS the state does
# not know of; ids must keep increasing (a million packets is far more than one commit's lag).
RESUME_PACKET_ID_GAP = 1 << 20
_MAX_READS = 4  # reading back after a crash: until two reads agree, at most this many
_INFLIGHT = "labstream_inflight_seqs"  # in a journaled state: the batch being written
_CREATING = "labstream_creating"  # journaled before CreateSession, replaced by the state after
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
    # The batch a previous process journaled before writing it and never finished: some of its
    # packets may be in ATLAS. `skip` is what the reader found there per channel (points, in
    # push order); None when no reader could tell, and then the batch is sent whole, counted.
    inflight: frozenset[int] = frozenset()
    skip: dict[str, int] | None = None  # parameter identifier -> points still to skip
    replayed: dict[int, Chunk | None] = field(default_factory=dict)  # seq -> what is left
    maybe_duplicated: int = 0  # points sent again without knowing whether they had landed
    # A process died while creating the session: the key of the session it created, found by
    # its details, and the streams its NewSession reached.
    created_before: bool = False
    adopt_key: str | None = None
    new_session_landed: frozenset[str] = frozenset()
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
        self._reader: bool | None = None  # whether the server answers the reader (probed once)
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
            run = await self._resume(stream.data_id, self._journal)
        run = run or self._run(stream.data_id)
        if run.opened:
            return
        if "open" not in run.fed and self._journal is not None:
            await self._has_reader()
            if run.created_before:
                await self._find_created(run, stream.data_id)
            else:
                # Before CreateSession: a process that dies before its key is journaled leaves
                # the next one the word to look for the session by its data_id (details).
                self._journal.save_atlas_state(stream.data_id, {_CREATING: True}, 0)
                await anyio.to_thread.run_sync(self._journal.sync)
        await self._drive(run, stream.data_id, "open", lambda: self._opened(stream))
        run.opened = True
        if self._journal is not None and run.session.state.session_key is not None:
            # The session key on disk before any data goes into the session: a process that
            # dies from here on is continued in this session by the next, never in a second one.
            self._save_state(run, stream.data_id, 0)
            await anyio.to_thread.run_sync(self._journal.sync)

    async def _resume(self, data_id: str, journal: Journal) -> _Run | None:
        """Continue a session a previous process journaled: same key, ids and timelines."""
        saved = journal.atlas_state(data_id)
        if saved is None:
            return None
        state, last_seq = saved
        if state.get(_CREATING):
            run = self._run(data_id)
            run.created_before = True
            return run
        inflight = frozenset(int(seq) for seq in state.pop(_INFLIGHT, ()))
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
        run.inflight = inflight
        landed = await self._find_landed(run, data_id) if await self._has_reader() else None
        if landed is None and inflight:
            log.warning(
                "ATLAS: %s: no reader to tell which packets of the batch in flight at the crash "
                "are in session %s; that batch is sent again and counted as maybe duplicated",
                data_id,
                session.state.session_key,
            )
        if session.state.phase is Phase.OPEN:
            last = session.state.next_packet_id - 1
            run.pending.extend(
                session.handle(
                    Recovered(
                        last_packet_id=max(last, landed.last_id if landed else 0)
                        + RESUME_PACKET_ID_GAP,
                        configs=landed.configs if landed else {},
                        missing_configs=landed.missing_configs if landed else (),
                        ended_streams=landed.ended_streams if landed else frozenset(),
                        last_ns=landed.last_ns if landed else {},
                    )
                )
            )
        log.warning("ATLAS: resuming session %s of %s", session.state.session_key, data_id)
        return run

    async def _find_created(self, run: _Run, data_id: str) -> None:
        """A process died between CreateSession and journaling the key: find the session it
        may have created (by the data_id in its details) and continue it instead of leaving it
        empty and never ended. Its NewSession packets that landed are not written again."""
        s = self.settings
        found, why = await anyio.to_thread.run_sync(
            functools.partial(
                _created_session, s.address, s.data_source, data_id, s.read_back_idle_s, s.tls
            )
        )
        if found is None:
            log.warning(
                "ATLAS: %s: the process before died while creating its session; %s",
                data_id,
                why,
            )
            return
        run.adopt_key, run.new_session_landed = found
        log.warning("ATLAS: %s: continuing session %s, created before a crash", data_id, found[0])

    async def _has_reader(self) -> bool:
        """Whether the server answers the reader service (probed once): then a crash is
        recovered by reading the session back, and batches need no journal commit before
        their writes."""
        if self._reader is None:
            if not self.settings.read_back or self.settings.tls:
                self._reader = False
            else:
                from ..._proto.ma.streaming.api.v1 import api_pb2_grpc

                stub = api_pb2_grpc.ConnectionManagerServiceStub(self._channel)
                details = self._api.ConnectionDetails(data_source=self.settings.data_source)
                try:
                    t = self.settings.rpc_timeout_s
                    answer = await stub.NewConnection(
                        self._api.NewConnectionRequest(details=details), timeout=t
                    )
                    await stub.CloseConnection(
                        self._api.CloseConnectionRequest(connection=answer.connection), timeout=t
                    )
                    self._reader = True
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "ATLAS: the Stream API at %s does not answer its reader service (%s): "
                        "every batch is journaled before it is written, and after a crash the "
                        "one in flight is sent again, counted as maybe duplicated",
                        self.settings.address,
                        exc.code().name,
                    )
                    self._reader = False
        return self._reader

    async def _find_landed(self, run: _Run, data_id: str) -> _Landed | None:
        """Read the session back to learn what landed after the journaled state: every
        channel's points (they are skipped when the chunks come again), configurations, ended
        streams and the last packet id."""
        s = run.session.state
        assert s.session_key is not None
        landed, why = await anyio.to_thread.run_sync(
            functools.partial(
                _read_landed,
                self.settings.address,
                s.data_source,
                s.session_key,
                s.next_packet_id,
                self.settings.read_back_idle_s,
                (s.stream, MAIN_STREAM),
            )
        )
        if landed is None:
            log.error(
                "ATLAS: %s: cannot read session %s back (%s): what was written after the last "
                "journaled state may be sent again",
                data_id,
                s.session_key,
                why,
            )
            return None
        run.skip = dict(landed.points)
        if landed.points:
            log.warning(
                "ATLAS: %s: %d point(s) were already in session %s; they are not sent again",
                data_id,
                sum(landed.points.values()),
                s.session_key,
            )
        return landed

    def _left_to_send(self, run: _Run, chunks: Sequence[Chunk]) -> list[Chunk]:
        """After a crash: the chunks without the points the reader found in ATLAS (every
        channel's first ones, in push order), or, without a reader, the batch in flight whole
        (counted); the same answer on every retry."""
        out = []
        earlier = self._journal.first_seq if self._journal is not None else 0
        for c in chunks:
            if c.seq not in run.replayed:
                if run.skip is not None and c.seq >= earlier:
                    # Pushed by this process: maybe again what was written before the crash
                    # and lost from the journal (a log read again). The session leaves out what
                    # it holds by time (Recovered.last_ns); here only the count goes down, so
                    # that the journal's chunks are not cut for these points too.
                    for ch in c.channels:
                        ident = run.session.identifier_of(ch.name)
                        n = min(run.skip.get(ident, 0), ch.size)
                        if n:
                            run.skip[ident] -= n
                    out.append(c)
                    continue
                if run.skip is not None:
                    drop = {}
                    for ch in c.channels:
                        ident = run.session.identifier_of(ch.name)
                        n = min(run.skip.get(ident, 0), ch.size)
                        if n:
                            run.skip[ident] -= n
                            drop[ch.name] = n
                    run.replayed[c.seq] = without_first(c, drop)
                elif c.seq in run.inflight:
                    run.replayed[c.seq] = c
                    run.maybe_duplicated += c.points
                else:
                    out.append(c)
                    continue
            kept = run.replayed[c.seq]
            if kept is not None:
                out.append(kept)
        if run.skip is not None and not any(run.skip.values()):
            run.skip = None  # all found again
        return out

    def _log_batch(self, run: _Run, data_id: str, chunks: Sequence[Chunk]) -> bool:
        """Journal the batch before its first write (servers without a reader): a process
        that dies mid-batch leaves the next one the chunks that may be in ATLAS already. True
        when journaled."""
        if self._journal is None or not run.session.idle:
            return False
        state = run.session.state.to_dict()
        state[_INFLIGHT] = [c.seq for c in chunks]
        self._journal.save_atlas_state(data_id, state, run.saved_seq)
        return True

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
        if run.inflight or run.skip is not None:
            todo = self._left_to_send(run, todo)
        if not todo:  # a crash; the journal had not heard yet that it was done
            self._save_state(run, data_id, max(run.saved_seq, chunks[-1].seq))
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
        # A retry of this batch resumes it: it was journaled before its first write.
        if (
            not run.fed.intersection(keys)
            and not self._reader
            and self._log_batch(run, data_id, todo)
        ):
            assert self._journal is not None
            await anyio.to_thread.run_sync(self._journal.sync)
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
            run = await self._resume(stream.data_id, self._journal)
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
        run.inflight = frozenset(seq for seq in run.inflight if seq > last_seq)
        run.replayed = {seq: c for seq, c in run.replayed.items() if seq > last_seq}

    def maybe_duplicated(self, data_id: str) -> int:
        """Points sent again after a crash without a reader to tell whether ATLAS had them."""
        run = self._runs.get(data_id)
        return run.maybe_duplicated if run else 0

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
            if action.packet_type == "NewSession" and action.stream in run.new_session_landed:
                return None  # written by the process that created the session
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
        elif isinstance(action, ChunkDone):
            if action.skipped_points:
                log.warning(
                    "ATLAS: %s chunk %d: %d point(s) the session already holds were not written "
                    "again",
                    data_id,
                    action.chunk_index,
                    action.skipped_points,
                )
        else:  # pragma: no cover - exhaustive above
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
        if isinstance(call, CreateSessionCall) and run.adopt_key is not None:
            return SessionCreated(run.adopt_key)
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


@dataclass(frozen=True, slots=True)
class _Landed:
    """A session's packets from a given packet id on, as the reader gave them back."""

    points: dict[str, int]  # parameter identifier -> points
    configs: dict[str, tuple[str, ...]]  # config_id -> parameter identifiers
    last_id: int
    # (stream, content) of each configuration that reached some of the streams but not this one
    missing_configs: tuple[tuple[str, bytes], ...]
    ended_streams: frozenset[str]  # where EndOfSession landed
    last_ns: dict[str, int]  # parameter identifier -> its latest sample that landed


def _read_landed(
    address: str,
    data_source: str,
    session_key: str,
    first_id: int,
    idle_s: float,
    streams: tuple[str, ...],
) -> tuple[_Landed | None, str]:
    """What the session holds from packet ``first_id`` on, through the server's reader service;
    None (and why) when the server has none or cannot be asked.

    Read until two reads agree (each lasts at least ``idle_s``): a write the dead process still
    had in flight can be stored by the server after the first read, and would then be sent
    again.
    """
    back = None
    for _ in range(_MAX_READS):
        try:
            again = reader.read_session(
                address, session_key, data_source=data_source, idle_s=idle_s
            )
        except DestinationError as exc:
            return None, str(exc)
        if back is not None and len(again.packets) == len(back.packets):
            break
        back = again
    assert back is not None
    formats = back.parameter_formats
    points: dict[str, int] = {}
    configs: dict[str, tuple[str, ...]] = {}
    config_streams: dict[str, set[str]] = {}
    config_content: dict[str, bytes] = {}
    last_id = 0
    ended: set[str] = set()
    last_ns: dict[str, int] = {}
    for p in back.packets:
        packet: Any = p.packet
        pid = int(packet.id)
        last_id = max(last_id, pid)
        if p.type == "EndOfSession":
            ended.add(p.stream)
        if pid < first_id or p.content is None:
            continue
        content: Any = p.content
        if p.type == "Configuration":
            configs[content.config_id] = tuple(d.identifier for d in content.parameter_definitions)
            config_streams.setdefault(content.config_id, set()).add(p.stream)
            config_content[content.config_id] = bytes(packet.content)
            continue
        if p.type == "PeriodicData":
            n = len(content.columns[0].double_samples.samples) if content.columns else 0
            last = int(content.start_time) + int(content.interval) * (n - 1)
        elif p.type == "RowData":
            n = len(content.timestamps)
            last = max((int(t) for t in content.timestamps), default=0)
        else:
            continue
        fmt = content.data_format
        for ident in formats.get(int(fmt.data_format_identifier), ()):
            points[ident] = points.get(ident, 0) + n
            if n:
                last_ns[ident] = max(last_ns.get(ident, last), last)
    # ATLAS reads each stream on its own: a configuration the crash left on one stream only is
    # completed with the same content on the others.
    missing = tuple(
        (stream, config_content[cid])
        for cid in configs
        for stream in streams
        if stream not in config_streams[cid]
    )
    return _Landed(points, configs, last_id, missing, frozenset(ended), last_ns), ""


def _created_session(
    address: str, data_source: str, data_id: str, idle_s: float, tls: bool
) -> tuple[tuple[str, frozenset[str]] | None, str]:
    """The newest session not ended whose details name `data_id`, and the streams holding its
    NewSession; None (and what that means) when there is none or the server cannot tell."""
    if tls:
        return None, "the session list is not read over TLS: a new session is created"
    try:
        known = reader.list_sessions(address, data_source)
    except DestinationError as exc:
        return None, (
            f"the server could not list its sessions ({exc}): a new session is created, and the "
            "one it may have created stays empty and never ended"
        )
    ours = [x for x in known if x.details.get("labstream_data_id") == data_id and not x.is_complete]
    if not ours:
        return None, "it had not created one: a new session is created"
    key = ours[-1].key
    try:
        back = reader.read_session(address, key, data_source=data_source, idle_s=idle_s)
    except DestinationError:
        return (key, frozenset()), ""  # no reader: NewSession may then be written twice
    return (key, frozenset(p.stream for p in back.packets if p.type == "NewSession")), ""


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
