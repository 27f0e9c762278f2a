"""What the delivery runner needs from a destination.

A sink performs one request at a time and says how it went by raising
:class:`~labstream.errors.TransientDestinationError` (retry it) or
:class:`~labstream.errors.RejectedError` (never retry). Retrying, counting and ordering belong to
the runner, so a sink stays a thin translation of labstream's operations to one wire protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._core.chunk import Chunk
from ..errors import DestinationError

__all__ = ["BatchingSink", "Finding", "Marker", "Sink", "StreamInfo"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of looking at a destination before streaming (``labstream check``): what
    answered, or what is wrong and what to look at, in a sentence."""

    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Everything known about a stream when it is initialized."""

    data_id: str
    stream_name: str | None = None
    points_per_chunk: int = 100
    synth_source_id: int | None = None
    physical_sample: str | None = None
    project_id: str | None = None
    tags: tuple[str, ...] = ()
    created_at_ns: int = 0
    # The clock correction measured when the stream was initialized: every timestamp of the
    # stream gets it, in this process and in one that takes the stream over after a crash.
    clock_offset_ns: int = 0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Marker:
    """A marker as the streamer accepted it (times in clock-corrected epoch ns)."""

    data_id: str
    label: str
    timestamp_ns: int
    end_time_ns: int | None = None
    marker_type: str = "Marker"
    description: str = ""


class Sink(Protocol):
    """A destination, as seen by its delivery runner."""

    @property
    def name(self) -> str:
        """Short destination name used in reports and errors ("atomscale", "atlas")."""
        ...

    @property
    def max_concurrency(self) -> int:
        """The most requests in flight at once (1 keeps chunks in order); the runner's adaptive
        window stays below it."""
        ...

    @property
    def takes_data_after_close(self) -> bool:
        """Whether chunks may still be delivered after :meth:`close_stream` (Atomscale: yes;
        ATLAS: no, nothing may follow the end of a session)."""
        ...

    async def open_stream(self, stream: StreamInfo) -> None:
        """Start the stream at the destination (may be a no-op)."""
        ...

    async def send_chunk(self, chunk: Chunk) -> None:
        """Deliver one chunk. Must be safe to repeat after a failure."""
        ...

    async def close_stream(self, stream: StreamInfo) -> None:
        """Finish the stream at the destination."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class BatchingSink(Sink, Protocol):
    """A destination that can take several consecutive chunks of a stream in one go (ATLAS).

    The runner hands it every chunk already queued behind the first, up to ``max_batch_points``,
    so a backlog costs one write instead of one per chunk.
    """

    @property
    def max_batch_points(self) -> int:
        """Most points per :meth:`send_chunks` call."""
        ...

    async def send_chunks(self, chunks: Sequence[Chunk]) -> Mapping[int, DestinationError]:
        """Deliver consecutive chunks of one stream, in order; return the refused ones by seq.

        Raises ``TransientDestinationError`` to be called again with the same chunks; it must then
        continue where it stopped (nothing written twice).
        """
        ...
