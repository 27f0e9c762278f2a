"""``labstream atomscale show``: what a running Atomscale emulator stored, read from its readback
endpoints."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from labstream import cli
from labstream.testing.atomscale import AtomscaleEmulator, run_in_thread

HEADERS = {"X-API-KEY": "sk-test-show"}


@pytest.fixture
def emu() -> Iterator[AtomscaleEmulator]:
    with run_in_thread(spill=True) as emulator:
        yield emulator


def _stream(client: httpx.Client, name: str) -> str:
    body = {"stream_name": name, "points_per_chunk": 2, "project_id": None}
    data_id: str = client.post("/tool-state/stream/initialize", json=body).json()["data_id"]
    return data_id


def _fill(emu: AtomscaleEmulator) -> tuple[str, str]:
    with httpx.Client(base_url=emu.url, headers=HEADERS) as client:
        growth, empty = _stream(client, "growth"), _stream(client, "idle")
        for index in (0, 1, 2, 5):  # chunks 3 and 4 never arrive
            channels = {
                "T": {"timestamps": [index, index + 0.5], "values": [1.0, 2.0], "units": "K"},
                "P": {"timestamps": [index], "values": [None]},
            }
            body = {"data_id": growth, "chunk_index": index, "channels": channels}
            assert client.post("/tool-state/stream/chunk/multi", json=body).status_code == 200
        assert client.post(f"/tool-state/stream/{growth}/finalize").status_code == 200
    return growth, empty


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["atomscale", "show", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_lists_streams_channels_points_and_chunk_runs(
    emu: AtomscaleEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    growth, empty = _fill(emu)
    code, out, err = run(capsys, "--url", emu.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{emu.url}: 2 streams, 12 points; 7 requests received, the last 7 logged"
    assert lines[1] == f"{growth}  'growth'  finalized  2 channels, 12 points in 8 chunks"
    assert lines[2] == "  P  4 points in 4 chunks, indexes 0-2, 5"
    assert lines[3] == "  T  8 points in 4 chunks, indexes 0-2, 5  [K]"
    assert lines[4] == f"{empty}  'idle'  open  0 channels, 0 points in 0 chunks"


def test_show_one_stream_as_json(
    emu: AtomscaleEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    growth, _ = _fill(emu)
    code, out, _ = run(capsys, growth, "--url", emu.url, "--json")
    assert code == 0
    shown = json.loads(out)
    (stream,) = shown["streams"].values()
    assert stream["data_id"] == growth and stream["finalized"] is True
    assert stream["channels"]["T"] == {
        "points": 8,
        "chunks": 4,
        "units": "K",
        "chunk_indexes": [[0, 2], [5, 5]],
    }
    assert "values" not in stream["channels"]["P"]  # the shape, not every point


def test_unknown_stream_and_unreachable_emulator_are_said(
    emu: AtomscaleEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "nope", "--url", emu.url)
    assert (code, out) == (1, "")
    assert f"error: {emu.url} holds no stream 'nope' (0 streams)" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        code, _, err = run(capsys, "--url", closed, "--timeout", "2")
    assert code == 1 and f"cannot reach the Atomscale emulator at {closed}" in err
