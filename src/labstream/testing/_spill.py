"""Bytes an emulator holds for the rest of its life, kept in an unlinked temporary file.

An emulator left running for a day receives far more than memory should hold; memory keeps only
where each piece is, and the file disappears with the process however it ends.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["Spill"]


class Spill:
    """Append-only bytes in an unlinked temporary file, read back by (offset, length)."""

    def __init__(self, prefix: str) -> None:
        # Lives as long as the emulator's state (readable after stop); unlinked from the start.
        self._file = tempfile.TemporaryFile(prefix=prefix)  # noqa: SIM115
        self._end = 0

    def put(self, data: bytes) -> tuple[int, int]:
        """Append `data` (the caller serialises calls): its (offset, length)."""
        where = (self._end, len(data))
        os.pwrite(self._file.fileno(), data, self._end)
        self._end += len(data)
        return where

    def get(self, where: tuple[int, int]) -> bytes:
        offset, length = where
        return os.pread(self._file.fileno(), length, offset)

    @property
    def size(self) -> int:
        return self._end
