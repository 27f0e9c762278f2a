"""Is another process still running? The journal asks before it resumes a stream another process
wrote, because resuming a live process's stream would send its chunks twice.

POSIX answers with signal 0. Windows has no such signal (``os.kill(pid, 0)`` there would send
CTRL_C_EVENT to the process group), so it opens the process and asks for its exit code.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

__all__ = ["Kernel32", "process_alive", "windows_process_alive"]

_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_ACCESS_DENIED = 5


class Kernel32(Protocol):
    """The four kernel32 calls used (``ctypes.windll.kernel32`` has them)."""

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> Any: ...  # noqa: N802
    def GetExitCodeProcess(self, handle: Any, code: Any) -> int: ...  # noqa: N802
    def CloseHandle(self, handle: Any) -> int: ...  # noqa: N802
    def GetLastError(self) -> int: ...  # noqa: N802


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a reused id counts as alive: the safe answer)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - the logic is tested with a fake kernel32
        import ctypes

        return windows_process_alive(pid, ctypes.windll.kernel32)  # type: ignore[attr-defined,unused-ignore]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but is not ours to signal
        return True
    return True


def windows_process_alive(pid: int, kernel32: Kernel32) -> bool:
    """The Windows answer, through ``kernel32`` (injected so that tests run anywhere)."""
    import ctypes

    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        # Another user's process cannot be opened, but it exists.
        return kernel32.GetLastError() == _ERROR_ACCESS_DENIED
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # cannot tell: the safe answer
        return code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
