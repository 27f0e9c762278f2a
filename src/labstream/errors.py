"""labstream's one exception tree.

Transport libraries (httpx, aiohttp, grpc) raise their own errors; the sinks translate them at the
edge into these, so callers only ever catch ``LabstreamError`` and its children, and every error
names the destination, the stream (data_id) and, where there is one, the chunk. An API key never
appears in any message: the sinks build messages from method, path, status and response body only.
"""

from __future__ import annotations


class LabstreamError(Exception):
    """Base of every error labstream raises on purpose."""


class StreamStateError(LabstreamError, ValueError):
    """A call that the stream's state does not allow (unknown data_id, push after finalize)."""


class JournalError(LabstreamError, OSError):
    """The durable journal (spool) cannot be opened or used; the message names its path and the
    cause is chained (``__cause__``)."""


class DestinationError(LabstreamError):
    """A destination failed to do what was asked.

    Attributes:
        destination: "atomscale" or "atlas".
        data_id: the stream concerned, when known.
        chunk_index: the chunk concerned, when the failure is about one chunk.
        status: the HTTP status or gRPC status name, when the server answered.
        detail: what the server said (response body), or the transport error.
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        data_id: str | None = None,
        chunk_index: int | None = None,
        status: int | str | None = None,
        detail: str | None = None,
    ) -> None:
        self.destination = destination
        self.data_id = data_id
        self.chunk_index = chunk_index
        self.status = status
        self.detail = detail
        where = [destination]
        if data_id is not None:
            where.append(f"data_id={data_id}")
        if chunk_index is not None:
            where.append(f"chunk={chunk_index}")
        text = f"[{' '.join(where)}] {message}"
        if status is not None:
            text += f" (status {status})"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class TransientDestinationError(DestinationError):
    """A failure worth retrying: transport error, timeout, 5xx, 429, 408, gRPC UNAVAILABLE…

    Attributes:
        retry_after: seconds the server asked us to wait (``Retry-After``), if it said.
        timed_out: no answer came within the request's deadline.
        made_progress: the operation got further than on its previous attempt before failing
            (a multi-step operation resumes where it stopped): the retry budget starts afresh.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        timed_out: bool = False,
        **kw: object,
    ) -> None:
        self.retry_after = retry_after
        self.timed_out = timed_out
        self.made_progress = False
        super().__init__(message, **kw)  # type: ignore[arg-type]


class RejectedError(DestinationError):
    """The destination refused the request for good (a 4xx other than 408/429): not retried."""


class DeliveryError(LabstreamError):
    """Some chunks were not delivered by the time the caller needed them (``run()``)."""


class DeliveryTimeoutError(DeliveryError, TimeoutError):
    """Delivery did not finish within the deadline; the chunks are still pending, not lost."""
