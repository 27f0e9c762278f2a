"""``TimeseriesStreamer``: the official SDK's synchronous API on top of the async core.

One event loop runs in one daemon thread for the streamer's whole life (an anyio ``BlockingPortal``
hosted in that thread), so there is never an ``asyncio.run`` per call, and it works inside Jupyter,
whose own loop is left alone. ``push()`` validates on the caller's thread and hands the accepted
chunk to the loop without waiting, so it costs microseconds whatever the network does.

The loop thread is a daemon started by hand rather than ``start_blocking_portal()``'s executor
thread: Python joins executor threads *before* running ``atexit`` handlers, which would hang
interpreter exit instead of letting our ``atexit`` hook finalize the streams still open.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._core.clock import ClockStatus
from ._core.journal import MAX_UNWRITTEN_S
from .destinations.atlas.config import Atlas
from .report import StreamReport
from .retry import RetryPolicy, Sleep
from .settings import NOT_GIVEN, NotGiven
from .streamer import AsyncTimeseriesStreamer, split_run_item

__all__ = ["StreamHandle", "TimeseriesStreamer"]

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("labstream")
T = TypeVar("T")


class _LoopThread:
    """A daemon thread running one event loop, reachable through a blocking portal."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="labstream-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        anyio.run(self._serve, backend="asyncio")

    async def _serve(self) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            self.loop = asyncio.get_running_loop()
            self._ready.set()
            await portal.sleep_until_stopped()

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self._portal is not None
        return self._portal.call(func, *args)

    def stop(self) -> None:
        if self._portal is not None and self._thread.is_alive():
            self._portal.call(self._portal.stop)
        self._thread.join(timeout=5)


def _install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit so ``with`` blocks and the atexit hook finalize streams.

    Only when we are on the main thread and nobody installed a handler of their own.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _as_coroutine(func: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Run a plain function on the loop thread through the portal."""

    async def call(*args: Any) -> T:
        return func(*args)

    return call


def _close_at_exit(ref: weakref.ref[TimeseriesStreamer]) -> None:
    streamer = ref()
    if streamer is not None:
        streamer.close()


class TimeseriesStreamer:
    """Drop-in for Atomscale's ``TimeseriesStreamer``, that does not lose data.

    Takes the official SDK's arguments (``api_key``, ``endpoint``, ``points_per_chunk``,
    ``verbosity``) plus the keyword options of :class:`AsyncTimeseriesStreamer` (documented there),
    and ``handle_sigterm`` (default True: SIGTERM finalizes open streams before the process exits).

    Raises:
        ValueError: no destination configured, or a bad option.
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        points_per_chunk: int = 100,
        verbosity: int | None = None,
        *,
        handle_sigterm: bool = True,
        retry: RetryPolicy | None = None,
        finalize_timeout: float = 60.0,
        max_concurrency: int = 2048,
        http_transport: httpx.AsyncBaseTransport | None = None,
        proxy: str | None = None,
        clock_sync: bool | NotGiven = NOT_GIVEN,
        sleep: Sleep | None = None,
        max_pending_chunks: int = 1024,
        atlas: str | Atlas | NotGiven | None = NOT_GIVEN,
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 2 * 1024**3,
        spool_min_free_bytes: int = 256 * 1024**2,
        spool_retention_s: float = 7 * 24 * 3600.0,
        memory_window_chunks: int = 1024,
        spool_max_unwritten_s: float = MAX_UNWRITTEN_S,
        durability: str = "window",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        # Validate arguments on the caller's thread before starting any thread.
        core = AsyncTimeseriesStreamer(
            api_key,
            endpoint,
            points_per_chunk,
            verbosity,
            retry=retry,
            finalize_timeout=finalize_timeout,
            max_concurrency=max_concurrency,
            http_transport=http_transport,
            proxy=proxy,
            clock_sync=clock_sync,
            sleep=sleep,
            max_pending_chunks=max_pending_chunks,
            atlas=atlas,
            spool=spool,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            spool_min_free_bytes=spool_min_free_bytes,
            spool_retention_s=spool_retention_s,
            memory_window_chunks=memory_window_chunks,
            spool_max_unwritten_s=spool_max_unwritten_s,
            durability=durability,
            environ=environ,
        )
        self._core = core
        self._thread = _LoopThread()
        self._closed = False
        self._thread.call(core.start)
        if handle_sigterm:
            _install_sigterm_handler()
        atexit.register(_close_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return repr(self._core).replace("AsyncTimeseriesStreamer", "TimeseriesStreamer")

    def __enter__(self) -> TimeseriesStreamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def points_per_chunk(self) -> int:
        return self._core.points_per_chunk

    @property
    def destinations(self) -> tuple[str, ...]:
        return self._core.destinations

    def initialize(
        self,
        stream_name: str | None = None,
        synth_source_id: int | None = None,
        physical_sample: str | None = None,
        project_id: str | None = None,
        tags: Sequence[str] | str | None = None,
    ) -> str:
        """Create a stream; return its data_id. See :meth:`AsyncTimeseriesStreamer.initialize`."""
        return self._thread.call(
            self._core.initialize, stream_name, synth_source_id, physical_sample, project_id, tags
        )

    def push(
        self,
        data_id: str,
        chunk_index: int,
        channel_name: str,
        timestamps: object,
        values: object,
        units: str | None = None,
    ) -> None:
        """Queue one channel's chunk; never waits on the network (only, bounded, for the local
        journal when it falls behind the durability window, or with ``durability="commit"``).

        Raises:
            TypeError, ValueError, StreamStateError: see :meth:`AsyncTimeseriesStreamer.push`.
        """
        self._core._accept_push(
            data_id, chunk_index, channel_name, timestamps, values, units, handoff=True
        )

    def push_multi(self, data_id: str, chunk_index: int, channels: object) -> None:
        """Queue a multi-channel chunk; never waits on the network (see :meth:`push`).

        Raises:
            TypeError, ValueError, StreamStateError: see :meth:`AsyncTimeseriesStreamer.push`.
        """
        self._core._accept_push_multi(data_id, chunk_index, channels, handoff=True)

    def push_frame(
        self,
        data_id: str,
        chunk_index: int,
        frame: object,
        *,
        time_column: str | None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a pandas or polars DataFrame as one chunk; never waits on the network.

        See :meth:`AsyncTimeseriesStreamer.push_frame`.

        Raises:
            TypeError, ValueError, StreamStateError: see
                :meth:`AsyncTimeseriesStreamer.push_frame`.
        """
        self._core._accept_push_frame(
            data_id, chunk_index, frame, time_column=time_column, units=units, handoff=True
        )

    def mark(
        self,
        data_id: str,
        label: str,
        timestamp: float | None = None,
        end_time: float | None = None,
        type: str = "Marker",
        description: str = "",
    ) -> None:
        """Mark an instant or span of the stream (ATLAS MarkerPacket); never waits on the network.

        Raises:
            TypeError: label, type or description not strings; times not numbers.
            ValueError: empty label, times outside 1990..2100, end_time before timestamp.
            StreamStateError: unknown or finalized stream.
        """
        marker = self._core._accept_mark(data_id, label, timestamp, end_time, type, description)
        self._core._dispatch_threadsafe(marker)

    def run(
        self,
        data_id: str,
        channel_name: str,
        data_iter: Iterable[object],
        units: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Generator mode; see :meth:`AsyncTimeseriesStreamer.run`. Iterates on this thread.

        Raises:
            DeliveryError: a destination rejected some chunks.
            DeliveryTimeoutError: not delivered within ``timeout``; chunks are still held.
        """
        core = self._core
        before = core._rejected(data_id)
        index = 0
        for item in data_iter:
            for idx, ts, vals in split_run_item(
                data_id, channel_name, item, index, core.points_per_chunk
            ):
                self.push(data_id, idx, channel_name, ts, vals, units)
                index = idx + 1
            if core._over_capacity(data_id):
                self._thread.call(core._wait_for_capacity, data_id, timeout)
        self._thread.call(core.wait_delivered, data_id, timeout)
        core._raise_if_rejected(data_id, before)

    def finalize(self, data_id: str, timeout: float | None = None) -> StreamReport:
        """Wait for pending chunks (up to ``timeout`` s), close the stream everywhere, report.

        Raises:
            StreamStateError: unknown data_id.
        """
        return self._thread.call(self._core.finalize, data_id, timeout)

    def wait_delivered(self, data_id: str, timeout: float | None = None) -> None:
        """Wait until every destination has confirmed or rejected every chunk pushed so far,
        without finalizing the stream.

        Raises:
            DeliveryTimeoutError: not done within ``timeout`` (default ``finalize_timeout``);
                the chunks are still held and retried.
        """
        self._thread.call(self._core.wait_delivered, data_id, timeout)

    def report(self, data_id: str) -> StreamReport:
        """A snapshot of the stream's delivery so far."""
        if self._closed:
            return self._core.report(data_id)
        return self._thread.call(_as_coroutine(self._core.report), data_id)

    def clock_status(self) -> ClockStatus:
        return self._core.clock_status()

    def recovered_streams(self) -> list[str]:
        """data_ids this streamer took over from a process that died with them unfinished.

        They are delivered in the background; ``finalize(data_id)`` (or ``close()``) ends them.
        """
        return self._core.recovered_streams()

    def held_chunk_indexes(self, data_id: str) -> set[int]:
        """See :meth:`AsyncTimeseriesStreamer.held_chunk_indexes`."""
        return self._core.held_chunk_indexes(data_id)

    def journaled_through(self, data_id: str) -> int | None:
        """For a stream taken over from a process that died (and not finalized): the
        chunk_index up to which every chunk that process pushed is delivered or in the journal,
        -1 when none is. Pushing chunks from the next index on continues the stream with nothing
        missing and nothing twice (when chunks were pushed in index order). None for any other
        stream.
        """
        return self._core.journaled_through(data_id)

    @contextmanager
    def stream(
        self,
        stream_name: str | None = None,
        synth_source_id: int | None = None,
        physical_sample: str | None = None,
        project_id: str | None = None,
        tags: Sequence[str] | str | None = None,
        *,
        finalize_timeout: float | None = None,
    ) -> Iterator[StreamHandle]:
        """``with streamer.stream(...) as s:`` initializes, and finalizes on every exit
        (normal, exception, KeyboardInterrupt)."""
        data_id = self.initialize(stream_name, synth_source_id, physical_sample, project_id, tags)
        handle = StreamHandle(self, data_id)
        try:
            yield handle
        finally:
            handle.report = self.finalize(data_id, finalize_timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finalize streams still open, stop delivery, stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.call(self._core.aclose, timeout)
        finally:
            self._thread.stop()


class StreamHandle:
    """One stream of a :class:`TimeseriesStreamer`, with data_id bound."""

    def __init__(self, streamer: TimeseriesStreamer, data_id: str) -> None:
        self.streamer = streamer
        self.data_id = data_id
        self.report: StreamReport | None = None

    def push(
        self,
        chunk_index: int,
        channel_name: str,
        timestamps: object,
        values: object,
        units: str | None = None,
    ) -> None:
        self.streamer.push(self.data_id, chunk_index, channel_name, timestamps, values, units)

    def push_multi(self, chunk_index: int, channels: object) -> None:
        self.streamer.push_multi(self.data_id, chunk_index, channels)

    def push_frame(
        self,
        chunk_index: int,
        frame: object,
        *,
        time_column: str | None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.streamer.push_frame(
            self.data_id, chunk_index, frame, time_column=time_column, units=units
        )

    def mark(
        self,
        label: str,
        timestamp: float | None = None,
        end_time: float | None = None,
        type: str = "Marker",
        description: str = "",
    ) -> None:
        self.streamer.mark(self.data_id, label, timestamp, end_time, type, description)

    def run(self, channel_name: str, data_iter: Iterable[object], units: str | None = None) -> None:
        self.streamer.run(self.data_id, channel_name, data_iter, units)
