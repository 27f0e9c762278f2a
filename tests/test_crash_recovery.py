"""A process that dies at the worst moment, and the one that recovers its journal.

Each child is killed (``SIGKILL``, by itself, at a chosen point) or simply exits, and a new streamer
on the same journal takes over. What counts is what the emulators hold: streams finalized once,
one ATLAS session per stream, ended once, nothing written after its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labstream import TimeseriesStreamer, cli
from labstream.cli import spool
from labstream.testing.atlas import AtlasFaultPlan
from labstream.testing.atlas_checker import check_session, format_report

from .test_reliability import (
    HZ,
    KEY,
    PARAM,
    QUICK,
    REPO,
    T0,
    Rig,
    destinations,
    expected_values,
    series,
    wait_delivered,
    wait_until,
)

CHILD = """
import os, signal, sys
from labstream import Atlas, RetryPolicy, TimeseriesStreamer

url, key, atlas, keygen, chunks, n, moment = sys.argv[1:8]
chunks, n = int(chunks), int(n)
T0, HZ = {T0!r}, {HZ!r}
s = TimeseriesStreamer(
    key, url, atlas=Atlas(address=atlas, key_generator_address=keygen), clock_sync=False,
    handle_sigterm=False,
    retry=RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, jitter_s=0, cooldown_s=0.05),
)
data_id = s.initialize(stream_name="crash")
print("data_id", data_id, flush=True)
if moment == "after_initialize":
    os.kill(os.getpid(), signal.SIGKILL)
for c in range(chunks):
    start = T0 + c * n / HZ
    s.push(data_id, c, "T", [start + i / HZ for i in range(n)], [c * n + i for i in range(n)])
report = s.finalize(data_id, timeout=20)
print("finalized", report.ok, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_child(rig: Rig, spool: Path, moment: str, chunks: int = 20, n: int = 50) -> str:
    """Run the child until it kills itself at ``moment``; return its data_id."""
    script = spool.parent / "crash_child.py"
    script.write_text(textwrap.dedent(CHILD.format(T0=T0, HZ=HZ)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AS_", "ATOMSCALE_"))}
    env.update(PYTHONPATH=str(REPO / "src"), LABSTREAM_SPOOL_DIR=str(spool))
    argv = [sys.executable, str(script), rig.web.url, KEY, rig.atlas.address]
    argv += [str(rig.atlas.key_generator_address), str(chunks), str(n), moment]
    child = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    words = dict(line.split(maxsplit=1) for line in child.stdout.splitlines())
    if moment == "after_finalize":
        assert words["finalized"] == "True", child.stderr
    return words["data_id"]


def sessions_of(rig: Rig, data_id: str) -> list:  # type: ignore[type-arg]
    assert rig.grpc is not None
    return [s for s in rig.grpc.sessions.values() if s.details.get("labstream_data_id") == data_id]


def test_a_kill_right_after_finalize_leaves_nothing_to_resume(tmp_path: Path) -> None:
    """finalize() returned: the stream is closed for good. Before, the closes were still in the
    journal's queue: the next process resumed the stream, wrote to the ended ATLAS session and
    ended it (and Atomscale's stream) a second time."""
    chunks, n = 20, 50
    with destinations() as rig:
        spool = tmp_path / "spool"
        data_id = run_child(rig, spool, "after_finalize", chunks, n)
        resumer = rig.streamer(spool)
        recovered = resumer.recovered_streams()
        resumer.close(timeout=5)
        assert recovered == []
        assert rig.web.streams[data_id].finalize_calls == 1
        assert rig.web.points(data_id, "T")[1] == expected_values(range(chunks), n)
        (session,) = sessions_of(rig, data_id)
        assert len(session.end_session_seqs) == 1
        report = check_session(session)
        assert report.clean, format_report(report, verbose=True)
        assert report.parameters[PARAM.format("T")].values == expected_values(range(chunks), n)


def test_a_kill_right_after_initialize_is_found_and_finalized(tmp_path: Path) -> None:
    """initialize() returned: the stream is in the journal. Before, a kill within a commit
    interval lost it, and its Atomscale stream was never finalized."""
    with destinations() as rig:
        spool = tmp_path / "spool"
        data_id = run_child(rig, spool, "after_initialize")
        resumer = rig.streamer(spool)
        recovered = resumer.recovered_streams()
        resumer.close(timeout=5)
        assert recovered == [data_id]
        assert rig.web.streams[data_id].finalize_calls == 1
        ended = [s for s in sessions_of(rig, data_id) if s.end_session_seqs]
        assert len(ended) == 1
        assert len(ended[0].end_session_seqs) == 1


def test_an_sdk_script_that_never_closes_its_streamer_leaves_no_stream_open(
    tmp_path: Path,
) -> None:
    """examples/atomscale_dropin.py finalizes its streams and exits without close() (as SDK
    scripts do). Before, its last closes died in the journal's queue with the process: the next
    labstream program resumed the streams, finalized them on Atomscale again and gave ATLAS an
    empty second session per stream."""
    with destinations() as rig:
        spool = tmp_path / "spool"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AS_", "ATOMSCALE_"))}
        env.update(
            PYTHONPATH=str(REPO / "src"),
            LABSTREAM_SPOOL_DIR=str(spool),
            AS_API_KEY=KEY,
            AS_API_ENDPOINT=rig.web.url,
            LABSTREAM_ATLAS=rig.atlas.address,
            LABSTREAM_ATLAS_KEY_GENERATOR=str(rig.atlas.key_generator_address),
            ATOMSCALE_SKIP_CLOCK_SYNC="1",
        )
        code = "import runpy; runpy.run_path('examples/atomscale_dropin.py')['main']()"
        child = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        data_ids = list(rig.web.streams)
        assert len(data_ids) == 2
        resumer = rig.streamer(spool)
        recovered = resumer.recovered_streams()
        resumer.close(timeout=5)
        assert recovered == []
        for data_id in data_ids:
            assert rig.web.streams[data_id].finalize_calls == 1
            (session,) = sessions_of(rig, data_id)
            assert len(session.end_session_seqs) == 1


# -- labstream spool resume ------------------------------------------------------------------------


def leave_atlas_behind(rig: Rig, spool: Path, s: TimeseriesStreamer, chunks: int = 6) -> str:
    """A stream whose ATLAS writes all fail: finalize leaves it open there, pending in the
    journal; the streamer is closed (its process ended)."""
    assert rig.grpc is not None
    data_id = s.initialize(stream_name="atlas behind")
    s.push(data_id, 0, "T", *series(0))
    wait_delivered(s, data_id)  # the session is open, and has chunk 0
    rig.grpc.faults = AtlasFaultPlan(down=True, methods=("PacketWriterService/*",))
    for c in range(1, chunks):
        s.push(data_id, c, "T", *series(c))
    report = s.finalize(data_id, timeout=0.5)
    assert report["atlas"].chunks_pending == chunks - 1, str(report)
    s.close(timeout=0.1)
    rig.grpc.faults = AtlasFaultPlan()  # back
    return data_id


def check_atlas_got_it_once(rig: Rig, data_id: str, chunks: int = 6) -> None:
    (session,) = sessions_of(rig, data_id)
    assert len(session.end_session_seqs) == 1
    report = check_session(session)
    assert report.clean, format_report(report, verbose=True)
    assert report.parameters[PARAM.format("T")].values == expected_values(range(chunks))


@pytest.fixture
def no_env_destinations(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY", "LABSTREAM_ATLAS"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("no_env_destinations")
def test_spool_resume_without_the_key_finishes_what_only_atlas_needs(tmp_path: Path) -> None:
    """Atomscale has the whole stream and closed it: the Atomscale key is not needed to finish
    ATLAS. Before, resume refused ('set AS_API_KEY') and delivered nothing."""
    with destinations() as rig:
        spool_dir = tmp_path / "spool"
        data_id = leave_atlas_behind(rig, spool_dir, rig.streamer(spool_dir))
        done = spool.resume(spool_dir, timeout_s=10, out=lambda _: None)
        assert [r.data_id for r in done.reports] == [data_id] and done.ok
        check_atlas_got_it_once(rig, data_id)
        assert rig.web.streams[data_id].finalize_calls == 1


@pytest.mark.usefixtures("no_env_destinations")
def test_spool_resume_with_the_key_set_still_finishes_an_atlas_only_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, AS_API_KEY in the environment made resume's streamer an Atomscale one too, which
    did not match the stream's destinations: 'nothing to resume'."""
    with destinations() as rig:
        spool_dir = tmp_path / "spool"
        atlas_only = TimeseriesStreamer(
            atlas=rig.atlas, spool_dir=spool_dir, retry=QUICK, handle_sigterm=False
        )
        data_id = leave_atlas_behind(rig, spool_dir, atlas_only)
        monkeypatch.setenv("AS_API_KEY", KEY)
        done = spool.resume(spool_dir, timeout_s=10, out=lambda _: None)
        assert [r.data_id for r in done.reports] == [data_id] and done.ok
        check_atlas_got_it_once(rig, data_id)
        assert data_id not in rig.web.streams


@pytest.mark.usefixtures("no_env_destinations")
def test_spool_resume_names_a_stream_a_live_process_owns_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: 'nothing to resume', exit 0, while `spool status` listed chunks pending."""
    with destinations() as rig:
        assert rig.grpc is not None
        spool_dir = tmp_path / "spool"
        rig.grpc.faults = AtlasFaultPlan(down=True, methods=("PacketWriterService/*",))
        live = rig.streamer(spool_dir)
        data_id = live.initialize(stream_name="still running")
        for c in range(3):
            live.push(data_id, c, "T", *series(c))

        def listed() -> bool:
            return any(r.pending_chunks for r in spool.status(spool_dir))

        wait_until(listed, 10, "the pending chunks in the journal")
        code = cli.main(["spool", "resume", "--spool-dir", str(spool_dir), "--timeout", "1"])
        out, err = capsys.readouterr()
        assert code == 1, err
        owned = f"{data_id}: 3 chunk(s) pending, owned by a running process (pid {os.getpid()})"
        assert owned in out
        assert "nothing to resume" not in out
        rig.grpc.faults = AtlasFaultPlan()
