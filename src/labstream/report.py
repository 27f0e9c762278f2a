"""What each destination did with a stream: the answer ``finalize()`` returns.

Counts are kept per stream and per destination by the delivery runners; a report is a frozen
snapshot of them. Nothing is ever dropped without showing up here with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DestinationReport", "Rejection", "StreamReport"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A chunk a destination refused for good, with the server's reason."""

    chunk_index: int
    channels: tuple[str, ...]
    points: int
    status: int | str | None
    reason: str


@dataclass(frozen=True, slots=True)
class DestinationReport:
    """One destination's account of one stream.

    ``pending`` chunks were accepted but not yet confirmed by the destination: they are still held
    and retried. ``dropped`` chunks were given up (only when the streamer is closed while the
    destination is unreachable); ``drop_reason`` says why.
    """

    destination: str
    chunks_accepted: int = 0
    points_accepted: int = 0
    chunks_delivered: int = 0
    points_delivered: int = 0
    chunks_rejected: int = 0
    points_rejected: int = 0
    chunks_dropped: int = 0
    points_dropped: int = 0
    drop_reason: str | None = None
    retries: int = 0
    opened: bool = False
    closed: bool = False
    close_error: str | None = None
    last_error: str | None = None
    rejections: tuple[Rejection, ...] = ()
    markers_accepted: int = 0
    marker_rejections: tuple[str, ...] = ()
    # Points sent again after a crash with no way to tell whether the destination had them.
    points_maybe_duplicated: int = 0
    # Requests the destination may have in flight when the report was made (the adaptive window).
    window: int = 0

    @property
    def chunks_pending(self) -> int:
        return (
            self.chunks_accepted
            - self.chunks_delivered
            - self.chunks_rejected
            - self.chunks_dropped
        )

    @property
    def points_pending(self) -> int:
        return (
            self.points_accepted
            - self.points_delivered
            - self.points_rejected
            - self.points_dropped
        )

    @property
    def complete(self) -> bool:
        """Everything accepted was delivered and the stream was closed at the destination."""
        return self.closed and self.chunks_delivered == self.chunks_accepted


@dataclass(frozen=True, slots=True)
class StreamReport:
    """The outcome of one stream across every destination.

    ``not_durable_chunks`` were accepted but the journal's disk could not take them (a failed
    write, or less free space than ``spool_min_free_bytes``): they were kept in memory and
    delivered from there, and a crash before delivery would have lost them. ``not_durable_reason``
    says why; it is also set, with no chunk counted, while the journal is not writing chunks.
    Any of them still undelivered when the streamer closed is counted as dropped.

    ``journal_waits`` counts the pushes that waited for the journal's commit, and
    ``journal_wait_s`` the seconds they waited in all: with the default durability, when the
    journal fell behind the durability window (a burst, a slow disk); with
    ``durability="commit"``, every push. ``journal_wait_timeouts`` of those returned before the
    commit: the journal was more than 2 s behind (a wait gives up after 2 s, and pushes do not
    wait again until it has caught up). ``gaps`` are (channel, first, last) ranges of chunk
    indexes a recovered stream misses between the lowest and highest index its journal
    recorded: such a stream is not ``ok``.
    """

    data_id: str
    destinations: dict[str, DestinationReport] = field(default_factory=dict)
    refused_chunks: int = 0
    refused_points: int = 0
    refusal_reason: str | None = None
    not_durable_chunks: int = 0
    not_durable_points: int = 0
    not_durable_reason: str | None = None
    journal_waits: int = 0
    journal_wait_s: float = 0.0
    journal_wait_timeouts: int = 0
    gaps: tuple[tuple[str, int, int], ...] = ()

    @property
    def durable(self) -> bool:
        """False when some accepted chunks were held in memory only, or the journal is not
        writing chunks (see ``not_durable_*``)."""
        return not self.not_durable_chunks and self.not_durable_reason is None

    @property
    def ok(self) -> bool:
        """True when nothing was refused or missing and every destination got everything and
        closed."""
        return (
            not self.refused_chunks
            and not self.gaps
            and all(d.complete for d in self.destinations.values())
        )

    def notes(self) -> list[str]:
        """Lines about the stream as a whole: chunks refused or missing, chunks not durable,
        waits for the journal."""
        out = []
        if self.gaps:
            shown = ", ".join(
                f"{channel} {first}" if first == last else f"{channel} {first}-{last}"
                for channel, first, last in self.gaps[:10]
            )
            more = f" and {len(self.gaps) - 10} more" if len(self.gaps) > 10 else ""
            out.append(
                f"  missing chunk indexes (not in the journal the stream was recovered from): "
                f"{shown}{more}"
            )
        if self.refused_chunks:
            out.append(
                f"  refused before storing: {self.refused_chunks} chunk(s) / "
                f"{self.refused_points} point(s): {self.refusal_reason}"
            )
        if self.not_durable_chunks:
            out.append(
                f"  not durable: {self.not_durable_chunks} chunk(s) / {self.not_durable_points} "
                f"point(s) kept in memory only, not in the journal: {self.not_durable_reason}"
            )
        elif self.not_durable_reason:
            out.append(
                f"  not durable: the journal is not writing chunks: {self.not_durable_reason}"
            )
        if self.journal_waits:
            timeouts = (
                f", {self.journal_wait_timeouts} returned before the commit (the journal was "
                "more than 2 s behind)"
                if self.journal_wait_timeouts
                else ""
            )
            out.append(
                f"  waited for the journal: {self.journal_waits} push(es), "
                f"{self.journal_wait_s:.3f} s in all{timeouts}"
            )
        return out

    def __getitem__(self, destination: str) -> DestinationReport:
        return self.destinations[destination]

    def __str__(self) -> str:
        head = (
            f"{'destination':<12}{'accepted':>10}{'delivered':>11}{'retries':>9}"
            f"{'rejected':>10}{'pending':>9}{'dropped':>9}  closed"
        )
        lines = [f"stream {self.data_id}: {'complete' if self.ok else 'INCOMPLETE'}", head]
        lines[1:1] = self.notes()
        for d in self.destinations.values():
            lines.append(
                f"{d.destination:<12}{d.points_accepted:>10}{d.points_delivered:>11}"
                f"{d.retries:>9}{d.points_rejected:>10}{d.points_pending:>9}"
                f"{d.points_dropped:>9}  {'yes' if d.closed else 'NO'}"
            )
            for r in d.rejections:
                lines.append(f"  rejected chunk {r.chunk_index} ({r.status}): {r.reason}")
            for reason in d.marker_rejections:
                lines.append(f"  marker not written: {reason}")
            if d.points_maybe_duplicated:
                lines.append(
                    f"  maybe duplicated: {d.points_maybe_duplicated:,} point(s) in flight at a "
                    "crash were sent again (the server had no reader to tell whether they landed)"
                )
            if d.drop_reason:
                lines.append(f"  dropped: {d.drop_reason}")
            left_open = (d.close_error or "").startswith("not closed yet")
            if d.chunks_pending and not left_open:
                lines.append(
                    f"  behind: {d.chunks_pending:,} chunk(s) / {d.points_pending:,} point(s) not "
                    "confirmed yet; they stay pending (with the journal, `labstream spool resume` "
                    "delivers them later)"
                )
            if d.close_error:
                lines.append(
                    f"  {d.close_error}" if left_open else f"  close failed: {d.close_error}"
                )
            elif d.last_error and not d.complete:
                lines.append(f"  last error: {d.last_error}")
        return "\n".join(lines)
