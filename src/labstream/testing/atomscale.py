"""A local emulator of the Atomscale HTTP API that labstream talks to.

Why it exists: labstream promises not to lose a point on the way to Atomscale, and that promise can
only be tested against a server that (a) stores exactly what arrived, keyed the way the real service
keys it, and (b) misbehaves on demand — 5xx, 429 with ``Retry-After``, outages, slow answers and
dropped connections — reproducibly. The real service offers neither, so this module serves every
request the official SDK sends (see ``shared/specs/atomscale-http-api.md``) from memory, with a
seeded fault plan, and lets tests, the demo and other processes read back what it received.

Choices callers rely on:

* Every API request needs an ``X-API-KEY`` header (missing: 401); with ``api_key`` set, another
  key gets 403. ``GET /gateway/time`` is a public time service and needs no key (the SDK sends
  none). The key is checked before fault injection: faults count only authorised requests.
* Body problems answer 422 ``{"detail": ...}``; an unknown ``data_id``, sample or tag answers 404.
* Chunks are stored per ``(data_id, channel, chunk_index)``: a re-send replaces the earlier copy.
  A JSON ``null`` value is stored as NaN; ``null`` timestamps are rejected.
* ``/_emulator/...`` readback endpoints need no key, are never faulted and are not recorded.
  ``GET /_emulator/streams/{data_id}`` answers every point of the stream, and each channel's
  chunk-index runs; with ``?points=false`` only the runs and counts (``labstream atomscale show``).

Bounded for a run of days: chunk data is held as float64 arrays (16 bytes a point), or with
``spill=True`` (the default of ``labstream atomscale serve``) in an unlinked temporary file, so
memory keeps a small fixed record per stored channel chunk whatever its size. The request log
keeps only the most recent `DEFAULT_REQUEST_LOG` requests (``request_log``) and at most
`DEFAULT_REQUEST_LOG_BYTES` of their bodies (``request_log_bytes``); older records are dropped,
oldest first, and counted (`requests_seen` against the log's length).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import hmac
import math
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import TracebackType
from typing import Any, Final, TypeGuard

import numpy as np
import orjson
from aiohttp import web
from numpy.typing import NDArray

from ._spill import Spill
from ._threaded import started_in_thread

__all__ = [
    "CHUNK_PATHS",
    "DEFAULT_REQUEST_LOG",
    "DEFAULT_REQUEST_LOG_BYTES",
    "FAULT_KINDS",
    "AtomscaleEmulator",
    "FaultPlan",
    "RecordedRequest",
    "StoredChunk",
    "StoredStream",
    "run_in_thread",
    "serve",
]

API_KEY_HEADER: Final = "X-API-KEY"
#: The two upload endpoints; the default target of a `FaultPlan`.
CHUNK_PATHS: Final[tuple[str, ...]] = ("/tool-state/stream/chunk", "/tool-state/stream/chunk/multi")
#: Requests the request log keeps by default (the most recent ones).
DEFAULT_REQUEST_LOG: Final = 10_000
#: Bytes of request bodies the request log keeps by default.
DEFAULT_REQUEST_LOG_BYTES: Final = 64 * 1024**2
#: Every key `AtomscaleEmulator.fault_counts` may report.
FAULT_KINDS: Final = (
    "latency",
    "down",
    "outage",
    "drop",
    "fail_every",
    "fail_fraction",
    "capacity",
)

_MASK: Final = "***"
# Headers whose values are secrets: never kept in the request log.
_SECRET_HEADERS: Final = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization"})
_INTERNAL_PREFIX: Final = "/_emulator/"
# Answered with or without a key, as the real time service is: the SDK's clock request has none.
_KEYLESS_PATHS: Final = frozenset({"/gateway/time"})
_SEED_INSTRUMENTS: Final = (
    {"synth_source_id": 1, "source_name": "MBE-1 (emulated)", "synth_source_type": "MBE"},
    {"synth_source_id": 2, "source_name": "PLD-1 (emulated)", "synth_source_type": "PLD"},
)
_Floats = NDArray[np.float64]
_BODY_UNSET: Final = object()  # request had no body
_BODY_INVALID: Final = object()  # request body was not JSON
# The parsed body of the request being handled; each aiohttp request runs in its own task/context.
_request_body: contextvars.ContextVar[Any] = contextvars.ContextVar("_request_body")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------------------
# Fault plan


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to break, for requests whose path matches `paths` (``fnmatch`` patterns, ``*`` spans /).

    Matching requests are numbered 1, 2, … from the moment the plan is installed; one request gets
    at most one failure, decided on arrival in this order: `down`, `outage_requests`, drop,
    `fail_every`, `fail_fraction`. Two random numbers are drawn per matching request whatever the
    outcome, so the fate of request *n* depends only on `seed` and *n* (deterministic for
    sequential clients).

    * `fail_status`: status of `fail_every`/`fail_fraction` failures; ``None`` means 503, or 429
      when `retry_after_s` is set. Outages (`down`, `outage_requests`) always answer 503.
    * `retry_after_s`: when set, every failure (outages too) carries ``Retry-After`` rounded up to
      whole seconds.
    * `latency_s`: delay added to every matching request, failed or not.
    * `capacity`: when > 0, the most matching requests handled at once, as a server with a
      capacity: one arriving while that many are being handled (latency included) is answered
      429 at once, with ``Retry-After`` (`retry_after_s`, else 1 s).
    * `outage_requests`: ``(first, last)`` inclusive numbers of matching requests answered 503.
    * `drop_connection_fraction`: share of matching requests whose connection is closed with no
      answer; with `drop_after_handling` the request is processed (stored) first — the "answer lost"
      case that makes a client re-send something the server already has.
    """

    fail_fraction: float = 0.0
    fail_every: int = 0
    fail_status: int | None = None
    retry_after_s: float | None = None
    latency_s: float = 0.0
    capacity: int = 0
    down: bool = False
    outage_requests: tuple[int, int] | None = None
    drop_connection_fraction: float = 0.0
    drop_after_handling: bool = False
    seed: int = 0
    paths: tuple[str, ...] = CHUNK_PATHS

    def __post_init__(self) -> None:
        for name in ("fail_fraction", "drop_connection_fraction"):
            share = getattr(self, name)
            if not _is_number(share) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {share!r}")
        if not _is_int(self.fail_every) or self.fail_every < 0:
            raise ValueError(f"fail_every must be an int >= 0, got {self.fail_every!r}")
        if self.fail_status is not None and (
            not _is_int(self.fail_status) or not 400 <= self.fail_status <= 599
        ):
            raise ValueError(f"fail_status must be an HTTP error status, got {self.fail_status!r}")
        if self.retry_after_s is not None and (
            not _is_number(self.retry_after_s) or not 0 <= self.retry_after_s < math.inf
        ):
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s!r}")
        if not _is_number(self.latency_s) or not 0 <= self.latency_s < math.inf:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s!r}")
        if not isinstance(self.down, bool) or not isinstance(self.drop_after_handling, bool):
            raise ValueError("down and drop_after_handling must be booleans")
        if not _is_int(self.capacity) or self.capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {self.capacity!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.outage_requests is not None:
            window = tuple(self.outage_requests)
            if len(window) != 2 or not all(_is_int(n) for n in window):
                raise ValueError("outage_requests must be (first, last)")
            if not 1 <= window[0] <= window[1]:
                raise ValueError("outage_requests needs 1 <= first <= last")
            object.__setattr__(self, "outage_requests", window)
        # A bare string would silently be treated as a sequence of one-character patterns.
        if isinstance(self.paths, str) or not all(isinstance(p, str) for p in self.paths):
            raise ValueError("paths must be a sequence of path patterns")
        object.__setattr__(self, "paths", tuple(self.paths))

    def applies_to(self, path: str) -> bool:
        """Whether requests to `path` are subject to this plan."""
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.paths)

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (the body `POST /_emulator/faults` accepts)."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> FaultPlan:
        """Build a plan from a JSON object; raises `ValueError` on unknown fields or bad values."""
        if not isinstance(obj, dict):
            raise ValueError("fault plan must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown fault plan fields: {', '.join(unknown)}")
        args = dict(obj)
        if isinstance(args.get("paths"), list):
            args["paths"] = tuple(args["paths"])
        if isinstance(args.get("outage_requests"), list):
            args["outage_requests"] = tuple(args["outage_requests"])
        try:
            return cls(**args)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class _Verdict:
    latency_s: float = 0.0
    kind: str | None = None  # failure kind, one of FAULT_KINDS minus "latency"
    status: int = 200
    retry_after: str | None = None
    drop_after_handling: bool = False
    admitted: bool = False  # counted against the plan's capacity until answered


# --------------------------------------------------------------------------------------------------
# What the emulator keeps


@dataclass(slots=True, eq=False)
class StoredChunk:
    """One channel's slice of a stream, as last received (points in the order they arrived).

    `received` counts accepted copies (re-sends included). `after_finalize` is True when the chunk
    was not yet stored when the stream was finalized — its data was missing at finalize time.
    `size` is its number of points; the points are one float64 array (timestamps, then values),
    or where `spill` holds its bytes.
    """

    channel: str
    chunk_index: int
    units: str | None
    size: int
    held: Any  # the array, or its offset in `spill` (16 bytes a point)
    spill: Spill | None = None
    received: int = 1
    after_finalize: bool = False

    def arrays(self) -> tuple[_Floats, _Floats]:
        """(timestamps, values) as float64 arrays, NaN where null was sent."""
        data: _Floats = self.held
        if self.spill is not None:
            data = np.frombuffer(self.spill.get((self.held, 16 * self.size)), dtype=np.float64)
        return data[: self.size], data[self.size :]

    @property
    def timestamps(self) -> list[float]:
        return self.arrays()[0].tolist()  # type: ignore[no-any-return]

    @property
    def values(self) -> list[float]:
        return self.arrays()[1].tolist()  # type: ignore[no-any-return]


@dataclass(slots=True)
class StoredStream:
    """A stream created by ``initialize`` and everything later attached to it."""

    data_id: str
    processed_data_id: str
    stream_name: str | None
    synth_source_id: int | None
    points_per_chunk: int
    project_id: str | None
    finalized: bool = False
    finalize_calls: int = 0
    #: ``(channel, chunk_index)`` -> chunk.
    chunks: dict[tuple[str, int], StoredChunk] = field(default_factory=dict)
    #: Accepted chunk and chunk/multi requests naming this stream.
    chunk_requests: int = 0
    #: Channel chunks written after finalize (re-sends included); they are stored all the same.
    chunks_after_finalize: int = 0
    physical_sample_id: str | None = None
    tag_ids: list[str] = field(default_factory=list)

    def channels(self) -> list[str]:
        """Channel names with at least one chunk, sorted."""
        return sorted({channel for channel, _ in self.chunks})

    def points(self, channel: str) -> tuple[list[float], list[float]]:
        """Timestamps and values of `channel`, by chunk_index then time; empty if never sent."""
        timestamps: list[_Floats] = []
        values: list[_Floats] = []
        for key in sorted(k for k in self.chunks if k[0] == channel):
            ts, vs = self.chunks[key].arrays()
            order = np.argsort(ts, kind="stable")
            timestamps.append(ts[order])
            values.append(vs[order])
        if not timestamps:
            return [], []
        return np.concatenate(timestamps).tolist(), np.concatenate(values).tolist()

    def chunk_indexes(self) -> dict[str, list[list[int]]]:
        """Each channel's stored chunk indexes as inclusive ``[first, last]`` runs."""
        out: dict[str, list[list[int]]] = {}
        for channel, index in sorted(self.chunks):
            runs = out.setdefault(channel, [])
            if runs and runs[-1][1] == index - 1:
                runs[-1][1] = index
            else:
                runs.append([index, index])
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready overview: metadata and per-channel point/chunk counts."""
        channels: dict[str, dict[str, Any]] = {}
        for (channel, _), chunk in sorted(self.chunks.items()):
            info = channels.setdefault(channel, {"points": 0, "chunks": 0, "units": None})
            info["points"] += chunk.size
            info["chunks"] += 1
            if chunk.units is not None:
                info["units"] = chunk.units
        return {
            "data_id": self.data_id,
            "processed_data_id": self.processed_data_id,
            "stream_name": self.stream_name,
            "synth_source_id": self.synth_source_id,
            "points_per_chunk": self.points_per_chunk,
            "project_id": self.project_id,
            "finalized": self.finalized,
            "finalize_calls": self.finalize_calls,
            "channels": channels,
            "chunks": len(self.chunks),
            "chunk_requests": self.chunk_requests,
            "chunks_after_finalize": self.chunks_after_finalize,
            "physical_sample_id": self.physical_sample_id,
            "tag_ids": list(self.tag_ids),
        }


@dataclass(slots=True)
class RecordedRequest:
    """One API request as the emulator saw it.

    Header names are lower-cased; secret values (``x-api-key``, ``authorization``, …) are ``***``.

    `body` is the parsed JSON body (``None`` when absent or not JSON), parsed from `raw` when
    read. `status` is ``None`` for a dropped connection. `fault` names the injected failure kind,
    if any.
    """

    method: str
    path: str
    headers: dict[str, str]
    received_at: float
    raw: bytes = b""
    status: int | None = None
    fault: str | None = None
    answered_at: float | None = None

    @property
    def body(self) -> Any:
        if not self.raw:
            return None
        try:
            return orjson.loads(self.raw)
        except orjson.JSONDecodeError:
            return None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "received_at": self.received_at,
            "status": self.status,
            "fault": self.fault,
            "answered_at": self.answered_at,
        }


class _ApiError(Exception):
    """Answer the current request with `status` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Body validation helpers


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_object(body: object) -> dict[str, Any]:
    if body is _BODY_UNSET:
        raise _ApiError(422, "request body is required")
    if body is _BODY_INVALID:
        raise _ApiError(422, "request body is not valid JSON")
    if not isinstance(body, dict):
        raise _ApiError(422, "request body must be a JSON object")
    return body


def _get_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _ApiError(422, f"{key!r} must be a non-empty string")
    return value


def _get_int(body: Mapping[str, Any], key: str, *, minimum: int) -> int:
    value = body.get(key)
    if not _is_int(value) or value < minimum:
        raise _ApiError(422, f"{key!r} must be an integer >= {minimum}")
    return int(value)


def _get_id_list(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _ApiError(422, f"{key!r} must be a non-empty list of strings")
    return list(value)


def _parse_points(obj: Mapping[str, Any], where: str) -> tuple[_Floats, str | None]:
    """The chunk's points as one float64 array (timestamps, then values) and its units."""
    timestamps = obj.get("timestamps")
    values = obj.get("values")
    if not isinstance(timestamps, list) or not isinstance(values, list):
        raise _ApiError(422, f"{where}'timestamps' and 'values' must be lists")
    if not timestamps:
        raise _ApiError(422, f"{where}empty chunk")
    if len(timestamps) != len(values):
        raise _ApiError(
            422, f"{where}{len(timestamps)} timestamps but {len(values)} values (lengths differ)"
        )
    if not all(_is_number(t) for t in timestamps):
        raise _ApiError(422, f"{where}timestamps must be numbers")
    if not all(v is None or _is_number(v) for v in values):
        raise _ApiError(422, f"{where}values must be numbers or null")
    units = obj.get("units")
    if units is not None and not isinstance(units, str):
        raise _ApiError(422, f"{where}'units' must be a string")
    # The SDK's encoder writes NaN/inf as null; NaN is the faithful way back.
    data = np.empty(2 * len(timestamps), dtype=np.float64)
    data[: len(timestamps)] = [float(t) for t in timestamps]
    data[len(timestamps) :] = [math.nan if v is None else float(v) for v in values]
    return data, units


def _json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # orjson writes NaN as null, which is also what the real service's clients send.
    return web.Response(
        body=orjson.dumps(obj), status=status, headers=headers, content_type="application/json"
    )


def _same_secret(given: str, expected: str) -> bool:
    # Bytes, because compare_digest rejects non-ASCII str; constant time as a matter of habit.
    encode = "utf-8", "surrogateescape"
    return hmac.compare_digest(given.encode(*encode), expected.encode(*encode))


def _mask_headers(request: web.Request) -> dict[str, str]:
    return {
        name.lower(): (_MASK if name.lower() in _SECRET_HEADERS else value)
        for name, value in request.headers.items()
    }


# --------------------------------------------------------------------------------------------------
# The emulator


class AtomscaleEmulator:
    """An in-memory Atomscale HTTP API on aiohttp; use ``async with`` or `start`/`stop`.

    State is guarded by a `threading.Lock`, so another thread (see `run_in_thread`) may read
    `streams`, `points`, `summary`, `fault_counts` and set `faults` while the server runs.

    Chunk data is held as float64 arrays, or with `spill` in an unlinked temporary file. The
    request log (`requests`) keeps the last `request_log` requests and at most `request_log_bytes`
    of their bodies; older records are dropped oldest first and counted in `requests_seen`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        clock_offset_s: float = 0.0,
        spill: bool = False,
        request_log: int = DEFAULT_REQUEST_LOG,
        request_log_bytes: int = DEFAULT_REQUEST_LOG_BYTES,
    ) -> None:
        if not _is_int(request_log) or request_log < 0:
            raise ValueError(f"request_log must be an int >= 0, got {request_log!r}")
        if not _is_int(request_log_bytes) or request_log_bytes < 0:
            raise ValueError(f"request_log_bytes must be an int >= 0, got {request_log_bytes!r}")
        self.host = host
        self._requested_port = port
        self._api_key = api_key
        self.clock_offset_s = clock_offset_s
        self._lock = threading.Lock()
        self._streams: dict[str, StoredStream] = {}
        self._samples: dict[str, str] = {}  # physical_sample_id -> name
        self._tags: dict[str, str] = {}  # tag id -> name
        self._tracking: dict[str, dict[str, bool]] = {}  # project -> sample -> set_active
        self._plan = FaultPlan()
        self._rng = random.Random(0)
        self._matched = 0
        self._handling = 0  # requests admitted under the plan's capacity, not answered yet
        self._fault_counts: Counter[str] = Counter()
        self.faults = faults if faults is not None else FaultPlan()
        self._spill = Spill("labstream-atomscale-") if spill else None
        self._log: deque[RecordedRequest] = deque()
        self._log_bytes = 0
        self._log_limits = (request_log, request_log_bytes)
        self._requests_seen = 0
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; `OSError` if the port is taken, `RuntimeError` if already started."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        # No access log: it is noise in tests, and nothing here should ever print request details.
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            # A cloud service accepts thousands of connections at once; aiohttp's default
            # backlog (128) would drop the SYNs of a burst and stall it a second.
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=4096)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving (idempotent). Stored data stays readable."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> AtomscaleEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; point ``AS_API_ENDPOINT`` here."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- fault plan --------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        return self._plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        """Install `plan`: request numbering and the random sequence restart; counts are kept."""
        if not isinstance(plan, FaultPlan):
            raise TypeError("faults must be a FaultPlan")
        with self._lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)
            self._matched = 0

    @property
    def fault_counts(self) -> dict[str, int]:
        """Injected faults by kind (see `FAULT_KINDS`), since construction."""
        with self._lock:
            return dict(self._fault_counts)

    def _decide(self, path: str) -> _Verdict:
        with self._lock:
            plan = self._plan
            if not plan.applies_to(path):
                return _Verdict()
            self._matched += 1
            n = self._matched
            drop_roll, fail_roll = self._rng.random(), self._rng.random()
            kind: str | None = None
            if plan.down:
                kind = "down"
            elif plan.outage_requests and plan.outage_requests[0] <= n <= plan.outage_requests[1]:
                kind = "outage"
            elif drop_roll < plan.drop_connection_fraction:
                kind = "drop"
            elif plan.fail_every and n % plan.fail_every == 0:
                kind = "fail_every"
            elif fail_roll < plan.fail_fraction:
                kind = "fail_fraction"
            admitted = False
            if plan.capacity and kind is None:
                if self._handling >= plan.capacity:
                    kind = "capacity"
                else:
                    admitted = True
                    self._handling += 1
            if plan.latency_s > 0 and kind != "capacity":
                self._fault_counts["latency"] += 1
            if kind is not None:
                self._fault_counts[kind] += 1
        if kind == "capacity":
            return _Verdict(0.0, kind, 429, str(math.ceil(plan.retry_after_s or 1)))
        if kind in ("down", "outage"):
            status = 503
        elif plan.fail_status is not None:
            status = plan.fail_status
        else:
            status = 429 if plan.retry_after_s is not None else 503
        retry_after = None
        if plan.retry_after_s is not None:
            retry_after = str(math.ceil(plan.retry_after_s))
        return _Verdict(
            plan.latency_s,
            kind,
            status if kind else 200,
            retry_after,
            plan.drop_after_handling,
            admitted,
        )

    # -- readback ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent API requests (readback endpoints excluded), oldest first: a snapshot.

        At most ``request_log`` of them, with at most ``request_log_bytes`` of bodies between
        them; `requests_seen` counts every one.
        """
        with self._lock:
            return list(self._log)

    @property
    def requests_seen(self) -> int:
        """API requests received since construction, those dropped from the log included."""
        with self._lock:
            return self._requests_seen

    def _log_request(self, record: RecordedRequest) -> None:
        count_limit, bytes_limit = self._log_limits
        with self._lock:
            self._requests_seen += 1
            self._log.append(record)
            self._log_bytes += len(record.raw)
            while self._log and (len(self._log) > count_limit or self._log_bytes > bytes_limit):
                self._log_bytes -= len(self._log.popleft().raw)

    @property
    def streams(self) -> Mapping[str, StoredStream]:
        """data_id -> stream: a snapshot of the index; the stream objects themselves are live."""
        with self._lock:
            return dict(self._streams)

    def points(self, data_id: str, channel: str) -> tuple[list[float], list[float]]:
        """(timestamps, values) of a channel by chunk_index then time; NaN where null was sent.

        Raises `KeyError` for an unknown data_id; an unknown channel gives two empty lists.
        """
        with self._lock:
            return self._streams[data_id].points(channel)

    def summary(self) -> dict[str, Any]:
        """What ``GET /_emulator/streams`` answers."""
        with self._lock:
            return {
                "streams": {data_id: s.summary() for data_id, s in self._streams.items()},
                "requests": self._requests_seen,
                "requests_logged": len(self._log),
                "faults": dict(self._fault_counts),
                "fault_plan": self._plan.to_json(),
            }

    @property
    def physical_samples(self) -> dict[str, str]:
        """physical_sample_id -> name."""
        with self._lock:
            return dict(self._samples)

    @property
    def tags(self) -> dict[str, str]:
        """tag id -> name."""
        with self._lock:
            return dict(self._tags)

    @property
    def tracking_samples(self) -> dict[str, dict[str, bool]]:
        """project_id -> {physical_sample_id: set_active}."""
        with self._lock:
            return {project: dict(samples) for project, samples in self._tracking.items()}

    # -- HTTP plumbing -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
            if request.path.startswith(_INTERNAL_PREFIX):
                return await _answer_errors(request, handler)
            return await self._serve_api(request, handler)

        app = web.Application(middlewares=[middleware], client_max_size=64 * 1024**2)
        add = app.router
        add.add_post("/tool-state/stream/initialize", self._initialize)
        add.add_post("/tool-state/stream/chunk", self._chunk)
        add.add_post("/tool-state/stream/chunk/multi", self._chunk_multi)
        add.add_post("/tool-state/stream/{data_id}/finalize", self._finalize)
        add.add_get("/gateway/time", self._gateway_time)
        add.add_get("/physical_samples/", self._list_samples)
        add.add_post("/physical_samples/", self._create_sample)
        add.add_post("/data_entries/physical_sample", self._link_sample)
        add.add_post("/projects/{project_id}/configuration/tracking_samples", self._track_sample)
        add.add_get("/tags/", self._list_tags)
        add.add_post("/tags/", self._create_tag)
        add.add_post("/tags/data-items/", self._link_tags)
        add.add_get("/instruments/synthesis", self._instruments)
        add.add_get("/_emulator/streams", self._emu_streams)
        add.add_get("/_emulator/streams/{data_id}", self._emu_stream)
        add.add_get("/_emulator/faults", self._emu_get_faults)
        add.add_post("/_emulator/faults", self._emu_set_faults)
        add.add_get("/_emulator/requests", self._emu_requests)
        return app

    async def _serve_api(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=_mask_headers(request),
            received_at=time.time(),
        )
        key = request.headers.get(API_KEY_HEADER)
        key_ok = request.path in _KEYLESS_PATHS or (
            bool(key) and (self._api_key is None or _same_secret(key or "", self._api_key))
        )
        verdict = _Verdict()
        if key_ok:
            # Decided before any await so the n-th arriving request gets the n-th verdict.
            verdict = self._decide(request.path)
        record.fault = verdict.kind
        raw = record.raw = await request.read()
        self._log_request(record)
        body: Any = _BODY_UNSET
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _BODY_INVALID
        _request_body.set(body)

        response: web.StreamResponse
        if not key_ok and not key:
            response = _json_response({"detail": f"missing {API_KEY_HEADER} header"}, 401)
        elif not key_ok:
            response = _json_response({"detail": "invalid API key"}, 403)
        else:
            try:
                response = await self._answer(request, handler, verdict)
            finally:
                if verdict.admitted:
                    with self._lock:
                        self._handling -= 1
            if verdict.kind == "drop":
                return response  # no answer reached the client: no status to record
        record.status, record.answered_at = response.status, time.time()
        return response

    async def _answer(
        self, request: web.Request, handler: Any, verdict: _Verdict
    ) -> web.StreamResponse:
        """The answer to a request with a key, as the verdict says."""
        if verdict.latency_s:
            await asyncio.sleep(verdict.latency_s)
        if verdict.kind == "drop":
            if verdict.drop_after_handling:
                await _answer_errors(request, handler)
            return _drop(request)
        if verdict.kind is not None:
            headers = {"Retry-After": verdict.retry_after} if verdict.retry_after else None
            detail = f"injected fault: {verdict.kind}"
            return _json_response({"detail": detail}, verdict.status, headers)
        return await _answer_errors(request, handler)

    # -- stream endpoints --------------------------------------------------------------------------

    async def _initialize(self, request: web.Request) -> web.Response:
        body = _require_object(_request_body.get(_BODY_UNSET))
        # stream_name and project_id may be null; synth_source_id is left out when not given.
        for key in ("stream_name", "project_id"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise _ApiError(422, f"{key!r} must be a string or null")
        synth_source_id = body.get("synth_source_id")
        if synth_source_id is not None:
            synth_source_id = _get_int(body, "synth_source_id", minimum=0)
        stream = StoredStream(
            data_id=str(uuid.uuid4()),
            processed_data_id=str(uuid.uuid4()),
            stream_name=body.get("stream_name"),
            synth_source_id=synth_source_id,
            points_per_chunk=_get_int(body, "points_per_chunk", minimum=1),
            project_id=body.get("project_id"),
        )
        with self._lock:
            self._streams[stream.data_id] = stream
        return _json_response(
            {"data_id": stream.data_id, "processed_data_id": stream.processed_data_id}
        )

    async def _chunk(self, request: web.Request) -> web.Response:
        body = _require_object(_request_body.get(_BODY_UNSET))
        data_id = _get_str(body, "data_id")
        chunk_index = _get_int(body, "chunk_index", minimum=0)
        channel = _get_str(body, "channel_name")
        self._store(data_id, chunk_index, [(channel, *_parse_points(body, ""))])
        return _json_response({})

    async def _chunk_multi(self, request: web.Request) -> web.Response:
        body = _require_object(_request_body.get(_BODY_UNSET))
        data_id = _get_str(body, "data_id")
        chunk_index = _get_int(body, "chunk_index", minimum=0)
        channels = body.get("channels")
        if not isinstance(channels, dict) or not channels:
            raise _ApiError(422, "'channels' must be a non-empty object")
        parsed = []
        # Validate every channel before storing any, so a bad request changes nothing.
        for name, obj in channels.items():
            if not name.strip() or not isinstance(obj, dict):
                raise _ApiError(422, f"channel {name!r}: must be a named object")
            parsed.append((name, *_parse_points(obj, f"channel {name!r}: ")))
        self._store(data_id, chunk_index, parsed)
        return _json_response({})

    def _store(
        self,
        data_id: str,
        chunk_index: int,
        channels: list[tuple[str, _Floats, str | None]],
    ) -> None:
        spill = self._spill
        with self._lock:
            stream = self._streams.get(data_id)
            if stream is None:
                raise _ApiError(404, f"unknown data_id {data_id!r}")
            stream.chunk_requests += 1
            for name, data, units in channels:
                channel = sys.intern(name)  # one copy of a name that keys every chunk
                key = (channel, chunk_index)
                previous = stream.chunks.get(key)
                stream.chunks[key] = StoredChunk(
                    channel=channel,
                    chunk_index=chunk_index,
                    units=None if units is None else sys.intern(units),
                    size=len(data) // 2,
                    held=data if spill is None else spill.put(data.tobytes())[0],
                    spill=spill,
                    received=previous.received + 1 if previous else 1,
                    after_finalize=previous.after_finalize if previous else stream.finalized,
                )
                if stream.finalized:
                    stream.chunks_after_finalize += 1

    async def _finalize(self, request: web.Request) -> web.Response:
        data_id = request.match_info["data_id"]
        with self._lock:
            stream = self._streams.get(data_id)
            if stream is None:
                raise _ApiError(404, f"unknown data_id {data_id!r}")
            stream.finalized = True
            stream.finalize_calls += 1
        return _json_response({})

    async def _gateway_time(self, request: web.Request) -> web.Response:
        received = (time.time() + self.clock_offset_s) * 1000.0
        transmitted = (time.time() + self.clock_offset_s) * 1000.0
        return _json_response(
            {"receivedAtUnixMs": received, "transmittedAtUnixMs": transmitted},
            headers={"Cache-Control": "no-store"},
        )

    # -- samples, projects, tags, instruments ------------------------------------------------------

    async def _list_samples(self, request: web.Request) -> web.Response:
        with self._lock:
            return _json_response([{"id": i, "name": n} for i, n in self._samples.items()])

    async def _create_sample(self, request: web.Request) -> web.Response:
        name = _get_str(_require_object(_request_body.get(_BODY_UNSET)), "name").strip()
        with self._lock:
            for sample_id, existing in self._samples.items():
                if existing.strip().casefold() == name.casefold():
                    raise _ApiError(409, {"physical_sample_id": sample_id})
            sample_id = str(uuid.uuid4())
            self._samples[sample_id] = name
        return _json_response({"physical_sample_id": sample_id})

    async def _link_sample(self, request: web.Request) -> web.Response:
        body = _require_object(_request_body.get(_BODY_UNSET))
        data_ids = _get_id_list(body, "data_ids")
        sample_id = _get_str(body, "physical_sample_id")
        with self._lock:
            if sample_id not in self._samples:
                raise _ApiError(404, f"unknown physical_sample_id {sample_id!r}")
            streams = self._known_streams(data_ids)
            for stream in streams:
                stream.physical_sample_id = sample_id
        return _json_response({})

    async def _track_sample(self, request: web.Request) -> web.Response:
        project_id = request.match_info["project_id"]
        body = _require_object(_request_body.get(_BODY_UNSET))
        sample_id = _get_str(body, "physical_sample_id")
        set_active = body.get("set_active", False)
        if not isinstance(set_active, bool):
            raise _ApiError(422, "'set_active' must be a boolean")
        with self._lock:
            if sample_id not in self._samples:
                raise _ApiError(404, f"unknown physical_sample_id {sample_id!r}")
            self._tracking.setdefault(project_id, {})[sample_id] = set_active
        return _json_response({})

    async def _list_tags(self, request: web.Request) -> web.Response:
        with self._lock:
            return _json_response([{"id": i, "name": n} for i, n in self._tags.items()])

    async def _create_tag(self, request: web.Request) -> web.Response:
        name = _get_str(_require_object(_request_body.get(_BODY_UNSET)), "name").strip()
        with self._lock:
            for tag_id, existing in self._tags.items():
                if existing.casefold() == name.casefold():
                    raise _ApiError(409, {"id": tag_id})
            tag_id = str(uuid.uuid4())
            self._tags[tag_id] = name
        return _json_response({"id": tag_id})

    async def _link_tags(self, request: web.Request) -> web.Response:
        body = _require_object(_request_body.get(_BODY_UNSET))
        data_ids = _get_id_list(body, "data_ids")
        tag_ids = _get_id_list(body, "tag_ids")
        with self._lock:
            unknown = [t for t in tag_ids if t not in self._tags]
            if unknown:
                raise _ApiError(404, f"unknown tag ids: {', '.join(unknown)}")
            for stream in self._known_streams(data_ids):
                stream.tag_ids.extend(t for t in dict.fromkeys(tag_ids) if t not in stream.tag_ids)
        return _json_response({})

    def _known_streams(self, data_ids: list[str]) -> list[StoredStream]:
        # Caller holds the lock. All-or-nothing: one unknown id links nothing.
        unknown = [d for d in data_ids if d not in self._streams]
        if unknown:
            raise _ApiError(404, f"unknown data_ids: {', '.join(unknown)}")
        return [self._streams[d] for d in data_ids]

    async def _instruments(self, request: web.Request) -> web.Response:
        return _json_response(list(_SEED_INSTRUMENTS))

    # -- readback endpoints ------------------------------------------------------------------------

    async def _emu_streams(self, request: web.Request) -> web.Response:
        return _json_response(self.summary())

    async def _emu_stream(self, request: web.Request) -> web.Response:
        data_id = request.match_info["data_id"]
        with self._lock:
            stream = self._streams.get(data_id)
            if stream is None:
                raise _ApiError(404, f"unknown data_id {data_id!r}")
            result = stream.summary()
            # ?points=false: the shape of what is stored without every point of it.
            with_points = request.query.get("points", "true").lower() not in ("false", "0", "no")
            runs = stream.chunk_indexes()
            for channel, info in result["channels"].items():
                info["chunk_indexes"] = runs[channel]
                if with_points:
                    info["timestamps"], info["values"] = stream.points(channel)
        return _json_response(result)

    async def _emu_get_faults(self, request: web.Request) -> web.Response:
        return _json_response({"fault_plan": self.faults.to_json(), "faults": self.fault_counts})

    async def _emu_set_faults(self, request: web.Request) -> web.Response:
        try:
            plan = FaultPlan.from_json(orjson.loads(await request.read() or b"{}"))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise _ApiError(422, str(exc)) from exc
        self.faults = plan
        return _json_response({"fault_plan": plan.to_json()})

    async def _emu_requests(self, request: web.Request) -> web.Response:
        return _json_response([r.to_json() for r in list(self.requests)])


async def _answer_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Run `handler`, turning errors into JSON ``{"detail": ...}`` answers like the real API's."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return _json_response({"detail": exc.detail}, exc.status)
    except web.HTTPException as exc:  # unknown route, wrong method, body too large
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _json_response({"detail": exc.reason}, exc.status, headers)


def _drop(request: web.Request) -> web.Response:
    # Closing the transport makes aiohttp's attempt to send the returned response fail quietly, so
    # the client sees the connection end with no answer at all.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


# --------------------------------------------------------------------------------------------------
# Running it outside an event loop


@contextlib.contextmanager
def run_in_thread(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | None = None,
    api_key: str | None = None,
    clock_offset_s: float = 0.0,
    timeout_s: float = 10.0,
    spill: bool = False,
    request_log: int = DEFAULT_REQUEST_LOG,
) -> Iterator[AtomscaleEmulator]:
    """Run an emulator on its own event loop in a daemon thread; yields it started.

    For synchronous code (the demo, the CLI, non-async tests). Read state through `streams`,
    `points`, `summary` and `fault_counts`, which take the emulator's lock; iterating a
    `StoredStream.chunks` dict directly can race with a request being stored.
    """
    emulator = AtomscaleEmulator(
        host=host,
        port=port,
        faults=faults,
        api_key=api_key,
        clock_offset_s=clock_offset_s,
        spill=spill,
        request_log=request_log,
    )
    with started_in_thread(emulator, name="atomscale-emulator", timeout_s=timeout_s) as running:
        yield running


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    faults: FaultPlan | None = None,
    *,
    api_key: str | None = None,
    clock_offset_s: float = 0.0,
    spill: bool = True,
    request_log: int = DEFAULT_REQUEST_LOG,
    json_lines: bool = False,
) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the URL first (``labstream atomscale serve``).

    Chunk data is spilled to a temporary file (`AtomscaleEmulator`'s ``spill``) unless told not to.
    With ``json_lines``, one JSON line when ready (``event: ready``, url, host, port) and one on
    exit (``event: stopped``: what ``GET /_emulator/streams`` answers).
    """
    emulator = AtomscaleEmulator(
        host=host,
        port=port,
        faults=faults,
        api_key=api_key,
        clock_offset_s=clock_offset_s,
        spill=spill,
        request_log=request_log,
    )

    async def main() -> None:
        async with emulator:
            if json_lines:
                ready = {"event": "ready", "url": emulator.url, "host": host, "port": emulator.port}
                print(orjson.dumps(ready).decode(), flush=True)
            else:
                print(
                    f"Atomscale emulator listening on {emulator.url} (Ctrl-C to stop)", flush=True
                )
            await until_stopped()
            if json_lines:  # before the spill file goes
                print(orjson.dumps({"event": "stopped", **emulator.summary()}).decode(), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


async def until_stopped() -> None:
    """Until SIGTERM (a service stopping) or Ctrl-C: asyncio.run cancels the main task on
    Ctrl-C, and that cancellation is taken as the stop, so what follows (a summary) still runs."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C only
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
