"""Every script in examples/ runs with one command against the local emulators and does its job.

Each example is run as a user runs it (``python examples/NAME.py`` in a fresh process, no
destination configured, so it starts both emulators itself), with flags that compress its run to
about a second. The five processes are started together and checked one test each, so the suite
pays for the slowest example rather than for all of them in a row.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 90.0

#: example -> (fast arguments, lines its output must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "mbe_live.py": (
        ["--duration", "20", "--speed", "200", "--plot", "{tmp}/mbe.png"],
        [
            "push_multi() calls",
            "substrate_temperature        200        200     200",
            "ATLAS markers: 'Ga shutter open', 'GaAs layer', 'Ga shutter closed'",
            "ATLAS protocol: clean",
            "plot written to",
        ],
    ),
    "bulk_upload.py": (
        ["--rows", "5000", "--points-per-chunk", "500"],
        [
            "uploaded 5,000 points in 10 chunks",
            "the Atomscale emulator holds 5,000 points of pyrometer_temperature",
        ],
    ),
    "dual_logging.py": (
        ["--duration", "20", "--speed", "100"],
        [
            "!! Atomscale fails now (recover)",
            "Atomscale: complete, 400 points",
            "ATLAS got everything on time while Atomscale was failing: yes",
        ],
    ),
    "atomscale_dropin.py": (
        [],
        [
            "Atomscale stored 'MBE growth - temperature log': pressure 100, temperature 200 "
            "points; finalized: True",
            "Atomscale stored 'Pyrometer log': temperature 1000 points; finalized: True",
            "ATLAS session 'Pyrometer log': 1000 samples; protocol clean",
        ],
    ),
    "asyncio_acquisition.py": (
        ["--duration", "10", "--speed", "50"],
        ["pushed 100 pyrometer and 20 gauge readings", "worst event-loop lag", "complete"],
    ),
}


def _env(tmp: Path) -> dict[str, str]:
    """The user's environment without any real destination: the examples pick the emulators."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AS_API_", "ATOMSCALE_", "LABSTREAM_"))
    }
    env["LABSTREAM_SPOOL_DIR"] = str(tmp / "spool")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    tmp = tmp_path_factory.mktemp("examples")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), *(a.format(tmp=tmp) for a in args)],
            cwd=tmp,
            env=_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in CASES.items()
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_example_runs(name: str, runs: dict[str, subprocess.Popen[str]]) -> None:
    proc = runs[name]
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{name} did not finish in {TIMEOUT_S:.0f} s\n{out}\n{err}")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, err
    for line in CASES[name][1]:
        assert line in out, f"{name}: {line!r} not in its output:\n{out}"
