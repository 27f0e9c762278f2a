"""What flows in and out of the ATLAS session machine: the events a sink feeds it (the stream's
life and the answers to its calls) and the actions it returns (calls to make, packets to write,
outcomes). Plain frozen values, so a test can build any sequence of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..._core.chunk import Chunk
from . import encoding as enc

__all__ = [
    "Action",
    "Answer",
    "Call",
    "CallFailed",
    "ChannelSeen",
    "ChunkDone",
    "ChunkReady",
    "Closed",
    "CreateSessionCall",
    "EndSessionCall",
    "Event",
    "Finalize",
    "FormatIdReceived",
    "GenerateKeyCall",
    "GetFormatIdCall",
    "KeyGenerated",
    "MarkerAdded",
    "Opened",
    "Recovered",
    "Rejected",
    "SessionCreated",
    "SessionEnded",
    "WritePacket",
]

# ---------------------------------------------------------------------------------------------
# Events fed to the session


@dataclass(frozen=True, slots=True)
class Opened:
    """The stream started: create the ATLAS session.

    Attributes:
        data_source: ATLAS data source (``[A-Za-z0-9_-]``; a Kafka topic name part).
        stream: the data stream the packets go to (``[A-Za-z0-9_-]``; not the main stream "").
        identifier: session identifier shown in ATLAS's session browser (the stream's name).
        details: session details (physical sample, project, tags, ...), strings only.
        creation_time_ns: session creation time, epoch ns.
        utc_offset_ns: local standard time minus UTC, ns.
    """

    data_source: str
    stream: str
    identifier: str
    details: Mapping[str, str]
    creation_time_ns: int
    utc_offset_ns: int = 0


@dataclass(frozen=True, slots=True)
class ChannelSeen:
    """A channel exists (optional: a chunk declares its channels too)."""

    name: str
    units: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkReady:
    """A validated chunk to send."""

    chunk: Chunk


@dataclass(frozen=True, slots=True)
class MarkerAdded:
    """A marker (lap, growth step...). Held until data covers it; end_time None = a point."""

    label: str
    timestamp_ns: int
    end_time_ns: int | None = None
    marker_type: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Finalize:
    """No more events: end the session."""

    termination_time_ns: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """A session resumed from a snapshot, and what the Stream API holds beyond it: fed once,
    right after resuming, before any other event.

    Attributes:
        last_packet_id: packet ids go on after this one (ATLAS needs them increasing).
        configs: config_id -> parameter identifiers of Configurations that landed after the
            snapshot; their channels are not configured again.
        missing_configs: (stream, Configuration content) a crash left on one stream only; they
            are written to complete it.
        ended_streams: streams whose EndOfSession landed; Finalize does not write it again.
        last_ns: parameter identifier -> its latest sample that landed; the session writes no
            point of that channel at or before it again.
    """

    last_packet_id: int
    configs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    missing_configs: tuple[tuple[str, bytes], ...] = ()
    ended_streams: frozenset[str] = frozenset()
    last_ns: Mapping[str, int] = field(default_factory=dict)


Event = Opened | ChannelSeen | ChunkReady | MarkerAdded | Finalize


# Answers to calls


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """CreateSession answered ``success=true`` with this key."""

    session_key: str


@dataclass(frozen=True, slots=True)
class KeyGenerated:
    """GenerateUniqueKey (KEY_TYPE_STRING) answered ``string_key``."""

    key: str


@dataclass(frozen=True, slots=True)
class FormatIdReceived:
    """GetParameterDataFormatId answered ``data_format_identifier``."""

    format_id: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """EndSession answered (``success`` as the server said)."""

    success: bool = True


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The outstanding call failed for good (after the sink's retries), or said success=false."""

    reason: str


Answer = SessionCreated | KeyGenerated | FormatIdReceived | SessionEnded | CallFailed


# ---------------------------------------------------------------------------------------------
# Actions returned to the sink


@dataclass(frozen=True, slots=True)
class CreateSessionCall:
    """Call ``SessionManagementService.CreateSession``; answer SessionCreated or CallFailed.

    A reply with ``success=false`` or an empty ``session_key`` is a failure.
    """

    data_source: str
    identifier: str
    details: Mapping[str, str]
    creation_time_ns: int
    utc_offset_ns: int
    session_type: str = "Session"
    version: int = 1


@dataclass(frozen=True, slots=True)
class GenerateKeyCall:
    """Call ``UniqueKeyGeneratorService.GenerateUniqueKey(KEY_TYPE_STRING)``; answer KeyGenerated.

    Attributes:
        parameters: identifiers the configuration being built will define (for logs).
    """

    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetFormatIdCall:
    """Call ``DataFormatManagerService.GetParameterDataFormatId``; answer FormatIdReceived."""

    data_source: str
    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EndSessionCall:
    """Call ``SessionManagementService.EndSession``; answer SessionEnded or CallFailed."""

    data_source: str
    session_key: str
    termination_time_ns: int


Call = CreateSessionCall | GenerateKeyCall | GetFormatIdCall | EndSessionCall


@dataclass(frozen=True, slots=True)
class WritePacket:
    """Write one packet (``PacketWriterService``), in the order given.

    Attributes:
        data_source, stream, session_key: the ``DataPacketDetails`` fields; ``session_key`` is
            also the ``Packet.session_key`` (they must be equal).
        packet_type, is_essential, content, packet_id: the ``Packet`` fields.
        chunk_index: the chunk whose data this packet carries, or None.
    """

    data_source: str
    stream: str
    session_key: str
    packet_type: str
    is_essential: bool
    content: bytes
    packet_id: int
    chunk_index: int | None = None

    def request_bytes(self) -> bytes:
        """The serialised unary ``WriteDataPacketRequest`` carrying this packet."""
        return enc.encode_write_request(
            self.packet_type,
            self.session_key,
            self.is_essential,
            self.content,
            self.packet_id,
            self.data_source,
            self.stream,
        )


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """Every packet of the chunk has been returned (they precede this action)."""

    chunk_index: int
    packets: int
    # A resumed session: points at or before what the session already holds for their
    # channel, so not written again (a process before this one had written them).
    skipped_points: int = 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A chunk or marker that will never be written to ATLAS, and why. The sink reports it."""

    reason: str
    chunk_index: int | None = None
    marker_label: str | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; ``ended`` is False when no EndSession succeeded (``reason``: why)."""

    ended: bool
    reason: str = ""


Action = Call | WritePacket | ChunkDone | Rejected | Closed
