"""Run a script unchanged and print its process's CPU time over its timed part (not run by hand).

Usage: python _timed_cpu.py SCRIPT [ARGS...]

The timed part is from the script's first ``time.perf_counter()`` call to its last, which is how
``/work/shared/bench/anchor_atomscale.py`` times the official SDK: so the SDK's CPU per chunk is
read without its imports and the building of its input lists, and without editing the anchor.
CPU is the whole process's (every thread, the SDK's Rust runtime included), from
``getrusage(RUSAGE_SELF)``. After the script's own output, prints one line:
``{"timed_user_seconds": ..., "timed_system_seconds": ...}``.
"""

from __future__ import annotations

import json
import resource
import runpy
import sys
import time

_marks: list[tuple[float, float]] = []
_perf_counter = time.perf_counter


def _marked_perf_counter() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _marks.append((usage.ru_utime, usage.ru_stime))
    return _perf_counter()


def main() -> None:
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    time.perf_counter = _marked_perf_counter
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        time.perf_counter = _perf_counter
    if len(_marks) >= 2:
        (u0, s0), (u1, s1) = _marks[0], _marks[-1]
        print(json.dumps({"timed_user_seconds": u1 - u0, "timed_system_seconds": s1 - s0}))


if __name__ == "__main__":
    main()
