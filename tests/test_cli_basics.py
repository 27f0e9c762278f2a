"""What a lab expects of any command-line tool: a version, and help for every option."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labstream import __version__, cli
from labstream.cli.config import ENV_VARS
from labstream.testing.atomscale import FaultPlan, run_in_thread

from . import API_KEY
from .test_spool import leave_pending

T0 = 1_714_550_400.0


def parsers(
    parser: argparse.ArgumentParser, name: str = "labstream"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"labstream {__version__}"


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{name}: {action.option_strings or action.dest}"
        for name, parser in parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


# Run where the emulators' dependencies (the testing and atlas extras) cannot be imported: every
# command module is loaded to build the parser, so none may import them before its command runs.
_HELP_WITHOUT_EXTRAS = """
import sys
for name in ("grpc", "google.protobuf", "aiohttp"):
    sys.modules[name] = None
from labstream.cli import main
main(["push", "--help"])
"""


def test_the_command_starts_without_the_emulators_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HELP_WITHOUT_EXTRAS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: labstream push")


# -- --json for lab automation, and the small things a new user met ------------------------------


@pytest.fixture
def quiet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in (*ENV_VARS, "LABSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("ATOMSCALE_SKIP_CLOCK_SYNC", "1")
    monkeypatch.setenv("AS_API_KEY", API_KEY)
    return tmp_path


def two_logs(tmp_path: Path) -> list[Path]:
    paths = []
    for k, rows in ((1, 3), (2, 1250)):
        path = tmp_path / f"run_{k}.csv"
        path.write_text("time,T\n" + "".join(f"{T0 + i},{i}\n" for i in range(rows)))
        paths.append(path)
    return paths


def test_push_json_and_summaries_that_name_their_file(
    quiet_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = two_logs(quiet_env)
    with run_in_thread() as emu:
        argv = ["push", *map(str, logs), "--atomscale", "--endpoint", emu.url]
        assert cli.main([*argv, "--json"]) == 0
        out = capsys.readouterr().out
        first, second = (json.loads(line) for line in out.splitlines())
        assert (first["file"], first["rows"], first["exit_code"]) == (str(logs[0]), 3, 0)
        assert second["file"] == str(logs[1]) and second["complete"] is True
        assert second["destinations"]["atomscale"]["delivered_points"] == 1250
        assert second["data_id"] in emu.streams

        assert cli.main([*argv, "--restart", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert f"{logs[0]}: stream " in out and f"{logs[1]}: stream " in out
        rows = [line for line in out.splitlines() if line.startswith("atomscale")]
        assert "1,250" in rows[1]  # thousands separators


def test_check_json(quiet_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with run_in_thread() as emu:
        assert cli.main(["check", "--atomscale", "--endpoint", emu.url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    checks = result["destinations"]["atomscale"]["checks"]
    assert [c["ok"] for c in checks] == [True, True]
    assert checks[1]["message"] == "API key accepted (env AS_API_KEY)"
    assert cli.main(["check", "--atlas", "127.0.0.1:1", "--json", "--timeout", "0.5"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and not result["destinations"]["atlas"]["checks"][0]["ok"]


def test_config_show_json(
    quiet_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every setting with its source, for programs; the API key masked as for people."""
    key = "sk-live-0123456789abcdefWXYZ"
    monkeypatch.setenv("AS_API_KEY", key)
    monkeypatch.setenv("LABSTREAM_ATLAS", "atlas-pc")
    assert cli.main(["config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert key not in out
    shown = json.loads(out)
    settings = shown["settings"]
    assert settings["atomscale.api_key"] == {"value": "********WXYZ", "source": "env AS_API_KEY"}
    assert settings["push.points_per_chunk"] == {"value": 100, "source": "default"}
    assert shown["destinations"]["atlas"] == "atlas-pc"


def test_spool_status_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 3)
    assert cli.main(["spool", "status", "--spool-dir", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["spool_dir"] == str(tmp_path)
    (row,) = status["streams"]
    assert (row["data_id"], row["stream_name"], row["pending_chunks"]) == (
        data_id,
        "left behind",
        3,
    )


def test_spool_resume_and_purge_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The result on stdout as JSON (progress lines go to stderr), what the emulator stored
    agreeing with it."""
    with run_in_thread(api_key=API_KEY, faults=FaultPlan(down=True)) as emu:
        data_id = leave_pending(emu.url, tmp_path, 3)
        emu.faults = FaultPlan()
        capsys.readouterr()
        argv = ["spool", "resume", "--spool-dir", str(tmp_path), "--api-key", API_KEY, "--json"]
        assert cli.main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert len(emu.points(data_id, "T")[1]) == 30
    assert result["ok"] is True and result["busy"] == []
    (stream,) = result["streams"]
    assert stream["data_id"] == data_id and stream["ok"] is True
    assert stream["destinations"]["atomscale"]["points_delivered"] == 30
    assert (
        cli.main(["spool", "purge", data_id, "--spool-dir", str(tmp_path), "--yes", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["data_id"] == data_id


def test_plot_without_matplotlib_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    started = time.monotonic()
    assert cli.main(["demo", "--plot", "growth.png"]) == 2
    assert time.monotonic() - started < 2  # the 300 s demo did not run
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: --plot needs matplotlib, which is not installed: pip install 'labstream[plot]'"
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_knows_commands_options_and_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["completion", "bash"]) == 0
    (tmp_path / "completion.sh").write_text(capsys.readouterr().out)
    (tmp_path / "growth_42.csv").write_text("time,T\n")
    driver = """
source completion.sh
t() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _labstream
      echo "${COMPREPLY[*]}"; }
t labstream fo
t labstream follow --on
t labstream follow --on-bad-row ""
t labstream spool ""
t labstream push --time-unit m
t labstream push grow
t labstream atlas serve --key
"""
    result = subprocess.run(
        ["bash", "-c", driver], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "follow",
        "--on-bad-row",
        "skip stop",
        "status resume purge",
        "ms",
        "growth_42.csv",
        "--key-generator-port",
    ]
