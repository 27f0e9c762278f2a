"""labstream's one exception tree. Every error labstream raises on purpose is a ``LabstreamError``::

    LabstreamError
    ├── ConfigError (ValueError)          a setting that cannot be used: names the option or key
    │   └── MissingExtraError (ImportError)   a feature whose optional dependencies are absent
    ├── LogFileError (ValueError)         a log that cannot be read as asked: file, line, column
    ├── StreamStateError (ValueError)     a call the stream's state forbids (push after finalize)
    ├── JournalError (OSError)            the durable journal cannot be opened or written
    │   └── JournalFull                   a chunk that would break the journal's limits
    ├── DestinationError                  a destination did not do what was asked
    │   ├── TransientDestinationError     worth retrying (transport, timeout, 5xx, 429, UNAVAILABLE)
    │   └── RejectedError                 refused for good (4xx, a final gRPC status)
    │       └── MalformedAnswerError      an answer that does not follow the protocol
    ├── AtlasProtocolError (RuntimeError) the ATLAS session driven out of order (a bug, not input)
    └── DeliveryError                     chunks not delivered when the caller needed them
        └── DeliveryTimeoutError (TimeoutError)

The second bases keep ``except ValueError`` / ``except OSError`` / ``except TimeoutError`` working
for code written against the SDK. Transport libraries (libcurl, httpx, grpc, sqlite3) raise their
own errors; each is translated at one place (the HTTP clients, the ATLAS sink's call, the journal)
with the original as ``__cause__``. Every message names the destination, the stream (data_id) and,
where there is one, the chunk. An API key never appears in any message: messages are built from
method, path, status and response body only.
"""

from __future__ import annotations

import os

__all__ = [
    "AtlasProtocolError",
    "ConfigError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "DestinationError",
    "JournalError",
    "JournalFull",
    "LabstreamError",
    "LogFileError",
    "MalformedAnswerError",
    "MissingExtraError",
    "RejectedError",
    "StreamStateError",
    "TransientDestinationError",
]


class LabstreamError(Exception):
    """Base of every error labstream raises on purpose."""


class ConfigError(LabstreamError, ValueError):
    """A configuration file, environment variable or option that cannot be used; the message
    names the file, key or option."""


class MissingExtraError(ConfigError, ImportError):
    """A feature asked for whose optional dependencies are not installed; the message names the
    extra to install (``pip install 'labstream[atlas]'``)."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {extra!r} extra: pip install 'labstream[{extra}]'")


class LogFileError(LabstreamError, ValueError):
    """A log that cannot be read as asked: names the file, the line or row, and the column."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
        row_word: str = "line",
    ) -> None:
        self.path = str(path)
        self.message = message
        self.line = line
        self.column = column
        self.row_word = row_word
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.path]
        if self.line is not None:
            where.append(f"{self.row_word} {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}"


class StreamStateError(LabstreamError, ValueError):
    """A call that the stream's state does not allow (unknown data_id, push after finalize)."""


class JournalError(LabstreamError, OSError):
    """The durable journal (spool) cannot be opened or used; the message names its path and the
    cause is chained (``__cause__``)."""


class JournalFull(JournalError):  # noqa: N818 - an outcome the streamer counts, not a failure
    """A chunk that would break the journal's size or free-space limit; the streamer refuses it
    and counts it in the report instead of storing it."""


class DestinationError(LabstreamError):
    """A destination failed to do what was asked.

    Attributes:
        message: what failed, without the destination, stream and chunk in front.
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
        self.message = message
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


class MalformedAnswerError(RejectedError):
    """A destination answered something the protocol does not allow (not JSON, a field missing).
    Not retried: the same request would get the same answer."""


class AtlasProtocolError(LabstreamError, RuntimeError):
    """The sink drove the ATLAS session out of order (an answer with no call, an event after
    Finalize): a bug in labstream, never caused by input."""


class DeliveryError(LabstreamError):
    """Some chunks were not delivered by the time the caller needed them (``run()``)."""


class DeliveryTimeoutError(DeliveryError, TimeoutError):
    """Delivery did not finish within the deadline; the chunks are still pending, not lost."""
