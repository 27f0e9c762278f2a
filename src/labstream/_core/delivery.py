"""One delivery runner per destination: its own queue, workers, retries and counters.

The streamer hands every accepted chunk to each runner and returns; a runner delivers at its own
pace, so a slow or dead destination holds back neither the caller nor the other destination. A
transient failure is retried with the shared policy; a chunk that uses up its attempts is set aside
for ``cooldown_s`` and tried again (never dropped while the streamer runs); a rejection is final
and counted with the server's reason. Outcomes are written to the journal, which keeps each chunk
until every destination is done with it. A runner holds at most ``max_in_memory`` chunks; a
destination that falls further behind reads its backlog back from the journal, in order, so memory
stays flat through an outage. Everything runs on the streamer's event loop, in tasks owned by the
runner's task group.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import cast

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..destinations.base import BatchingSink, Marker, Sink, StreamInfo
from ..errors import DestinationError, RejectedError, TransientDestinationError
from ..report import DestinationReport, Rejection
from ..retry import RetryPolicy, Sleep
from .chunk import Chunk
from .journal import Journal
from .window import AdaptiveWindow, Slot

__all__ = ["DeliveryRunner"]

log = logging.getLogger("labstream._core.delivery")

# How long past finalize's deadline its close request may take: finalize(timeout=T) returns
# within T plus this.
CLOSE_GRACE_S = 5.0
# The most queued items a gather passes over (other streams') looking for its stream's chunks.
_GATHER_LOOKAHEAD = 10_000


# What a runner's queue carries: a stream to open, a chunk, a batch set aside after a failure, or
# a marker.
_Item = StreamInfo | Chunk | tuple[Chunk, ...] | Marker


@dataclass(eq=False)
class _StreamDelivery:
    """A runner's mutable view of one stream.

    The counters that change with every chunk are plain ints; the frozen report is built only when
    someone asks for it (building one per chunk is a visible share of the event loop's time).
    """

    info: StreamInfo
    base: DestinationReport  # everything but the four per-chunk counters below
    window: AdaptiveWindow  # the runner's, shown in the report
    resent: Callable[[], int]  # re-sends the sink's HTTP client made on its own
    chunks_accepted: int = 0
    points_accepted: int = 0
    chunks_delivered: int = 0
    points_delivered: int = 0
    opened: anyio.Event = field(default_factory=anyio.Event)
    open_failed: str | None = None
    markers_in_flight: int = 0  # queued, not yet handed to the sink: finalize waits for them
    last_seq: int = 0  # highest chunk seq handed to this runner
    # When set, this stream's chunks after this seq are only in the journal (memory window full);
    # the loader reads them back in order.
    spill_after: int | None = None
    _changed: anyio.Event | None = None  # created by a waiter; set and dropped by the next change

    @property
    def report(self) -> DestinationReport:
        return replace(
            self.base,
            chunks_accepted=self.chunks_accepted,
            points_accepted=self.points_accepted,
            chunks_delivered=self.chunks_delivered,
            points_delivered=self.points_delivered,
            window=self.window.size,
            retries=self.base.retries + self.resent(),
        )

    @property
    def chunks_pending(self) -> int:
        b = self.base
        return self.chunks_accepted - self.chunks_delivered - b.chunks_rejected - b.chunks_dropped

    def update(self, **changes: object) -> None:
        self.base = replace(self.base, **changes)  # type: ignore[arg-type]
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits on this stream (finalize, run back-pressure)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def next_change(self) -> anyio.Event:
        """An event the next :meth:`notify` sets."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed


class DeliveryRunner:
    """Delivers chunks to one sink.

    Args:
        sink: the destination.
        policy: retry policy.
        sleep: injected sleep (tests pass one that does not wait).
        journal: where accepted chunks are kept until this destination confirms them; with it,
            at most ``max_in_memory`` chunks are held in memory and the rest are read back later.
        max_in_memory: the memory window (chunks), with a journal.
    """

    def __init__(
        self,
        sink: Sink,
        policy: RetryPolicy,
        *,
        sleep: Sleep,
        journal: Journal | None = None,
        max_in_memory: int = 1024,
    ) -> None:
        self.sink = sink
        self._policy = policy
        self._sleep = sleep
        self._journal = journal
        self._max_in_memory = max_in_memory
        self._held = 0  # chunks in memory: queued, in flight or set aside for a retry
        self._streams: dict[str, _StreamDelivery] = {}
        self.window = AdaptiveWindow(sink.max_concurrency)
        # Points a batching sink takes in one call (0: the sink takes chunks one at a time).
        self._batch_points: int = getattr(sink, "max_batch_points", 0)
        self._send: MemoryObjectSendStream[_Item]
        self._receive: MemoryObjectReceiveStream[_Item]
        # Unbounded: what is held is bounded by max_in_memory (the rest waits in the journal).
        self._send, self._receive = anyio.create_memory_object_stream[_Item](math.inf)
        self._ahead: deque[_Item] = deque()  # taken from the queue by a gather, not part of it
        self._tg: TaskGroup | None = None

    @property
    def name(self) -> str:
        return self.sink.name

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled (the streamer's host task group owns this task)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatch)
            if self._journal is not None:
                tg.start_soon(self._load_spilled, self._journal)
            task_status.started()
            await anyio.sleep_forever()

    # -- called by the streamer (event-loop thread) --------------------------------------------

    def open(
        self,
        info: StreamInfo,
        recovered: tuple[int, int, int] | None = None,
        *,
        closed: bool = False,
    ) -> None:
        """Start delivering a stream: its opening request goes ahead of its chunks.

        ``recovered`` = (chunks, points, last seq) still pending in the journal for a stream left
        by a previous process: they are read back from the journal and delivered. ``closed``:
        that process closed it here already; finalize does not close it again.
        """
        resent = getattr(self.sink, "resent", None)
        st = _StreamDelivery(
            info,
            DestinationReport(self.name, closed=closed),
            self.window,
            functools.partial(resent, info.data_id) if resent is not None else _none,
        )
        if recovered is not None and recovered[0]:
            st.chunks_accepted, st.points_accepted = recovered[0], recovered[1]
            st.last_seq, st.spill_after = recovered[2], 0
        self._streams[info.data_id] = st
        self._send.send_nowait(info)

    def submit(self, chunk: Chunk) -> None:
        st = self._streams[chunk.data_id]
        st.last_seq = max(st.last_seq, chunk.seq)
        st.chunks_accepted += 1
        st.points_accepted += chunk.points
        st.notify()
        if self._journal is not None and (
            st.spill_after is not None or self._held >= self._max_in_memory
        ):
            if st.spill_after is None:
                st.spill_after = chunk.seq - 1  # this chunk and the stream's next ones wait on disk
            return
        self._held += 1
        self._send.send_nowait(chunk)

    @property
    def takes_markers(self) -> bool:
        return hasattr(self.sink, "send_marker")

    def submit_marker(self, marker: Marker) -> None:
        st = self._streams[marker.data_id]
        st.markers_in_flight += 1
        st.update(markers_accepted=st.base.markers_accepted + 1)
        self._send.send_nowait(marker)

    def report(self, data_id: str) -> DestinationReport:
        st = self._streams.get(data_id)
        # A recovered stream this destination had already closed before the crash.
        if st is None:
            return DestinationReport(self.name, closed=True)
        return st.report

    def pending_chunks(self, data_id: str) -> int:
        st = self._streams.get(data_id)
        return st.chunks_pending if st is not None else 0

    async def wait_pending_at_most(self, data_id: str, limit: int) -> None:
        """Wait until the stream has at most ``limit`` chunks pending (back-pressure, drain).

        With ``limit=0`` (drain) queued markers are waited for too, so none comes after the close.
        """
        st = self._streams.get(data_id)
        if st is None:
            return
        while True:
            changed = st.next_change()
            if st.chunks_pending <= limit and not (limit == 0 and st.markers_in_flight):
                return
            await changed.wait()

    async def finalize(self, data_id: str, deadline: float) -> DestinationReport:
        """Wait for the stream's chunks until ``deadline`` (anyio clock), then close it.

        The close request is attempted whatever happened before, including when chunks are still
        pending (they stay pending and keep being retried; the report says so), except on a
        destination that takes no data after its close (ATLAS): there the stream is left open and
        closed once its backlog is in, so the backlog is never cut off.
        """
        st = self._streams.get(data_id)
        if st is None:
            return self.report(data_id)
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await st.opened.wait()  # a stream with no chunk may not be opened yet (busy worker)
            await self.wait_pending_at_most(data_id, 0)
        if st.base.closed:  # by the process that left it: a stream is closed once
            return st.report
        if st.chunks_pending and not self.sink.takes_data_after_close:
            # Closing now would cut the backlog off (ATLAS takes nothing after its end): the
            # stream stays open, its chunks stay pending, and it is closed once they are in.
            behind = _behind(st)
            log.warning(
                "%s: data_id=%s is %s at finalize's deadline; left open until they are delivered%s",
                self.name,
                data_id,
                behind,
                _RESUME_HINT if self._journal is not None else "",
            )
            why = f"; last error: {st.base.last_error}" if st.base.last_error else ""
            st.update(close_error=f"not closed yet: {behind} at finalize's deadline{why}")
            assert self._tg is not None
            self._tg.start_soon(self._close_when_delivered, st)
            return st.report
        if st.chunks_pending:
            log.warning(
                "%s: finalizing data_id=%s %s at finalize's deadline (they stay pending%s)",
                self.name,
                data_id,
                _behind(st),
                _RESUME_HINT if self._journal is not None else "",
            )
        await self._close(st, deadline)
        return st.report

    async def _close_when_delivered(self, st: _StreamDelivery) -> None:
        """Close a stream that finalize left open once its backlog is in (while this process
        runs; after it, the journal keeps both the chunks and the request to finalize)."""
        await self.wait_pending_at_most(st.info.data_id, 0)
        await self._close(st, math.inf)

    async def _close(self, st: _StreamDelivery, deadline: float) -> None:
        data_id = st.info.data_id
        # The close is always attempted, even when the deadline is spent; it is retried only
        # until the deadline, and waited for at most CLOSE_GRACE_S past it.
        limit = max(deadline - anyio.current_time(), 0.0) + CLOSE_GRACE_S
        try:
            with anyio.fail_after(limit):
                async for attempt in self._policy.retrying(
                    sleep=self._sleep,
                    on_retry=self._retried(st),
                    deadline=deadline,
                    clock=anyio.current_time,
                ):
                    with attempt:
                        await self.sink.close_stream(st.info)
        except TimeoutError:
            why = f"the close got no answer within finalize's deadline + {CLOSE_GRACE_S:g} s"
            log.error("%s: could not close data_id=%s: %s", self.name, data_id, why)
            st.update(close_error=why, last_error=why)
        except Exception as exc:  # reported in the stream's report, never raised past finalize
            log.error("%s: could not close data_id=%s: %s", self.name, data_id, exc)
            st.update(close_error=str(exc), last_error=str(exc))
        else:
            st.update(closed=True, close_error=None)
            if self._journal is not None:
                self._journal.closed(data_id, self.name)
        late = getattr(self.sink, "marker_rejections", None)
        if late is not None:
            st.update(marker_rejections=(*st.base.marker_rejections, *late(data_id)))
        again = getattr(self.sink, "maybe_duplicated", None)
        if again is not None:
            st.update(points_maybe_duplicated=again(data_id))

    def count_undelivered_as_dropped(self) -> None:
        """After the workers stopped: whatever was not delivered is dropped, counted, and logged.

        With a journal nothing is dropped: undelivered chunks stay there for a later process.
        """
        self._send.close()
        reason = "streamer closed before the destination confirmed them (spool=False)"
        for st in self._streams.values():
            r = st.report
            if r.chunks_pending and self._journal is not None:
                lost, lost_points = self._journal.memory_pending(self.name, st.info.data_id)
                if lost:  # the disk could not take them: they go with the process
                    why = self._journal.not_durable(st.info.data_id)[2]
                    self._count_dropped(st, lost, lost_points, f"not in the journal ({why})")
                    r = st.report
            if r.chunks_pending and self._journal is not None:
                log.warning(
                    "%s: data_id=%s: %d chunk(s) not delivered yet; kept in the journal at %s "
                    "(labstream spool resume delivers them)",
                    self.name,
                    st.info.data_id,
                    r.chunks_pending,
                    self._journal.directory,
                )
            elif r.chunks_pending:
                self._count_dropped(st, r.chunks_pending, r.points_pending, reason)

    def _count_dropped(self, st: _StreamDelivery, chunks: int, points: int, reason: str) -> None:
        log.error(
            "%s: data_id=%s: %d chunk(s) / %d point(s) dropped: %s",
            self.name,
            st.info.data_id,
            chunks,
            points,
            reason,
        )
        r = st.base
        st.update(
            chunks_dropped=r.chunks_dropped + chunks,
            points_dropped=r.points_dropped + points,
            drop_reason=reason,
        )

    # -- workers -------------------------------------------------------------------------------

    def _retried(self, st: _StreamDelivery) -> _OnRetry:
        return _OnRetry(self.name, st)

    async def _dispatch(self) -> None:
        """Take the queue's items in order, and start each chunk's delivery once the window has
        room for it: what is beyond the window waits in the queue, holding one item at most here.
        A retry takes its room in the window like a new chunk, never waiting behind an idle one.
        """
        assert self._tg is not None
        while True:
            item = await self._next()
            if item is None:
                return
            if isinstance(item, StreamInfo):
                self._tg.start_soon(self._open, item)
            elif isinstance(item, Marker):
                self._tg.start_soon(self._mark, item)
            else:
                slot = await self.window.acquire()
                # Gathered once there is room: a batching sink takes what queued meanwhile too.
                batch = self._gather(item) if isinstance(item, Chunk) else item
                self._tg.start_soon(self._deliver, batch, slot)

    async def _next(self) -> _Item | None:
        """The next item (what a gather left in front first); None once the queue is closed and
        empty.

        Without a trip through the event loop when an item is waiting (``receive()`` always makes
        one): the delivery that follows yields anyway.
        """
        if self._ahead:
            return self._ahead.popleft()
        try:
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return None
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            return None

    def _gather(self, first: Chunk) -> tuple[Chunk, ...]:
        """``first`` plus its stream's chunks already waiting anywhere in the queue, for a
        batching sink, up to its point budget.

        A sink that writes one request per chunk gets them one by one. A batching one (ATLAS)
        gets every chunk of the stream that is waiting, also those behind other streams' items
        and markers (which keep their order, in front): under load one call carries many chunks,
        which the sink writes as one packet per data format, while a lone chunk still goes at
        once.
        """
        budget = self._batch_points - first.points
        if budget <= 0:
            return (first,)
        batch = [first]
        passed_over: list[_Item] = []
        while budget > 0 and len(passed_over) < _GATHER_LOOKAHEAD:
            if self._ahead:
                item = self._ahead.popleft()
            else:
                try:
                    item = self._receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            if isinstance(item, Chunk) and item.data_id == first.data_id and item.points <= budget:
                batch.append(item)
                budget -= item.points
            else:
                passed_over.append(item)
        self._ahead.extendleft(reversed(passed_over))
        return tuple(batch)

    async def _open(self, info: StreamInfo) -> None:
        st = self._streams[info.data_id]
        while True:
            try:
                async for attempt in self._policy.retrying(
                    sleep=self._sleep, on_retry=self._retried(st)
                ):
                    with attempt:
                        await self.sink.open_stream(info)
            except TransientDestinationError as exc:
                st.update(last_error=str(exc))
                await self._sleep(self._policy.cooldown_s)
                continue
            except Exception as exc:
                # Cannot open: every chunk of the stream will be rejected with this reason.
                log.error("%s: cannot open data_id=%s: %s", self.name, info.data_id, exc)
                st.open_failed = str(exc)
                st.update(last_error=str(exc))
            else:
                st.update(opened=True)
            st.opened.set()
            return

    async def _deliver(self, batch: tuple[Chunk, ...], slot: Slot) -> None:
        """Deliver a batch (its first attempt in ``slot``): confirmed, rejected, or set aside to
        be tried again."""
        st = self._streams[batch[0].data_id]
        await st.opened.wait()
        if st.open_failed is not None:
            slot.release_unused()
            for chunk in batch:
                self._reject(st, chunk, None, f"stream could not be opened: {st.open_failed}")
            self._held -= len(batch)
            return
        refused: Mapping[int, DestinationError] = {}
        try:
            refused = await self._send_with_retries(st, batch, slot)
        except TransientDestinationError as exc:
            # Out of attempts: set the batch aside and put it back in the queue later, whole, so
            # a batching sink resumes the very writes it started.
            log.warning(
                "%s: %s still failing after %d attempts, retrying in %.1f s: %s",
                self.name,
                _describe(batch),
                self._policy.attempts,
                self._policy.cooldown_s,
                exc,
            )
            # The re-send after the cooldown is a retry too: the report counts every re-send.
            st.update(last_error=str(exc), retries=st.base.retries + 1)
            assert self._tg is not None
            self._tg.start_soon(self._requeue_later, batch)
            return
        except DestinationError as exc:
            refused = {c.seq: exc for c in batch}
        except Exception as exc:
            # A bug in labstream, not the destination's refusal: the chunks stay pending (the
            # journal keeps them) and are tried again; the worker lives on.
            log.exception(
                "%s: BUG: unexpected error delivering %s; kept pending, retrying in %.1f s",
                self.name,
                _describe(batch),
                self._policy.cooldown_s,
            )
            st.update(last_error=f"internal error (a bug): {type(exc).__name__}: {exc}")
            assert self._tg is not None
            self._tg.start_soon(self._requeue_later, batch)
            return
        for chunk in batch:
            error = refused.get(chunk.seq)
            if error is not None:
                reason = error.detail if isinstance(error, RejectedError) else None
                self._reject(st, chunk, error.status, reason or str(error))
                continue
            if self._journal is not None:
                self._journal.delivered(chunk.seq, self.name)
            st.chunks_delivered += 1
            st.points_delivered += chunk.points
        st.notify()
        self._held -= len(batch)

    async def _mark(self, marker: Marker) -> None:
        st = self._streams[marker.data_id]
        try:
            await self._send_marker(st, marker)
        finally:
            st.markers_in_flight -= 1
            st.update()

    async def _send_marker(self, st: _StreamDelivery, marker: Marker) -> None:
        await st.opened.wait()
        send_marker = getattr(self.sink, "send_marker", None)
        if st.open_failed is not None or send_marker is None:
            reason = st.open_failed or "not supported"
            st.update(marker_rejections=(*st.base.marker_rejections, reason))
            return
        while True:
            try:
                async for attempt in self._policy.retrying(
                    sleep=self._sleep, on_retry=self._retried(st)
                ):
                    with attempt:
                        await send_marker(marker)
            except TransientDestinationError as exc:
                st.update(last_error=str(exc))
                await self._sleep(self._policy.cooldown_s)
                continue
            except Exception as exc:
                reason = f"marker {marker.label!r}: {exc}"
                st.update(marker_rejections=(*st.base.marker_rejections, reason))
            return

    async def _attempt(
        self, batch: tuple[Chunk, ...], slot: Slot
    ) -> Mapping[int, DestinationError]:
        slot.start()
        if self._batch_points:
            return await cast(BatchingSink, self.sink).send_chunks(batch)
        await self.sink.send_chunk(batch[0])
        return {}

    async def _send_with_retries(
        self, st: _StreamDelivery, batch: tuple[Chunk, ...], slot: Slot
    ) -> Mapping[int, DestinationError]:
        """Send (the first attempt in ``slot``); retry transient failures with the policy."""
        if self.window.ceiling == 1:
            # One request at a time keeps order (ATLAS): a retry keeps its turn, ahead of what
            # queued behind it.
            try:
                refused = await self._retrying(st, lambda: self._attempt(batch, slot))
            except BaseException as exc:
                slot.release(exc)
                raise
            slot.release()
            return refused
        first: Slot | None = slot

        async def attempt() -> Mapping[int, DestinationError]:
            # The window's room is given back while a retry waits, and taken again for it.
            nonlocal first
            taken, first = first or await self.window.acquire(), None
            try:
                refused = await self._attempt(batch, taken)
            except BaseException as exc:
                taken.release(exc)
                raise
            taken.release()
            return refused

        return await self._retrying(st, attempt)

    async def _retrying(
        self, st: _StreamDelivery, attempt: Callable[[], Awaitable[Mapping[int, DestinationError]]]
    ) -> Mapping[int, DestinationError]:
        """Run ``attempt``, retrying transient failures with the policy. tenacity only runs after
        a failure: on a healthy link the first attempt is a plain await (most of the traffic)."""
        try:
            return await attempt()
        except TransientDestinationError as exc:
            if self._policy.attempts <= 1:
                raise
            wait = self._policy.wait_for(1, exc.retry_after, random.random())
            self._retried(st)(exc, wait)
        await self._sleep(wait)
        async for attempt_ in self._policy.retrying(
            sleep=self._sleep, on_retry=self._retried(st), already_failed=1
        ):
            with attempt_:
                return await attempt()
        raise AssertionError("unreachable: retrying() raises when attempts run out")

    def _reject(
        self, st: _StreamDelivery, chunk: Chunk, status: int | str | None, reason: str
    ) -> None:
        log.error("%s: %s rejected (%s): %s", self.name, chunk.describe(), status, reason)
        if self._journal is not None:
            self._journal.rejected(chunk.seq, self.name, reason)
        rejection = Rejection(
            chunk.chunk_index, tuple(c.name for c in chunk.channels), chunk.points, status, reason
        )
        st.update(
            chunks_rejected=st.base.chunks_rejected + 1,
            points_rejected=st.base.points_rejected + chunk.points,
            rejections=(*st.base.rejections, rejection),
            last_error=reason,
        )

    async def _load_spilled(self, journal: Journal) -> None:
        """Read chunks that did not fit the memory window back from the journal, in order."""
        while True:
            loaded = False
            for st in list(self._streams.values()):
                room = self._max_in_memory - self._held
                if st.spill_after is None or room < max(1, self._max_in_memory // 4):
                    continue
                if journal.committed_seq <= st.spill_after:
                    continue  # not on disk yet: the next group commit brings it
                chunks = await anyio.to_thread.run_sync(
                    journal.pending_chunks, self.name, st.info.data_id, st.spill_after, room
                )
                for chunk in chunks:
                    self._held += 1
                    self._send.send_nowait(chunk)
                    st.spill_after = chunk.seq
                if st.spill_after >= st.last_seq:
                    st.spill_after = None  # caught up: new chunks go straight to memory again
                loaded = loaded or bool(chunks)
            if not loaded:
                await anyio.sleep(0.02)  # polling: cheap, and spilling is the exceptional case

    async def _requeue_later(self, batch: tuple[Chunk, ...]) -> None:
        await self._sleep(self._policy.cooldown_s)
        # If the runner is closing, aclose() counts the chunks as dropped.
        with contextlib.suppress(anyio.ClosedResourceError):
            self._send.send_nowait(batch)


def _none() -> int:
    return 0


_RESUME_HINT = "; the journal keeps them: `labstream spool resume` delivers them later"


def _behind(st: _StreamDelivery) -> str:
    """How far behind a destination is, in words."""
    points = st.points_accepted - st.points_delivered - st.base.points_rejected
    points -= st.base.points_dropped
    return f"{st.chunks_pending:,} chunk(s) / {points:,} point(s) behind"


def _describe(batch: tuple[Chunk, ...]) -> str:
    if len(batch) == 1:
        return batch[0].describe()
    return f"{batch[0].describe()} and the next {len(batch) - 1} chunk(s)"


class _OnRetry:
    """Counts retries on the stream's report and logs them."""

    def __init__(self, destination: str, st: _StreamDelivery) -> None:
        self._destination = destination
        self._st = st

    def __call__(self, exc: TransientDestinationError, wait_s: float) -> None:
        log.info("%s: retrying in %.2f s: %s", self._destination, wait_s, exc)
        self._st.update(retries=self._st.base.retries + 1, last_error=str(exc))
