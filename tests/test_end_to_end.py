"""End to end over real loopback HTTP against the emulator (libcurl, as in production)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from labstream import RetryPolicy, TimeseriesStreamer
from labstream.cli import main
from labstream.testing.atomscale import AtomscaleEmulator, FaultPlan, run_in_thread
from labstream.testing.fake import RecordingSleep

from . import API_KEY

T0 = 1_760_000_000.0
QUICK = RetryPolicy(initial_backoff_s=0, jitter_s=0, cooldown_s=0)


@pytest.fixture
def emulator() -> Iterator[AtomscaleEmulator]:
    with run_in_thread(api_key=API_KEY) as emu:
        yield emu


def make(emulator: AtomscaleEmulator, **kw: object) -> TimeseriesStreamer:
    kw.setdefault("retry", QUICK)
    kw.setdefault("handle_sigterm", False)
    return TimeseriesStreamer(API_KEY, emulator.url, **kw)  # type: ignore[arg-type]


def chunk(c: int, n: int = 100) -> tuple[list[float], list[float]]:
    return [T0 + (c * n + i) * 0.01 for i in range(n)], [float(c * n + i) for i in range(n)]


def test_one_in_four_503_every_point_stored_once(emulator: AtomscaleEmulator) -> None:
    emulator.faults = FaultPlan(fail_every=4)
    with make(emulator, clock_sync=False) as streamer:
        data_id = streamer.initialize(stream_name="e2e")
        for c in range(200):
            streamer.push(data_id, c, "T", *chunk(c), units="C")
        report = streamer.finalize(data_id)
    assert report.ok
    stored = emulator.streams[data_id]
    assert stored.finalized
    assert stored.chunks_after_finalize == 0
    ts, vs = emulator.points(data_id, "T")
    assert vs == [float(i) for i in range(20_000)]
    assert ts == [t for c in range(200) for t in chunk(c)[0]]
    assert emulator.fault_counts["fail_every"] >= 50


def test_dropped_connections_and_429_retry_after(emulator: AtomscaleEmulator) -> None:
    emulator.faults = FaultPlan(fail_fraction=0.2, retry_after_s=3, drop_connection_fraction=0.1)
    sleeper = RecordingSleep()
    with make(emulator, clock_sync=False, sleep=sleeper) as streamer:
        data_id = streamer.initialize()
        for c in range(50):
            streamer.push_multi(
                data_id,
                c,
                {"T": dict(zip(("timestamps", "values"), chunk(c), strict=True)),
                 "P": {"timestamps": chunk(c)[0], "values": [math.nan] * 100, "units": "mbar"}},
            )  # fmt: skip
        report = streamer.finalize(data_id)
    assert report.ok
    assert emulator.fault_counts["fail_fraction"] > 0
    assert emulator.fault_counts["drop"] > 0
    assert 3.0 in sleeper.waits  # Retry-After honoured
    assert emulator.points(data_id, "T")[1] == [float(i) for i in range(5_000)]
    assert all(math.isnan(v) for v in emulator.points(data_id, "P")[1])


def test_outage_then_recovery(emulator: AtomscaleEmulator) -> None:
    emulator.faults = FaultPlan(outage_requests=(5, 40))
    with make(emulator, clock_sync=False) as streamer:
        data_id = streamer.initialize()
        streamer.run(data_id, "T", (chunk(c) for c in range(30)))
        report = streamer.finalize(data_id)
    assert report.ok
    assert len(emulator.points(data_id, "T")[1]) == 3_000


@pytest.mark.parametrize("mode", ["push", "run"])
def test_clock_offset_from_the_emulator(mode: str) -> None:
    """Every timestamp is corrected, whichever way the chunks went (run()'s lane makes its
    bodies without building a chunk only when there is no offset)."""
    with run_in_thread(api_key=API_KEY, clock_offset_s=-3.0) as skewed, make(skewed) as streamer:
        data_id = streamer.initialize()
        assert streamer.clock_status().offset_s == pytest.approx(-3.0, abs=0.05)
        if mode == "push":
            for c in range(3):
                streamer.push(data_id, c, "T", *chunk(c))
        else:
            streamer.run(data_id, "T", (chunk(c) for c in range(3)))
        streamer.finalize(data_id)
        ts, _ = skewed.points(data_id, "T")
    offset = streamer.clock_status().offset_s
    sent = [t for c in range(3) for t in chunk(c)[0]]
    assert ts == pytest.approx([t + offset for t in sent], abs=1e-6)


def test_wrong_key_is_rejected_and_never_shown(
    emulator: AtomscaleEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "sk-wrong-key-9999"
    with TimeseriesStreamer(wrong, emulator.url, clock_sync=False, handle_sigterm=False) as s:
        with pytest.raises(Exception, match="403") as info:
            s.initialize()
        assert wrong not in str(info.value)
    assert wrong not in "".join(capsys.readouterr())


def test_demo_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "60", "--pace", "0"]) == 0
    out = capsys.readouterr().out
    assert "All 2400 points stored exactly as pushed" in out
    lines = out.splitlines()
    for name in (
        "substrate_temperature",
        "ga_cell_temperature",
        "as_cell_temperature",
        "chamber_pressure",
    ):
        assert any(line.startswith(name) and line.endswith("  yes") for line in lines), name
    # Said in words for people: faults as a sentence, the main stream named, dates next to ns.
    faults = next(line for line in lines if line.startswith("faults the Atomscale emulator"))
    assert "{" not in faults and ("request(s)" in faults or faults.endswith("none"))
    assert any(line.startswith("  stream '' (main): ") for line in lines)
    assert re.search(r"\] ns \(20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \.\. ", out)


def test_interpreter_exit_finalizes_open_streams(
    emulator: AtomscaleEmulator, tmp_path: Path
) -> None:
    """A script that forgets finalize() and close(): the atexit hook delivers and finalizes."""
    script = tmp_path / "forgetful.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from labstream import TimeseriesStreamer
            s = TimeseriesStreamer({API_KEY!r}, {emulator.url!r}, clock_sync=False)
            d = s.initialize(stream_name="forgetful")
            for c in range(20):
                s.push(d, c, "T", [{T0} + c + i / 100 for i in range(100)], [1.0] * 100)
            print(d)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    data_id = done.stdout.strip()
    assert emulator.streams[data_id].finalized
    assert len(emulator.points(data_id, "T")[1]) == 2_000


def test_the_report_counts_every_request_the_server_saw(emulator: AtomscaleEmulator) -> None:
    """Dropped connections make libcurl send a request again on its own (a kept-alive connection
    the server closed): those re-sends are retries too, so delivered + retries is exactly what
    reached the server."""
    emulator.faults = FaultPlan(fail_fraction=0.25, drop_connection_fraction=0.1, seed=3)
    with make(emulator, clock_sync=False, sleep=RecordingSleep()) as streamer:
        data_id = streamer.initialize(stream_name="every-send-counted")
        for c in range(300):
            streamer.push(data_id, c, "T", [1.7e9 + c + i / 10 for i in range(10)], [1.0] * 10)
        report = streamer.finalize(data_id, timeout=60)["atomscale"]
    sent = [r for r in emulator.requests if r.path.endswith("/chunk")]
    assert report.chunks_delivered == 300
    assert emulator.fault_counts["drop"] > 0
    assert report.chunks_delivered + report.retries == len(sent)
