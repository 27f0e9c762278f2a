"""Atomscale uploads through aiohttp, on the event loop (``http_engine="aiohttp"``)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from .http import HttpAnswer, TransportError


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
