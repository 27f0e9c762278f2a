"""The Atomscale destination: the same HTTP requests the official SDK sends.

Every path, header and JSON key here follows ``specs/atomscale-http-api.md`` so labstream can be
pointed at the real service. Bodies are serialised with orjson straight from numpy arrays (NaN/inf
become ``null``, as the SDK writes them). Whichever HTTP client sent the request
(``sinks/http.py``), its :class:`TransportError` and the HTTP status are translated here into
labstream's errors, with the response body as the reason and the API key scrubbed from anything
that could echo it.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from ..chunk import Chunk, RawSeries, as_float_array
from ..clock import TimeSample
from ..errors import DestinationError, RejectedError, TransientDestinationError
from ..journal import Journal
from ..retry import RetryPolicy, Sleep
from ..timebase import Float64Array
from .base import StreamInfo
from .curl import CurlClient
from .http import HttpAnswer, HttpClient, TransportError
from .proxy import proxy_for

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("labstream.atomscale")

DEFAULT_ENDPOINT = "https://api.atomscale.ai"
NAME = "atomscale"
# StreamInfo.extra keys: Atomscale could not create the stream at initialize (it is created when
# the runner opens it), and the data_id Atomscale gave it then.
CREATE_LATER = "atomscale_create_later"
ATOMSCALE_DATA_ID = "atomscale_data_id"
_TRANSIENT_STATUSES = frozenset({408, 429})
_MAX_DETAIL = 2000
CHUNK_PATH = "/tool-state/stream/chunk"
MULTI_CHUNK_PATH = "/tool-state/stream/chunk/multi"


def _retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After`` (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def chunk_body(chunk: Chunk) -> dict[str, Any]:
    """The JSON body of a chunk upload, keys as the SDK writes them (``units`` left out if None)."""
    if chunk.multi:
        channels: dict[str, dict[str, Any]] = {}
        # Channels sharing timestamps (one instrument clock) share their conversion and their
        # JSON: formatting the same floats once per channel was most of a channel's cost.
        seconds: dict[int, orjson.Fragment] = {}
        for ch in chunk.channels:
            ts = seconds.get(id(ch.timestamps_ns))
            if ts is None:
                ts = seconds[id(ch.timestamps_ns)] = orjson.Fragment(
                    orjson.dumps(ch.timestamps_s(), option=orjson.OPT_SERIALIZE_NUMPY)
                )
            spec: dict[str, Any] = {"timestamps": ts, "values": ch.values}
            if ch.units is not None:
                spec["units"] = ch.units
            channels[ch.name] = spec
        return {"data_id": chunk.data_id, "chunk_index": chunk.chunk_index, "channels": channels}
    (ch,) = chunk.channels
    return _one_channel(
        chunk.data_id, chunk.chunk_index, ch.name, ch.units, ch.timestamps_s(), ch.values
    )


def _one_channel(
    data_id: str,
    chunk_index: int,
    name: str,
    units: str | None,
    timestamps_s: Float64Array,
    values: Float64Array,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data_id": data_id,
        "chunk_index": chunk_index,
        "channel_name": name,
        "timestamps": timestamps_s,
        "values": values,
    }
    if units is not None:
        body["units"] = units
    return body


def chunk_path(chunk: Chunk) -> str:
    return MULTI_CHUNK_PATH if chunk.multi else CHUNK_PATH


def chunk_content(chunk: Chunk) -> bytes:
    """The request body of a chunk upload, as bytes."""
    return orjson.dumps(chunk_body(chunk), option=orjson.OPT_SERIALIZE_NUMPY)


def series_content(data_id: str, chunk_index: int, series: RawSeries) -> bytes:
    """The body of a one-channel chunk straight from its validated input, for a chunk with no
    clock offset: the bytes :func:`chunk_content` makes once it is built, since seconds -> ns ->
    seconds gives back every timestamp validation lets through (``timebase.py``). Skipping the
    build and the two conversions took a quarter off ``run()``'s time per chunk."""
    body = _one_channel(
        data_id,
        chunk_index,
        series.name,
        series.units,
        as_float_array(series.timestamps_s),
        as_float_array(series.values),
    )
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _within_descriptors(wanted: int) -> int:
    """At most half the process's file descriptors: over HTTP/1.1 each upload in flight holds a
    connection, and running out of descriptors would fail requests rather than slow them."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft // 2))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Trim, drop empties, drop case-insensitive duplicates (keeping the first spelling)."""
    seen: set[str] = set()
    out: list[str] = []
    for tag in tags:
        name = tag.strip()
        if name and name.casefold() not in seen:
            seen.add(name.casefold())
            out.append(name)
    return out


class AtomscaleSink:
    """HTTP client for Atomscale's streaming endpoints.

    Args:
        api_key: sent as ``X-API-KEY``; kept out of every repr, log line and error.
        endpoint: base URL.
        policy: retry policy for the control requests made here (create, link, finalize); chunk
            uploads are retried by the delivery runner with the same policy.
        sleep: injected sleep for those retries.
        transport: an httpx transport (tests pass ``httpx.MockTransport``); requests then go
            through it instead of libcurl (:mod:`labstream.sinks.curl`).
        max_concurrency: the most chunk uploads in flight (the adaptive window's ceiling).
        proxy: the proxy URL for every request, ``""`` for none; None: from the environment.
        timeout_s: per-request timeout (the SDK uses 30 s).
        now: wall clock, injected for the clock-exchange tests.
    """

    name = NAME
    takes_data_after_close = True  # chunks uploaded after finalize are still stored

    def __init__(
        self,
        api_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        policy: RetryPolicy | None = None,
        sleep: Sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrency: int = 2048,
        timeout_s: float = 30.0,
        now: Callable[[], float] = time.time,
        proxy: str | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._api_key = api_key
        self._journal = journal
        # labstream data_id -> Atomscale's, for streams Atomscale could not create at initialize
        self._remote: dict[str, str] = {}
        self.endpoint = endpoint.rstrip("/")
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self.max_concurrency = _within_descriptors(max_concurrency)
        self._now = now
        headers = {"X-API-KEY": api_key}
        self.proxy = proxy_for(self.endpoint, proxy)
        self._resent: dict[str, int] = {}  # data_id -> requests the HTTP client sent again
        self._client: HttpClient
        if transport is not None:
            # Imported only here: httpx adds objects every full garbage collection scans.
            from .httpx_client import HttpxClient

            self._client = HttpxClient(
                self.endpoint, headers, transport=transport, timeout_s=timeout_s
            )
        else:
            self._client = CurlClient(
                self.endpoint,
                headers,
                max_connections=max_concurrency + 2,
                timeout_s=timeout_s,
                proxy=self.proxy,
            )

    def __repr__(self) -> str:
        return f"AtomscaleSink(endpoint={self.endpoint!r}, api_key=***)"

    # -- one request, translated ---------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        data_id: str | None = None,
        chunk_index: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        """Send one request; raise labstream errors for anything but a 2xx.

        Raises:
            TransientDestinationError: transport error, timeout, 5xx, 408, 429.
            RejectedError: any other non-2xx answer.
        """
        req_headers = dict(headers or {})
        content = None
        if body is not None:
            content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            req_headers["Content-Type"] = "application/json"
        try:
            answer: HttpAnswer | TransportError = await self._client.request(
                method, path, content, req_headers
            )
        except TransportError as exc:
            answer = exc
        if answer.resent and data_id is not None:
            self._resent[data_id] = self._resent.get(data_id, 0) + answer.resent
        error = self.error_of(answer, method, path, data_id, chunk_index)
        if error is not None:
            raise error
        assert isinstance(answer, HttpAnswer)
        return answer

    def error_of(
        self,
        answer: HttpAnswer | TransportError,
        method: str,
        path: str,
        data_id: str | None = None,
        chunk_index: int | None = None,
    ) -> DestinationError | None:
        """The labstream error a request's answer means; None for a 2xx.

        A transport error, timeout, 5xx, 408 or 429 is transient; any other non-2xx is a
        rejection, with the response body (API key scrubbed) as the reason.
        """
        if isinstance(answer, HttpAnswer) and answer.status < 300:
            return None  # first: most answers, and nothing below is needed for them
        what = f"{method} {path}"
        ctx: dict[str, Any] = {"destination": NAME, "data_id": data_id, "chunk_index": chunk_index}
        if isinstance(answer, TransportError):
            return TransientDestinationError(
                f"{what} {'timed out' if answer.timed_out else 'failed'}",
                detail=self._scrub(str(answer)),
                timed_out=answer.timed_out,
                **ctx,
            )
        status = answer.status
        detail = self._scrub(answer.text[:_MAX_DETAIL])
        if status >= 500 or status in _TRANSIENT_STATUSES:
            return TransientDestinationError(
                f"{what} answered {status}",
                status=status,
                detail=detail,
                retry_after=_retry_after(answer.headers.get("Retry-After")),
                **ctx,
            )
        return RejectedError(f"{what} was refused", status=status, detail=detail, **ctx)

    async def _call(self, method: str, path: str, **kw: Any) -> HttpAnswer:
        """A control request, retried with the policy (chunks are retried by the runner)."""
        async for attempt in self._policy.retrying(sleep=self._sleep):
            with attempt:
                return await self._request(method, path, **kw)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    @staticmethod
    def _json(resp: HttpAnswer, what: str) -> Any:
        try:
            return orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise RejectedError(
                f"{what} answered something that is not JSON",
                destination=NAME,
                status=resp.status,
                detail=resp.text[:200],
            ) from None

    # -- stream lifecycle ----------------------------------------------------------------------

    async def create_stream(
        self,
        *,
        stream_name: str | None,
        synth_source_id: int | None,
        points_per_chunk: int,
        project_id: str | None,
        physical_sample: str | None,
        tags: Sequence[str],
    ) -> str:
        """Create the stream and make its links; return its data_id.

        The sample and tags are resolved (and created if new) before the stream exists, so a bad one
        creates nothing. If a link fails after creation, the new stream is finalized and the error
        names its data_id, as the SDK does.

        Raises:
            DestinationError: the stream could not be created or linked.
        """
        sample_id = await self._resolve_sample(physical_sample) if physical_sample else None
        tag_ids = await self._resolve_tags(tags) if tags else []
        body: dict[str, Any] = {"stream_name": stream_name}
        if synth_source_id is not None:
            body["synth_source_id"] = synth_source_id
        body["points_per_chunk"] = points_per_chunk
        body["project_id"] = project_id
        resp = await self._call("POST", "/tool-state/stream/initialize", body=body)
        answer = self._json(resp, "initialize")
        data_id = answer.get("data_id") if isinstance(answer, dict) else None
        if not isinstance(data_id, str) or not data_id:
            raise RejectedError(
                "initialize answered without a data_id", destination=NAME, detail=resp.text[:200]
            )
        try:
            if sample_id is not None:
                await self._call(
                    "POST",
                    "/data_entries/physical_sample",
                    body={"data_ids": [data_id], "physical_sample_id": sample_id},
                    data_id=data_id,
                )
                if project_id:
                    await self._call(
                        "POST",
                        f"/projects/{project_id}/configuration/tracking_samples",
                        body={"physical_sample_id": sample_id, "set_active": True},
                        data_id=data_id,
                    )
            if tag_ids:
                await self._call(
                    "POST",
                    "/tags/data-items/",
                    body={"data_ids": [data_id], "tag_ids": tag_ids},
                    data_id=data_id,
                )
        except DestinationError as exc:
            try:
                await self._call("POST", f"/tool-state/stream/{data_id}/finalize", data_id=data_id)
            except DestinationError as fin_exc:
                log.error("could not finalize stream %s after a failed link: %s", data_id, fin_exc)
            raise DestinationError(
                f"stream {data_id} was created but linking failed, so it was finalized",
                destination=NAME,
                data_id=data_id,
                detail=str(exc),
            ) from exc
        return data_id

    async def _resolve_sample(self, sample: str) -> str:
        wanted = sample.strip()
        listing = self._json(await self._call("GET", "/physical_samples/"), "list physical samples")
        known = listing if isinstance(listing, list) else []
        if _is_uuid(wanted):
            for item in known:
                if str(item.get("id", "")).lower() == wanted.lower():
                    return str(item["id"])
            raise RejectedError(
                f"physical sample {wanted} does not exist", destination=NAME, status=404
            )
        for item in known:
            if str(item.get("name", "")).strip().casefold() == wanted.casefold():
                return str(item["id"])
        try:
            resp = await self._call("POST", "/physical_samples/", body={"name": wanted})
        except RejectedError as exc:
            if exc.status == 409 and exc.detail:
                existing = orjson.loads(exc.detail).get("detail", {})
                if isinstance(existing, dict) and existing.get("physical_sample_id"):
                    return str(existing["physical_sample_id"])
            raise
        created = self._json(resp, "create physical sample")
        sample_id = created.get("physical_sample_id") or created.get("id")
        if not sample_id:
            raise RejectedError("physical sample created without an id", destination=NAME)
        return str(sample_id)

    async def _resolve_tags(self, tags: Sequence[str]) -> list[str]:
        names = normalise_tags(tags)
        if not names:
            return []
        listing = self._json(await self._call("GET", "/tags/"), "list tags")
        known = listing if isinstance(listing, list) else []
        by_id = {str(t.get("id", "")).lower(): str(t.get("id")) for t in known}
        by_name = {str(t.get("name", "")).strip().casefold(): str(t.get("id")) for t in known}
        ids: list[str] = []
        for name in names:
            if _is_uuid(name):
                if name.lower() not in by_id:
                    raise RejectedError(f"tag {name} does not exist", destination=NAME, status=404)
                ids.append(by_id[name.lower()])
            elif name.casefold() in by_name:
                ids.append(by_name[name.casefold()])
            else:
                created = self._json(
                    await self._call("POST", "/tags/", body={"name": name}), "create tag"
                )
                ids.append(str(created["id"]))
        return ids

    async def open_stream(self, stream: StreamInfo) -> None:
        """Create the stream now when Atomscale could not be reached at ``initialize`` (the
        stream went on under a data_id of labstream's); else nothing: it was created then.

        Atomscale's data_id is journaled at once, so a process that takes the stream over
        uses it instead of creating a second stream.
        """
        if CREATE_LATER not in stream.extra or stream.data_id in self._remote:
            return
        remote = stream.extra.get(ATOMSCALE_DATA_ID)
        if remote is None:
            remote = await self.create_stream(
                stream_name=stream.stream_name,
                synth_source_id=stream.synth_source_id,
                points_per_chunk=stream.points_per_chunk,
                project_id=stream.project_id,
                physical_sample=stream.physical_sample,
                tags=list(stream.tags),
            )
            if self._journal is not None:
                info = dataclasses.asdict(stream)
                info["extra"] = {**stream.extra, ATOMSCALE_DATA_ID: remote}
                self._journal.update_stream_info(stream.data_id, info)
                await anyio.to_thread.run_sync(self._journal.sync)
            log.warning(
                "Atomscale answers: created its stream %s for labstream stream %s",
                remote,
                stream.data_id,
            )
        self._remote[stream.data_id] = remote

    def atomscale_id(self, data_id: str) -> str:
        """Atomscale's data_id of a stream (itself, unless created after ``initialize``)."""
        return self._remote.get(data_id, data_id)

    async def send_chunk(self, chunk: Chunk) -> None:
        remote = self._remote.get(chunk.data_id)
        sent = chunk if remote is None else dataclasses.replace(chunk, data_id=remote)
        await self._request(
            "POST",
            chunk_path(sent),
            body=chunk_body(sent),
            data_id=chunk.data_id,
            chunk_index=chunk.chunk_index,
        )

    def resent(self, data_id: str) -> int:
        """Requests of the stream the HTTP client sent again on its own (retries too)."""
        return self._resent.get(data_id, 0)

    async def close_stream(self, stream: StreamInfo) -> None:
        remote = self.atomscale_id(stream.data_id)
        await self._request("POST", f"/tool-state/stream/{remote}/finalize", data_id=stream.data_id)

    async def time_exchange(self) -> TimeSample:
        """One NTP-style exchange with ``GET /gateway/time`` (seconds)."""
        sent = self._now()
        resp = await self._request("GET", "/gateway/time", headers={"Cache-Control": "no-store"})
        received = self._now()
        answer = self._json(resp, "gateway time")
        return (
            sent,
            float(answer["receivedAtUnixMs"]) / 1000.0,
            float(answer["transmittedAtUnixMs"]) / 1000.0,
            received,
        )

    async def list_growth_instruments(self) -> list[dict[str, Any]]:
        """``GET /instruments/synthesis``: the instruments a stream's synth_source_id can name."""
        answer = self._json(await self._call("GET", "/instruments/synthesis"), "list instruments")
        return list(answer) if isinstance(answer, list) else []

    async def aclose(self) -> None:
        await self._client.aclose()
