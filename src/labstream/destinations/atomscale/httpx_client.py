"""Atomscale requests through httpx over an injected transport (``http_transport=``)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .http import HttpAnswer, TransportError, TransportKind

__all__ = ["HttpxClient"]


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
            raise TransportError(
                f"{type(exc).__name__}: {exc}", timed_out=False, kind=_kind(exc)
            ) from exc
        return HttpAnswer(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def _kind(exc: Exception) -> TransportKind:
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "url"
    text = str(exc).lower()
    if "certificate" in text or "ssl" in text:
        return "tls"
    if "refused" in text:
        return "refused"
    if "name or service" in text or "getaddrinfo" in text or "nodename" in text:
        return "dns"
    return "other"
