"""Destinations. Each sink performs requests for one destination and translates its errors."""

from .base import Marker, Sink, StreamInfo

__all__ = ["Marker", "Sink", "StreamInfo"]
