"""``labstream push`` end to end: real files, the CLI in-process, both local emulators.

Each test gets its own state, spool and config directories, so runs never see each other's
resume state or journal; the emulators are shared by the module and each test looks only at the
streams it created.
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from labstream import cli
from labstream.cli import push as _cli_push  # noqa: F401 - makes cli.push an attribute
from labstream.cli.config import ENV_VARS
from labstream.testing.atlas import AtlasEmulator
from labstream.testing.atlas import run_in_thread as atlas_thread
from labstream.testing.atlas_checker import check_session
from labstream.testing.atomscale import AtomscaleEmulator
from labstream.testing.atomscale import run_in_thread as atomscale_thread

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z


@pytest.fixture(scope="module")
def atomscale() -> Iterator[AtomscaleEmulator]:
    with atomscale_thread() as emu:
        yield emu


@pytest.fixture(scope="module")
def atlas() -> Iterator[AtlasEmulator]:
    with atlas_thread() as emu:
        yield emu


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (*ENV_VARS, "LABSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LABSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("ATOMSCALE_SKIP_CLOCK_SYNC", "1")
    monkeypatch.setenv("AS_API_KEY", "test-key-not-secret")
    monkeypatch.chdir(tmp_path)
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


class Run:
    def __init__(self, atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> None:
        self.atomscale = atomscale
        self.atlas = atlas

    def __call__(self, *args: str, atlas: bool = True) -> int:
        argv = ["push", *args, "--atomscale", "--endpoint", self.atomscale.url]
        if atlas:
            argv += [
                "--atlas",
                self.atlas.address,
                "--atlas-key-generator",
                self.atlas.key_generator_address,
            ]
        return cli.main([*argv, "--finalize-timeout", "10", "--stall-timeout", "5"])


@pytest.fixture
def push(atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> Run:
    return Run(atomscale, atlas)


class NewStreams:
    """The streams each emulator received since the fixture was made."""

    def __init__(self, atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> None:
        self.atomscale = atomscale
        self.atlas = atlas
        self._before = set(atomscale.streams)
        self._before_sessions = set(atlas.sessions)

    def ids(self) -> list[str]:
        return [d for d in self.atomscale.streams if d not in self._before]

    def points(self, channel: str) -> tuple[list[float], list[float]]:
        ts: list[float] = []
        vals: list[float] = []
        for data_id in self.ids():
            t, v = self.atomscale.points(data_id, channel)
            ts += t
            vals += v
        return ts, vals

    def sessions(self) -> list[Any]:
        return [s for k, s in self.atlas.sessions.items() if k not in self._before_sessions]

    def atlas_values(self, channel: str) -> tuple[list[int], list[float]]:
        ts: list[int] = []
        vals: list[float] = []
        for session in self.sessions():
            report = check_session(session)
            assert report.clean, report
            param = report.parameters.get(f"{channel}:labstream")
            if param is not None:
                ts += list(param.timestamps_ns)
                vals += list(param.values)
        return ts, vals


@pytest.fixture
def new(atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> NewStreams:
    return NewStreams(atomscale, atlas)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def epoch_csv(path: Path, rows: int, *, step: float = 0.5) -> Path:
    lines = ["time,substrate_temperature [C],pressure (mbar),operator"]
    lines += [f"{T0 + i * step},{600 + i * 0.25},{1e-9 * (i + 1)},ann" for i in range(rows)]
    return write(path, "\n".join(lines) + "\n")


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=0, abs_tol=1e-6)
        for x, y in zip(a, b, strict=True)
    )


# -- good files ------------------------------------------------------------------------------------


def test_epoch_csv_reaches_both_destinations(
    push: Run, new: NewStreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = epoch_csv(tmp_path / "growth_42.csv", 250)
    assert push(str(log), "--points-per-chunk", "100", "--tag", "mbe", "--no-progress") == 0
    (data_id,) = new.ids()
    stored = new.atomscale.streams[data_id]
    assert stored.stream_name == "growth_42" and stored.finalized
    assert stored.summary()["channels"]["substrate_temperature"]["units"] == "C"
    ts, vals = new.points("substrate_temperature")
    assert same(ts, [T0 + i * 0.5 for i in range(250)])
    assert same(vals, [600 + i * 0.25 for i in range(250)])
    atlas_ts, atlas_vals = new.atlas_values("pressure")
    assert len(atlas_ts) == 250 and same(atlas_vals, [1e-9 * (i + 1) for i in range(250)])
    out, err = capsys.readouterr()
    assert "complete" in out and "INCOMPLETE" not in out
    assert "skipped: 'operator'" in err


def test_iso_with_offset(push: Run, new: NewStreams, tmp_path: Path) -> None:
    log = write(
        tmp_path / "iso.csv",
        "timestamp,T\n2024-05-01T10:00:00+02:00,1\n2024-05-01T10:00:01+02:00,2\n"
        "2024-05-01T08:00:02Z,3\n",
    )
    assert push(str(log), "--quiet") == 0
    assert new.points("T") == ([T0, T0 + 1, T0 + 2], [1.0, 2.0, 3.0])


def test_naive_iso_is_local_time_and_says_so(
    push: Run, new: NewStreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(
        tmp_path / "naive.csv", "datetime,T\n2024-05-01 10:00:00,1\n2024-05-01 10:00:01.5,2\n"
    )
    assert push(str(log), "--no-progress") == 0
    local = datetime(2024, 5, 1, 10).timestamp()
    assert new.points("T")[0] == [local, local + 1.5]
    assert "no timezone; read as local time" in capsys.readouterr().err


def test_naive_iso_with_timezone(push: Run, new: NewStreams, tmp_path: Path) -> None:
    log = write(tmp_path / "naive.csv", "time,T\n2024-05-01T10:00:00,1\n")
    assert push(str(log), "--timezone", "Europe/Berlin", "--quiet") == 0
    assert new.points("T")[0] == [T0]  # 10:00 CEST = 08:00 UTC


def test_elapsed_seconds_with_start(push: Run, new: NewStreams, tmp_path: Path) -> None:
    log = write(tmp_path / "run.csv", "elapsed_s,T\n0,1\n0.5,2\n1.25,3\n")
    assert push(str(log), "--start", "2024-05-01T08:00:00Z", "--quiet") == 0
    assert new.points("T")[0] == [T0, T0 + 0.5, T0 + 1.25]


def test_parquet(push: Run, new: NewStreams, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 130
    table = pa.table(
        {
            "timestamp": pa.array(
                [int((T0 + i) * 1_000_000) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "temp": pa.array([600.0 + i for i in range(n)]),
            "counts": pa.array(list(range(n)), pa.int32()),
            "comment": pa.array(["x"] * n),
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, row_group_size=50)
    assert push(str(path), "--points-per-chunk", "40", "--quiet") == 0
    (data_id,) = new.ids()
    assert sorted(new.atomscale.streams[data_id].channels()) == ["counts", "temp"]
    assert new.points("temp") == ([T0 + i for i in range(n)], [600.0 + i for i in range(n)])
    assert new.points("counts")[1] == [float(i) for i in range(n)]


def test_channel_mapping(push: Run, new: NewStreams, tmp_path: Path) -> None:
    log = epoch_csv(tmp_path / "m.csv", 5)
    code = push(
        str(log),
        "--channel",
        "Tsub=substrate_temperature [C]:K",
        "--channel",
        "pressure (mbar)",
        "--quiet",
    )
    assert code == 0
    (data_id,) = new.ids()
    summary = new.atomscale.streams[data_id].summary()["channels"]
    assert set(summary) == {"Tsub", "pressure"}
    assert summary["Tsub"]["units"] == "K" and summary["pressure"]["units"] == "mbar"


def test_several_files_each_get_a_stream(push: Run, new: NewStreams, tmp_path: Path) -> None:
    a = epoch_csv(tmp_path / "a.csv", 3)
    b = epoch_csv(tmp_path / "b.csv", 4)
    assert push(str(a), str(b), "--stream-name", "run 7", "--quiet") == 0
    names = sorted(new.atomscale.streams[d].stream_name or "" for d in new.ids())
    assert names == ["run 7 - a", "run 7 - b"]


def test_dry_run_sends_nothing(push: Run, new: NewStreams, tmp_path: Path) -> None:
    assert push(str(epoch_csv(tmp_path / "d.csv", 3)), "--dry-run") == 0
    assert new.ids() == []


# -- bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "extra", "expected"),
    [
        ("when,temp\n1714550400,1\n", (), ["line 1", "no time column found"]),
        ("time,T\n1714550400,1\n1714550401,1\n1714550402,abc\n", (), ["line 4", "column 'T'"]),
        ("time,T\n1714550400,1\n1714550402,2\n1714550401,3\n", (), ["line 4", "column 'time'"]),
        ("time,T\n1714550400000,1\n", (), ["line 2", "column 'time'", "milliseconds"]),
        ("time,T\n12.5,1\n", (), ["line 2", "column 'time'", "--start"]),
        ("time,T\n2024-05-01T10:00:00,1\nlater,2\n", (), ["line 3", "column 'time'"]),
        ("time,T\n1714550400,1,2,3\n", (), ["line 2", "fields"]),
        ("time,T\n1714550400,1\n", ("--channel", "X=nope"), ["no column 'nope'"]),
    ],
)
def test_bad_files_are_named_with_line_and_column(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    extra: tuple[str, ...],
    expected: list[str],
) -> None:
    log = write(tmp_path / "bad.csv", text)
    good = epoch_csv(tmp_path / "good.csv", 3)
    assert push(str(good), str(log), *extra) == 2
    err = capsys.readouterr().err
    assert f"{log}" in err and "Traceback" not in err
    for piece in expected:
        assert piece in err
    assert "nothing was sent" in err
    assert new.ids() == []  # the good file is not sent either


def test_millisecond_epochs_with_time_unit(
    push: Run, new: NewStreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(
        tmp_path / "pyrometer.csv",
        "time_ms,T\n" + "".join(f"{int(T0 * 1000) + 250 * i},{700 + i}\n" for i in range(5)),
    )
    assert push(str(log)) == 2
    err = capsys.readouterr().err
    assert "looks like milliseconds since 1970" in err and "give --time-unit ms" in err
    assert push(str(log), "--time-unit", "ms", "--no-progress") == 0
    (data_id,) = new.ids()
    times, values = new.atomscale.points(data_id, "T")
    assert times == [T0 + 0.25 * i for i in range(5)] and values == [700 + i for i in range(5)]


def test_the_sample_log_in_examples_reads_cleanly(
    push: Run, new: NewStreams, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = Path(__file__).resolve().parent.parent / "examples" / "mbe_growth_log.csv"
    assert push(str(sample), "--dry-run") == 0
    err = capsys.readouterr().err
    assert "120 rows, time column 'time' (iso)" in err
    assert "channels: substrate_temperature [C], ga_cell [C], as_cell [C], pressure [mbar]" in err
    assert "not numbers, skipped: 'shutter'" in err and new.ids() == []


def test_missing_file(push: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert push("nowhere.csv") == 2
    assert "nowhere.csv: no such file" in capsys.readouterr().err


def test_no_destination_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AS_API_KEY")
    assert cli.main(["push", str(epoch_csv(tmp_path / "x.csv", 2))]) == 2
    assert "no destination configured" in capsys.readouterr().err


# -- interruption and resume ---------------------------------------------------------------------


def test_a_row_appended_during_the_push_stops_it_and_is_not_sent(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = epoch_csv(tmp_path / "growing.csv", 5000)

    def append_once(pushed: int) -> None:
        if pushed == 3:
            with log.open("a") as f:
                f.write(f"{T0 + 5000 * 0.5},9999,1e-9,ann\n")

    monkeypatch.setattr(cli.push, "AFTER_CHUNK", append_once)
    assert push(str(log), "--points-per-chunk", "100", "--no-progress") == 2
    err = capsys.readouterr().err
    assert f"{log}: the file changed while labstream was reading it" in err
    assert "use labstream follow" in err
    temps = new.points("substrate_temperature")[1]
    assert 9999.0 not in temps and len(temps) < 5000


def test_interrupt_then_rerun_resumes_without_duplicates(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows, ppc = 500, 10
    log = epoch_csv(tmp_path / "long.csv", rows)

    def interrupt_after_20(pushed: int) -> None:
        if pushed == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.push, "AFTER_CHUNK", interrupt_after_20)
    assert push(str(log), "--points-per-chunk", str(ppc), "--no-progress") == 130
    (first_id,) = new.ids()
    assert new.atomscale.streams[first_id].finalized  # Ctrl-C finalizes
    assert len(new.points("pressure")[0]) == 20 * ppc
    err = capsys.readouterr().err
    assert "interrupted: finalizing" in err and "Run the same command again" in err

    monkeypatch.setattr(cli.push, "AFTER_CHUNK", None)
    assert push(str(log), "--points-per-chunk", str(ppc), "--no-progress") == 0
    err = capsys.readouterr().err
    assert "rows 1-200 were confirmed by every destination" in err
    assert "go to a NEW stream" in err
    assert len(new.ids()) == 2
    ts, vals = new.points("pressure")
    assert sorted(ts) == [T0 + i * 0.5 for i in range(rows)]  # every row once, none twice
    assert same(sorted(vals), [1e-9 * (i + 1) for i in range(rows)])
    atlas_ts, _ = new.atlas_values("substrate_temperature")
    assert len(atlas_ts) == rows and len(set(atlas_ts)) == rows

    # A third run has nothing left to do.
    assert push(str(log), "--points-per-chunk", str(ppc), "--no-progress") == 0
    assert "already pushed completely" in capsys.readouterr().err
    assert len(new.ids()) == 2

    # --restart pushes everything again, as a new stream.
    assert push(str(log), "--points-per-chunk", str(ppc), "--quiet", atlas=True) == 0
    assert len(new.ids()) == 2  # still complete: --restart not given
    assert push(str(log), "--points-per-chunk", str(ppc), "--quiet", "--restart") == 0
    assert len(new.ids()) == 3


def test_changed_file_is_a_new_push(push: Run, new: NewStreams, tmp_path: Path) -> None:
    log = epoch_csv(tmp_path / "grow.csv", 5)
    assert push(str(log), "--quiet") == 0
    epoch_csv(log, 6)
    assert push(str(log), "--quiet") == 0
    assert len(new.ids()) == 2


# -- back-pressure, stalls, the resume record ------------------------------------------------------


def test_reading_waits_for_a_slow_destination(
    push: Run, new: NewStreams, tmp_path: Path, atomscale: AtomscaleEmulator
) -> None:
    from labstream.testing.atomscale import FaultPlan

    atomscale.faults = FaultPlan(latency_s=0.003)
    try:
        log = epoch_csv(tmp_path / "slow.csv", 300)
        args = ("--points-per-chunk", "10", "--max-pending-chunks", "2", "--quiet")
        assert push(str(log), *args, atlas=False) == 0
    finally:
        atomscale.faults = FaultPlan()
    assert len(new.points("pressure")[0]) == 300


def test_a_destination_that_confirms_nothing_stops_the_push(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.delenv("AS_API_KEY")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = epoch_csv(tmp_path / "down.csv", 20)
    address = f"127.0.0.1:{port}"
    timeouts = ["--stall-timeout", "0.5", "--finalize-timeout", "0.5", "--no-progress"]
    code = cli.main(
        ["push", str(log), "--atlas", address, "--atlas-key-generator", address, *timeouts]
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "atlas confirmed nothing for 0.5 s" in captured.err
    assert "INCOMPLETE" in captured.out and "Traceback" not in captured.err


def test_push_state_marks_only_move_forward(tmp_path: Path) -> None:
    from labstream.cli.progress import PushState

    def load() -> PushState:
        return PushState.load_or_new(
            tmp_path,
            {"file": "x"},
            file="x",
            size=1,
            mtime_ns=1,
            destinations=["atlas", "atomscale"],
            total_chunks=10,
            total_rows=100,
            points_per_chunk=10,
        )

    state = load()
    assert state.settle("atlas", 4) and not state.settle("atlas", 3)
    state.settle("atomscale", 6, rejected=[5])
    state.save()
    again = load()
    assert again.settled == {"atlas": 4, "atomscale": 6} and again.rejected["atomscale"] == [5]
    assert again.resume_from == 4
    again.path.write_text("{not json", encoding="utf-8")
    assert load().resume_from == 0  # a damaged record is not trusted


# -- a destination down, re-runs -------------------------------------------------------------------


def test_atlas_down_atomscale_still_gets_every_row_and_reruns_tell_the_truth(
    atomscale: AtomscaleEmulator,
    atlas: AtlasEmulator,
    new: NewStreams,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ATLAS unreachable: Atomscale gets the whole file anyway (before, the push stopped at the
    stall timeout with a fraction of it); exit 1 until ATLAS holds every row. Before, the re-run
    said 'every row was already confirmed' and exited 0 while ATLAS held nothing."""
    from labstream.testing.atlas import AtlasFaultPlan

    rows, ppc = 2000, 10
    log = epoch_csv(tmp_path / "atlas_down.csv", rows)
    argv = ["push", str(log), "--atomscale", "--endpoint", atomscale.url, "--atlas", atlas.address]
    argv += ["--atlas-key-generator", atlas.key_generator_address, "--points-per-chunk", str(ppc)]
    argv += ["--max-pending-chunks", "10", "--stall-timeout", "0.5", "--finalize-timeout", "1"]
    argv += ["--no-progress"]
    atlas.faults = AtlasFaultPlan(down=True)
    try:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        (data_id,) = new.ids()
        assert sorted(new.points("pressure")[0]) == [T0 + i * 0.5 for i in range(rows)]
        assert new.atomscale.streams[data_id].finalized
        assert new.sessions() == []
        assert "atlas confirmed nothing for 0.5 s" in err and "labstream spool resume" in err
        # Said at once, before any row: the pre-flight look at each destination.
        assert err.index("warning: ATLAS: ") < err.index("atlas confirmed nothing")
        assert "The push goes on" in err and "warning: Atomscale" not in err

        assert cli.main(argv) == 1  # ATLAS still down: the same command says so
        err = capsys.readouterr().err
        assert "already" not in err
        assert f"atlas still misses {rows * 2:,} point(s) of stream {data_id}" in err
    finally:
        atlas.faults = AtlasFaultPlan()

    capsys.readouterr()
    assert cli.main(argv) == 0  # ATLAS back: the journal delivers to the same stream
    assert "warning: ATLAS" not in capsys.readouterr().err
    assert new.ids() == [data_id]
    assert len(new.points("pressure")[0]) == rows
    ts, _ = new.atlas_values("pressure")
    assert sorted(ts) == sorted(set(ts)) and len(ts) == rows
    (session,) = new.sessions()
    assert len(session.end_session_seqs) == 1
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "already pushed completely" in capsys.readouterr().err


def test_ctrl_c_of_a_restart_push_says_to_run_it_without_restart(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows, ppc = 100, 10
    log = epoch_csv(tmp_path / "again.csv", rows)
    assert push(str(log), "--points-per-chunk", str(ppc), "--quiet") == 0

    def interrupt_after_3(pushed: int) -> None:
        if pushed == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.push, "AFTER_CHUNK", interrupt_after_3)
    args = (str(log), "--points-per-chunk", str(ppc), "--no-progress")
    assert push(*args, "--restart") == 130
    err = capsys.readouterr().err
    assert "Run the same command without --restart to resume where this run stopped." in err
    monkeypatch.setattr(cli.push, "AFTER_CHUNK", None)
    assert push(*args) == 0  # as told: the restarted push goes on from row 31
    ts, _ = new.points("pressure")
    assert sorted(ts) == sorted([T0 + i * 0.5 for i in range(rows)] * 2)  # two pushes, no more


def test_atlas_verify_compares_what_the_server_holds_with_the_pushed_log(
    push: Run, atlas: AtlasEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`labstream atlas verify --against FILE`: every channel of the log, row by row, against
    the session the Stream API holds; a log that differs by one value is told apart."""
    log = tmp_path / "growth.csv"
    repo = Path(__file__).resolve().parent.parent
    log.write_text((repo / "examples" / "mbe_growth_log.csv").read_text())
    assert push(str(log), "--no-progress") == 0
    capsys.readouterr()
    verify = ["atlas", "verify", "--server", atlas.address, "--against"]
    assert cli.main([*verify, str(log)]) == 0
    out = capsys.readouterr().out
    assert "compared with" in out and "DIFFERENT" not in out
    assert ": same" in out
    lines = log.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line[:1].isdigit())
    cells = lines[row].split(",")
    cells[1] = str(float(cells[1]) + 1.0)  # one temperature off by a degree
    lines[row] = ",".join(cells)
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(lines) + "\n")
    assert cli.main([*verify, str(changed), "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    channels = {c["channel"]: c for c in answer["compared_with"]["channels"]}
    assert answer["report"]["clean"] is True  # the session itself is fine
    assert sum(c["different_values"] for c in channels.values()) == 1


KILLED_PUSH = """
import os, signal, sys, time
from labstream.cli import main, push
kill_after, settle_s = int(sys.argv[1]), float(sys.argv[2])

def die(pushed: int) -> None:
    if pushed == kill_after:
        time.sleep(settle_s)  # the destinations confirm what was pushed; the mark is not saved
        os.kill(os.getpid(), signal.SIGKILL)

push.AFTER_CHUNK = die
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(("kill_after", "settle_s"), [(1, 0.0), (30, 0.0), (30, 0.5)])
def test_kill_9_during_a_push_then_the_same_command_sends_each_row_once(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kill_after: int,
    settle_s: float,
) -> None:
    """Before: the re-run sent every row the killed run had pushed since its last saved mark to
    a new stream, while the old one held them too, on both destinations."""
    import os
    import subprocess
    import sys

    rows, ppc = 600, 10
    log = epoch_csv(tmp_path / "killed.csv", rows)
    args = [str(log), "--points-per-chunk", str(ppc), "--no-progress"]
    script = tmp_path / "killed_push.py"
    script.write_text(KILLED_PUSH)
    argv = ["push", *args, "--atomscale", "--endpoint", push.atomscale.url, "--atlas"]
    argv += [push.atlas.address, "--atlas-key-generator", push.atlas.key_generator_address]
    src = str(Path(cli.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src}
    child = subprocess.run(
        [sys.executable, str(script), str(kill_after), str(settle_s), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr

    assert push(*args) == 0
    assert "follow in the same stream" in capsys.readouterr().err
    assert len(new.ids()) == 1  # the killed run's stream, continued
    assert len(new.sessions()) == 1
    ts, vals = new.points("pressure")
    assert sorted(ts) == [T0 + i * 0.5 for i in range(rows)]  # every row once, none twice
    assert same(sorted(vals), [1e-9 * (i + 1) for i in range(rows)])
    atlas_ts, _ = new.atlas_values("substrate_temperature")
    assert len(atlas_ts) == rows and len(set(atlas_ts)) == rows
    assert push(*args) == 0  # nothing left to do
    assert len(new.points("pressure")[0]) == rows


def test_sigterm_during_a_push_then_the_same_command_sends_each_row_once(
    push: Run,
    new: NewStreams,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    rows, ppc = 400, 10
    log = epoch_csv(tmp_path / "terminated.csv", rows)
    args = [str(log), "--points-per-chunk", str(ppc), "--no-progress"]

    def terminate_after_15(pushed: int) -> None:
        if pushed == 15:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli.push, "AFTER_CHUNK", terminate_after_15)
    assert push(*args) == 143
    assert "Run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(cli.push, "AFTER_CHUNK", None)
    assert push(*args) == 0
    ts, _ = new.points("pressure")
    assert sorted(ts) == [T0 + i * 0.5 for i in range(rows)]  # every row once, none twice
    atlas_ts, _ = new.atlas_values("substrate_temperature")
    assert len(atlas_ts) == rows and len(set(atlas_ts)) == rows
