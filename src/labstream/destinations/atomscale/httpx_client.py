"""Atomscale requests through httpx over an injected transport (``http_transport=``)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .http import HttpAnswer, TransportError


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
            raise TransportError(f"timed out ({type(exc).__name__})", timed_out=True) from exc
        except (httpx.HTTPError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", timed_out=False) from exc
        return HttpAnswer(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        await self._client.aclose()
