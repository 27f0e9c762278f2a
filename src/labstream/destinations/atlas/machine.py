"""The ATLAS writer session as a pure state machine: events in, actions out, no I/O.

Why: the real Stream API validates nothing. A packet on the wrong stream, a second GroupDefinition,
data before its configuration or a marker outside the data's time range is accepted with status OK
and silently useless in ATLAS. The only place to get these rules right is the client, so they live
here, in one object that can be tested exhaustively without a server (the h11 ``_connection.py``
approach). The ATLAS sink only performs the actions and feeds the answers back.

How a sink drives it::

    session = AtlasSession(options)
    actions = session.handle(Opened(...))           # -> [CreateSessionCall]
    # perform actions in order; a *Call is always the last action of a list: perform it and feed
    # its answer back (SessionCreated / KeyGenerated / FormatIdReceived / SessionEnded) or, when
    # it finally failed, CallFailed(reason). That returns the next actions.
    actions = session.handle(ChunkReady(chunk))     # data, or a call the data waits for
    actions = session.handle(MarkerAdded(...))
    actions = session.handle(Finalize(now_ns))      # EndOfSession x2 + EndSessionCall, then Closed

A session resumed from a snapshot (``AtlasSession(options, state=...)``) is first told what the
Stream API holds beyond it, ``Recovered(...)``: packet ids go on after what landed, landed
Configurations are not written again, and an EndOfSession that landed is not written twice.

Events fed while a call is outstanding are queued and processed in order once it is answered, so at
most one call is ever in flight and packets come out in the order they must be written. Every chunk
ends in exactly one ``ChunkDone`` (all its packets precede it) or one ``Rejected``; every marker is
written or ``Rejected``; the last action is always ``Closed``.

The protocol order produced (the vendor's "five steps"): CreateSession -> NewSession to the data
stream and the main stream "" -> Configuration (config_id from the key generator, exactly one
GroupDefinition, essential) to both streams -> GetParameterDataFormatId (cached per ordered
parameter list) -> data packets (not essential, data stream only) -> EndOfSession to both streams ->
EndSession. A channel first seen later gets its own Configuration on both streams before its data.

:class:`SessionState` is a plain dataclass of JSON-friendly values (session key, config ids,
format ids, packet id counter, periodic timelines, held markers) so a durable journal can persist it
between events (:meth:`AtlasSession.snapshot`) and resume (``AtlasSession(options, state=...)``)."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ..._core.chunk import ChannelSeries, Chunk
from ..._core.timebase import NS_PER_S, Float64Array, Int64Array
from ...errors import AtlasProtocolError
from . import encoding as enc
from .events import (
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
from .options import (
    IDENT_UNSAFE,
    KEY_SEP,
    MAIN_STREAM,
    MAX_NAME,
    NAME_RE,
    AtlasOptions,
    ChannelOptions,
)
from .timeline import Timeline, choose_layout

__all__ = [
    "TRANSITIONS",
    "AtlasSession",
    "ChannelState",
    "HeldMarker",
    "Phase",
    "SessionState",
    "without_first",
]

_MAX_KEY_ATTEMPTS = 3

# ---------------------------------------------------------------------------------------------
# Serialisable state


@dataclass
class ChannelState:
    """One channel as ATLAS knows it."""

    identifier: str
    units: str
    config_id: str | None = None
    last_ns: int | None = None  # the latest sample written


@dataclass
class HeldMarker:
    """A marker waiting for data to cover its time range."""

    label: str
    timestamp_ns: int
    end_time_ns: int
    marker_type: str
    description: str


class Phase(StrEnum):
    """Where a session is in its life; a ``str``, so the journaled state stays plain JSON."""

    NEW = "new"
    CREATING = "creating"  # CreateSession sent, no answer yet
    OPEN = "open"
    FAILED = "failed"  # CreateSession failed for good: chunks are rejected, Finalize closes
    ENDING = "ending"  # EndOfSession written, EndSession sent
    CLOSED = "closed"


# Every phase change the machine may make; any other is a bug (AtlasProtocolError).
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.CREATING, Phase.CLOSED}),  # closed: finalized before opening
    Phase.CREATING: frozenset({Phase.OPEN, Phase.FAILED}),
    Phase.OPEN: frozenset({Phase.ENDING}),
    Phase.FAILED: frozenset({Phase.CLOSED}),
    Phase.ENDING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


@dataclass
class SessionState:
    """Everything the session must remember across events; JSON-friendly values only.

    Attributes:
        phase: new -> creating -> open | failed -> ending -> closed.
        session_key: from CreateSession; None until it succeeded.
        failure: why the session could not be created.
        next_packet_id: the id of the next packet (increments by one on every packet).
        channels: by channel name.
        configs: config_id -> the parameter identifiers it defines.
        format_ids: ordered parameter identifiers joined by newlines -> data format id.
        timelines: same key as ``format_ids`` -> periodic timeline of that channel (group).
        data_first_ns, data_last_ns: time range of the data written so far.
        held_markers: markers waiting for data to cover them.
        ended_streams: streams whose EndOfSession is in the session (a resumed session learns
            it from the server).
    """

    phase: Phase = Phase.NEW
    data_source: str = ""
    stream: str = ""
    identifier: str = ""
    session_key: str | None = None
    failure: str | None = None
    next_packet_id: int = 1
    channels: dict[str, ChannelState] = field(default_factory=dict)
    configs: dict[str, list[str]] = field(default_factory=dict)
    format_ids: dict[str, int] = field(default_factory=dict)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    data_first_ns: int | None = None
    data_last_ns: int | None = None
    held_markers: list[HeldMarker] = field(default_factory=list)
    ended_streams: list[str] = field(default_factory=list)  # EndOfSession landed there

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts/lists/str/int, ready for ``json.dumps``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionState:
        """Rebuild a state saved with :meth:`to_dict`."""
        d = dict(data)
        d["phase"] = Phase(d.get("phase", Phase.NEW))
        d["channels"] = {k: ChannelState(**v) for k, v in d.get("channels", {}).items()}
        d["configs"] = {k: list(v) for k, v in d.get("configs", {}).items()}
        d["timelines"] = {k: Timeline(**v) for k, v in d.get("timelines", {}).items()}
        d["held_markers"] = [HeldMarker(**m) for m in d.get("held_markers", [])]
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# The machine


@dataclass(slots=True)
class _Group:
    """The channels of one chunk that go in one data packet stream (one format, one timeline)."""

    names: tuple[str, ...]
    identifiers: tuple[str, ...]
    timestamps: Int64Array
    columns: list[Float64Array]
    start_ns: int
    interval_ns: int
    timeline: Timeline | None  # after this group's packets; None = RowData

    @property
    def periodic(self) -> bool:
        return self.timeline is not None

    @property
    def key(self) -> str:
        return KEY_SEP.join(self.identifiers)


@dataclass(slots=True)
class _Plan:
    chunk: Chunk  # what is written: the chunk handed in, less what the session holds already
    groups: list[_Group]
    original: Chunk | None = None  # the chunk handed in
    skipped: int = 0  # its points left out


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def without_first(chunk: Chunk, drop: Mapping[str, int]) -> Chunk | None:
    """``chunk`` without each channel's first ``drop[name]`` points; None when nothing is left."""
    channels = []
    for ch in chunk.channels:
        n = drop.get(ch.name, 0)
        if n == 0:
            channels.append(ch)
        elif n < ch.size:
            channels.append(
                dataclasses.replace(ch, timestamps_ns=ch.timestamps_ns[n:], values=ch.values[n:])
            )
    if not channels:
        return None
    if len(channels) == len(chunk.channels) and all(
        a is b for a, b in zip(channels, chunk.channels, strict=True)
    ):
        return chunk
    return Chunk(
        chunk.data_id, chunk.chunk_index, tuple(channels), chunk.multi, chunk.offset_ns, chunk.seq
    )


class AtlasSession:
    """The ATLAS writer protocol for one labstream stream (one ATLAS session). See module doc."""

    def __init__(
        self, options: AtlasOptions | None = None, state: SessionState | None = None
    ) -> None:
        """Start a new session, or resume one from a :meth:`snapshot`.

        Raises:
            ValueError: ``state`` was taken mid-call (only idle snapshots can resume).
        """
        self.options = options or AtlasOptions()
        if state is not None and state.phase in (Phase.CREATING, Phase.ENDING):
            raise ValueError(f"cannot resume a session snapshot in phase {state.phase!r}")
        self._state = state if state is not None else SessionState()
        self._queue: deque[Event] = deque()
        self._awaiting: Call | None = None
        self._plan: _Plan | None = None
        self._key_attempts = 0
        self._finalize_queued = self._state.phase is Phase.CLOSED
        self._resumed = state is not None
        # Recovered: identifier -> latest sample landed, for channels not seen yet in this process
        self._landed_last: dict[str, int] = {}

    # -- inspection ------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The live state (do not mutate)."""
        return self._state

    @property
    def awaiting(self) -> Call | None:
        """The call whose answer the session waits for, if any."""
        return self._awaiting

    @property
    def idle(self) -> bool:
        """No call outstanding and nothing queued: a snapshot now is complete."""
        return self._awaiting is None and not self._queue

    @property
    def closed(self) -> bool:
        return self._state.phase is Phase.CLOSED

    def snapshot(self) -> SessionState:
        """A deep copy of the state, for a durable journal.

        Raises:
            AtlasProtocolError: not :attr:`idle` (a call's answer or queued events would be lost).
        """
        if not self.idle:
            raise AtlasProtocolError("snapshot() needs an idle session (no call, nothing queued)")
        return SessionState.from_dict(self._state.to_dict())

    def _enter(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self._state.phase]:
            raise AtlasProtocolError(f"session phase {self._state.phase} cannot become {phase}")
        self._state.phase = phase

    # -- the one entry point -----------------------------------------------------------------

    def handle(self, event: Event | Recovered | Answer) -> list[Action]:
        """Feed an event or an answer; return the actions to perform, in order.

        Raises:
            ValueError: invalid Opened names/details or marker fields (nothing changed).
            TypeError: details that are not strings.
            AtlasProtocolError: an answer with no matching call, events before Opened or after
                Finalize, Opened twice, Recovered other than first in a resumed open session.
        """
        out: list[Action] = []
        if isinstance(
            event, SessionCreated | KeyGenerated | FormatIdReceived | SessionEnded | CallFailed
        ):
            self._answer(event, out)
        elif isinstance(event, Opened):
            self._open(event, out)
        elif isinstance(event, Recovered):
            self._recover(event, out)
        else:
            if self._finalize_queued:
                raise AtlasProtocolError(f"{type(event).__name__} after Finalize")
            if self._state.phase is Phase.NEW and not isinstance(event, Finalize):
                raise AtlasProtocolError(f"{type(event).__name__} before Opened")
            if isinstance(event, MarkerAdded):
                _check_marker(event)
            if isinstance(event, Finalize):
                self._finalize_queued = True
            self._queue.append(event)
        self._pump(out)
        return out

    # -- opening -----------------------------------------------------------------------------

    def _open(self, ev: Opened, out: list[Action]) -> None:
        if self._state.phase is not Phase.NEW:
            raise AtlasProtocolError(f"Opened twice (session phase {self._state.phase!r})")
        for what, name in (("data_source", ev.data_source), ("stream", ev.stream)):
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise ValueError(
                    f"ATLAS {what}={name!r} must be non-empty and only letters, digits, '_' or "
                    "'-' (it becomes part of a Kafka topic name; no dots or spaces)"
                )
            if len(name) > MAX_NAME:
                raise ValueError(f"ATLAS {what} is {len(name)} characters; at most {MAX_NAME}")
        if not isinstance(ev.identifier, str) or not ev.identifier.strip():
            raise ValueError("the ATLAS session identifier must be a non-empty string")
        for k, v in ev.details.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"session details must map str to str; got {k!r}: {v!r}")
        s = self._state
        s.data_source, s.stream, s.identifier = ev.data_source, ev.stream, ev.identifier
        self._enter(Phase.CREATING)
        self._call(
            CreateSessionCall(
                data_source=ev.data_source,
                identifier=ev.identifier,
                details=dict(ev.details),
                creation_time_ns=ev.creation_time_ns,
                utc_offset_ns=ev.utc_offset_ns,
            ),
            out,
        )

    def _recover(self, ev: Recovered, out: list[Action]) -> None:
        s = self._state
        if s.phase is not Phase.OPEN or not self.idle:
            raise AtlasProtocolError(f"Recovered in session phase {s.phase} (resume first)")
        for config_id, identifiers in ev.configs.items():
            s.configs[config_id] = list(identifiers)
            for ch in s.channels.values():
                if ch.identifier in identifiers:
                    ch.config_id = config_id
        s.next_packet_id = max(s.next_packet_id, ev.last_packet_id + 1)
        for stream, content in ev.missing_configs:
            self._write(stream, "Configuration", True, content, out)
        s.ended_streams = sorted({*s.ended_streams, *ev.ended_streams})
        self._landed_last.update(ev.last_ns)
        for ch in s.channels.values():
            ch.last_ns = _latest(ch.last_ns, ev.last_ns.get(ch.identifier))

    # -- answers -----------------------------------------------------------------------------

    def _answer(self, ans: Answer, out: list[Action]) -> None:
        call = self._awaiting
        expected = {
            CreateSessionCall: SessionCreated,
            GenerateKeyCall: KeyGenerated,
            GetFormatIdCall: FormatIdReceived,
            EndSessionCall: SessionEnded,
        }
        if call is None:
            raise AtlasProtocolError(f"{type(ans).__name__} but no call is outstanding")
        if not isinstance(ans, CallFailed | expected[type(call)]):
            raise AtlasProtocolError(f"{type(ans).__name__} does not answer {type(call).__name__}")
        self._awaiting = None
        s = self._state
        if isinstance(call, CreateSessionCall):
            if isinstance(ans, SessionCreated) and ans.session_key:
                s.session_key = ans.session_key
                self._enter(Phase.OPEN)
                content = enc.encode_new_session(
                    s.data_source, call.creation_time_ns, call.utc_offset_ns
                )
                self._write_both("NewSession", False, content, out)
            else:
                reason = ans.reason if isinstance(ans, CallFailed) else "empty session_key"
                s.session_key = None
                self._enter(Phase.FAILED)
                s.failure = f"CreateSession failed: {reason}"
        elif isinstance(call, GenerateKeyCall):
            self._on_key(ans, out)
        elif isinstance(call, GetFormatIdCall):
            if isinstance(ans, FormatIdReceived):
                if not 0 <= ans.format_id < 2**64:
                    raise AtlasProtocolError(f"format id {ans.format_id} is not a uint64")
                s.format_ids[KEY_SEP.join(call.parameters)] = ans.format_id
            else:
                assert isinstance(ans, CallFailed)
                self._reject_head(
                    f"no data format id for {list(call.parameters)}: {ans.reason}", out
                )
        else:  # EndSessionCall
            self._enter(Phase.CLOSED)
            if isinstance(ans, SessionEnded) and ans.success:
                out.append(Closed(ended=True))
            else:
                why = ans.reason if isinstance(ans, CallFailed) else "answered success=false"
                out.append(Closed(ended=False, reason=f"EndSession failed: {why}"))

    def _on_key(self, ans: Answer, out: list[Action]) -> None:
        s = self._state
        if isinstance(ans, CallFailed):
            self._reject_head(f"no config_id from the key generator: {ans.reason}", out)
            return
        assert isinstance(ans, KeyGenerated)
        if not ans.key or ans.key in s.configs:
            # ATLAS needs every config_id unique; ask again rather than reuse one.
            self._key_attempts += 1
            if self._key_attempts < _MAX_KEY_ATTEMPTS:
                return  # the pump re-runs the head step, which asks for a key again
            self._reject_head(
                f"the key generator returned an empty or already used config_id {ans.key!r} "
                f"{self._key_attempts} times",
                out,
            )
            return
        self._key_attempts = 0
        self._write_configuration(ans.key, out)

    def _reject_head(self, reason: str, out: list[Action]) -> None:
        """The head event (a chunk waiting on the failed call) will never be written."""
        self._key_attempts = 0
        self._plan = None
        head = self._queue.popleft()
        assert isinstance(head, ChunkReady)
        out.append(Rejected(reason, chunk_index=head.chunk.chunk_index))

    # -- the queue ---------------------------------------------------------------------------

    def _pump(self, out: list[Action]) -> None:
        while self._awaiting is None and self._queue:
            head = self._queue[0]
            if not self._step(head, out):
                break
            self._queue.popleft()

    def _step(self, ev: Event, out: list[Action]) -> bool:
        """Process the head event; False when it waits for a call's answer."""
        if isinstance(ev, ChannelSeen):
            self._register(ev.name, ev.units)
            return True
        if isinstance(ev, MarkerAdded):
            self._marker(ev, out)
            return True
        if isinstance(ev, ChunkReady):
            return self._chunk(ev.chunk, out)
        if isinstance(ev, Finalize):
            self._finalize(ev, out)
            return True
        raise AtlasProtocolError(f"unexpected queued event {ev!r}")  # pragma: no cover

    def _call(self, call: Call, out: list[Action]) -> None:
        self._awaiting = call
        out.append(call)

    def _write(
        self,
        stream: str,
        packet_type: str,
        essential: bool,
        content: bytes,
        out: list[Action],
        chunk_index: int | None = None,
    ) -> None:
        s = self._state
        assert s.session_key is not None
        out.append(
            WritePacket(
                data_source=s.data_source,
                stream=stream,
                session_key=s.session_key,
                packet_type=packet_type,
                is_essential=essential,
                content=content,
                packet_id=s.next_packet_id,
                chunk_index=chunk_index,
            )
        )
        s.next_packet_id += 1

    def _write_both(
        self, packet_type: str, essential: bool, content: bytes, out: list[Action]
    ) -> None:
        # SQLRace reads each topic on its own: session, config, markers and end go to both.
        self._write(self._state.stream, packet_type, essential, content, out)
        self._write(MAIN_STREAM, packet_type, essential, content, out)

    # -- channels and configuration ------------------------------------------------------------

    def _channel_options(self, name: str) -> ChannelOptions:
        return self.options.channels.get(name) or ChannelOptions()

    def _register(self, name: str, units: str | None) -> ChannelState:
        s = self._state
        ch = s.channels.get(name)
        if ch is not None:
            return ch
        opts = self._channel_options(name)
        ident = self.identifier_of(name)
        units_final = opts.units if opts.units is not None else (units or "")
        ch = ChannelState(identifier=ident, units=units_final)
        # A Configuration a resumed session found landed (Recovered) already defines it.
        ch.config_id = next((c for c, ids in s.configs.items() if ident in ids), None)
        ch.last_ns = self._landed_last.get(ident)
        s.channels[name] = ch
        return ch

    def identifier_of(self, name: str) -> str:
        """The ATLAS parameter identifier of channel ``name``: its own, or the one it gets when
        first seen (nothing changes)."""
        s = self._state
        known = s.channels.get(name)
        if known is not None:
            return known.identifier
        opts = self._channel_options(name)
        if opts.identifier is not None:
            ident = opts.identifier
        else:
            base = IDENT_UNSAFE.sub("_", name.strip()) or "channel"
            ident = f"{base}:{self.options.application_name}"
        taken = {c.identifier for c in s.channels.values()}
        if ident in taken:  # two names that sanitise alike: keep both, distinctly
            stem, _, app = ident.rpartition(":")
            stem, app = (stem, f":{app}") if stem else (ident, "")
            ident = next(
                f"{stem}_{i}{app}" for i in range(2, 10**6) if f"{stem}_{i}{app}" not in taken
            )
        return ident

    def _write_configuration(self, config_id: str, out: list[Action]) -> None:
        s = self._state
        names = [n for n, c in s.channels.items() if c.config_id is None]
        stats = _first_stats(self._plan)
        params = [self._parameter(n, s.channels[n], stats.get(n)) for n in names]
        app = self.options.application_name
        group = enc.GroupSpec(
            identifier=app,
            name=app,
            application_name=app,
            description=self.options.group_description,
        )
        content = enc.encode_configuration(config_id, params, group)
        self._write_both("Configuration", True, content, out)
        for n in names:
            s.channels[n].config_id = config_id
        s.configs[config_id] = [s.channels[n].identifier for n in names]

    def _parameter(
        self, name: str, ch: ChannelState, stats: tuple[float | None, Float64Array] | None
    ) -> enc.ParameterSpec:
        opts = self._channel_options(name)
        freq, values = stats if stats is not None else (None, None)
        if opts.frequency_hz is not None:
            freq = opts.frequency_hz
        lo, hi = _display_range(values)
        lo = opts.min_value if opts.min_value is not None else lo
        hi = opts.max_value if opts.max_value is not None else hi
        app = self.options.application_name
        return enc.ParameterSpec(
            identifier=ch.identifier,
            name=opts.name or name,
            application_name=app,
            units=ch.units,
            description=opts.description,
            groups=(app,),
            format_string=opts.format_string or self.options.format_string,
            min_value=lo,
            max_value=hi,
            warning_min_value=opts.warning_min_value if opts.warning_min_value is not None else lo,
            warning_max_value=opts.warning_max_value if opts.warning_max_value is not None else hi,
            frequencies=(freq,) if freq else (),
            # any chunk of any channel may turn out irregular and go as RowData
            includes_row_data=True,
        )

    # -- chunks ------------------------------------------------------------------------------

    def _chunk(self, chunk: Chunk, out: list[Action]) -> bool:
        s = self._state
        if s.phase is Phase.FAILED:
            out.append(Rejected(f"no ATLAS session: {s.failure}", chunk_index=chunk.chunk_index))
            return True
        if self._plan is None or self._plan.original is not chunk:
            fresh, skipped = self._not_written(chunk) if self._resumed else (chunk, 0)
            if fresh is None:
                out.append(ChunkDone(chunk.chunk_index, 0, skipped))
                return True
            self._plan = self._make_plan(fresh)
            self._plan.original, self._plan.skipped = chunk, skipped
        plan = self._plan
        unconfigured = [c.identifier for c in s.channels.values() if c.config_id is None]
        if unconfigured:
            self._call(GenerateKeyCall(tuple(unconfigured)), out)
            return False
        for g in plan.groups:
            if g.key not in s.format_ids:
                self._call(GetFormatIdCall(s.data_source, g.identifiers), out)
                return False
        packets = 0
        for g in plan.groups:
            packets += self._emit_group(g, chunk.chunk_index, out)
        self._plan = None
        self._release_markers(out)
        out.append(ChunkDone(chunk.chunk_index, packets, plan.skipped))
        return True

    def _not_written(self, chunk: Chunk) -> tuple[Chunk | None, int]:
        """A resumed session may be handed again what a process before it wrote (a log read
        again after a crash): each channel's points up to the latest it holds are left out,
        as ATLAS needs every channel's time to increase anyway. Returns what is left (None:
        nothing) and how many points were left out."""
        drop: dict[str, int] = {}
        for c in chunk.channels:
            known = self._state.channels.get(c.name)
            last = (
                known.last_ns
                if known is not None
                else self._landed_last.get(self.identifier_of(c.name))
            )
            if last is not None:
                drop[c.name] = int(np.searchsorted(c.timestamps_ns, last, side="right"))
        skipped = sum(drop.values())
        return (without_first(chunk, drop), skipped) if skipped else (chunk, 0)

    def _make_plan(self, chunk: Chunk) -> _Plan:
        for c in chunk.channels:
            self._register(c.name, c.units)
        chans = chunk.channels
        first = chans[0]
        shared = all(
            c.timestamps_ns is first.timestamps_ns  # push_multi with one timestamps object
            or (c.size == first.size and np.array_equal(c.timestamps_ns, first.timestamps_ns))
            for c in chans[1:]
        )
        # channels sharing timestamps go in one packet (one column / value per parameter)
        sets: list[tuple[ChannelSeries, ...]] = [chans] if shared else [(c,) for c in chans]
        return _Plan(chunk, [self._group(cs) for cs in sets])

    def _group(self, chans: tuple[ChannelSeries, ...]) -> _Group:
        s = self._state
        idents = tuple(s.channels[c.name].identifier for c in chans)
        t = chans[0].timestamps_ns
        g = _Group(
            names=tuple(c.name for c in chans),
            identifiers=idents,
            timestamps=t,
            columns=[c.values for c in chans],
            start_ns=0,
            interval_ns=0,
            timeline=None,
        )
        layout = choose_layout(t, s.timelines.get(g.key))
        if layout is not None:
            g.start_ns, g.interval_ns, g.timeline = layout
        return g

    def _emit_group(self, g: _Group, chunk_index: int, out: list[Action]) -> int:
        s = self._state
        fmt = s.format_ids[g.key]
        budget = self.options.max_packet_bytes
        if g.timeline is not None:
            pkts = enc.encode_periodic_packets(fmt, g.start_ns, g.interval_ns, g.columns, budget)
            s.timelines[g.key] = g.timeline
        else:
            pkts = enc.encode_row_packets(fmt, g.timestamps, g.columns, budget)
            s.timelines.pop(g.key, None)  # a row packet ends any arithmetic continuation
        last = int(g.timestamps[-1])
        for name in g.names:
            ch = s.channels[name]
            ch.last_ns = _latest(ch.last_ns, last)
        for p in pkts:
            self._write(s.stream, p.packet_type, False, p.content, out, chunk_index)
            s.data_first_ns = (
                p.first_ns if s.data_first_ns is None else min(s.data_first_ns, p.first_ns)
            )
            s.data_last_ns = p.last_ns if s.data_last_ns is None else max(s.data_last_ns, p.last_ns)
        return len(pkts)

    # -- markers -----------------------------------------------------------------------------

    def _marker(self, ev: MarkerAdded, out: list[Action]) -> None:
        s = self._state
        if s.phase is Phase.FAILED:
            out.append(Rejected(f"no ATLAS session: {s.failure}", marker_label=ev.label))
            return
        m = HeldMarker(
            label=ev.label,
            timestamp_ns=ev.timestamp_ns,
            end_time_ns=ev.end_time_ns if ev.end_time_ns is not None else ev.timestamp_ns,
            marker_type=ev.marker_type,
            description=ev.description,
        )
        if self._covered(m):
            self._write_marker(m, out)
        else:  # SQLRace drops markers outside the data's time range: wait for the data
            s.held_markers.append(m)

    def _covered(self, m: HeldMarker) -> bool:
        s = self._state
        return (
            s.data_first_ns is not None
            and s.data_last_ns is not None
            and s.data_first_ns <= m.timestamp_ns
            and m.end_time_ns <= s.data_last_ns
        )

    def _write_marker(self, m: HeldMarker, out: list[Action]) -> None:
        content = enc.encode_marker(
            timestamp_ns=m.timestamp_ns,
            end_time_ns=m.end_time_ns,
            label=m.label,
            marker_type=m.marker_type,
            description=m.description,
            source=self.options.marker_source,
        )
        self._write_both("Marker", True, content, out)

    def _release_markers(self, out: list[Action]) -> None:
        s = self._state
        keep: list[HeldMarker] = []
        for m in s.held_markers:
            if self._covered(m):
                self._write_marker(m, out)
            else:
                keep.append(m)
        s.held_markers = keep

    # -- the end -----------------------------------------------------------------------------

    def _finalize(self, ev: Finalize, out: list[Action]) -> None:
        s = self._state
        for m in s.held_markers:
            if s.data_first_ns is None or s.data_last_ns is None:
                where = "no data was written to ATLAS"
            else:
                where = f"the data covers only [{s.data_first_ns}, {s.data_last_ns}] ns"
            out.append(
                Rejected(
                    f"marker [{m.timestamp_ns}, {m.end_time_ns}] ns is outside the data's time "
                    f"range ({where}); ATLAS would drop it",
                    marker_label=m.label,
                )
            )
        s.held_markers = []
        if s.session_key is None:
            self._enter(Phase.CLOSED)
            why = s.failure or "the session was never opened"
            out.append(Closed(ended=False, reason=f"nothing to end: no session key ({why})"))
            return
        content = enc.encode_end_of_session(s.data_source, ev.termination_time_ns)
        for stream in (s.stream, MAIN_STREAM):
            if stream not in s.ended_streams:  # a process before this one ended it there
                self._write(stream, "EndOfSession", False, content, out)
        self._enter(Phase.ENDING)
        self._call(EndSessionCall(s.data_source, s.session_key, ev.termination_time_ns), out)


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_marker(ev: MarkerAdded) -> None:
    if not isinstance(ev.label, str) or not ev.label.strip():
        raise ValueError("a marker needs a non-empty label")
    if not isinstance(ev.timestamp_ns, int) or ev.timestamp_ns < 0:
        raise ValueError(f"marker {ev.label!r}: timestamp_ns must be a non-negative int (epoch ns)")
    if ev.end_time_ns is not None and (
        not isinstance(ev.end_time_ns, int) or ev.end_time_ns < ev.timestamp_ns
    ):
        raise ValueError(f"marker {ev.label!r}: end_time_ns must be an int >= timestamp_ns")


def _first_stats(plan: _Plan | None) -> dict[str, tuple[float | None, Float64Array]]:
    """Per channel of the chunk being configured: its detected rate (Hz) and its values."""
    out: dict[str, tuple[float | None, Float64Array]] = {}
    if plan is None:
        return out
    for g in plan.groups:
        if g.periodic:
            freq: float | None = NS_PER_S / g.interval_ns
        else:
            span = int(g.timestamps[-1]) - int(g.timestamps[0])
            n = int(g.timestamps.shape[0])
            freq = (n - 1) * NS_PER_S / span if n > 1 and span > 0 else None
        if freq is not None:
            # a short chunk's rate is noisy in the 7th digit (9.9999999 Hz): show 6 digits
            freq = float(f"{freq:.6g}")
        for name, col in zip(g.names, g.columns, strict=True):
            out[name] = (freq, col)
    return out


def _display_range(values: Float64Array | None) -> tuple[float, float]:
    """The finite range padded by 10 % (or by 10 % of the value, at least 1, when flat)."""
    if values is None:
        return 0.0, 1.0
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo
    pad = span * 0.1 if span > 0 else max(abs(hi) * 0.1, 1.0)
    lo, hi = lo - pad, hi + pad
    if not (math.isfinite(lo) and math.isfinite(hi)):  # values near the float64 limits
        return float(finite.min()), float(finite.max())
    return lo, hi
