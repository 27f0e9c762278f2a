"""Clock correction: the one offset between this host's clock and the reference clock.

The official SDK measures the offset against Atomscale's ``GET /gateway/time`` with an NTP-style
four-timestamp exchange and shifts every pushed timestamp by it. labstream does the same, keeps the
lowest-delay sample of a round, and stamps the offset in effect into each chunk when it is accepted,
so one chunk is corrected as a whole and every destination sees the same corrected instant.

An answer that cannot be true is refused with a warning, and the previous correction stays: a
time that is not a finite number, a reference time before 2000 or after 2100, or an offset beyond
``MAX_OFFSET_S`` (24 h). A large offset within that bound is what the correction is for (an
instrument PC whose clock is hours off): it is applied, and logged as a warning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .timebase import seconds_to_ns_scalar

__all__ = ["ClockCorrection", "ClockStatus", "TimeSample", "implausible"]

log = logging.getLogger("labstream._core.clock")

MAX_OFFSET_S = 24 * 3600.0  # beyond it, the answer is broken rather than the host clock wrong
LOUD_OFFSET_S = 60.0  # an offset this large is applied with a warning
REFERENCE_EARLIEST_S = 946_684_800.0  # 2000-01-01T00:00:00Z
REFERENCE_LATEST_S = 4_102_444_800.0  # 2100-01-01T00:00:00Z

# (client send time, server receive time, server transmit time, client receive time), seconds
TimeSample = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """What ``clock_status()`` tells: the correction labstream applies to every timestamp.

    Attributes:
        enabled: False when turned off (``ATOMSCALE_SKIP_CLOCK_SYNC`` or no reference available).
        synced: a measurement succeeded; ``offset_s`` is then reference clock minus host clock.
        offset_s: seconds added to every timestamp of the streams initialized from now on (0.0
            when not synced): exactly the correction applied, to the nanosecond. A stream keeps
            the correction of its ``initialize()``.
        delay_s: round-trip delay of the sample used.
        samples: how many exchanges the last round used (failed and refused ones left out).
        synced_at: host epoch time of the last successful round.
        error: why the last round failed, or which answers it refused as impossible.
    """

    enabled: bool
    synced: bool = False
    offset_s: float = 0.0
    delay_s: float | None = None
    samples: int = 0
    synced_at: float | None = None
    error: str | None = None


def implausible(sample: TimeSample, offset: float) -> str | None:
    """Why an exchange's answer cannot be true, or None when it can."""
    if not all(math.isfinite(t) for t in sample):
        return f"a time that is not a finite number ({sample!r})"
    for t in sample[1:3]:
        if not REFERENCE_EARLIEST_S <= t < REFERENCE_LATEST_S:
            return f"a reference time of {t!r} s, not between 2000 and 2100"
    if abs(offset) > MAX_OFFSET_S:
        return f"an offset of {offset:+.0f} s, beyond the {MAX_OFFSET_S / 3600:.0f} h bound"
    return None


class ClockCorrection:
    """Holds the offset in effect; measures it on request."""

    def __init__(self, *, enabled: bool, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._status = ClockStatus(enabled=enabled)
        self.offset_ns = 0

    @property
    def status(self) -> ClockStatus:
        return self._status

    def is_stale(self, max_age_s: float) -> bool:
        s = self._status
        return s.enabled and (s.synced_at is None or self._now() - s.synced_at > max_age_s)

    async def measure(self, exchange: Callable[[], Awaitable[TimeSample]], rounds: int = 4) -> None:
        """Run ``rounds`` exchanges and adopt the offset of the lowest-delay one.

        A failed round keeps the previous offset and records the error; it never raises, because a
        missing clock correction must not stop data from flowing.
        """
        if not self._status.enabled:
            return
        best: tuple[float, float] | None = None  # (delay, offset)
        error: str | None = None
        refused = used = 0
        for _ in range(rounds):
            try:
                sample = await exchange()
                t0, server_rx, server_tx, t3 = sample
            except Exception as exc:  # any failure: keep the old offset, report why
                error = f"{type(exc).__name__}: {exc}"
                continue
            delay = (t3 - t0) - (server_tx - server_rx)
            offset = ((server_rx - t0) + (server_tx - t3)) / 2
            why = implausible(sample, offset)
            if why is not None:
                refused += 1
                error = f"refused an answer of the reference clock that cannot be true: {why}"
                log.warning("clock: %s", error)
                continue
            used += 1
            if best is None or delay < best[0]:
                best = (delay, offset)
        if refused and best is None:
            log.warning("clock: every answer refused; the correction in effect is kept")
        if best is None:
            self._status = ClockStatus(
                enabled=True,
                synced=self._status.synced,
                offset_s=self._status.offset_s,
                delay_s=self._status.delay_s,
                samples=0,
                synced_at=self._status.synced_at,
                error=error,
            )
            return
        delay, offset = best
        self.offset_ns = seconds_to_ns_scalar(offset)
        if abs(offset) >= LOUD_OFFSET_S:
            log.warning(
                "clock: this host's clock is %.1f s %s the reference (Atomscale's); every "
                "timestamp is shifted by %+.3f s",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
                offset,
            )
        self._status = ClockStatus(
            enabled=True,
            synced=True,
            offset_s=self.offset_ns / 1e9,
            delay_s=delay,
            samples=used,
            synced_at=self._now(),
            error=error,
        )
