"""Destinations. Each sink performs requests for one destination and translates its errors."""

from .base import Sink, StreamInfo

__all__ = ["Sink", "StreamInfo"]
