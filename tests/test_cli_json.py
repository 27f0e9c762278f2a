"""``--json`` for the demo and the emulators' serve commands: what lab automation reads.

``demo --json`` prints its result as one JSON object on stdout (the running account on stderr);
``atomscale serve --json`` and ``atlas serve --json`` print a line when ready, with the address a
client needs, and a summary of what they hold when stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labstream import Atlas, TimeseriesStreamer, cli
from labstream.cli.config import ENV_VARS

REPO = Path(__file__).resolve().parent.parent
T0 = 1_714_550_400.0


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*ENV_VARS, "LABSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_demo_json_is_the_result_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--seconds", "10", "--pace", "0", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout holds that object and nothing else
    assert result["ok"] is True and result["exit_code"] == 0
    assert result["finalized"] is True and result["atlas_session_clean"] is True
    assert result["chunks"] == 1 and result["points_per_chunk"] == 100
    assert set(result["channels"]) == {
        "substrate_temperature",
        "ga_cell_temperature",
        "as_cell_temperature",
        "chamber_pressure",
    }
    for counts in result["channels"].values():
        assert counts == {"pushed": 100, "atomscale": 100, "atlas": 100, "identical": True}
    for name in ("atomscale", "atlas"):
        d = result["destinations"][name]
        assert d["delivered_points"] == 400 and d["closed"] is True and d["pending_points"] == 0
    assert set(result["faults_injected"]) == {"atomscale", "atlas"}
    # The sentences people read went to stderr.
    assert "All 400 points stored exactly as pushed" in captured.err


class Server:
    """A serve command in a process of its own, its JSON lines read as they come."""

    def __init__(self, *argv: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        env["PYTHONPATH"] = str(REPO / "src")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labstream.cli", *argv, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else ""
        self.ready: dict[str, Any] = json.loads(line)

    def stop(self, sig: int) -> tuple[int, list[dict[str, Any]]]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, [json.loads(line) for line in out.splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def push_one_chunk(**destination: Any) -> str:
    with TimeseriesStreamer(
        clock_sync=False, spool=False, handle_sigterm=False, **destination
    ) as streamer:
        data_id = streamer.initialize("served")
        streamer.push(data_id, 0, "T", [T0, T0 + 1, T0 + 2], [1.0, 2.0, 3.0])
        assert streamer.finalize(data_id, timeout=10).ok
    return data_id


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_atomscale_serve_json(servers: list[Server], sig: int) -> None:
    server = Server("atomscale", "serve", "--port", "0")
    servers.append(server)
    ready = server.ready
    assert ready["event"] == "ready" and ready["port"] > 0
    assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
    data_id = push_one_chunk(api_key="any", endpoint=ready["url"])
    code, lines = server.stop(sig)
    assert code == 0
    (stopped,) = lines
    assert stopped["event"] == "stopped"
    stream = stopped["streams"][data_id]
    assert stream["finalized"] is True and stream["channels"]["T"]["points"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_atlas_serve_json(servers: list[Server], sig: int) -> None:
    server = Server("atlas", "serve", "--port", "0", "--key-generator-port", "0")
    servers.append(server)
    ready = server.ready
    assert ready["event"] == "ready"
    assert ready["address"] == f"127.0.0.1:{ready['port']}"
    assert ready["key_generator_address"] == f"127.0.0.1:{ready['key_generator_port']}"
    push_one_chunk(
        atlas=Atlas(address=ready["address"], key_generator_address=ready["key_generator_address"])
    )
    code, lines = server.stop(sig)
    assert code == 0
    (stopped,) = lines
    assert stopped["event"] == "stopped" and stopped["ok"] is True
    (session,) = stopped["sessions"]
    assert session["identifier"] == "served" and session["clean"] is True
    assert session["failed_checks"] == [] and session["samples"] == {"T:labstream": 3}


def test_every_command_but_completion_takes_json() -> None:
    """Lab automation reads any command's result; a completion script is shell code anyway."""

    def commands(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, Any]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name, parser
        for action in subs:
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")

    without = [
        name
        for name, parser in commands(cli.build_parser(), "labstream")
        if not any("--json" in a.option_strings for a in parser._actions)
    ]
    assert without == ["labstream completion"]
