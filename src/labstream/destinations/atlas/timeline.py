"""Periodic timelines: when a channel's samples can be written as PeriodicData (a start and an
interval, exactly) and how the next packet continues the last one."""

from __future__ import annotations

from dataclasses import dataclass

from ..._core.timebase import Int64Array
from . import encoding as enc

__all__ = ["Timeline", "choose_layout"]


@dataclass
class Timeline:
    """An arithmetic periodic timeline of one channel (or channel group).

    Attributes:
        anchor_ns: the real time of the timeline's first sample.
        samples: samples sent on it so far.
        next_start_ns: where the next contiguous packet starts, exactly.
        interval_ns: the interval of the last packet.
    """

    anchor_ns: int
    samples: int
    next_start_ns: int
    interval_ns: int


def choose_layout(t: Int64Array, tl: Timeline | None) -> tuple[int, int, Timeline] | None:
    """``(start_ns, interval_ns, timeline after the packet)`` for periodic data; None for RowData.

    A chunk continues ``tl`` when its points sit on the timeline's grid (within twice the noise
    tolerance: the grid and the sample both carry float noise). It then starts exactly at
    ``tl.next_start_ns`` -- never re-derived from the wall clock -- and its interval is the long-run
    mean step since the timeline began, rounded so the *next* start lands nearest to where the
    next sample is due (error feedback). That keeps integer-ns rounding (60 Hz is 16 666 666.67 ns)
    and short-chunk noise from accumulating, while each interval differs from the last by a
    nanosecond or so. Anything else (a gap, an overlap, another rate) starts a new timeline at the
    chunk's first point when the chunk is evenly spaced, else goes as RowData. A single point can
    only continue a timeline.
    """
    n = int(t.shape[0])
    t0, t_last = int(t[0]), int(t[-1])
    tol = enc.noise_tolerance_ns(t)
    if tl is not None:
        s = tl.next_start_ns
        total = tl.samples + n
        # relative to the anchor: float64 is exact to far below 1 ns there (absolute ns are not)
        mean = (t_last - tl.anchor_ns) / (total - 1)
        iv = round((total * mean - (s - tl.anchor_ns)) / n)
        # The chunk's own mean step against the timeline's: each is known to within 2 * tol over
        # its span (plus rounding), so a short chunk or a short timeline is judged loosely and a
        # long one tightly. Packets of any size follow each other (chunks queued behind a write
        # go as one), so comparing with the last packet's interval alone, as before, took the
        # noise of a short first packet for a change of rate.
        kept = (s - tl.anchor_ns) / tl.samples
        own = (t_last - t0) / (n - 1) if n > 1 else kept
        same_rate = abs(own - kept) <= 1 + 2 * tol / max(n - 1, 1) + 2 * tol / max(
            tl.samples - 1, 1
        )
        if 0 < iv <= enc.UINT32_MAX and same_rate and enc.fits_grid(t, s, iv, 2 * tol):
            return s, iv, Timeline(tl.anchor_ns, total, s + n * iv, iv)
    sp = enc.detect_spacing(t)
    if sp.periodic:
        iv = sp.interval_ns
        return t0, iv, Timeline(t0, n, t0 + n * iv, iv)
    return None
