"""Tests for the local Atomscale emulator: endpoints, storage, auth and fault injection."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from labstream.testing.atomscale import (
    AtomscaleEmulator,
    FaultPlan,
    StoredChunk,
    run_in_thread,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-secret-123"
HEADERS = {"X-API-KEY": KEY}


@pytest.fixture
async def emu() -> AsyncIterator[AtomscaleEmulator]:
    async with AtomscaleEmulator() as emulator:
        yield emulator


@pytest.fixture
async def client(emu: AtomscaleEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emu.url, headers=HEADERS, timeout=5.0) as http:
        yield http


async def _init(client: httpx.AsyncClient, **extra: Any) -> str:
    body = {"stream_name": "run-1", "points_per_chunk": 3, "project_id": None, **extra}
    response = await client.post("/tool-state/stream/initialize", json=body)
    assert response.status_code == 200, response.text
    data_id: str = response.json()["data_id"]
    return data_id


def _chunk(data_id: str, index: int, ts: list[float], values: list[Any], **extra: Any) -> Any:
    return {
        "data_id": data_id,
        "chunk_index": index,
        "channel_name": "temp",
        "timestamps": ts,
        "values": values,
        **extra,
    }


# -- stream endpoints --------------------------------------------------------------------------


async def test_initialize_stores_metadata(
    emu: AtomscaleEmulator, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/tool-state/stream/initialize",
        json={"stream_name": "s", "synth_source_id": 2, "points_per_chunk": 50, "project_id": "p1"},
    )
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"data_id", "processed_data_id"}
    uuid.UUID(answer["data_id"])
    uuid.UUID(answer["processed_data_id"])
    stream = emu.streams[answer["data_id"]]
    assert (stream.stream_name, stream.synth_source_id) == ("s", 2)
    assert (stream.points_per_chunk, stream.project_id) == (50, "p1")
    assert not stream.finalized

    # synth_source_id left out -> None
    other = await _init(client)
    assert emu.streams[other].synth_source_id is None
    assert emu.streams[other].stream_name == "run-1"


async def test_initialize_rejects_bad_body(client: httpx.AsyncClient) -> None:
    missing = await client.post("/tool-state/stream/initialize", json={"stream_name": "s"})
    assert missing.status_code == 422
    assert "points_per_chunk" in missing.json()["detail"]
    wrong = await client.post(
        "/tool-state/stream/initialize", json={"points_per_chunk": 1, "synth_source_id": "x"}
    )
    assert wrong.status_code == 422


async def test_chunk_store_overwrite_and_order(
    emu: AtomscaleEmulator, client: httpx.AsyncClient
) -> None:
    data_id = await _init(client)
    # Out of order, and the points inside a chunk out of time order.
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 1, [5.0, 4.0], [50, 40]))
    first = _chunk(data_id, 0, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], units="K")
    assert (await client.post("/tool-state/stream/chunk", json=first)).status_code == 200
    assert emu.points(data_id, "temp") == ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 40.0, 50.0])

    # A re-send of chunk 0 replaces it rather than adding points.
    again = _chunk(data_id, 0, [1.0, 2.0, 3.0], [7.0, 8.0, 9.0], units="K")
    assert (await client.post("/tool-state/stream/chunk", json=again)).status_code == 200
    assert emu.points(data_id, "temp")[1] == [7.0, 8.0, 9.0, 40.0, 50.0]
    chunk = emu.streams[data_id].chunks[("temp", 0)]
    assert isinstance(chunk, StoredChunk)
    assert (chunk.received, chunk.units, chunk.after_finalize) == (2, "K", False)
    assert emu.streams[data_id].chunk_requests == 3
    assert emu.points(data_id, "nope") == ([], [])


async def test_null_values_become_nan(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    body = _chunk(data_id, 0, [1.0, 2.0, 3], [1.5, None, 3])
    assert (await client.post("/tool-state/stream/chunk", json=body)).status_code == 200
    _, values = emu.points(data_id, "temp")
    assert values[0] == 1.5
    assert math.isnan(values[1])
    assert values[2] == 3.0


async def test_chunk_multi(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    body = {
        "data_id": data_id,
        "chunk_index": 0,
        "channels": {
            "a": {"timestamps": [1.0, 2.0], "values": [10.0, 20.0], "units": "V"},
            "b": {"timestamps": [1.0], "values": [None]},
        },
    }
    assert (await client.post("/tool-state/stream/chunk/multi", json=body)).status_code == 200
    stream = emu.streams[data_id]
    assert stream.channels() == ["a", "b"]
    assert emu.points(data_id, "a") == ([1.0, 2.0], [10.0, 20.0])
    assert stream.chunks[("a", 0)].units == "V"
    assert stream.chunks[("b", 0)].units is None

    # One bad channel rejects the whole request: nothing of it is stored.
    bad = {
        "data_id": data_id,
        "chunk_index": 1,
        "channels": {
            "a": {"timestamps": [3.0], "values": [30.0]},
            "b": {"timestamps": [3.0, 4.0], "values": [1.0]},
        },
    }
    response = await client.post("/tool-state/stream/chunk/multi", json=bad)
    assert response.status_code == 422
    assert "'b'" in response.json()["detail"]
    assert ("a", 1) not in stream.chunks
    empty = {"data_id": data_id, "chunk_index": 1, "channels": {}}
    assert (await client.post("/tool-state/stream/chunk/multi", json=empty)).status_code == 422


_MISSING = object()


@pytest.mark.parametrize(
    "change",
    [
        {"data_id": _MISSING},
        {"timestamps": [], "values": []},
        {"timestamps": [1.0, 2.0], "values": [1.0]},
        {"chunk_index": -1},
        {"chunk_index": 1.5},
        {"timestamps": [None]},
        {"values": ["x"]},
        {"channel_name": ""},
        {"units": 3},
    ],
)
async def test_chunk_validation(
    emu: AtomscaleEmulator, client: httpx.AsyncClient, change: dict[str, Any]
) -> None:
    data_id = await _init(client)
    body = {**_chunk(data_id, 0, [1.0], [1.0]), **change}
    body = {k: v for k, v in body.items() if v is not _MISSING}
    response = await client.post("/tool-state/stream/chunk", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert emu.streams[data_id].chunks == {}


async def test_chunk_unknown_stream_and_malformed_json(client: httpx.AsyncClient) -> None:
    unknown = await client.post(
        "/tool-state/stream/chunk", json=_chunk("no-such-id", 0, [1.0], [1.0])
    )
    assert unknown.status_code == 404
    assert "no-such-id" in unknown.json()["detail"]
    malformed = await client.post(
        "/tool-state/stream/chunk",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 422
    no_body = await client.post("/tool-state/stream/chunk")
    assert no_body.status_code == 422
    not_object = await client.post("/tool-state/stream/chunk", json=[1, 2])
    assert not_object.status_code == 422


async def test_finalize_and_late_chunks(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    response = await client.post(f"/tool-state/stream/{data_id}/finalize")
    assert response.status_code == 200
    assert emu.streams[data_id].finalized
    assert (await client.post("/tool-state/stream/nope/finalize")).status_code == 404

    # Late chunks are still stored, and counted.
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 1, [2.0], [2.0]))
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.5]))
    stream = emu.streams[data_id]
    assert stream.chunks_after_finalize == 2
    assert stream.chunks[("temp", 1)].after_finalize  # was missing at finalize
    assert not stream.chunks[("temp", 0)].after_finalize  # was there, only re-sent
    assert emu.points(data_id, "temp") == ([1.0, 2.0], [1.5, 2.0])


async def test_gateway_time_with_clock_offset() -> None:
    async with (
        AtomscaleEmulator(clock_offset_s=5.0) as emu,
        httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as client,
    ):
        sent = time.time() * 1000
        response = await client.get("/gateway/time")
        received = time.time() * 1000
    answer = response.json()
    assert set(answer) == {"receivedAtUnixMs", "transmittedAtUnixMs"}
    offset = ((answer["receivedAtUnixMs"] - sent) + (answer["transmittedAtUnixMs"] - received)) / 2
    assert 4900 < offset < 5100
    assert answer["transmittedAtUnixMs"] >= answer["receivedAtUnixMs"]


# -- samples, projects, tags, instruments --------------------------------------------------------


async def test_physical_samples_and_tracking(
    emu: AtomscaleEmulator, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/physical_samples/")).json() == []
    created = await client.post("/physical_samples/", json={"name": "Wafer A"})
    assert created.status_code == 200
    sample_id = created.json()["physical_sample_id"]
    assert (await client.get("/physical_samples/")).json() == [{"id": sample_id, "name": "Wafer A"}]

    duplicate = await client.post("/physical_samples/", json={"name": "  wafer a "})
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": {"physical_sample_id": sample_id}}

    data_id = await _init(client)
    link = {"data_ids": [data_id], "physical_sample_id": sample_id}
    assert (await client.post("/data_entries/physical_sample", json=link)).status_code == 200
    assert emu.streams[data_id].physical_sample_id == sample_id
    bad_sample = {"data_ids": [data_id], "physical_sample_id": "nope"}
    assert (await client.post("/data_entries/physical_sample", json=bad_sample)).status_code == 404
    bad_stream = {"data_ids": ["nope"], "physical_sample_id": sample_id}
    assert (await client.post("/data_entries/physical_sample", json=bad_stream)).status_code == 404

    track = {"physical_sample_id": sample_id, "set_active": True}
    url = "/projects/proj-1/configuration/tracking_samples"
    assert (await client.post(url, json=track)).status_code == 200
    assert emu.tracking_samples == {"proj-1": {sample_id: True}}
    unknown = {"physical_sample_id": "nope", "set_active": True}
    assert (await client.post(url, json=unknown)).status_code == 404


async def test_tags(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    assert (await client.get("/tags/")).json() == []
    tag_id = (await client.post("/tags/", json={"name": "growth"})).json()["id"]
    assert (await client.get("/tags/")).json() == [{"id": tag_id, "name": "growth"}]
    data_id = await _init(client)
    attach = {"data_ids": [data_id], "tag_ids": [tag_id, tag_id]}
    assert (await client.post("/tags/data-items/", json=attach)).status_code == 200
    assert emu.streams[data_id].tag_ids == [tag_id]
    unknown = {"data_ids": [data_id], "tag_ids": ["nope"]}
    response = await client.post("/tags/data-items/", json=unknown)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


async def test_instruments_and_unknown_route(client: httpx.AsyncClient) -> None:
    instruments = (await client.get("/instruments/synthesis")).json()
    assert len(instruments) >= 2
    for item in instruments:
        assert {"synth_source_id", "source_name", "synth_source_type"} <= set(item)
    missing = await client.get("/no/such/route")
    assert missing.status_code == 404
    assert "detail" in missing.json()


# -- auth and the request log --------------------------------------------------------------------


async def test_missing_key_is_401(emu: AtomscaleEmulator) -> None:
    async with httpx.AsyncClient(base_url=emu.url) as bare:
        response = await bare.post("/tool-state/stream/initialize", json={"points_per_chunk": 1})
    assert response.status_code == 401
    assert emu.streams == {}
    assert emu.requests[-1].status == 401


async def test_gateway_time_needs_no_key_as_the_sdk_sends_none() -> None:
    async with AtomscaleEmulator(api_key=KEY) as emu, httpx.AsyncClient(base_url=emu.url) as bare:
        answer = await bare.get("/gateway/time")
        refused = await bare.get("/tags/")
    assert answer.status_code == 200 and "transmittedAtUnixMs" in answer.json()
    assert refused.status_code == 401  # every other endpoint still needs the key


async def test_wrong_key_is_403_and_key_never_recorded() -> None:
    async with AtomscaleEmulator(api_key=KEY) as emu:
        async with httpx.AsyncClient(base_url=emu.url, headers={"X-API-KEY": "wrong"}) as bad:
            assert (await bad.get("/tags/")).status_code == 403
        async with httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as good:
            assert (await good.get("/tags/")).status_code == 200
        async with httpx.AsyncClient(base_url=emu.url) as raw:
            log = (await raw.get("/_emulator/requests")).text
    assert [r.status for r in emu.requests] == [403, 200]
    assert emu.requests[1].headers["x-api-key"] == "***"
    assert KEY not in repr(emu.requests)
    assert KEY not in log
    assert "wrong" not in repr(emu.requests)


# -- fault injection -----------------------------------------------------------------------------


async def _push(client: httpx.AsyncClient, data_id: str, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        body = _chunk(data_id, i, [float(i)], [float(i)])
        statuses.append((await client.post("/tool-state/stream/chunk", json=body)).status_code)
    return statuses


async def test_fail_every(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)  # initialize is not a fault target by default
    emu.faults = FaultPlan(fail_every=3)
    assert await _push(client, data_id, 7) == [200, 200, 503, 200, 200, 503, 200]
    assert emu.fault_counts == {"fail_every": 2}
    assert [r.fault for r in emu.requests[-3:]] == [None, "fail_every", None]
    # Failed chunks were not stored.
    assert sorted(i for _, i in emu.streams[data_id].chunks) == [0, 1, 3, 4, 6]


async def test_fail_fraction_is_seeded() -> None:
    runs = []
    for _ in range(2):
        async with (
            AtomscaleEmulator(faults=FaultPlan(fail_fraction=0.5, seed=7)) as emu,
            httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as client,
        ):
            data_id = await _init(client)
            runs.append(await _push(client, data_id, 20))
            assert emu.fault_counts["fail_fraction"] == runs[-1].count(503)
    assert runs[0] == runs[1]
    assert 200 in runs[0]
    assert 503 in runs[0]


async def test_retry_after(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    emu.faults = FaultPlan(fail_every=1, retry_after_s=2)
    response = await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    # An explicit status is honoured; the header is rounded up to whole seconds.
    emu.faults = FaultPlan(fail_every=1, retry_after_s=1.2, fail_status=503)
    response = await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    emu.faults = FaultPlan(fail_every=1)
    response = await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    assert response.status_code == 503
    assert "Retry-After" not in response.headers


async def test_down_and_outage_window(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    emu.faults = FaultPlan(down=True)
    assert await _push(client, data_id, 2) == [503, 503]
    # Only the chunk endpoints are targeted: the rest keeps working.
    assert (await client.post(f"/tool-state/stream/{data_id}/finalize")).status_code == 200
    emu.faults = FaultPlan(outage_requests=(2, 3))
    assert await _push(client, data_id, 5) == [200, 503, 503, 200, 200]
    emu.faults = FaultPlan(down=True, paths=("*",))
    assert (await client.get("/tags/")).status_code == 503
    assert emu.fault_counts == {"down": 3, "outage": 2}


async def test_latency(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    emu.faults = FaultPlan(latency_s=0.05)
    started = time.perf_counter()
    assert await _push(client, data_id, 1) == [200]
    assert time.perf_counter() - started >= 0.05
    assert emu.fault_counts == {"latency": 1}


async def test_dropped_connection(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    emu.faults = FaultPlan(drop_connection_fraction=1.0)
    with pytest.raises(httpx.TransportError):
        await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    assert emu.streams[data_id].chunks == {}
    assert (emu.requests[-1].fault, emu.requests[-1].status) == ("drop", None)

    # The answer is lost but the chunk was stored: the client will re-send what the server has.
    emu.faults = FaultPlan(drop_connection_fraction=1.0, drop_after_handling=True)
    with pytest.raises(httpx.TransportError):
        await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0], [1.0]))
    assert emu.points(data_id, "temp") == ([1.0], [1.0])
    emu.faults = FaultPlan()
    assert await _push(client, data_id, 1) == [200]
    assert emu.streams[data_id].chunks[("temp", 0)].received == 2
    assert emu.fault_counts == {"drop": 2}


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError, match="fail_fraction"):
        FaultPlan(fail_fraction=1.5)
    with pytest.raises(ValueError, match="outage_requests"):
        FaultPlan(outage_requests=(3, 2))
    with pytest.raises(ValueError, match="paths"):
        FaultPlan(paths="/tool-state/stream/chunk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        FaultPlan.from_json({"fail_evry": 2})
    plan = FaultPlan.from_json({"fail_every": 2, "paths": ["*"], "outage_requests": [1, 2]})
    assert plan == FaultPlan(fail_every=2, paths=("*",), outage_requests=(1, 2))
    assert FaultPlan.from_json(plan.to_json()) == plan


# -- readback endpoints ----------------------------------------------------------------------


async def test_readback_endpoints(emu: AtomscaleEmulator, client: httpx.AsyncClient) -> None:
    data_id = await _init(client)
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 1, [3.0], [None]))
    await client.post("/tool-state/stream/chunk", json=_chunk(data_id, 0, [1.0, 2.0], [1.0, 2.0]))
    await client.post(f"/tool-state/stream/{data_id}/finalize")

    async with httpx.AsyncClient(base_url=emu.url) as raw:  # no key needed
        set_plan = await raw.post("/_emulator/faults", json={"fail_every": 1, "paths": ["*"]})
        assert set_plan.status_code == 200
        assert emu.faults == FaultPlan(fail_every=1, paths=("*",))
        assert (await client.get("/tags/")).status_code == 503  # the plan is live
        summary = (await raw.get("/_emulator/streams")).json()  # ...but not for readback
        full = (await raw.get(f"/_emulator/streams/{data_id}")).json()
        bad_plan = await raw.post("/_emulator/faults", json={"fail_fraction": 2})
        assert bad_plan.status_code == 422
        assert (await raw.get("/_emulator/streams/nope")).status_code == 404

    stream = summary["streams"][data_id]
    assert stream["finalized"] is True
    assert stream["channels"] == {"temp": {"points": 3, "chunks": 2, "units": None}}
    assert (stream["chunks"], stream["chunks_after_finalize"]) == (2, 0)
    assert summary["requests"] == len(emu.requests) == 5
    assert summary["faults"] == {"fail_every": 1}
    channel = full["channels"]["temp"]
    assert channel["timestamps"] == [1.0, 2.0, 3.0]
    assert channel["values"] == [1.0, 2.0, None]  # NaN travels back as null


# -- running outside an event loop ---------------------------------------------------------------


def test_run_in_thread() -> None:
    with run_in_thread(faults=FaultPlan(fail_every=2)) as emu:
        with httpx.Client(base_url=emu.url, headers=HEADERS) as client:
            init = client.post("/tool-state/stream/initialize", json={"points_per_chunk": 1})
            data_id = init.json()["data_id"]
            statuses = [
                client.post(
                    "/tool-state/stream/chunk", json=_chunk(data_id, i, [float(i)], [1.0])
                ).status_code
                for i in range(2)
            ]
        assert statuses == [200, 503]
        assert emu.points(data_id, "temp") == ([0.0], [1.0])
        assert list(emu.streams) == [data_id]
        url = emu.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/gateway/time", headers=HEADERS)


def test_serve_prints_url_and_stops_on_ctrl_c() -> None:
    code = "from labstream.testing.atomscale import serve; serve(port=0)"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split()[4]
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(url + "/gateway/time", headers=HEADERS).status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# -- bounded for a long run ----------------------------------------------------------------------


@pytest.mark.parametrize("spill", [False, True])
async def test_request_log_is_bounded_while_every_point_stays(spill: bool) -> None:
    async with (
        AtomscaleEmulator(spill=spill, request_log=5, request_log_bytes=10**6) as emu,
        httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as client,
    ):
        data_id = await _init(client)
        for i in range(40):
            body = _chunk(data_id, i, [i + 0.5, float(i)], [i * 10 + 1, None])
            assert (await client.post("/tool-state/stream/chunk", json=body)).status_code == 200
        summary = (await client.get("/_emulator/streams")).json()
        logged = (await client.get("/_emulator/requests")).json()

    # The log keeps the last five requests, whole; the other 36 are counted, not kept.
    assert [r["body"]["chunk_index"] for r in logged] == [35, 36, 37, 38, 39]
    assert [r.body["chunk_index"] for r in emu.requests] == [35, 36, 37, 38, 39]
    assert (summary["requests"], summary["requests_logged"], emu.requests_seen) == (41, 5, 41)
    # ...while every point of every chunk is still there, each chunk in time order.
    ts, values = emu.points(data_id, "temp")
    assert ts == [t for i in range(40) for t in (float(i), i + 0.5)]
    assert values[:4] == pytest.approx([math.nan, 1.0, math.nan, 11.0], nan_ok=True)
    assert len(values) == 80
    chunk = emu.streams[data_id].chunks[("temp", 3)]
    assert (chunk.timestamps, chunk.size) == ([3.5, 3.0], 2)  # as it arrived
    assert summary["streams"][data_id]["channels"]["temp"]["points"] == 80


async def test_request_log_drops_old_bodies_past_its_byte_limit() -> None:
    async with (
        AtomscaleEmulator(request_log_bytes=5000) as emu,
        httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as client,
    ):
        data_id = await _init(client)
        sizes = []
        for i in range(10):
            body = _chunk(data_id, i, [1e9 + t for t in range(100)], [1.5] * 100)
            response = await client.post("/tool-state/stream/chunk", json=body)
            assert response.status_code == 200
            sizes.append(len(response.request.content))
    kept = emu.requests
    assert sum(len(r.raw) for r in kept) <= 5000
    assert len(kept) == 5000 // sizes[0] < 10
    assert [r.body["chunk_index"] for r in kept][-1] == 9
    assert len(emu.points(data_id, "temp")[0]) == 1000


async def test_stream_readback_without_points_lists_chunk_runs() -> None:
    async with (
        AtomscaleEmulator(spill=True) as emu,
        httpx.AsyncClient(base_url=emu.url, headers=HEADERS) as client,
    ):
        data_id = await _init(client)
        for i in (0, 1, 2, 5, 7, 8):
            await client.post("/tool-state/stream/chunk", json=_chunk(data_id, i, [i], [i]))
        brief = (await client.get(f"/_emulator/streams/{data_id}?points=false")).json()
        full = (await client.get(f"/_emulator/streams/{data_id}")).json()
    assert brief["channels"]["temp"] == {
        "points": 6,
        "chunks": 6,
        "units": None,
        "chunk_indexes": [[0, 2], [5, 5], [7, 8]],
    }
    assert full["channels"]["temp"]["values"] == [0.0, 1.0, 2.0, 5.0, 7.0, 8.0]


def test_request_log_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="request_log must be"):
        AtomscaleEmulator(request_log=-1)
    with pytest.raises(ValueError, match="request_log_bytes must be"):
        AtomscaleEmulator(request_log_bytes=1.5)  # type: ignore[arg-type]
