"""The one seam between the Atomscale sink and an HTTP library.

Production uses aiohttp directly: measured at ~3.5x the request rate of httpx over an
aiohttp-backed transport on the same machine (docs/performance.md), and chunk uploads are where
labstream spends its CPU. An ``httpx`` transport can still be injected (``http_transport=``): tests
use ``httpx.MockTransport``/respx, and users who need httpx's proxy or auth features keep them.
Both clients answer the same small :class:`HttpAnswer` and raise :class:`TransportError` for
anything that is not an HTTP answer, so the sink translates errors in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class TransportError(Exception):
    """No HTTP answer: refused, reset, DNS, TLS, timeout…"""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class HttpClient(Protocol):
    async def request(
        self, method: str, path: str, content: bytes | None, headers: Mapping[str, str]
    ) -> HttpAnswer:
        """Send one request to ``endpoint + path``.

        Raises:
            TransportError: no answer was received.
        """
        ...

    async def aclose(self) -> None: ...


class AiohttpClient:
    """aiohttp with one pooled session; connections are reused across requests."""

    def __init__(
        self, endpoint: str, headers: Mapping[str, str], *, max_connections: int, timeout_s: float
    ) -> None:
        self._endpoint = endpoint
        self._headers = dict(headers)
        self._limit = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._limit),
            )
        return self._session

    async def request(
        self, method: str, path: str, content: bytes | None, headers: Mapping[str, str]
    ) -> HttpAnswer:
        url = self._urls.get(path)
        if url is None:
            url = self._urls.setdefault(path, self._endpoint + path)
        try:
            async with self._open().request(method, url, data=content, headers=headers) as resp:
                body = await resp.read()
                return HttpAnswer(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise TransportError(
                f"timed out ({exc or type(exc).__name__})", timed_out=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", timed_out=False) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxClient:
    """httpx over the given transport (tests: ``httpx.MockTransport``)."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        *,
        transport: httpx.AsyncBaseTransport,
        timeout_s: float,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=endpoint, headers=dict(headers), timeout=timeout_s, transport=transport
        )

    async def request(
        self, method: str, path: str, content: bytes | None, headers: Mapping[str, str]
    ) -> HttpAnswer:
        try:
            resp = await self._client.request(method, path, content=content, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise TransportError(f"timed out ({type(exc).__name__})", timed_out=True) from None
        except (httpx.HTTPError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", timed_out=False) from None
        return HttpAnswer(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        await self._client.aclose()
