"""How many requests a destination may have in flight: a window that adapts to the link.

Throughput over a link is the window divided by the round trip, so a fixed window suits nobody: a
far server needs hundreds of uploads in flight, a server with a capacity refuses what exceeds it.
The window is TCP's congestion window applied to requests, with a latency guard in the manner of
TCP Vegas and Netflix's gradient limiter:

* **slow start**: from ``initial``, every success adds two (the window triples each round trip)
  until the first sign of congestion, or the ceiling. Faster than TCP's doubling: a request the
  server refuses costs it one cheap answer, while each round trip spent probing a far link costs
  the user a tenth of a second or more (the official SDK sends every chunk at once);
* **multiplicative decrease** when the server says it is overloaded (429, 503, 504) or a request
  times out, at most once per round trip (answers to requests sent before the last decrease do
  not count again): the window falls to 0.7 of what was in flight when the refused request went
  out (CUBIC's factor), and that figure becomes the threshold;
* **back to the threshold fast, then hold**: slow start again up to the threshold, stay there for
  ten seconds, and only then probe above it, one request per round trip (additive increase).
  A server with a hard capacity is thus used at that capacity nearly all the time, and a probe
  costs one refused request (which waits its ``Retry-After``) every ten seconds rather than a
  steady sawtooth of them;
* **latency guard**: when the recent round trips exceed twice the lowest seen (plus a few ms of
  slack for a fast link's jitter) the window stops growing and shrinks in proportion, since
  requests are queueing somewhere (in the server or in this process) rather than moving faster;
  it grows again, one per round trip, once round trips are back within the tolerance.

The window only grows while it is used (at least half full): a live stream pushing a chunk a
second must not grow it to the ceiling and then release a burst at that size. A refused
connection is an outage, not congestion: the retry policy waits, and the window is left alone.
Why this rather than a pure gradient limiter: a server with a hard capacity answers its excess at
once with 429, so latency alone never sees it (docs/performance.md measures both cases).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio

from ..errors import TransientDestinationError

__all__ = ["AdaptiveWindow", "Slot"]

# The server is overloaded: shrink. Other failures (a refused connection, a 500) say nothing
# about load.
CONGESTION_STATUSES = frozenset({429, 503, 504, "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
_DECREASE = 0.7
_LATENCY_TOLERANCE = 2.0
_LATENCY_SLACK_S = 0.005
_MIN_RTT_SAMPLES = 1000  # the lowest round trip is forgotten after this many answers
_SLOW_START_STEP = 2
_HOLD_S = 10.0  # at the threshold this long before probing above it


class AdaptiveWindow:
    """Requests in flight for one destination (shared by all its streams).

    Args:
        ceiling: the most requests in flight, whatever the link.
        initial: the window to start from (slow start grows it from there).
        clock: monotonic seconds, injected by tests.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        initial: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(min(max(1, initial), self.ceiling))
        self.in_flight = 0
        self._clock = clock
        self._threshold = float(self.ceiling)  # slow start below it
        self._hold_until: float | None = None  # no probing above the threshold before then
        self._hold_at_threshold = False
        self._epoch = 0  # bumped at each decrease
        self._decreased_at = float("-inf")
        self._busy_at = float("-inf")  # when the window was last at least half full
        self._min_rtt: float | None = None
        self._next_min_rtt: float | None = None
        self._rtt_samples = 0
        self._recent: deque[float] = deque(maxlen=32)
        self._room: anyio.Event | None = None
        self.decreases = 0  # how often the window shrank

    @property
    def size(self) -> int:
        """The current window, in requests."""
        return max(1, int(self.limit))

    async def acquire(self) -> Slot:
        """Wait for room in the window and take it; the slot must be released."""
        while self.in_flight >= self.size:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        now = self._clock()
        slot = Slot(self, now, self._epoch, self.in_flight)
        self.in_flight += 1
        if self.in_flight * 2 >= self.size:
            self._busy_at = now
        return slot

    def _release(self, sent_at: float, epoch: int, ahead: int, outcome: str) -> None:
        self.in_flight -= 1
        if outcome == "ok":
            self._sample(self._clock() - sent_at)
            if self._busy_at >= sent_at:  # the window was at least half full meanwhile
                self._grow()
        elif outcome == "congested" and epoch == self._epoch:
            # What the server took before it refused this one is the best guess of its capacity.
            self._decrease(min(self.limit, max(1.0, float(ahead))), _DECREASE, hold=True)
        if self._room is not None and self.in_flight < self.size:
            self._room.set()
            self._room = None

    def _sample(self, rtt: float) -> None:
        self._recent.append(rtt)
        # A windowed minimum: the lowest of the last ~_MIN_RTT_SAMPLES, so a route that changed
        # for good is learnt again.
        self._next_min_rtt = rtt if self._next_min_rtt is None else min(self._next_min_rtt, rtt)
        self._rtt_samples += 1
        if self._min_rtt is None or rtt < self._min_rtt:
            self._min_rtt = rtt
        if self._rtt_samples >= _MIN_RTT_SAMPLES:
            self._min_rtt, self._next_min_rtt, self._rtt_samples = self._next_min_rtt, None, 0

    def _grow(self) -> None:
        assert self._min_rtt is not None
        now = self._clock()
        allowed = _LATENCY_TOLERANCE * self._min_rtt + _LATENCY_SLACK_S
        recent = sorted(self._recent)[len(self._recent) // 2]  # the median resists one outlier
        if recent > allowed:
            # Queueing: shrink towards the window that keeps round trips within the tolerance.
            if now - self._decreased_at >= recent:
                self._decrease(self.limit * max(0.5, allowed / recent), 1.0, hold=False)
            return
        if self.limit < self._threshold:
            self.limit = min(self._threshold, self.limit + _SLOW_START_STEP)
            if self.limit >= self._threshold and self._hold_at_threshold:
                self._hold_until = now + _HOLD_S
        elif self._hold_until is None or now >= self._hold_until:
            self.limit = min(self.ceiling, self.limit + 1 / self.limit)

    def _decrease(self, capacity: float, factor: float, *, hold: bool) -> None:
        """Shrink to ``capacity * factor``; slow start back to ``capacity``, and with ``hold``
        (the server refused) stay there a while before probing above it."""
        self._threshold = capacity
        self.limit = max(1.0, capacity * factor)
        self._hold_at_threshold = hold
        self._hold_until = None
        self._epoch += 1
        self.decreases += 1
        self._decreased_at = self._clock()
        self._recent.clear()


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, TransientDestinationError) and (
        exc.timed_out or exc.status in CONGESTION_STATUSES
    ):
        return "congested"
    return "failed"


class Slot:
    """Room for one request in a window: taken by :meth:`AdaptiveWindow.acquire`, given back
    once by :meth:`release` with the request's outcome (or :meth:`release_unused`)."""

    __slots__ = ("_ahead", "_epoch", "_released", "_sent_at", "_window")

    def __init__(self, window: AdaptiveWindow, sent_at: float, epoch: int, ahead: int) -> None:
        self._window = window
        self._sent_at = sent_at
        self._epoch = epoch
        self._ahead = ahead  # requests already in flight when this one was let in
        self._released = False

    def start(self) -> None:
        """The request goes out now (a slot may be taken before there is anything to send)."""
        self._sent_at = self._window._clock()

    def release(self, exc: BaseException | None = None) -> None:
        """The request is answered: a success, or the exception it failed with."""
        self._give_back(_outcome(exc))

    def release_unused(self) -> None:
        """No request was made with this slot."""
        self._give_back("unused")

    def _give_back(self, outcome: str) -> None:
        if not self._released:
            self._released = True
            self._window._release(self._sent_at, self._epoch, self._ahead, outcome)
