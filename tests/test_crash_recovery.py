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

from labstream.emulators.atlas_checker import check_session, format_report

from .test_reliability import HZ, KEY, PARAM, REPO, T0, Rig, destinations, expected_values

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
    return [
        s
        for s in rig.grpc.sessions.values()
        if s.details.get("labstream_data_id") == data_id
    ]


def test_a_kill_right_after_finalize_leaves_nothing_to_resume(tmp_path: Path) -> None:
    """finalize() returned: the stream is closed for good. Before, the closes were still in the
    journal's queue: the next process resumed the stream, wrote to the ended ATLAS session and
    ended it (and Atomscale's stream) a second time."""
    chunks, n = 20, 50
    with destinations() as rig:
        spool = tmp_path / "spool"
        data_id = run_child(rig, spool, "after_finalize", chunks, n)
        resumer = rig.streamer(spool)
        recovered = resumer._core.recovered_streams()
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
        recovered = resumer._core.recovered_streams()
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
        recovered = resumer._core.recovered_streams()
        resumer.close(timeout=5)
        assert recovered == []
        for data_id in data_ids:
            assert rig.web.streams[data_id].finalize_calls == 1
            (session,) = sessions_of(rig, data_id)
            assert len(session.end_session_seqs) == 1
