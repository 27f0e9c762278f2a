"""`labstream spool` as functions: what the journal holds, finishing it, forgetting a stream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labstream import RetryPolicy, TimeseriesStreamer
from labstream.cli import spool
from labstream.testing.atomscale import FaultPlan, run_in_thread

from . import API_KEY

T0 = 1_760_000_000.0
QUICK = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0, cooldown_s=0.02)


def leave_pending(url: str, spool_dir: Path, chunks: int) -> str:
    """A streamer that closes while its destination refuses every chunk: all kept in the spool."""
    with TimeseriesStreamer(
        API_KEY, url, clock_sync=False, retry=QUICK, spool_dir=spool_dir, handle_sigterm=False
    ) as s:
        data_id = s.initialize(stream_name="left behind")
        for c in range(chunks):
            s.push(data_id, c, "T", [T0 + c * 10 + i for i in range(10)], [float(c)] * 10)
        s.close(timeout=0.2)
    return data_id


def test_status_resume_and_purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs: list[str] = []
    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 5)
        rows = spool.status(tmp_path)
        (row,) = rows
        assert (row.data_id, row.destination, row.pending_chunks, row.pending_points) == (
            data_id,
            "atomscale",
            5,
            50,
        )
        text = spool.format_status(rows, tmp_path)
        assert data_id in text
        assert "left behind" in text

        monkeypatch.delenv("AS_API_KEY", raising=False)
        monkeypatch.delenv("ATOMSCALE_API_KEY", raising=False)
        with pytest.raises(ValueError, match="set AS_API_KEY"):
            spool.resume(tmp_path)

        emu.faults = FaultPlan()  # Atomscale is back
        monkeypatch.setenv("AS_API_KEY", API_KEY)
        (report,) = spool.resume(tmp_path, timeout_s=10, out=outputs.append).reports
        assert report.ok, str(report)
        assert emu.points(data_id, "T")[1] == [float(c) for c in range(5) for _ in range(10)]
        assert emu.streams[data_id].finalized
    assert spool.status(tmp_path) == []  # finished streams are forgotten
    assert any("complete" in line for line in outputs)


def test_purge_forgets_a_stream(tmp_path: Path) -> None:
    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 3)
    assert spool.purge(tmp_path, data_id) == 3
    assert spool.status(tmp_path) == []
    assert spool.resume(tmp_path, api_key=API_KEY, out=lambda _: None).reports == []


def test_a_streamer_for_other_destinations_leaves_the_stream_alone(
    tmp_path: Path, streamer_factory: Callable[..., TimeseriesStreamer]
) -> None:
    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 2)
    other = streamer_factory(endpoint="http://elsewhere.test", spool_dir=tmp_path, clock_sync=False)
    assert other.recovered_streams() == []
    assert [r.data_id for r in spool.status(tmp_path)] == [data_id]


def test_spool_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labstream.cli import main

    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 2)
        assert main(["spool", "status", "--spool-dir", str(tmp_path)]) == 0
        assert data_id in capsys.readouterr().out
        assert main(["spool", "purge", data_id, "--spool-dir", str(tmp_path)]) == 2  # no --yes
        emu.faults = FaultPlan()
        code = main(
            [
                "spool",
                "resume",
                "--spool-dir",
                str(tmp_path),
                "--api-key",
                API_KEY,
                "--timeout",
                "10",
            ]
        )
        assert code == 0
        assert emu.streams[data_id].finalized
    assert main(["spool", "status", "--spool-dir", str(tmp_path)]) == 0
    assert "empty" in capsys.readouterr().out
