"""What a user may set about ATLAS parameters and sessions, validated when made."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import encoding as enc

__all__ = [
    "IDENT_UNSAFE",
    "KEY_SEP",
    "MAIN_STREAM",
    "MAX_NAME",
    "NAME_RE",
    "AtlasOptions",
    "ChannelOptions",
]

MAIN_STREAM = ""
"""The main stream: ATLAS discovers sessions there."""

NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_NAME = 100  # data source and stream end up in Kafka topic names (max 249 chars in all)
IDENT_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
KEY_SEP = "\n"  # joins parameter identifiers into a dict key; never inside an identifier


def _check_free_text(what: str, value: str) -> None:
    if "," in value or KEY_SEP in value or not value.strip():
        raise ValueError(f"{what}={value!r} must be non-empty, without ',' or newlines")


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """Per-channel overrides of the ATLAS parameter definition. ``None`` means "use the default".

    Attributes:
        identifier: full parameter identifier; default ``"<name>:<application>"`` with characters
            outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (a ``,`` would collide in the server's
            format cache).
        name: display name; default the channel name.
        description: parameter description.
        units: units; default the units the channel was pushed with.
        format_string: display format; default :attr:`AtlasOptions.format_string`.
        min_value, max_value: display range; default the first chunk's finite range, padded 10 %
            (0..1 when the channel has no finite value yet).
        warning_min_value, warning_max_value: default the display range.
        frequency_hz: nominal rate; default the rate detected in the channel's first chunk.
    """

    identifier: str | None = None
    name: str | None = None
    description: str = ""
    units: str | None = None
    format_string: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    warning_min_value: float | None = None
    warning_max_value: float | None = None
    frequency_hz: float | None = None

    def __post_init__(self) -> None:
        if self.identifier is not None:
            _check_free_text("identifier", self.identifier)
        if self.frequency_hz is not None and not (
            math.isfinite(self.frequency_hz) and self.frequency_hz > 0
        ):
            raise ValueError(f"frequency_hz={self.frequency_hz!r} must be a positive number")


@dataclass(frozen=True, slots=True)
class AtlasOptions:
    """How labstream channels become ATLAS parameters.

    Attributes:
        application_name: ``application_name`` of every parameter and of the group, and the
            suffix of default identifiers (``Name:Application`` convention).
        group_description: description of the one GroupDefinition.
        format_string: default display format of every parameter.
        channels: per-channel overrides, by channel name.
        max_packet_bytes: byte budget of one packet's content; long chunks are split under it.
        marker_source: ``MarkerPacket.source``.
    """

    application_name: str = "labstream"
    group_description: str = "Instrument time series streamed by labstream"
    format_string: str = "%.6g"
    channels: Mapping[str, ChannelOptions] = field(default_factory=dict)
    max_packet_bytes: int = enc.DEFAULT_MAX_CONTENT_BYTES
    marker_source: str = "labstream"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.application_name):
            raise ValueError(
                f"application_name={self.application_name!r} must match [A-Za-z0-9_.-]+"
            )
        if self.max_packet_bytes > enc.DEFAULT_MAX_CONTENT_BYTES:
            raise ValueError(
                f"max_packet_bytes={self.max_packet_bytes} leaves no room under the server's "
                f"{enc.MAX_REQUEST_BYTES}-byte request limit "
                f"(max {enc.DEFAULT_MAX_CONTENT_BYTES})"
            )
        enc.max_rows(1, self.max_packet_bytes)  # raises when too small for one row
