"""gRPC at one edge: how labstream opens a channel to the Stream API or the key generator, and
the one place gRPC's errors become labstream's.

UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and CANCELLED (what a call in flight gets when
the server stops or restarts) are transient; any other status is final.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio

from ...errors import DestinationError, RejectedError, TransientDestinationError
from . import encoding as enc
from .config import Atlas

__all__ = ["NAME", "call", "open_channel", "translate"]

NAME = "atlas"
T = TypeVar("T")

_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", enc.MAX_REQUEST_BYTES),
    ("grpc.max_receive_message_length", enc.MAX_REQUEST_BYTES),
]


def open_channel(settings: Atlas, address: str) -> grpc.aio.Channel:
    """A channel to ``address`` with the settings' TLS choice and labstream's message limits."""
    if settings.tls:
        creds = grpc.ssl_channel_credentials(root_certificates=settings.root_certificates)
        return grpc.aio.secure_channel(address, creds, options=_CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)


def translate(exc: grpc.aio.AioRpcError, what: str, data_id: str | None) -> DestinationError:
    """The labstream error for a failed call, with the gRPC error as its cause."""
    code = exc.code()
    kind = TransientDestinationError if code in _TRANSIENT else RejectedError
    error = kind(
        f"{what} failed",
        destination=NAME,
        data_id=data_id,
        status=code.name,
        detail=exc.details() or None,
    )
    error.__cause__ = exc
    return error


async def call(
    invoke: Callable[[float], Awaitable[T]], what: str, timeout_s: float, data_id: str | None
) -> T:
    """Run one call with a deadline of ``timeout_s``.

    Raises:
        TransientDestinationError: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED.
        RejectedError: any other gRPC status.
    """
    try:
        return await invoke(timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise translate(exc, what, data_id) from exc
