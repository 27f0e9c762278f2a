"""The one seam between the Atomscale sink and an HTTP library.

Three clients stand behind it: libcurl (:mod:`.curl`, the default: the least CPU per request,
docs/performance.md), aiohttp on the event loop (:mod:`.aiohttp_client`, ``http_engine="aiohttp"``)
and httpx over an injected transport (:mod:`.httpx_client`, ``http_transport=``: tests use
``httpx.MockTransport``/respx, and users who need httpx's proxy or auth features keep them). Each
answers the same small :class:`HttpAnswer` and raises :class:`TransportError` for anything that is
not an HTTP answer, so the sink translates errors in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    resent: int = 0  # times the HTTP library sent the request again on its own

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class TransportError(Exception):
    """No HTTP answer: refused, reset, DNS, TLS, timeout…"""

    def __init__(self, message: str, *, timed_out: bool, resent: int = 0) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.resent = resent  # times the HTTP library sent the request again on its own


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
