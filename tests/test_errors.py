"""Every error a user can meet is a labstream error carrying its cause, and the optional
dependencies are optional: Atomscale alone works without grpc, and a missing extra is named."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from labstream import LabstreamError, TimeseriesStreamer
from labstream._core import process
from labstream.errors import (
    ConfigError,
    JournalError,
    LogFileError,
    MalformedAnswerError,
    MissingExtraError,
    RejectedError,
)
from labstream.testing.atomscale import run_in_thread

# -- the tree and its causes ------------------------------------------------------------------


def test_the_tree_keeps_the_standard_bases_sdk_code_catches() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(LogFileError, ValueError)
    assert issubclass(JournalError, OSError)
    assert issubclass(MissingExtraError, ImportError)
    assert issubclass(MalformedAnswerError, RejectedError)
    for cls in (ConfigError, LogFileError, JournalError, MissingExtraError, MalformedAnswerError):
        assert issubclass(cls, LabstreamError)


def test_a_spool_dir_under_a_file_is_a_journal_error_with_its_cause(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(JournalError, match="cannot open the journal") as info:
        TimeseriesStreamer(api_key="k", spool_dir=tmp_path / "file" / "sub", clock_sync=False)
    assert isinstance(info.value.__cause__, NotADirectoryError)


def test_a_journal_that_is_not_a_database_is_a_journal_error_with_its_cause(
    tmp_path: Path,
) -> None:
    (tmp_path / "journal.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(JournalError, match=r"journal\.sqlite3") as info:
        TimeseriesStreamer(api_key="k", spool_dir=tmp_path, clock_sync=False)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def _initialize_against(answer: Callable[[httpx.Request], httpx.Response]) -> None:
    streamer = TimeseriesStreamer(
        api_key="k", http_transport=httpx.MockTransport(answer), spool=False, clock_sync=False
    )
    try:
        streamer.initialize("run")
    finally:
        streamer.close()


def test_an_answer_that_is_not_json_is_a_malformed_answer_with_its_cause() -> None:
    with pytest.raises(MalformedAnswerError, match="initialize answered something") as info:
        _initialize_against(lambda request: httpx.Response(200, content=b"<html>proxy</html>"))
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)
    assert info.value.destination == "atomscale"


def test_an_answer_without_a_data_id_is_a_malformed_answer() -> None:
    with pytest.raises(MalformedAnswerError, match="without a data_id"):
        _initialize_against(lambda request: httpx.Response(200, json={"unexpected": 1}))


# -- optional dependencies --------------------------------------------------------------------

# Run in a fresh interpreter where grpc and protobuf cannot be imported, as after
# `pip install labstream` without extras.
_WITHOUT_GRPC = """
import sys
for name in ("grpc", "google.protobuf"):
    sys.modules[name] = None
import json, labstream
from labstream.errors import MissingExtraError
try:
    labstream.TimeseriesStreamer(atlas="127.0.0.1:1", spool=False)
except MissingExtraError as exc:
    refused = str(exc)
s = labstream.TimeseriesStreamer(api_key="k", endpoint=sys.argv[1], clock_sync=False, spool=False)
data_id = s.initialize("no extras")
s.push(data_id, 0, "T", [1.7e9, 1.7e9 + 1], [1.0, 2.0])
report = s.finalize(data_id)
s.close()
loaded = sorted(m for m in ("grpc", "google.protobuf", "aiohttp", "rich") if sys.modules.get(m))
print(json.dumps({"refused": refused, "data_id": data_id, "ok": report.ok,
                  "loaded": loaded}))
"""


def test_atomscale_alone_streams_without_grpc_and_atlas_names_the_extra() -> None:
    with run_in_thread(api_key="k") as emulator:
        out = subprocess.run(
            [sys.executable, "-c", _WITHOUT_GRPC, emulator.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        assert emulator.points(result["data_id"], "T") == ([1.7e9, 1.7e9 + 1], [1.0, 2.0])
    assert result["ok"] is True
    assert result["loaded"] == []
    assert "pip install 'labstream[atlas]'" in result["refused"]


# -- is another process alive? ----------------------------------------------------------------


def test_a_process_that_exited_is_not_alive_and_this_one_is() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process.process_alive(child.pid)
    assert process.process_alive(__import__("os").getpid())


class FakeKernel32:
    """kernel32 as Windows answers for a table of processes: pid -> exit code, or "denied"."""

    def __init__(self, processes: dict[int, int | str]) -> None:
        self.processes = processes
        self.last_error = 0
        self.open_handles: set[int] = set()

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:  # noqa: N802
        state = self.processes.get(pid)
        if state is None or state == "denied":
            self.last_error = 87 if state is None else 5  # INVALID_PARAMETER, ACCESS_DENIED
            return 0
        self.open_handles.add(pid)
        return pid

    def GetExitCodeProcess(self, handle: int, code: Any) -> int:  # noqa: N802
        code._obj.value = self.processes[handle]
        return 1

    def CloseHandle(self, handle: int) -> int:  # noqa: N802
        self.open_handles.remove(handle)
        return 1

    def GetLastError(self) -> int:  # noqa: N802
        return self.last_error


def test_windows_liveness_asks_for_the_exit_code_and_never_signals() -> None:
    kernel32 = FakeKernel32({10: 259, 11: 0, 12: "denied"})  # running, exited, another user's
    assert process.windows_process_alive(10, kernel32)
    assert not process.windows_process_alive(11, kernel32)
    assert process.windows_process_alive(12, kernel32)
    assert not process.windows_process_alive(13, kernel32)  # no such process
    assert kernel32.open_handles == set()  # every handle opened was closed


def test_a_clock_answer_without_its_times_is_named_and_the_stream_still_starts() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/gateway/time":
            return httpx.Response(200, json={"now": "soon"})
        return httpx.Response(200, json={"data_id": "d-1"})

    streamer = TimeseriesStreamer(
        api_key="k", http_transport=httpx.MockTransport(answer), spool=False
    )
    try:
        assert streamer.initialize("run") == "d-1"
        status = streamer.clock_status()
    finally:
        streamer.close()
    assert status.error is not None
    assert "MalformedAnswerError" in status.error
    assert "receivedAtUnixMs" in status.error
