"""``run()``'s healthy path to Atomscale: the caller's thread uploads its chunks itself.

On the general path a chunk crosses four threads and an asyncio task between ``push()`` and the
socket (the caller, the hand-off, the event loop, libcurl's thread), each crossing a wake-up and a
change of the GIL's holder. That, not any one step, was most of ``run()``'s cost per chunk
(``docs/performance.md``). A :class:`BulkLane` gives ``run()`` the shape of the fastest client
measured here: the thread that validated a chunk builds its request body and adds it to a curl
multi of its own, and reads the answers in the same pass. Every promise of the general path is
kept:

* the chunk is in the journal's queue before its upload starts (``_admit``), and is marked
  delivered there once Atomscale answered 2xx;
* an upload that fails in any way is handed, with its error, to the Atomscale runner, which
  retries or rejects it as if the first attempt had been its own; the lane then stays out of
  the way (``run()`` pushes through the general path) until the runner holds nothing of the
  stream again, so a struggling server is not sent new chunks beside the retries;
* what the lane accepted and delivered is counted in the runner's report as it happens
  (:class:`~labstream.delivery.BulkCounts`);
* ATLAS still takes the chunks through the event loop, in batches.

The uploads only move while some thread drives the multi. The caller does between pushes; when it
is away longer than ``PUMP_AFTER_S`` (in a slow iterator, a back-pressure wait), a pump thread
drives it until the caller comes back, so a chunk is never left half-sent behind a slow
generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pycurl

from .errors import DestinationError, TransientDestinationError
from .journal import Journal
from .sinks.atomscale import CHUNK_PATH, AtomscaleSink, chunk_content, series_content
from .sinks.curl import Outcome, RequestMulti, answer_of, failure

if TYPE_CHECKING:
    from .delivery import BulkCounts, DeliveryRunner
    from .streamer import Accepted

PUMP_AFTER_S = 0.005  # the caller away this long: the pump thread drives the uploads
_WAIT_S = 0.001  # one wait on the sockets while the in-flight window is full
_STEP_EVERY_S = 0.001  # the caller passes over the sockets at least this often
_HEADERS = ["Content-Type: application/json"]


class BulkLane:
    """Uploads of one ``run()`` call, made by the thread that calls :meth:`send`.

    Args:
        sink: the Atomscale sink (paths, bodies, what an answer means).
        multi: the lane's own curl multi (``sink.bulk_multi()``).
        runner: the Atomscale runner, which takes over failed uploads.
        data_id: the stream.
        loop: the runner's event loop.
        journal: where confirmations are recorded (None with ``spool=False``).
        max_in_flight: uploads at once; :meth:`send` waits for a free slot.
    """

    def __init__(
        self,
        sink: AtomscaleSink,
        multi: RequestMulti[Accepted],
        runner: DeliveryRunner,
        data_id: str,
        loop: asyncio.AbstractEventLoop,
        journal: Journal | None,
        max_in_flight: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._multi = multi
        self._runner = runner
        self._data_id = data_id
        self._loop = loop
        self._journal = journal
        self._max_in_flight = max(1, max_in_flight)
        self._clock = clock
        self._counts: BulkCounts = runner.bulk_counts(data_id)
        self._lock = threading.Lock()  # whoever drives the multi holds it
        self._caller_waiting = False  # the caller wants the lock back: the pump lets go
        self._healthy = True
        self._driven_at = self._stepped_at = clock()
        self._stopping = threading.Event()
        self._pump = threading.Thread(
            target=self._pump_while_away, name="labstream-bulk", daemon=True
        )
        self._pump.start()

    @property
    def usable(self) -> bool:
        """Whether the next chunk may go through the lane: not while the runner still holds
        some of the stream (after a failure, or chunks pushed through the general path)."""
        if not self._healthy and self._runner.caught_up(self._data_id):
            self._healthy = True
        return self._healthy

    def send(self, chunk: Accepted) -> None:
        """Start the chunk's upload and move every upload along; wait while the window is full.

        The chunk must be one channel's, accepted (in the journal's queue, counted nowhere
        else), and is not built for the upload: the lane has no use for its ns timestamps.
        """
        raws = chunk.raws  # () once built (by the loop, for ATLAS): the body is then the chunk's
        if raws and not chunk.offset_ns:
            content = series_content(chunk.data_id, chunk.index, raws[0])
        else:
            content = chunk_content(chunk.build())
        with self._driving():
            with self._counts.lock:
                self._counts.accepted += 1
                self._counts.points += chunk.points
            try:
                self._multi.add("POST", CHUNK_PATH, content, _HEADERS, chunk)
            except pycurl.error as exc:  # this request only: the runner tries it its own way
                self._settle([(chunk, failure(exc.args[0], str(exc)))])
            # Pass over the sockets once the window is full, or a ms after the last pass: in
            # bulk, one pass then settles several answers (a pass per chunk cost 1.24x the
            # time per chunk); a paced caller's chunk still starts at once.
            if self._clock() - self._stepped_at > _STEP_EVERY_S:
                self._drive(0.0)
            while self._multi.in_flight >= self._max_in_flight:
                self._drive(_WAIT_S)

    def drain(self, timeout: float) -> None:
        """Wait for every upload in flight; after ``timeout`` seconds, hand the rest over."""
        deadline = self._clock() + timeout
        with self._driving():
            while self._multi.in_flight and self._clock() < deadline:
                self._drive(_WAIT_S)
            self._abandon("not answered in time")

    def close(self) -> None:
        """Stop the pump; hand whatever is still in flight to the runner (on an exception out
        of ``run()``: it is not waited for, and the runner sends it again)."""
        self._stopping.set()
        self._pump.join()
        with self._driving():
            self._abandon("run() ended before it was answered")
            self._multi.close()

    @contextlib.contextmanager
    def _driving(self) -> Iterator[None]:
        """The caller's hold on the multi (the pump lets go within one wait on the sockets)."""
        self._caller_waiting = True
        with self._lock:
            self._caller_waiting = False
            try:
                yield
            finally:
                self._driven_at = self._clock()

    # -- with the lock held --------------------------------------------------------------------

    def _drive(self, wait_s: float) -> None:
        self._stepped_at = self._clock()
        done = self._multi.step()
        if done:
            self._settle(done)
        elif wait_s:
            self._multi.wait(wait_s)

    def _settle(self, done: list[tuple[Accepted, Outcome]]) -> None:
        counts, journal, name = self._counts, self._journal, self._sink.name
        for chunk, outcome in done:
            error = self._sink.error_of(
                answer_of(outcome), "POST", CHUNK_PATH, chunk.data_id, chunk.index
            )
            if error is not None:
                self._hand_over(chunk, error)
                continue
            if journal is not None:
                journal.delivered(chunk.seq, name)
            with counts.lock:
                counts.delivered += 1
                counts.points_delivered += chunk.points
        # A wait on the loop (finalize, another run() of this stream) reads these counts: wake
        # it. Read after the counts changed, so a waiter that took its event first is seen.
        if self._runner.watched(self._data_id):
            self._loop.call_soon_threadsafe(self._runner.notify, self._data_id)

    def _hand_over(self, chunk: Accepted, error: DestinationError) -> None:
        self._healthy = False
        with self._counts.lock:
            self._counts.handed_over += 1
        self._loop.call_soon_threadsafe(self._runner.take_over, chunk.build(), error)

    def _abandon(self, why: str) -> None:
        for chunk in self._multi.abort():
            error = TransientDestinationError(
                f"upload of chunk {chunk.index} stopped: {why}",
                destination=self._sink.name,
                data_id=chunk.data_id,
                chunk_index=chunk.index,
            )
            self._hand_over(chunk, error)

    # -- the pump thread -----------------------------------------------------------------------

    def _pump_while_away(self) -> None:
        while not self._stopping.wait(PUMP_AFTER_S):
            if not self._multi.in_flight or self._clock() - self._driven_at < PUMP_AFTER_S:
                continue
            if not self._lock.acquire(blocking=False):
                continue  # the caller is driving (or waiting on a full window)
            try:
                # Until nothing is in flight, or the caller is back.
                while (
                    self._multi.in_flight
                    and not self._caller_waiting
                    and not self._stopping.is_set()
                ):
                    self._drive(_WAIT_S)
            finally:
                self._lock.release()
