"""Clock correction: the one offset between this host's clock and the reference clock.

The official SDK measures the offset against Atomscale's ``GET /gateway/time`` with an NTP-style
four-timestamp exchange and shifts every pushed timestamp by it. labstream does the same, keeps the
lowest-delay sample of a round, and stamps the offset in effect into each chunk when it is accepted,
so one chunk is corrected as a whole and every destination sees the same corrected instant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .timebase import seconds_to_ns_scalar

SKIP_ENV = "ATOMSCALE_SKIP_CLOCK_SYNC"

# (client send time, server receive time, server transmit time, client receive time), seconds
TimeSample = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """What ``clock_status()`` tells: the correction labstream applies to every timestamp.

    Attributes:
        enabled: False when turned off (``ATOMSCALE_SKIP_CLOCK_SYNC`` or no reference available).
        synced: a measurement succeeded; ``offset_s`` is then reference clock minus host clock.
        offset_s: seconds added to every pushed timestamp (0.0 when not synced).
        delay_s: round-trip delay of the sample used.
        samples: how many exchanges the last round used.
        synced_at: host epoch time of the last successful round.
        error: why the last round failed, if it did.
    """

    enabled: bool
    synced: bool = False
    offset_s: float = 0.0
    delay_s: float | None = None
    samples: int = 0
    synced_at: float | None = None
    error: str | None = None


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no")


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
        for _ in range(rounds):
            try:
                t0, server_rx, server_tx, t3 = await exchange()
            except Exception as exc:  # any failure: keep the old offset, report why
                error = f"{type(exc).__name__}: {exc}"
                continue
            delay = (t3 - t0) - (server_tx - server_rx)
            offset = ((server_rx - t0) + (server_tx - t3)) / 2
            if best is None or delay < best[0]:
                best = (delay, offset)
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
        self._status = ClockStatus(
            enabled=True,
            synced=True,
            offset_s=offset,
            delay_s=delay,
            samples=rounds,
            synced_at=self._now(),
            error=error,
        )
