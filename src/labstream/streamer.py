"""The core: validation, the stream registry, fan-out to one runner per destination, finalize.

``AsyncTimeseriesStreamer`` is the whole library for asyncio programs; the synchronous
``TimeseriesStreamer`` drives it from a background event-loop thread. Accepting a chunk
(validation, duplicate and state checks, its seq, the journal's queue) is plain synchronous code
guarded by a lock, so the sync facade can run it on the caller's thread and raise input errors
there, then hand it to the loop without waiting (``handoff.py``); the chunk (clock correction,
ns) is built by the loop or the journal's writer, whichever needs it first. Nothing here waits on
the network except ``initialize`` (which must return the destination's data_id), ``finalize`` and
``run`` (which are documented to wait).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from anyio.abc import TaskGroup

from ._core.chunk import (
    EARLIEST_S,
    LATEST_S,
    Chunk,
    RawSeries,
    check_chunk_index,
    make_chunk,
    validate_multi,
    validate_series,
    where,
)
from ._core.clock import ClockCorrection, ClockStatus
from ._core.delivery import DeliveryRunner
from ._core.frames import frame_channels
from ._core.handoff import LoopHandoff
from ._core.journal import LIVE_OWNERS, MAX_UNWRITTEN_S, WRITER_WAIT_S, Journal, chunk_size
from ._core.timebase import seconds_to_ns_scalar
from .destinations import atlas as atlas_destination
from .destinations.atlas.config import Atlas
from .destinations.atomscale.sink import CREATE_LATER, AtomscaleSink
from .destinations.base import Marker, Sink, StreamInfo
from .errors import (
    DeliveryError,
    DeliveryTimeoutError,
    JournalError,
    JournalFull,
    StreamStateError,
    TransientDestinationError,
)
from .report import StreamReport
from .retry import RetryPolicy, Sleep
from .settings import NOT_GIVEN, NotGiven, resolve

__all__ = [
    "Accepted",
    "AsyncStreamHandle",
    "AsyncTimeseriesStreamer",
    "configure_verbosity",
    "split_run_item",
]

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("labstream")

CLOCK_MAX_AGE_S = 600.0  # re-measure the clock at initialize when the last round is older
# Reuse of a (channel, chunk_index) is detected among this many most recent ones per stream, so a
# days-long stream does not grow memory; older indexes are far behind any live acquisition.
DIGEST_WINDOW = 100_000
# Pushes from other threads reach the loop in groups of up to this many seconds (handoff.py), which
# costs less CPU per chunk than a wake-up per push (docs/performance.md). Delivery starts that much
# later; the journal does not wait for it (chunks go to it from push()).
HANDOFF_COALESCE_S = 0.005
DURABILITY = ("window", "commit")


def configure_verbosity(verbosity: int | None) -> None:
    """Map the SDK's ``verbosity`` (0 quiet .. 4 detailed) onto the ``labstream`` logger."""
    if verbosity is None:
        return
    level = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.INFO}.get(
        verbosity, logging.DEBUG
    )
    logger = logging.getLogger("labstream")
    logger.setLevel(level)
    if not any(getattr(h, "_labstream", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._labstream = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


@dataclass(slots=True, eq=False)
class Accepted:
    """A validated chunk the streamer has taken (its seq reserved, queued for the journal), not
    built yet: :meth:`build` makes the :class:`Chunk` for whichever thread needs it first."""

    data_id: str
    index: int
    raws: tuple[RawSeries, ...]
    multi: bool
    offset_ns: int
    seq: int
    points: int
    chunk: Chunk | None = None

    @property
    def chunk_index(self) -> int:
        return self.index

    @property
    def channel_names(self) -> tuple[str, ...]:
        raws = self.raws  # read before chunk, as in build()
        chunk = self.chunk
        if chunk is not None:
            return tuple(c.name for c in chunk.channels)
        return tuple(r.name for r in raws)

    def build(self) -> Chunk:
        """The chunk, clock-corrected and frozen. Made once, by whichever thread needs it first:
        the event loop (to deliver it) or the journal's writer (to store it). In a burst the loop
        lags behind the pushes, and the writer must not wait for it. Should two make it at the
        same moment, they make the same chunk."""
        # The input is let go once the chunk exists: in a burst thousands wait for the journal,
        # and every object they keep brings a full garbage collection (which stops every thread)
        # closer. raws is read before chunk: a builder clears raws only after setting chunk.
        raws = self.raws
        chunk = self.chunk
        if chunk is None:
            chunk = make_chunk(
                self.data_id, self.index, raws, multi=self.multi, offset_ns=self.offset_ns,
                seq=self.seq,
            )  # fmt: skip
            self.chunk = chunk
            self.raws = ()
        return chunk


@dataclass(eq=False)
class _Stream:
    info: StreamInfo
    finalized: bool = False
    # (channel, chunk_index) -> content digest: tells an idempotent re-push from a conflicting one
    digests: dict[tuple[str, int], bytes] = field(default_factory=dict)
    report: StreamReport | None = None
    refused_chunks: int = 0
    refused_points: int = 0
    refusal_reason: str | None = None
    recovered: bool = False
    # Recovered, closed nowhere: the last chunk_index the dead process had safe (see below).
    journaled_through: int | None = None
    closing: anyio.Event | None = None  # set once finalize is done; a second caller waits on it
    journal_waits: int = 0  # pushes that waited for the journal's commit
    journal_wait_s: float = 0.0
    journal_wait_timeouts: int = 0
    gaps: tuple[tuple[str, int, int], ...] = ()  # a recovered stream's missing chunk indexes


def split_run_item(
    data_id: str, channel: str, item: object, first_index: int, max_points: int
) -> Iterator[tuple[int, Any, Any]]:
    """Turn one ``(timestamps, values)`` item of ``run()`` into chunks of at most ``max_points``.

    Raises:
        TypeError: the item is not a (timestamps, values) pair.
        ValueError: the two have different lengths.
    """
    ctx = where(data_id, channel, first_index)
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise TypeError(f"{ctx}: run() items must be (timestamps, values) pairs, got {item!r:.80}")
    ts, vals = item
    try:
        n_ts, n_vals = len(ts), len(vals)
    except TypeError as exc:
        raise TypeError(f"{ctx}: timestamps and values must be sequences") from exc
    if n_ts != n_vals:
        raise ValueError(f"{ctx}: {n_ts} timestamps but {n_vals} values; they must match")
    if n_ts <= max_points:
        yield first_index, ts, vals
        return
    ts_arr, vals_arr = np.asanyarray(ts), np.asanyarray(vals)  # a masked array keeps its mask
    for k, start in enumerate(range(0, n_ts, max_points)):
        yield (
            first_index + k,
            ts_arr[start : start + max_points],
            vals_arr[start : start + max_points],
        )


class AsyncTimeseriesStreamer:
    """Stream time series to Atomscale (and later ATLAS) from asyncio code.

    The same methods as the official SDK's ``TimeseriesStreamer``, as coroutines. Use it as
    ``async with AsyncTimeseriesStreamer(...) as s:`` so every stream is finalized on the way out.

    Args:
        api_key: Atomscale API key; default ``AS_API_KEY``, then ``ATOMSCALE_API_KEY``.
        endpoint: Atomscale base URL; default ``AS_API_ENDPOINT``, then the public service.
        points_per_chunk: the most points one chunk may hold (Atomscale places chunk N at
            ``N * points_per_chunk``).
        verbosity: 0 (errors only) to 4 (debug) on the ``labstream`` logger; None leaves logging
            alone.
        retry: retry policy shared by every destination.
        finalize_timeout: default seconds ``finalize()``/``run()`` wait for pending deliveries.
        max_concurrency: the most Atomscale uploads in flight. The window adapts below it: it
            grows while round trips stay flat and shrinks when the server is overloaded
            (``labstream._core.window``).
        http_transport: an httpx async transport (tests use ``httpx.MockTransport``); Atomscale's
            requests then go through it instead of libcurl.
        proxy: proxy URL for Atomscale's requests (``""``: none); default: ``HTTPS_PROXY``,
            ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` from the environment, as the SDK.
        clock_sync: False turns clock correction off (so does ``ATOMSCALE_SKIP_CLOCK_SYNC``
            when left out).
        sleep: injected async sleep for back-off (tests pass one that returns at once).
        max_pending_chunks: ``run()`` waits while a destination has more chunks pending than this.
        spool: keep every accepted chunk in a durable journal until each destination confirmed
            it (default). ``False`` keeps them in memory only: a crash or ``close()`` with a
            destination down then loses them (counted and reported as dropped).
        spool_dir: the journal's directory; default ``LABSTREAM_SPOOL_DIR``, else the user cache
            directory. Streams left unfinished there by a process that died are resumed.
        spool_max_bytes: cap on the journal; a chunk that would break it is refused (counted
            in the report with the reason, and logged) instead of stored.
        spool_min_free_bytes: below this much free space on its disk the journal stops writing
            chunks: they are kept in memory (bounded) and delivered, and the report says they
            are not durable (docs/durability.md).
        spool_retention_s: how long undeliverable data is kept.
        memory_window_chunks: with the journal, the most chunks a destination holds in memory;
            a destination that falls further behind reads its backlog back from disk.
        spool_max_unwritten_s: the durability window W (default 0.05 s): a chunk whose
            ``push()`` returned more than W ago is in the journal, so a crash loses at most the
            last W of pushes. When the journal falls further behind (a burst, a slow disk),
            ``push()`` waits for its commit, at most 2 s; never for the network. The report
            counts the waits (``journal_waits``, ``journal_wait_s``).
        durability: ``"window"`` (default, as above) or ``"commit"``: ``push()`` and
            ``push_multi()`` return only once the journal committed the chunk (a few ms more
            per push), so a crash loses nothing that was pushed.
        atlas: ``"host:port"`` of an ATLAS Stream API, or :class:`~labstream.Atlas` settings, to
            stream to ATLAS too. Left out: ``LABSTREAM_ATLAS`` (and an address, given or from
            there, takes the other ``LABSTREAM_ATLAS_*`` variables); ``None``: no ATLAS. With
            ``api_key=None`` and no key in the environment, the streamer streams to ATLAS alone.
        environ: where every default above is read from, once, here (default ``os.environ``).
            A program that chose its destinations itself passes
            ``labstream.settings.without_destinations(os.environ)``.

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
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'window' or 'commit', not {durability!r}")
        if durability == "commit" and not spool:
            raise ValueError("durability='commit' needs the journal: it cannot go with spool=False")
        if (
            isinstance(spool_max_unwritten_s, bool)
            or not isinstance(spool_max_unwritten_s, int | float)
            or not 0 < spool_max_unwritten_s < float("inf")
        ):
            raise ValueError(
                f"spool_max_unwritten_s must be a number of seconds > 0, not "
                f"{spool_max_unwritten_s!r}"
            )
        if isinstance(points_per_chunk, bool) or not isinstance(points_per_chunk, int):
            raise TypeError("points_per_chunk must be an int")
        if points_per_chunk < 1:
            raise ValueError("points_per_chunk must be >= 1")
        configure_verbosity(verbosity)
        settings = resolve(
            api_key=api_key,
            endpoint=endpoint,
            proxy=proxy,
            clock_sync=clock_sync,
            atlas=atlas,
            spool_dir=spool_dir,
            environ=environ,
        )
        self._api_key = settings.api_key
        self._atlas_settings = settings.atlas
        if self._atlas_settings is not None:
            atlas_destination.require_extra()
        if self._api_key is None and self._atlas_settings is None:
            raise ValueError(
                "no destination configured: give api_key= (or set AS_API_KEY / "
                "ATOMSCALE_API_KEY) for Atomscale, and/or atlas= (or LABSTREAM_ATLAS) for ATLAS"
            )
        self.endpoint = settings.endpoint
        self.points_per_chunk = points_per_chunk
        self.finalize_timeout = finalize_timeout
        self._policy = retry or RetryPolicy()
        self._sleep: Sleep = sleep or anyio.sleep
        self._max_concurrency = max_concurrency
        self._http_transport = http_transport
        self._proxy = settings.proxy
        self._max_pending_chunks = max_pending_chunks
        self._memory_window = memory_window_chunks
        # The reference clock is Atomscale's gateway; without Atomscale there is nothing to correct.
        self._clock = ClockCorrection(enabled=settings.clock_sync)
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._atomscale: AtomscaleSink | None = None
        self._runners: list[DeliveryRunner] = []
        self._destination_names: tuple[str, ...] = ()  # the runners', for the journal
        self._host: asyncio.Task[None] | None = None
        self._host_tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: LoopHandoff[Accepted | Marker] | None = None  # pushes from other threads
        self._seq = 0  # without a journal
        self._owner = f"{os.getpid()}:{uuid.uuid4().hex}"
        self._journal: Journal | None = None
        self._commit_each = durability == "commit"
        # A journal wait found by a push on the event loop's thread, done by push() off the loop.
        self._loop_wait: tuple[_Stream, int] | None = None
        if spool:
            self._journal = Journal(
                settings.spool_dir,
                max_bytes=spool_max_bytes,
                min_free_bytes=spool_min_free_bytes,
                retention_s=spool_retention_s,
                max_unwritten_s=float(spool_max_unwritten_s),
            )
            LIVE_OWNERS.add(self._owner)

    def __repr__(self) -> str:
        parts = [f"points_per_chunk={self.points_per_chunk}"]
        if self._api_key is not None:
            parts.insert(0, f"endpoint={self.endpoint!r}, api_key=***")
        if self._atlas_settings is not None:
            parts.append(f"atlas={self._atlas_settings.address!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncTimeseriesStreamer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the delivery machinery (done on first use; idempotent)."""
        if self._host is not None:
            return
        if self._closed:
            raise StreamStateError("this streamer is closed")
        self._loop = asyncio.get_running_loop()
        sinks: list[Sink] = []
        if self._api_key is not None:
            self._atomscale = AtomscaleSink(
                self._api_key,
                self.endpoint,
                journal=self._journal,
                policy=self._policy,
                sleep=self._sleep,
                transport=self._http_transport,
                max_concurrency=self._max_concurrency,
                proxy=self._proxy,
            )
            sinks.append(self._atomscale)
        if self._atlas_settings is not None:
            from .destinations.atlas.sink import AtlasSink  # grpc: only for users of ATLAS

            sinks.append(AtlasSink(self._atlas_settings, journal=self._journal))
        self._runners = [
            DeliveryRunner(
                sink,
                self._policy,
                sleep=self._sleep,
                journal=self._journal,
                max_in_memory=self._memory_window,
            )
            for sink in sinks
        ]
        self._destination_names = tuple(r.name for r in self._runners)
        self._handoff = LoopHandoff(
            self._loop, self._dispatch_accepted, coalesce_s=HANDOFF_COALESCE_S
        )
        self._stop = anyio.Event()
        ready = anyio.Event()
        # The runners' task groups live in one host task, so they are entered and exited by the
        # same task whichever task later calls aclose().
        self._host = self._loop.create_task(self._run_host(ready), name="labstream-host")
        await ready.wait()
        if self._journal is not None:
            await self._recover(self._journal)

    def _destination_addresses(self) -> dict[str, str]:
        out = {}
        if self._api_key is not None:
            out["atomscale"] = self.endpoint
        if self._atlas_settings is not None:
            out["atlas"] = self._atlas_settings.address
        return out

    async def _recover(self, journal: Journal) -> None:
        """Resume streams a dead process left unfinished in the journal: deliver what is pending
        and, if finalize had been asked, finalize. A stream is taken when every destination it
        still needs is one of this streamer's, at the same address."""
        ours = self._destination_addresses()
        runners = {r.name: r for r in self._runners}
        for stored in await anyio.to_thread.run_sync(journal.streams):
            if stored.data_id in self._streams or stored.owner_alive:
                continue
            pending = {
                name: await anyio.to_thread.run_sync(journal.pending_summary, name, stored.data_id)
                for name in stored.destinations
            }
            # A destination that confirmed the close may still miss chunks (Atomscale accepts
            # them after finalize): those are delivered too, without closing it again.
            needed = {
                name: address
                for name, address in stored.destinations.items()
                if name not in stored.closed or pending[name][0]
            }
            if not needed:
                continue
            if any(ours.get(name) != address for name, address in needed.items()):
                log.info(
                    "journal: stream %s needs %s, not this streamer's %s; left for "
                    "`labstream spool resume`",
                    stored.data_id,
                    needed,
                    ours,
                )
                continue
            # ATLAS takes nothing after its end: a stream closed there is never written to again.
            todo = [
                runners[name]
                for name in needed
                if name not in stored.closed or runners[name].sink.takes_data_after_close
            ]
            if not todo:
                continue
            journal.adopt(stored.data_id, self._owner)
            fields = dict(stored.info)
            fields["tags"] = tuple(fields.get("tags") or ())
            info = StreamInfo(**fields)
            stream = _Stream(info, recovered=True)
            stream.gaps = tuple(await anyio.to_thread.run_sync(journal.gaps, info.data_id))
            if not stored.closed and not stored.finalize_requested:
                stream.journaled_through = stored.last_chunk_index
            with self._lock:
                self._streams[info.data_id] = stream
            for runner in todo:
                closed = runner.name in stored.closed
                runner.open(info, recovered=pending[runner.name], closed=closed)
            log.warning(
                "journal: resuming stream %s left unfinished by another process (%s)",
                info.data_id,
                ", ".join(
                    f"{r.name}: {r.report(info.data_id).chunks_pending} pending" for r in todo
                ),
            )
            if (stored.finalize_requested or stored.closed) and self._host_tg is not None:
                self._host_tg.start_soon(self._finalize, info.data_id, None)

    async def _run_host(self, ready: anyio.Event) -> None:
        assert self._stop is not None
        try:
            async with anyio.create_task_group() as tg:
                self._host_tg = tg
                for runner in self._runners:
                    await tg.start(runner.serve)
                ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            if self._journal is not None:
                # Every chunk on disk or, where the disk failed, in memory: those are counted.
                self._journal.flush()
            for runner in self._runners:
                runner.count_undelivered_as_dropped()

    async def aclose(self, timeout: float | None = None) -> None:
        """Finalize every stream still open (each waits up to ``timeout``), then stop.

        Chunks still undelivered after that stay in the journal for a later streamer or
        ``labstream spool resume``; with ``spool=False`` they are counted as dropped and logged.
        """
        if self._closed:
            return
        self._closed = True
        if self._host is None:
            self._close_journal()
            return
        with anyio.CancelScope(shield=True):
            open_ids = [d for d, s in self._streams.items() if not s.finalized]
            for data_id in open_ids:
                await self._finalize(data_id, timeout)
            assert self._stop is not None
            self._stop.set()
            await self._host
            if self._handoff is not None:
                await anyio.to_thread.run_sync(self._handoff.close)
            for runner in self._runners:
                await runner.sink.aclose()
            await anyio.to_thread.run_sync(self._close_journal)

    def _close_journal(self) -> None:
        if self._journal is not None:
            # Housekeeping: streams finished everywhere, and data past retention, are removed.
            try:
                self._journal.forget_finished()
            except JournalError as exc:  # a full or failing disk: the next streamer does it
                log.warning("journal: housekeeping skipped: %s", exc)
            self._journal.close()
            LIVE_OWNERS.discard(self._owner)

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._runners)

    def clock_status(self) -> ClockStatus:
        """The clock correction in effect (see :class:`~labstream._core.clock.ClockStatus`)."""
        return self._clock.status

    # -- initialize ----------------------------------------------------------------------------

    async def initialize(
        self,
        stream_name: str | None = None,
        synth_source_id: int | None = None,
        physical_sample: str | None = None,
        project_id: str | None = None,
        tags: Sequence[str] | str | None = None,
    ) -> str:
        """Create a stream on every destination; return its data_id.

        The data_id is Atomscale's. With ATLAS configured too, an Atomscale that cannot be
        reached (after the retry policy's attempts) does not stop the stream: it gets a data_id
        of labstream's, ATLAS gets its data at once, and Atomscale's stream is created once
        Atomscale answers (by this streamer, or by the one that takes the journal over); the
        log names Atomscale's data_id then.

        Raises:
            TypeError: an argument of the wrong type.
            DestinationError: Atomscale refused to create or link the stream, or cannot be
                reached and is the only destination.
        """
        _check_optional(stream_name, str, "stream_name")
        _check_optional(physical_sample, str, "physical_sample")
        _check_optional(project_id, str, "project_id")
        if synth_source_id is not None and (
            isinstance(synth_source_id, bool) or not isinstance(synth_source_id, int)
        ):
            raise TypeError("synth_source_id must be an int or None")
        tag_list = _tag_list(tags)
        await self.start()
        extra: dict[str, str] = {}
        if self._atomscale is not None:
            if self._clock.is_stale(CLOCK_MAX_AGE_S):
                await self._clock.measure(self._atomscale.time_exchange)
            try:
                data_id = await self._atomscale.create_stream(
                    stream_name=stream_name,
                    synth_source_id=synth_source_id,
                    points_per_chunk=self.points_per_chunk,
                    project_id=project_id,
                    physical_sample=physical_sample,
                    tags=tag_list,
                )
            except TransientDestinationError as exc:
                if len(self._runners) < 2:
                    raise
                # One destination down never stops the other: the stream goes on with ATLAS
                # under a data_id of ours; Atomscale's is created once it answers.
                data_id = str(uuid.uuid4())
                extra[CREATE_LATER] = "1"
                log.warning(
                    "Atomscale cannot be reached (%s): stream %s goes on; its Atomscale stream "
                    "is created once Atomscale answers, and its chunks wait until then",
                    exc,
                    data_id,
                )
        else:  # ATLAS alone: the data_id is ours
            data_id = str(uuid.uuid4())
        info = StreamInfo(
            data_id=data_id,
            stream_name=stream_name,
            points_per_chunk=self.points_per_chunk,
            synth_source_id=synth_source_id,
            physical_sample=physical_sample,
            project_id=project_id,
            tags=tuple(tag_list),
            created_at_ns=seconds_to_ns_scalar(time.time()) + self._clock.offset_ns,
            clock_offset_ns=self._clock.offset_ns,
            extra=extra,
        )
        with self._lock:
            self._streams[data_id] = _Stream(info)
        if self._journal is not None:
            self._journal.add_stream(
                data_id, dataclasses.asdict(info), self._destination_addresses(), self._owner
            )
            # On disk before it is returned: a crash from here on leaves a stream that recovery
            # finds and finalizes.
            await anyio.to_thread.run_sync(self._journal.sync)
        for runner in self._runners:
            runner.open(info)
        log.info("initialized stream %s (%s)", data_id, stream_name)
        return data_id

    # -- accepting chunks (any thread) ---------------------------------------------------------

    def _open_stream(self, data_id: object) -> _Stream:
        if not isinstance(data_id, str):
            raise TypeError(f"data_id must be a str, not {type(data_id).__name__}")
        stream = self._streams.get(data_id)
        if stream is None:
            raise StreamStateError(
                f"data_id={data_id}: unknown stream; call initialize() first and use the data_id "
                "it returns"
            )
        if stream.finalized:
            raise StreamStateError(f"data_id={data_id}: stream already finalized; no more pushes")
        return stream

    def _accept_push(
        self,
        data_id: str,
        chunk_index: int,
        channel_name: str,
        timestamps: object,
        values: object,
        units: str | None = None,
        *,
        handoff: bool = False,
    ) -> Accepted | None:
        """Validate one channel's chunk and admit it; None for an identical re-push.

        Thread-safe; does no I/O. With ``handoff`` (a thread other than the event loop's), the
        chunk is queued for the loop, which delivers it, and None is returned. Raises the errors
        documented on :meth:`push`.
        """
        stream = self._open_stream(data_id)
        index = check_chunk_index(data_id, chunk_index)
        raw = validate_series(
            data_id,
            index,
            channel_name,
            timestamps,
            values,
            units,
            max_points=self.points_per_chunk,
        )
        # A tuple: the chunk keeps it until built, and a tuple of one is cheaper than a list.
        return self._admit(stream, index, (raw,), multi=False, handoff=handoff)

    def _accept_push_multi(
        self, data_id: str, chunk_index: int, channels: object, *, handoff: bool = False
    ) -> Accepted | None:
        """Like :meth:`_accept_push` for a ``push_multi`` channels mapping."""
        stream = self._open_stream(data_id)
        index = check_chunk_index(data_id, chunk_index)
        raws = validate_multi(data_id, index, channels, max_points=self.points_per_chunk)
        return self._admit(stream, index, tuple(raws), multi=True, handoff=handoff)

    def _admit(
        self,
        stream: _Stream,
        index: int,
        raws: tuple[RawSeries, ...],
        *,
        multi: bool,
        handoff: bool = False,
    ) -> Accepted | None:
        """Everything that decides whether a chunk is taken: a repeat, room in the journal, its
        place in the order; the chunk then goes to the journal's queue. What is left to do (the ns
        conversion) cannot fail.

        With the journal, a chunk older than the durability window and not committed yet, or
        with ``durability="commit"`` this chunk, is waited for after the lock is let go: here
        on a pushing thread, in :meth:`push` for the event loop's.

        The journal's queue, and with ``handoff`` the event loop's, are fed under the lock that
        gave the chunk its seq: both get every stream's chunks in seq order, whatever the number
        of pushing threads (a runner reading its backlog back from the journal relies on it)."""
        data_id = stream.info.data_id
        with self._lock:
            if stream.finalized:
                raise StreamStateError(
                    f"data_id={data_id}: stream already finalized; no more pushes"
                )
            # An identical re-push of a channel is harmless and sent nothing; other data under a
            # used (channel, chunk_index) is refused.
            repeated = False
            for raw in raws:
                seen = stream.digests.get((raw.name, index))
                if seen is None:
                    continue
                if seen != raw.digest:
                    raise ValueError(
                        f"{where(data_id, raw.name, index)}: this chunk was already pushed with "
                        "different data; chunk indexes must not be reused"
                    )
                repeated = True
            if repeated:  # ATLAS appends: channels already sent must not be sent twice
                raws = tuple(r for r in raws if (r.name, index) not in stream.digests)
                if not raws:
                    log.debug("ignoring identical re-push of %s chunk %d", data_id, index)
                    return None
            journal = self._journal
            points = sum(r.points for r in raws)
            wait_for = None
            if journal is not None:
                wait_for = journal.overdue()
                try:
                    journal.reserve(chunk_size(points))
                except JournalFull as full:
                    self._refuse(stream, points, str(full))
                    return None
                seq = journal.next_seq()
            else:
                self._seq += 1
                seq = self._seq
            digests = stream.digests
            for raw in raws:
                digests[(raw.name, index)] = raw.digest
            while len(digests) > DIGEST_WINDOW:
                del digests[next(iter(digests))]  # the oldest (dicts keep insertion order)
            offset = stream.info.clock_offset_ns
            accepted = Accepted(data_id, index, raws, multi, offset, seq, points)
            if journal is not None:
                # Straight to the journal, not through the event loop: the loop may be far
                # behind in a burst, and the chunk must be on disk within a commit or two.
                journal.add_chunk(accepted, self._destination_names)
                if self._commit_each:
                    wait_for = seq
            if handoff:
                self._dispatch_threadsafe(accepted)
        if wait_for is not None:
            if handoff:
                self._wait_journal(stream, wait_for)
            else:
                self._loop_wait = (stream, wait_for)
        return None if handoff else accepted

    def _wait_journal(self, stream: _Stream, seq: int) -> None:
        """Wait (bounded) until the journal committed every chunk up to ``seq``; counted in the
        stream's report. Blocks: not on the event loop's thread."""
        assert self._journal is not None
        started = time.perf_counter()
        done = self._journal.wait_committed(seq, WRITER_WAIT_S)
        waited = time.perf_counter() - started
        with self._lock:
            stream.journal_waits += 1
            stream.journal_wait_s += waited
            if not done:
                stream.journal_wait_timeouts += 1

    async def _wait_journal_off_loop(self) -> None:
        """The wait a push on the event loop's thread asked for, in a worker thread."""
        pending, self._loop_wait = self._loop_wait, None
        if pending is not None:
            await anyio.to_thread.run_sync(self._wait_journal, *pending)

    def _refuse(self, stream: _Stream, points: int, reason: str) -> None:
        """Count a chunk refused for lack of room; log the first and then every hundredth."""
        stream.refused_chunks += 1
        stream.refused_points += points
        stream.refusal_reason = reason
        if stream.refused_chunks % 100 == 1:
            log.error(
                "data_id=%s: chunk refused, not stored or sent (%d refused so far): %s",
                stream.info.data_id,
                stream.refused_chunks,
                reason,
            )

    def _dispatch_accepted(self, item: Accepted | Marker) -> None:
        """Build an accepted chunk and :meth:`dispatch` it (event-loop thread only)."""
        self._dispatch(item if isinstance(item, Marker) else item.build())

    def _dispatch(self, item: Chunk | Marker) -> None:
        """Hand an accepted chunk or marker to every runner (event-loop thread only)."""
        for runner in self._runners:
            if isinstance(item, Marker):
                if runner.takes_markers:
                    runner.submit_marker(item)
            else:
                runner.submit(item)

    def _accept_mark(
        self,
        data_id: str,
        label: str,
        timestamp: float | None = None,
        end_time: float | None = None,
        type: str = "Marker",
        description: str = "",
    ) -> Marker:
        """Validate a marker; times in epoch seconds, corrected like the data. Thread-safe.

        Raises:
            TypeError: label, type or description not strings; times not numbers.
            ValueError: empty label, times outside 1990..2100, end_time before timestamp.
            StreamStateError: unknown or finalized stream.
        """
        stream = self._open_stream(data_id)
        ctx = f"data_id={data_id} marker={label!r}"
        for what, value in (("label", label), ("type", type), ("description", description)):
            if not isinstance(value, str):
                raise TypeError(f"{ctx}: {what} must be a str, not {value.__class__.__name__}")
        if not label.strip():
            raise ValueError(f"data_id={data_id}: marker label must not be empty")
        start = time.time() if timestamp is None else timestamp
        times = [start] if end_time is None else [start, end_time]
        for t in times:
            if isinstance(t, bool) or not isinstance(t, int | float):
                raise TypeError(f"{ctx}: marker times must be epoch seconds (float)")
            if not EARLIEST_S <= t <= LATEST_S:
                raise ValueError(f"{ctx}: {t!r} is not Unix epoch seconds between 1990 and 2100")
        if end_time is not None and end_time < start:
            raise ValueError(f"{ctx}: end_time {end_time!r} is before timestamp {start!r}")
        offset = stream.info.clock_offset_ns
        return Marker(
            data_id,
            label,
            seconds_to_ns_scalar(start) + offset,
            None if end_time is None else seconds_to_ns_scalar(end_time) + offset,
            type,
            description,
        )

    async def mark(
        self,
        data_id: str,
        label: str,
        timestamp: float | None = None,
        end_time: float | None = None,
        type: str = "Marker",
        description: str = "",
    ) -> None:
        """Mark an instant (or a span, with ``end_time``) of the stream: a growth step, a shutter.

        Sent to ATLAS as a MarkerPacket on both streams, once data covers its time (a marker
        outside the data's time range would be dropped by ATLAS, so it is held until then, and
        reported if it never is). Atomscale has no markers: it does not receive them.

        Raises:
            TypeError: label, type or description not strings; times not numbers.
            ValueError: empty label, times outside 1990..2100, end_time before timestamp.
            StreamStateError: unknown or finalized stream.
        """
        self._dispatch(self._accept_mark(data_id, label, timestamp, end_time, type, description))

    def _dispatch_threadsafe(self, item: Accepted | Marker) -> None:
        """Hand an accepted chunk or a marker to the runners from another thread, without
        waiting (chunks: use ``_accept_push(..., handoff=True)``, which keeps them in order).

        Items are queued and drained by one loop callback (``handoff.py``), so a burst of
        pushes costs one wake-up.
        """
        assert self._handoff is not None, "start() first"
        self._handoff.put(item)

    def _drain_handoff(self) -> None:
        if self._handoff is not None:
            self._handoff.drain()

    def _over_capacity(self, data_id: str) -> bool:
        """True when a destination holds more pending chunks of this stream than allowed."""
        return any(r.pending_chunks(data_id) > self._max_pending_chunks for r in self._runners)

    async def _wait_for_capacity(self, data_id: str, timeout: float | None = None) -> None:
        """Back-pressure for ``run()``: wait until every destination is down to half the cap
        (hysteresis: one wait per half-window, not one per chunk once the cap is reached).

        Raises:
            DeliveryTimeoutError: no room within ``timeout`` seconds.
        """
        self._drain_handoff()
        limit = self._max_pending_chunks
        try:
            with anyio.fail_after(self.finalize_timeout if timeout is None else timeout):
                for runner in self._runners:
                    await runner.wait_pending_at_most(data_id, limit // 2)
        except TimeoutError as exc:
            raise DeliveryTimeoutError(
                f"data_id={data_id}: destinations stopped taking chunks; "
                f"{self._pending_text(data_id)} (still held, not lost)"
            ) from exc

    def _pending_text(self, data_id: str) -> str:
        return ", ".join(f"{r.name}: {r.pending_chunks(data_id)} pending" for r in self._runners)

    # -- the SDK's calls -----------------------------------------------------------------------

    async def push(
        self,
        data_id: str,
        chunk_index: int,
        channel_name: str,
        timestamps: object,
        values: object,
        units: str | None = None,
    ) -> None:
        """Queue one channel's chunk for every destination; returns without network I/O. Waits
        (bounded) for the local journal only when it falls behind ``spool_max_unwritten_s``, or
        for this chunk's commit with ``durability="commit"``.

        A NaN value is a gap: Atomscale gets ``null``, ATLAS ``DATA_STATUS_MISSING``. The
        masked values of a numpy masked array are sent the same way.

        Raises:
            TypeError: non-numeric timestamps/values, wrong argument types.
            ValueError: empty or mismatched arrays, bad (or masked) timestamps, negative or
                conflicting chunk index, more than ``points_per_chunk`` points.
            StreamStateError: unknown data_id, or the stream is finalized.
        """
        accepted = self._accept_push(data_id, chunk_index, channel_name, timestamps, values, units)
        if accepted is not None:
            self._dispatch_accepted(accepted)
        if self._loop_wait is not None:
            await self._wait_journal_off_loop()

    async def push_multi(self, data_id: str, chunk_index: int, channels: object) -> None:
        """Queue a multi-channel chunk: ``{name: {"timestamps", "values", "units"?}}``.

        Raises:
            TypeError, ValueError, StreamStateError: as :meth:`push`, naming the channel.
        """
        accepted = self._accept_push_multi(data_id, chunk_index, channels)
        if accepted is not None:
            self._dispatch_accepted(accepted)
        if self._loop_wait is not None:
            await self._wait_journal_off_loop()

    def _accept_push_frame(
        self,
        data_id: str,
        chunk_index: int,
        frame: object,
        *,
        time_column: str | None,
        units: Mapping[str, str] | None = None,
        handoff: bool = False,
    ) -> Accepted | None:
        """Like :meth:`_accept_push_multi` for a DataFrame (see :meth:`push_frame`)."""
        self._open_stream(data_id)
        channels = frame_channels(data_id, chunk_index, frame, time_column, units)
        return self._accept_push_multi(data_id, chunk_index, channels, handoff=handoff)

    async def push_frame(
        self,
        data_id: str,
        chunk_index: int,
        frame: object,
        *,
        time_column: str | None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a pandas or polars DataFrame as one multi-channel chunk: every column but
        ``time_column`` is a channel, named after the column.

        The time column holds Unix epoch seconds or datetimes (naive ones are taken as UTC);
        ``time_column=None`` takes a pandas frame's index. Missing values (NaN, None, null) are
        gaps, as in :meth:`push`. Columns become numpy arrays as a whole, with no Python per
        row, then go through :meth:`push_multi`'s validation. Needs pandas or polars
        (``pip install 'labstream[pandas]'`` or ``'labstream[polars]'``).

        Args:
            units: units per column, e.g. ``{"temp": "C"}``.

        Raises:
            TypeError: not a pandas or polars DataFrame; a column that is not numeric (named).
            ValueError: no such time column, a missing time, and whatever :meth:`push_multi`
                refuses, naming the column and the chunk.
            StreamStateError: unknown data_id, or the stream is finalized.
        """
        accepted = self._accept_push_frame(
            data_id, chunk_index, frame, time_column=time_column, units=units
        )
        if accepted is not None:
            self._dispatch_accepted(accepted)

    async def run(
        self,
        data_id: str,
        channel_name: str,
        data_iter: Iterable[object] | AsyncIterable[object],
        units: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Generator mode: push every ``(timestamps, values)`` item as chunks 0, 1, 2, …, then
        wait until every destination has them.

        Items longer than ``points_per_chunk`` are split. Memory stays bounded: iteration pauses
        while a destination has too many chunks pending.

        Raises:
            DeliveryError: a destination rejected some of the chunks (the report names them).
            DeliveryTimeoutError: delivery did not finish within ``timeout`` (default
                ``finalize_timeout``); the chunks are still held and retried.
        """
        before = self._rejected(data_id)
        index = 0
        async for item in _aiter(data_iter):
            for idx, ts, vals in split_run_item(
                data_id, channel_name, item, index, self.points_per_chunk
            ):
                await self.push(data_id, idx, channel_name, ts, vals, units)
                index = idx + 1
            if self._over_capacity(data_id):
                await self._wait_for_capacity(data_id, timeout)
        await self.wait_delivered(data_id, timeout)
        self._raise_if_rejected(data_id, before)

    async def wait_delivered(self, data_id: str, timeout: float | None = None) -> None:
        """Wait until every destination has confirmed or rejected every chunk of the stream.

        Raises:
            DeliveryTimeoutError: not done within ``timeout`` (default ``finalize_timeout``).
        """
        self._drain_handoff()
        try:
            with anyio.fail_after(self.finalize_timeout if timeout is None else timeout):
                for runner in self._runners:
                    await runner.wait_pending_at_most(data_id, 0)
        except TimeoutError as exc:
            raise DeliveryTimeoutError(
                f"data_id={data_id}: not delivered in time; {self._pending_text(data_id)} "
                "(still held and retried, not lost)"
            ) from exc

    def _rejected(self, data_id: str) -> dict[str, int]:
        return {r.name: r.report(data_id).chunks_rejected for r in self._runners}

    def _raise_if_rejected(self, data_id: str, before: dict[str, int]) -> None:
        problems = []
        for r in self._runners:
            rep = r.report(data_id)
            for rej in rep.rejections[before[r.name] :]:
                problems.append(f"{r.name} chunk {rej.chunk_index} ({rej.status}): {rej.reason}")
        if problems:
            raise DeliveryError(
                f"data_id={data_id}: {len(problems)} chunk(s) rejected: " + "; ".join(problems[:5])
            )

    async def finalize(self, data_id: str, timeout: float | None = None) -> StreamReport:
        """Wait for the stream's pending chunks (up to ``timeout`` s), then close it everywhere.

        Every destination is closed whatever happened to the others. Calling it again returns
        the same report.

        Returns:
            What each destination accepted, delivered, retried, rejected and still holds.

        Raises:
            StreamStateError: unknown data_id.
        """
        with anyio.CancelScope(shield=True):
            report = await self._finalize(data_id, timeout)
        return report

    async def _finalize(self, data_id: str, timeout: float | None) -> StreamReport:
        with self._lock:
            stream = self._streams.get(data_id)
            if stream is None:
                raise StreamStateError(f"data_id={data_id}: unknown stream")
            if stream.report is not None:
                return stream.report
            closing = stream.closing
            if closing is None:
                stream.closing = anyio.Event()
            stream.finalized = True
        if closing is not None:  # finalize is already running (e.g. resumed after a crash)
            await closing.wait()
            assert stream.report is not None
            return stream.report
        if self._journal is not None:
            self._journal.finalize_requested(data_id)
        self._drain_handoff()
        deadline = anyio.current_time() + (self.finalize_timeout if timeout is None else timeout)
        async with anyio.create_task_group() as tg:
            for runner in self._runners:
                tg.start_soon(runner.finalize, data_id, deadline)
        if self._journal is not None:
            # The closes on disk before finalize returns: no later process resumes, writes to or
            # closes again a stream this one closed.
            await anyio.to_thread.run_sync(self._journal.sync)
        report = self._snapshot(stream)
        stream.report = report
        assert stream.closing is not None
        stream.closing.set()
        (log.info if report.ok else log.warning)("finalized:\n%s", report)
        return report

    def report(self, data_id: str) -> StreamReport:
        """A snapshot of the stream's delivery so far (also after finalize); loop thread only."""
        self._drain_handoff()
        stream = self._streams.get(data_id)
        if stream is None:
            raise StreamStateError(f"data_id={data_id}: unknown stream")
        return self._snapshot(stream)

    def _snapshot(self, stream: _Stream) -> StreamReport:
        data_id = stream.info.data_id
        journal = self._journal
        not_durable: tuple[int, int, str | None] = (0, 0, None)
        if journal is not None:
            not_durable = journal.not_durable(data_id)
            if not_durable[2] is None:  # nothing kept in memory, but the flag is up
                not_durable = (0, 0, journal.durability_off)
        return StreamReport(
            data_id,
            {r.name: r.report(data_id) for r in self._runners},
            refused_chunks=stream.refused_chunks,
            refused_points=stream.refused_points,
            refusal_reason=stream.refusal_reason,
            not_durable_chunks=not_durable[0],
            not_durable_points=not_durable[1],
            not_durable_reason=not_durable[2],
            journal_waits=stream.journal_waits,
            journal_wait_s=stream.journal_wait_s,
            journal_wait_timeouts=stream.journal_wait_timeouts,
            gaps=stream.gaps,
        )

    def recovered_streams(self) -> list[str]:
        """data_ids this streamer took over from a process that died (see ``spool``)."""
        return [data_id for data_id, s in self._streams.items() if s.recovered]

    def held_chunk_indexes(self, data_id: str) -> set[int]:
        """Chunk indexes of a stream the journal holds: a destination still owes each (and
        recovery delivers it), every other one confirmed it. Empty without a journal."""
        if self._journal is None:
            return set()
        return self._journal.chunk_indexes(data_id)

    def journaled_through(self, data_id: str) -> int | None:
        """For a stream taken over from a process that died before finalizing it anywhere: the
        chunk_index up to which every chunk it pushed is delivered or in the journal (-1:
        none), so that pushing goes on from the next one. None for any other stream."""
        with self._lock:
            s = self._streams.get(data_id)
        return None if s is None or s.finalized else s.journaled_through

    @asynccontextmanager
    async def stream(
        self,
        stream_name: str | None = None,
        synth_source_id: int | None = None,
        physical_sample: str | None = None,
        project_id: str | None = None,
        tags: Sequence[str] | str | None = None,
        *,
        finalize_timeout: float | None = None,
    ) -> AsyncIterator[AsyncStreamHandle]:
        """``async with streamer.stream(...) as s:`` initializes, and finalizes on any exit."""
        data_id = await self.initialize(
            stream_name, synth_source_id, physical_sample, project_id, tags
        )
        handle = AsyncStreamHandle(self, data_id)
        try:
            yield handle
        finally:
            handle.report = await self.finalize(data_id, finalize_timeout)


class AsyncStreamHandle:
    """One stream of an :class:`AsyncTimeseriesStreamer`, with data_id bound."""

    def __init__(self, streamer: AsyncTimeseriesStreamer, data_id: str) -> None:
        self.streamer = streamer
        self.data_id = data_id
        self.report: StreamReport | None = None

    async def push(
        self,
        chunk_index: int,
        channel_name: str,
        timestamps: object,
        values: object,
        units: str | None = None,
    ) -> None:
        await self.streamer.push(self.data_id, chunk_index, channel_name, timestamps, values, units)

    async def push_multi(self, chunk_index: int, channels: object) -> None:
        await self.streamer.push_multi(self.data_id, chunk_index, channels)

    async def push_frame(
        self,
        chunk_index: int,
        frame: object,
        *,
        time_column: str | None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        await self.streamer.push_frame(
            self.data_id, chunk_index, frame, time_column=time_column, units=units
        )

    async def mark(
        self,
        label: str,
        timestamp: float | None = None,
        end_time: float | None = None,
        type: str = "Marker",
        description: str = "",
    ) -> None:
        await self.streamer.mark(self.data_id, label, timestamp, end_time, type, description)

    async def run(
        self,
        channel_name: str,
        data_iter: Iterable[object] | AsyncIterable[object],
        units: str | None = None,
    ) -> None:
        await self.streamer.run(self.data_id, channel_name, data_iter, units)


async def _aiter(items: Iterable[object] | AsyncIterable[object]) -> AsyncIterator[object]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _check_optional(value: object, kind: type, name: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, not {type(value).__name__}")


def _tag_list(tags: Sequence[str] | str | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    out = list(tags)
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, got {tag!r}")
    return out
