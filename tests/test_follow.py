"""``labstream follow``: a log still being written reaches both emulators, every row once.

The in-process tests drive :class:`~labstream.cli.follow.Follower` one step at a time while the test
writes the log (partial lines, rotation, a new log in a directory), so nothing depends on a
writer's pace. The restart tests run ``labstream follow`` as a child process, kill it with
SIGKILL, write and rotate while it is dead, start it again, and compare what each emulator stored
with what was written.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labstream import Atlas, TimeseriesStreamer, cli
from labstream.cli import spool
from labstream.cli.config import ENV_VARS
from labstream.cli.follow import Checkpoint, Follower, FollowError, FollowSettings, Tail, _head
from labstream.cli.logfiles import ReadOptions
from labstream.testing.atlas import AtlasEmulator
from labstream.testing.atlas import run_in_thread as atlas_thread
from labstream.testing.atlas_checker import check_session
from labstream.testing.atomscale import AtomscaleEmulator, FaultPlan
from labstream.testing.atomscale import run_in_thread as atomscale_thread

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
HEADER = "time,temp [C],pressure\n"
REPO = Path(__file__).resolve().parent.parent


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
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def row(i: int) -> str:
    return f"{T0 + i * 0.1:.1f},{i},{i * 2}\n"


class Stored:
    """What each emulator holds of the streams created since this object was made."""

    def __init__(self, atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> None:
        self.atomscale, self.atlas = atomscale, atlas
        self.before = set(atomscale.streams)
        self.before_sessions = set(atlas.sessions)

    def streams(self) -> list[str]:
        return [d for d in self.atomscale.streams if d not in self.before]

    def atomscale_rows(self) -> list[int]:
        """The ``temp`` values (= row numbers) of every new stream, in stream order."""
        out: list[int] = []
        for data_id in self.streams():
            while True:  # a chunk may be stored between the two reads: read again
                times, temps = self.atomscale.points(data_id, "temp")
                _, pressures = self.atomscale.points(data_id, "pressure")
                if len(pressures) == len(temps):
                    break
            for t, v, p in zip(times, temps, pressures, strict=True):
                assert t == pytest.approx(T0 + v * 0.1) and p == 2 * v
            out += [int(v) for v in temps]
        return out

    def atlas_rows(self) -> list[int]:
        out: list[int] = []
        for key, session in self.atlas.sessions.items():
            if key in self.before_sessions:
                continue
            report = check_session(session)
            param = report.parameters.get("temp:labstream")
            if param is not None:
                out += [int(v) for v in param.values]
        return out


@pytest.fixture
def stored(atomscale: AtomscaleEmulator, atlas: AtlasEmulator) -> Stored:
    return Stored(atomscale, atlas)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- the tail -------------------------------------------------------------------------------------


def test_a_line_is_read_only_once_its_newline_is_written(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_bytes(b"time,T\n1714550400,1")
    tail = Tail(log)
    assert [(n, t) for n, t, _ in tail.read_lines()] == [(1, b"time,T")]
    with log.open("ab") as f:
        f.write(b"2.5\r\n1714550401,")
    assert [(n, t) for n, t, _ in tail.read_lines()] == [(2, b"1714550400,12.5")]
    assert tail.consumed == len(b"time,T\n1714550400,12.5\r\n")
    assert tail.read_lines() == []
    # The log is finished: its last line counts without a newline.
    assert tail.rest() == (3, b"1714550401,", log.stat().st_size)


def test_rotation_and_truncation_are_noticed(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("time,T\n1714550400,1\n")
    tail = Tail(log)
    tail.read_lines()
    assert not tail.replaced() and not tail.truncated()
    log.rename(tmp_path / "log.csv.1")
    assert not tail.replaced()  # gone, not recreated yet: the old file may still grow
    log.write_text("time,T\n")
    assert tail.replaced()
    other = Tail(log)
    other.read_lines()
    log.write_text("")
    assert other.truncated()


def test_a_new_log_on_a_reused_inode_is_not_taken_for_a_finished_one(tmp_path: Path) -> None:
    old = tmp_path / "run_1.csv"
    old.write_text(HEADER + row(0))
    cp = Checkpoint(tmp_path / "cp.json", str(tmp_path))
    st = old.stat()
    cp.dev, cp.ino, cp.head = st.st_dev, st.st_ino, _head(old)
    cp.finish_file()
    assert cp.is_finished(old, old.stat())
    # The file system gives the deleted log's inode to the next one: same (dev, ino) as far as
    # the checkpoint can tell, other first bytes.
    old.unlink()
    new = tmp_path / "run_2.csv"
    new.write_text(HEADER + row(1))
    cp.finished[-1][:2] = [new.stat().st_dev, new.stat().st_ino]
    assert not cp.is_finished(new, new.stat())


def test_one_follower_per_target(tmp_path: Path) -> None:
    first = Checkpoint(tmp_path / "cp.json", str(tmp_path / "log.csv"))
    with first.locked():
        second = Checkpoint(tmp_path / "cp.json", str(tmp_path / "log.csv"))
        busy = f"already followed \\(by process {os.getpid()}\\)"
        with pytest.raises(FollowError, match=busy), second.locked():
            pass
    with second.locked():  # free again once the first let go
        pass


# -- in-process: the follower one step at a time ------------------------------------------------


class Rig:
    def __init__(self, atomscale: AtomscaleEmulator, atlas: AtlasEmulator, tmp: Path) -> None:
        self.atomscale, self.atlas, self.tmp = atomscale, atlas, tmp
        self.events: list[dict[str, Any]] = []
        self.streamers: list[TimeseriesStreamer] = []

    def follower(self, target: Path, **options: Any) -> Follower:
        streamer = TimeseriesStreamer(
            "test-key-not-secret",
            self.atomscale.url,
            points_per_chunk=options.pop("ppc", 10),
            atlas=Atlas(
                address=self.atlas.address, key_generator_address=self.atlas.key_generator_address
            ),
            clock_sync=False,
            handle_sigterm=False,
        )
        self.streamers.append(streamer)
        settings = FollowSettings(target=target, options=ReadOptions(), flush_s=0.0, **options)
        cp = Checkpoint.load(self.tmp / "cp.json", str(target))
        follower = Follower(streamer, settings, cp, self.events.append)
        follower.resume()
        return follower

    def settle(self, follower: Follower) -> None:
        """Steps until what was written is read, sent and confirmed."""

        def caught_up() -> bool:
            while follower.step():
                pass
            return follower.cp.confirmed == follower.cp.pushed

        wait_for(caught_up, "the follower to catch up")

    def close(self) -> None:
        for streamer in self.streamers:
            streamer.close(timeout=10)


@pytest.fixture
def rig(atomscale: AtomscaleEmulator, atlas: AtlasEmulator, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(atomscale, atlas, tmp_path)
    yield r
    r.close()


def test_partial_lines_and_a_rotation(rig: Rig, stored: Stored, tmp_path: Path) -> None:
    log = tmp_path / "growth.csv"
    log.write_text(HEADER)
    follower = rig.follower(log)
    with log.open("a") as f:
        for i in range(25):
            f.write(row(i))
        f.write(row(25)[:7])  # half a row: not read yet
        f.flush()
        rig.settle(follower)
        assert follower.cp.confirmed.rows == 25
        f.write(row(25)[7:])
        for i in range(26, 40):
            f.write(row(i))
    rig.settle(follower)
    # The instrument software rotates: the log is renamed, a new one starts with its header.
    log.rename(tmp_path / "growth.csv.1")
    with (tmp_path / "growth.csv.1").open("a") as f:
        f.write(row(40))  # written to the old file after the rename: still read
    log.write_text(HEADER + "".join(row(i) for i in range(41, 60)))
    for _ in range(3):
        rig.settle(follower)
    follower.stop()
    first, second = stored.streams()
    assert rig.atomscale.points(first, "temp")[1] == list(range(41))
    assert rig.atomscale.points(second, "temp")[1] == list(range(41, 60))
    assert all(rig.atomscale.streams[d].finalized for d in (first, second))
    assert sorted(stored.atlas_rows()) == list(range(60))
    assert [e["reason"] for e in rig.events if e["event"] == "finished"] == ["rotated"]


def test_truncated_log_is_read_again_as_a_new_stream(
    rig: Rig, stored: Stored, tmp_path: Path
) -> None:
    log = tmp_path / "gauge.csv"
    log.write_text(HEADER + "".join(row(i) for i in range(12)))
    follower = rig.follower(log)
    rig.settle(follower)
    log.write_text(HEADER)  # the logger starts over in the same file
    rig.settle(follower)
    with log.open("a") as f:
        f.write("".join(row(i) for i in range(100, 105)))
    rig.settle(follower)
    follower.stop()
    first, second = stored.streams()
    assert rig.atomscale.points(first, "temp")[1] == list(range(12))
    assert rig.atomscale.points(second, "temp")[1] == list(range(100, 105))
    assert any(e["event"] == "truncated" for e in rig.events)


def test_an_idle_log_ends_its_stream_and_growth_starts_another(
    rig: Rig, stored: Stored, tmp_path: Path
) -> None:
    log = tmp_path / "furnace.csv"
    log.write_text(HEADER + "".join(row(i) for i in range(5)))
    follower = rig.follower(log, idle_s=0.05)
    rig.settle(follower)

    def idle() -> bool:
        follower.step()
        return any(e["event"] == "finished" for e in rig.events)

    wait_for(idle, "the log to be idle")
    with log.open("a") as f:
        f.write("".join(row(i) for i in range(5, 9)))
    rig.settle(follower)
    follower.stop()
    first, second = stored.streams()
    assert rig.atomscale.streams[first].finalized
    assert rig.atomscale.points(first, "temp")[1] == list(range(5))
    assert rig.atomscale.streams[second].stream_name == "furnace (from line 7)"
    assert rig.atomscale.points(second, "temp")[1] == list(range(5, 9))
    assert sorted(stored.atlas_rows()) == list(range(9))


def test_directory_each_new_log_is_a_stream(rig: Rig, stored: Stored, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "run_001.csv"
    old.write_text(HEADER + row(0))
    os.utime(old, (T0, T0))
    current = logs / "run_002.csv"
    current.write_text(HEADER + "".join(row(i) for i in range(1, 8)))
    follower = rig.follower(logs, idle_s=3600.0)
    rig.settle(follower)
    assert [e["file"] for e in rig.events if e["event"] == "skipped"] == [str(old)]
    with current.open("a") as f:
        f.write(row(8))
        f.write(row(9).rstrip("\n"))  # its last line has no newline: sent when it is finished
    (logs / "run_003.csv").write_text(HEADER + "".join(row(i) for i in range(20, 23)))
    for _ in range(3):
        rig.settle(follower)
    finished = [e for e in rig.events if e["event"] == "finished"]
    assert [(e["file"], e["reason"]) for e in finished] == [(str(current), "a newer log appeared")]
    follower.stop()
    names = [rig.atomscale.streams[d].stream_name for d in stored.streams()]
    assert names == ["run_002", "run_003"]
    assert stored.atomscale_rows() == [*range(1, 10), 20, 21, 22]
    assert sorted(stored.atlas_rows()) == [*range(1, 10), 20, 21, 22]


def test_an_unreadable_log_in_a_directory_is_reported_and_passed_over(
    rig: Rig, stored: Stored, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "notes.csv").write_text("when,what\nmorning,bake-out\n")
    follower = rig.follower(logs)
    follower.step()
    (bad,) = [e for e in rig.events if e["event"] == "bad_log"]
    assert bad["message"].startswith(f"{logs / 'notes.csv'}, line 1: no time column found")
    (logs / "run_7.csv").write_text(HEADER + row(0) + row(1))
    rig.settle(follower)
    follower.stop()
    assert stored.atomscale_rows() == [0, 1]


def test_bad_rows_are_reported_and_skipped(rig: Rig, stored: Stored, tmp_path: Path) -> None:
    log = tmp_path / "pyrometer.csv"
    log.write_text(HEADER + row(0) + f"{T0 + 0.1},hot,2\n" + row(2) + "1714550400.3,3\n" + row(4))
    follower = rig.follower(log)
    rig.settle(follower)
    follower.stop()
    bad = [(e["line"], e["column"], e["message"]) for e in rig.events if e["event"] == "bad_row"]
    assert bad == [
        (
            3,
            "temp [C]",
            "cannot read 'hot' as a number (to leave this column out, choose "
            "channels with --channel)",
        ),
        (5, None, "2 fields, but the header has 3"),
    ]
    assert stored.atomscale_rows() == [0, 2, 4]
    assert follower.cp.bad_rows == 2


def test_bad_row_stops_when_asked(
    atomscale: AtomscaleEmulator,
    stored: Stored,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "pyrometer.csv"
    log.write_text(HEADER + row(0) + row(1) + "yesterday,1,2\n" + row(3))
    code = cli.main(
        [
            *("follow", str(log), "--atomscale", "--endpoint", atomscale.url),
            *("--on-bad-row", "stop", "--poll", "0.01", "--idle", "5", "--exit-when-idle"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {log}, line 4, column 'time': cannot read 'yesterday'" in err
    assert "stopping (--on-bad-row stop)" in err
    (data_id,) = stored.streams()
    assert atomscale.points(data_id, "temp")[1] == [0, 1]  # the rows before it were sent
    assert atomscale.streams[data_id].finalized


def test_a_damaged_checkpoint_is_not_guessed_past(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "cp.json").write_text("{not json")
    with pytest.raises(FollowError, match="cannot be read"):
        rig.follower(tmp_path)


# -- the command, killed and restarted --------------------------------------------------------


class Child:
    """``labstream follow`` in a process of its own, with its JSON events read as they come."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        stderr: Path,
        command: tuple[str, ...] = ("-m", "labstream.cli", "follow"),
    ) -> None:
        self.stderr = stderr
        self.proc = subprocess.Popen(
            [sys.executable, *command, *argv],
            stdout=subprocess.PIPE,
            stderr=stderr.open("a"),
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def wait_confirmed(self, rows: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            assert event is not None, self.stderr.read_text()
            self.seen.append(event)
            if event["event"] == "status" and event["rows_confirmed"] >= rows:
                return

    def wait_event(self, kind: str) -> dict[str, Any]:
        while True:
            event = self.events.get(timeout=30)
            assert event is not None, self.stderr.read_text()
            self.seen.append(event)
            if event["event"] == kind:
                return event

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        while (event := self.events.get(timeout=10)) is not None:
            self.seen.append(event)
        return code


@pytest.fixture
def follow_cmd(
    atomscale: AtomscaleEmulator, atlas: AtlasEmulator, tmp_path: Path
) -> Callable[[Path], Child]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        AS_API_KEY="test-key-not-secret",
        ATOMSCALE_SKIP_CLOCK_SYNC="1",
    )

    def start(target: Path, command: tuple[str, ...] = ("-m", "labstream.cli", "follow")) -> Child:
        argv = [str(target), "--atomscale", "--endpoint", atomscale.url]
        argv += ["--atlas", atlas.address, "--atlas-key-generator", atlas.key_generator_address]
        argv += ["--points-per-chunk", "20", "--poll", "0.01", "--flush", "0.02"]
        argv += ["--status-interval", "0.05", "--json", "--finalize-timeout", "10"]
        return Child(argv, env, tmp_path / "child_stderr.txt", command)

    return start


def all_rows_stored(stored: Stored, rows: int) -> None:
    wait_for(
        lambda: (
            set(stored.atomscale_rows()) >= set(range(rows))
            and set(stored.atlas_rows()) >= set(range(rows))
        ),
        f"{rows} rows in both emulators",
        timeout=60.0,  # each restart reads its ATLAS session back first (seconds)
    )


def test_killed_and_restarted_every_row_once(
    follow_cmd: Callable[[Path], Child], stored: Stored, tmp_path: Path
) -> None:
    log = tmp_path / "mbe.csv"
    log.write_text(HEADER)
    child = follow_cmd(log)
    with log.open("a") as f:
        f.write("".join(row(i) for i in range(137)) + row(137)[:9])
    child.wait_confirmed(137)
    assert child.stop(signal.SIGKILL) == -signal.SIGKILL
    # While it is down the instrument goes on, finishes its half row and rotates its log.
    with log.open("a") as f:
        f.write(row(137)[9:] + "".join(row(i) for i in range(138, 170)))
    log.rename(tmp_path / "mbe.csv.1")
    log.write_text(HEADER + "".join(row(i) for i in range(170, 185)))
    child = follow_cmd(log)
    all_rows_stored(stored, 185)  # the rest of the rotated file first, then the new file
    with log.open("a") as f:
        f.write("".join(row(i) for i in range(185, 230)))
    all_rows_stored(stored, 230)
    assert child.stop(signal.SIGTERM) == 143
    (resumed,) = [e for e in child.seen if e["event"] == "resumed"]
    first, _ = stored.streams()
    # The restart continues the stream it had started, under its rotated name.
    assert resumed == {
        "event": "resumed",
        "file": str(tmp_path / "mbe.csv.1"),
        "data_id": first,
        "line": 138,  # the header, then 137 rows
        "rows": 137,
    }
    assert not [e for e in child.seen if e["event"] == "resend"]
    assert stored.atomscale_rows() == list(range(230))
    assert sorted(stored.atlas_rows()) == list(range(230))
    names = [stored.atomscale.streams[d].stream_name for d in stored.streams()]
    assert names == ["mbe", "mbe"]
    assert all(stored.atomscale.streams[d].finalized for d in stored.streams())


def test_killed_while_sending_skips_no_row(
    follow_cmd: Callable[[Path], Child], stored: Stored, tmp_path: Path
) -> None:
    """Ten minutes of a 10 Hz log (written fast), rotated once, with two kills in the middle of
    sending: nothing is lost, and both destinations hold every row once."""
    log = tmp_path / "mbe.csv"
    log.write_text(HEADER)
    children = [follow_cmd(log)]
    written = 0
    f = log.open("a")
    try:
        for burst in range(60):  # the writer keeps going while the child is killed
            f.write("".join(row(i) for i in range(written, written + 100)))
            f.flush()
            written += 100
            if burst in (15, 45):
                children[-1].wait_confirmed(1)  # it is running and sending
                assert children[-1].stop(signal.SIGKILL) == -signal.SIGKILL
                children.append(follow_cmd(log))
            if burst == 30:
                f.close()
                log.rename(tmp_path / "mbe.csv.1")
                log.write_text(HEADER)
                f = log.open("a")
            time.sleep(0.005)
    finally:
        f.close()
    all_rows_stored(stored, written)
    assert children[-1].stop(signal.SIGTERM) == 143
    # Each restart continued the stream it found, with the same chunks: a chunk sent again
    # took its own place on Atomscale.
    assert stored.atomscale_rows() == list(range(written))
    assert len(stored.streams()) == 2  # one per log
    assert sorted(stored.atlas_rows()) == list(range(written))


def test_killed_while_a_destination_is_down_the_journal_delivers_the_rest(
    follow_cmd: Callable[[Path], Child],
    stored: Stored,
    tmp_path: Path,
    atomscale: AtomscaleEmulator,
) -> None:
    """Atomscale refuses chunks when the process is killed: the chunks it misses are in the
    journal, so the restart sends nothing again; the journal delivers them to the first stream."""
    log = tmp_path / "mbe.csv"
    log.write_text(HEADER + "".join(row(i) for i in range(40)))
    child = follow_cmd(log)
    child.wait_confirmed(40)
    atomscale.faults = FaultPlan(down=True)  # chunk uploads only: streams can still be made
    try:
        with log.open("a") as f:
            f.write("".join(row(i) for i in range(40, 100)))
        wait_for(lambda: set(stored.atlas_rows()) >= set(range(100)), "ATLAS to have every row")
        wait_for(
            lambda: sum(r.pending_chunks for r in spool.status(tmp_path / "spool")) >= 3,
            "the journal to hold what Atomscale refused",
        )
        assert child.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        atomscale.faults = FaultPlan()
    child = follow_cmd(log)
    with log.open("a") as f:
        f.write("".join(row(i) for i in range(100, 120)))
    all_rows_stored(stored, 120)
    assert child.stop(signal.SIGTERM) == 143
    events = [e["event"] for e in child.seen]
    assert "journal" in events and "resend" not in events
    assert stored.atomscale_rows() == list(range(120))
    assert sorted(stored.atlas_rows()) == list(range(120))


# ``labstream follow`` that kills itself (SIGKILL) right after handing chunk KILL_AT to the
# streamer: the checkpoint names the chunk as pushed, not as confirmed. With WAIT=1 it first waits
# until both destinations confirmed it and the journal let it go: they have it, and labstream's
# journal no longer does. The worst moments for a restart, chosen instead of hoped for.
KILLED_CHILD = """
import os, signal, sys, time
from labstream.cli import follow, main

kill_at, wait = int(sys.argv[1]), sys.argv[2] == "1"
send = follow.Follower._send

def send_then_die(self, data_id, index, batch):
    send(self, data_id, index, batch)
    if index == kill_at:
        deadline = time.monotonic() + 20
        while wait and time.monotonic() < deadline and any(
            d.chunks_pending for d in self.streamer.report(data_id).destinations.values()
        ):
            time.sleep(0.005)
        if wait:
            time.sleep(0.3)  # the journal commits that both confirmed it
        os.kill(os.getpid(), signal.SIGKILL)

follow.Follower._send = send_then_die
sys.exit(main(["follow", *sys.argv[3:]]))
"""


class Writer:
    """An instrument's logger: one row every ``period`` seconds (rows 0.1 s apart in time: a
    10 Hz log written faster than real time), rotating its log at the rows asked."""

    def __init__(self, log: Path, first: int, period: float, rotate_at: tuple[int, ...]) -> None:
        self.log, self.period, self.rotate_at = log, period, rotate_at
        self.written = first
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        f = self.log.open("a")
        try:
            while not self.stop.is_set():
                if self.written in self.rotate_at:
                    f.close()
                    self.log.rename(self.log.with_name(f"{self.log.name}.{self.written}"))
                    self.log.write_text(HEADER)
                    f = self.log.open("a")
                f.write(row(self.written))
                f.flush()
                self.written += 1
                time.sleep(self.period)
        finally:
            f.close()

    def finish(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.written


@pytest.mark.parametrize("delivered", [False, True], ids=["in-flight", "delivered-not-confirmed"])
def test_killed_with_a_chunk_in_flight_every_row_stored_once(
    follow_cmd: Callable[..., Child], stored: Stored, tmp_path: Path, delivered: bool
) -> None:
    """A 10 Hz log (written at 500 rows/s), rotated before and after a kill -9 that catches a
    chunk on its way: the restart continues the same stream, cuts the log into the same chunks,
    sends the chunk again under its own index, and each emulator holds every row once."""
    log = tmp_path / "mbe.csv"
    log.write_text(HEADER + "".join(row(i) for i in range(10)))
    script = tmp_path / "killed_follow.py"
    script.write_text(KILLED_CHILD)
    child = follow_cmd(log, (str(script), "25", str(int(delivered))))
    child.wait_event("stream")
    writer = Writer(log, 10, 0.002, rotate_at=(100, 700))
    try:
        assert child.proc.wait(timeout=60) == -signal.SIGKILL, child.stderr.read_text()
        child = follow_cmd(log)
        wait_for(lambda: writer.written >= 900, "the writer to write 900 rows", timeout=60)
    finally:
        written = writer.finish()
    all_rows_stored(stored, written)
    assert child.stop(signal.SIGTERM) == 143
    (resumed,) = [e for e in child.seen if e["event"] == "resumed"]
    (resend,) = [e for e in child.seen if e["event"] == "resend"]
    assert resend["chunks"] == [25] and resend["data_id"] == resumed["data_id"]
    # Each log is one stream, the one followed when killed continued by the restart.
    streams = stored.streams()
    assert [stored.atomscale.streams[d].stream_name for d in streams] == ["mbe"] * 3
    assert resumed["data_id"] in streams
    assert all(stored.atomscale.streams[d].finalized for d in streams)
    # Atomscale stores a chunk in its place (stream, chunk index): the chunk sent twice is
    # stored once because the restart gave its rows the same index.
    assert stored.atomscale_rows() == list(range(written))
    uploads = [
        r.body["channels"]["temp"]["values"]
        for r in stored.atomscale.requests
        if r.path.endswith("/multi")
        and r.status == 200
        and r.body["data_id"] == resumed["data_id"]
        and r.body["chunk_index"] == 25
    ]
    # Sent again with the very rows it held before: the same chunk boundaries.
    assert uploads and all(u == uploads[0] for u in uploads)
    if delivered:  # it had got there before the kill
        assert len(uploads) == 2
    # A resumed session leaves out what it holds already: ATLAS too has every row once.
    assert sorted(stored.atlas_rows()) == list(range(written))
