"""The one seam between the Atomscale sink and an HTTP library.

Two clients stand behind it: libcurl (:mod:`.curl`, the default: the least CPU per request,
docs/performance.md) and httpx over an injected transport (:mod:`.httpx_client`,
``http_transport=``: tests use ``httpx.MockTransport``/respx). Each answers the same small
:class:`HttpAnswer` and raises :class:`TransportError` for anything that is not an HTTP answer, so
:func:`.protocol.error_of` translates errors in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["HttpAnswer", "HttpClient", "TransportError", "TransportKind"]


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    resent: int = 0  # times the HTTP library sent the request again on its own

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


# Why there was no answer, as far as the HTTP library tells: what a person must fix differs.
TransportKind = Literal["timeout", "refused", "dns", "tls", "url", "other"]


class TransportError(Exception):
    """No HTTP answer: refused, reset, DNS, TLS, timeout…"""

    def __init__(
        self, message: str, *, timed_out: bool, resent: int = 0, kind: TransportKind = "other"
    ) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.resent = resent  # times the HTTP library sent the request again on its own
        self.kind: TransportKind = "timeout" if timed_out else kind


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
