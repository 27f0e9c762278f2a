"""The Atomscale destination: sends what :mod:`.protocol` builds, over libcurl (:mod:`.curl`) or
an injected httpx transport, and reads the answers with it. The API key is kept out of every repr,
log line and error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..._core.chunk import Chunk
from ..._core.clock import TimeSample
from ..._core.journal import Journal
from ...errors import DestinationError
from ...retry import RetryPolicy, Sleep
from ..base import StreamInfo
from . import protocol
from .curl import CurlClient
from .http import HttpAnswer, HttpClient, TransportError
from .protocol import DEFAULT_ENDPOINT, NAME, Request

if TYPE_CHECKING:
    import httpx

__all__ = ["ATOMSCALE_DATA_ID", "CREATE_LATER", "DEFAULT_ENDPOINT", "AtomscaleSink"]

log = logging.getLogger("labstream.atomscale")

# StreamInfo.extra keys: Atomscale could not create the stream at initialize (it is created when
# the runner opens it), and the data_id Atomscale gave it then.
CREATE_LATER = "atomscale_create_later"
ATOMSCALE_DATA_ID = "atomscale_data_id"


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


class AtomscaleSink:
    """HTTP client for Atomscale's streaming endpoints.

    Args:
        api_key: sent as ``X-API-KEY``; kept out of every repr, log line and error.
        endpoint: base URL.
        policy: retry policy for the control requests made here (create, link, finalize); chunk
            uploads are retried by the delivery runner with the same policy.
        sleep: injected sleep for those retries.
        transport: an httpx transport (tests pass ``httpx.MockTransport``); requests then go
            through it instead of libcurl (:mod:`labstream.destinations.atomscale.curl`).
        max_concurrency: the most chunk uploads in flight (the adaptive window's ceiling).
        proxy: the proxy URL for every request, ``""`` for none (settled with the other
            settings, :func:`labstream.settings.proxy_for`).
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
        proxy: str = "",
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
        self.proxy = proxy
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

    async def _request(self, request: Request) -> HttpAnswer:
        """Send one request; raise labstream errors for anything but a 2xx.

        Raises:
            TransientDestinationError: transport error, timeout, 5xx, 408, 429.
            RejectedError: any other non-2xx answer.
        """
        headers = dict(request.headers)
        content = request.content
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            answer: HttpAnswer | TransportError = await self._client.request(
                request.method, request.path, content, headers
            )
        except TransportError as exc:
            answer = exc
        if answer.resent and request.data_id is not None:
            self._resent[request.data_id] = self._resent.get(request.data_id, 0) + answer.resent
        error = protocol.error_of(answer, request, self._scrub)
        if error is not None:
            raise error
        assert isinstance(answer, HttpAnswer)
        return answer

    async def _call(self, request: Request) -> HttpAnswer:
        """A control request, retried with the policy (chunks are retried by the runner)."""
        async for attempt in self._policy.retrying(sleep=self._sleep):
            with attempt:
                return await self._request(request)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _exchange(self, exchange: Generator[Request, HttpAnswer, Any]) -> Any:
        """Perform a :mod:`.protocol` generator's requests in turn; return what it returns."""
        try:
            request = next(exchange)
            while True:
                try:
                    answer = await self._call(request)
                except DestinationError as exc:
                    request = exchange.throw(exc)
                else:
                    request = exchange.send(answer)
        except StopIteration as done:
            return done.value

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
        """Create the stream and make its links (:func:`.protocol.create_stream`); return its
        data_id.

        Raises:
            DestinationError: the stream could not be created or linked.
        """
        data_id: str = await self._exchange(
            protocol.create_stream(
                stream_name=stream_name,
                synth_source_id=synth_source_id,
                points_per_chunk=points_per_chunk,
                project_id=project_id,
                physical_sample=physical_sample,
                tags=tags,
            )
        )
        return data_id

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
            Request(
                "POST",
                protocol.chunk_path(sent),
                body=protocol.chunk_body(sent),
                data_id=chunk.data_id,
                chunk_index=chunk.chunk_index,
            )
        )

    def resent(self, data_id: str) -> int:
        """Requests of the stream the HTTP client sent again on its own (retries too)."""
        return self._resent.get(data_id, 0)

    async def close_stream(self, stream: StreamInfo) -> None:
        remote = self.atomscale_id(stream.data_id)
        await self._request(
            Request("POST", f"/tool-state/stream/{remote}/finalize", data_id=stream.data_id)
        )

    async def time_exchange(self) -> TimeSample:
        """One NTP-style exchange with ``GET /gateway/time`` (seconds)."""
        sent = self._now()
        answer = await self._request(protocol.CLOCK_REQUEST)
        return protocol.clock_sample(answer, sent, self._now())

    async def list_growth_instruments(self) -> list[dict[str, Any]]:
        """``GET /instruments/synthesis``: the instruments a stream's synth_source_id can name."""
        answer = protocol.json_of(
            await self._call(Request("GET", "/instruments/synthesis")), "list instruments"
        )
        return list(answer) if isinstance(answer, list) else []

    async def aclose(self) -> None:
        await self._client.aclose()
