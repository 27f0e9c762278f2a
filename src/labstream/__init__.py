"""labstream: stream lab instrument time series to Atomscale (and ATLAS) without losing a point.

A drop-in for the official Atomscale SDK's ``TimeseriesStreamer``::

    from . import TimeseriesStreamer
"""

from ._core.clock import ClockStatus
from .destinations.atlas.config import Atlas
from .destinations.atlas.options import ChannelOptions
from .errors import (
    DeliveryError,
    DeliveryTimeoutError,
    DestinationError,
    JournalError,
    LabstreamError,
    MalformedAnswerError,
    MissingExtraError,
    RejectedError,
    StreamStateError,
    TransientDestinationError,
)
from .report import DestinationReport, Rejection, StreamReport
from .retry import RetryPolicy
from .streamer import AsyncStreamHandle, AsyncTimeseriesStreamer
from .sync import StreamHandle, TimeseriesStreamer

__version__ = "0.1.0"

__all__ = [
    "AsyncStreamHandle",
    "AsyncTimeseriesStreamer",
    "Atlas",
    "ChannelOptions",
    "ClockStatus",
    "DeliveryError",
    "DeliveryTimeoutError",
    "DestinationError",
    "DestinationReport",
    "JournalError",
    "LabstreamError",
    "MalformedAnswerError",
    "MissingExtraError",
    "RejectedError",
    "Rejection",
    "RetryPolicy",
    "StreamHandle",
    "StreamReport",
    "StreamStateError",
    "TimeseriesStreamer",
    "TransientDestinationError",
    "__version__",
]
