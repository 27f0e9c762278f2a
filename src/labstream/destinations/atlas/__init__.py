"""The ATLAS destination: the Stream API over gRPC.

The sink (:mod:`.sink`, the only module here doing I/O, and the only one importing grpc) drives
:mod:`.session` (which packets and RPCs, in which order, to which streams), and :mod:`.encoding`
writes the protobuf bytes. Neither of those two does any I/O, so both are tested exhaustively
without a server. :mod:`.config` holds the user's settings.
"""

from __future__ import annotations

import importlib.util

from ...errors import MissingExtraError

__all__ = ["require_extra"]


def require_extra() -> None:
    """Raise :class:`~labstream.errors.MissingExtraError` unless grpc and protobuf are installed,
    so a missing extra is said when the streamer is made, not when its first chunk is sent."""
    for module in ("grpc", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # "google" itself is missing
            found = False
        if not found:
            raise MissingExtraError("streaming to ATLAS", "atlas")
