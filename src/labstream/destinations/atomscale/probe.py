"""Look at an Atomscale endpoint before streaming to it: is it there, is it Atomscale, how far
off is this host's clock, and is the key accepted. ``labstream check`` and ``labstream push``'s
pre-flight print these findings; they go through the same client, proxy and error translation as
the streamer's own requests.
"""

from __future__ import annotations

import anyio

from ...errors import DestinationError, MalformedAnswerError
from ...retry import RetryPolicy
from ..base import Finding
from .http import TransportError
from .sink import AtomscaleSink

__all__ = ["probe"]

_EXAMPLE = "https://api.atomscale.ai"


async def probe(
    endpoint: str, api_key: str, *, key_source: str, timeout_s: float, proxy: str | None
) -> list[Finding]:
    """Reachability and clock (``GET /gateway/time``), then the key (an authenticated GET).

    ``key_source`` says where the key came from, for the sentence that says it was refused.
    """
    base = endpoint.rstrip("/")
    sink = AtomscaleSink(
        api_key,
        base,
        policy=RetryPolicy(attempts=1),
        sleep=anyio.sleep,
        timeout_s=timeout_s,
        proxy=proxy,
    )
    try:
        try:
            sent, server_rx, server_tx, received = await sink.time_exchange()
        except DestinationError as exc:
            return [Finding(False, _problem(base, exc, "GET /gateway/time", key_source, timeout_s))]
        offset = ((server_rx - sent) + (server_tx - received)) / 2.0
        side = "behind" if offset > 0 else "ahead of"
        reachable = Finding(
            True,
            f"reachable: GET /gateway/time answered in {(received - sent) * 1000:.0f} ms; this "
            f"host's clock is {abs(offset):.3f} s {side} the gateway's (labstream corrects it)",
        )
        try:
            await sink.list_growth_instruments()
        except DestinationError as exc:
            what = "GET /instruments/synthesis"
            return [reachable, Finding(False, _problem(base, exc, what, key_source, timeout_s))]
        return [reachable, Finding(True, f"API key accepted ({key_source})")]
    finally:
        await sink.aclose()


def _problem(base: str, exc: DestinationError, what: str, key_source: str, timeout_s: float) -> str:
    cause = exc.__cause__
    if isinstance(cause, TransportError):
        detail = exc.detail or str(cause)
        if cause.kind == "timeout":
            return f"no answer from {base} within {timeout_s:g} s (network, proxy or firewall?)"
        if cause.kind == "url":
            return f"{base!r} is not a usable URL ({detail}); e.g. {_EXAMPLE}"
        if cause.kind == "tls":
            return f"TLS problem talking to {base}: {detail}"
        if cause.kind == "refused":
            return f"cannot connect to {base}: connection refused (wrong port, or not running?)"
        if cause.kind == "dns":
            return f"cannot connect to {base}: {detail} (is the host name right?)"
        return f"request to {base} failed: {detail}"
    if isinstance(exc, MalformedAnswerError):
        return f"{what} did not answer like Atomscale: is {base} the API URL?"
    if exc.status == 401:
        return "the server asked for an API key and did not get one (401)"
    if exc.status == 403:
        return (
            f"the API key ({key_source}) was refused (403 Forbidden): check that it is current "
            "and belongs to this endpoint's account"
        )
    if what == "GET /gateway/time":
        down = (
            " The service may be down; try later."
            if isinstance(exc.status, int) and (exc.status >= 500)
            else ""
        )
        return f"{what} answered {exc.status}: is {base} the Atomscale API (e.g. {_EXAMPLE})?{down}"
    return f"{what} answered {exc.status}: {exc.detail or ''}".rstrip(": ")
