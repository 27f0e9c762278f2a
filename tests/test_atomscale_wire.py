"""labstream sends Atomscale exactly what the official SDK sends (specs/atomscale-http-api.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labstream import DestinationError, TimeseriesStreamer
from labstream.testing.fake import FakeAtomscale, Recorded

from . import API_KEY

T0 = 1_760_000_000.25
TS = [T0 + i * 0.5 for i in range(4)]


@pytest.fixture
def streamer(streamer_factory: Callable[..., TimeseriesStreamer]) -> TimeseriesStreamer:
    return streamer_factory(points_per_chunk=4, clock_sync=False)


def test_every_request_carries_the_key_and_json(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize(stream_name="run 12")
    streamer.push(data_id, 0, "T", TS, [1.0, 2.0, 3.0, 4.0], units="C")
    streamer.finalize(data_id)
    assert [r.path for r in fake.requests] == [
        "/tool-state/stream/initialize",
        "/tool-state/stream/chunk",
        f"/tool-state/stream/{data_id}/finalize",
    ]
    for rec in fake.requests:
        assert rec.headers["x-api-key"] == API_KEY
    assert fake.requests[0].headers["content-type"] == "application/json"
    assert fake.requests[2].body is None  # finalize has no body


def test_initialize_body_keys(streamer: TimeseriesStreamer, fake: FakeAtomscale) -> None:
    streamer.initialize()
    streamer.initialize(stream_name="MBE growth", synth_source_id=42, project_id="proj-1")
    first, second = (r.body for r in fake.requests)
    # synth_source_id is left out when not given; stream_name and project_id are null
    assert first == {"stream_name": None, "points_per_chunk": 4, "project_id": None}
    assert second == {
        "stream_name": "MBE growth",
        "synth_source_id": 42,
        "points_per_chunk": 4,
        "project_id": "proj-1",
    }


def test_single_channel_chunk_body(streamer: TimeseriesStreamer, fake: FakeAtomscale) -> None:
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", TS, [1.5, math.nan, -0.0, 1e300], units="C")
    streamer.push(data_id, 1, "P", TS, [1e-9, 2e-9, 3e-9, 4e-9])
    streamer.finalize(data_id)
    with_units, without_units = (r.body for r in fake.chunk_requests())
    assert with_units == {
        "data_id": data_id,
        "chunk_index": 0,
        "channel_name": "T",
        "timestamps": TS,
        "values": [1.5, None, -0.0, 1e300],
        "units": "C",
    }
    assert "units" not in without_units
    assert without_units["timestamps"] == TS  # epoch seconds, exactly the floats pushed


def test_multi_channel_chunk_is_one_request(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    streamer.push_multi(
        data_id,
        0,
        {
            "T": {"timestamps": TS, "values": [1, 2, 3, 4], "units": "C"},
            "P": {"timestamps": TS, "values": [5, 6, 7, 8]},
            "idle": {"timestamps": [], "values": []},  # no points: left out, as the SDK does
        },
    )
    streamer.finalize(data_id)
    (req,) = fake.chunk_requests()
    assert req.path == "/tool-state/stream/chunk/multi"
    assert req.body == {
        "data_id": data_id,
        "chunk_index": 0,
        "channels": {
            "T": {"timestamps": TS, "values": [1.0, 2.0, 3.0, 4.0], "units": "C"},
            "P": {"timestamps": TS, "values": [5.0, 6.0, 7.0, 8.0]},
        },
    }


def test_raw_bytes_are_the_sdks_json(streamer: TimeseriesStreamer, fake: FakeAtomscale) -> None:
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", TS[:2], [math.inf, 0.1], units="C")
    streamer.finalize(data_id)
    (req,) = fake.chunk_requests()
    expected = (
        f'{{"data_id":"{data_id}","chunk_index":0,"channel_name":"T",'
        '"timestamps":[1760000000.25,1760000000.75],"values":[null,0.1],"units":"C"}'
    )
    assert req.raw == expected.encode()


def test_physical_sample_project_and_tags_are_resolved_then_linked(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    fake.samples.append({"id": "00000000-0000-4000-8000-00000000aaaa", "name": "GaN-001"})
    fake.tags.append({"id": "00000000-0000-4000-8000-00000000bbbb", "name": "calibration"})
    data_id = streamer.initialize(
        stream_name="s",
        physical_sample="  gan-001 ",
        project_id="p-9",
        tags=["Calibration", " new tag ", "", "NEW TAG"],
    )
    calls = [(r.method, r.path, r.body) for r in fake.requests]
    assert calls == [
        ("GET", "/physical_samples/", None),
        ("GET", "/tags/", None),
        ("POST", "/tags/", {"name": "new tag"}),
        ("POST", "/tool-state/stream/initialize",
         {"stream_name": "s", "points_per_chunk": 4, "project_id": "p-9"}),
        ("POST", "/data_entries/physical_sample",
         {"data_ids": [data_id], "physical_sample_id": "00000000-0000-4000-8000-00000000aaaa"}),
        ("POST", "/projects/p-9/configuration/tracking_samples",
         {"physical_sample_id": "00000000-0000-4000-8000-00000000aaaa", "set_active": True}),
        ("POST", "/tags/data-items/",
         {"data_ids": [data_id],
          "tag_ids": ["00000000-0000-4000-8000-00000000bbbb", fake.tags[1]["id"]]}),
    ]  # fmt: skip


def test_new_sample_is_created_and_409_uses_the_existing_one(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    streamer.initialize(physical_sample="GaAs-7")
    assert [(r.method, r.path) for r in fake.requests[:2]] == [
        ("GET", "/physical_samples/"),
        ("POST", "/physical_samples/"),
    ]
    assert fake.requests[1].body == {"name": "GaAs-7"}

    def conflict(rec: Recorded, _: int) -> httpx.Response | None:
        if rec.method == "POST" and rec.path == "/physical_samples/":
            return httpx.Response(409, json={"detail": {"physical_sample_id": "existing-id"}})
        return None

    fake.responders.append(conflict)
    fake.samples.clear()
    data_id = streamer.initialize(physical_sample="InP-3")
    link = [r for r in fake.requests if r.path == "/data_entries/physical_sample"][-1]
    assert link.body == {"data_ids": [data_id], "physical_sample_id": "existing-id"}


def test_unknown_sample_uuid_creates_nothing(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    with pytest.raises(DestinationError, match="does not exist"):
        streamer.initialize(physical_sample="00000000-0000-4000-8000-000000000999")
    assert "/tool-state/stream/initialize" not in fake.paths()


def test_link_failure_after_creation_finalizes_the_stream(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(403, json={"detail": "forbidden"})
            if rec.path == "/tags/data-items/"
            else None
        )
    )
    with pytest.raises(DestinationError, match="was created but linking failed") as info:
        streamer.initialize(tags=["x"])
    data_id = info.value.data_id
    assert data_id is not None
    assert fake.paths()[-1] == f"/tool-state/stream/{data_id}/finalize"
    assert "forbidden" in str(info.value)


def test_gateway_time_request(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    streamer = streamer_factory()
    streamer.initialize()
    time_requests = [r for r in fake.requests if r.path == "/gateway/time"]
    assert time_requests, "clock correction asks the gateway for the time"
    assert all(
        r.method == "GET" and r.headers["cache-control"] == "no-store" for r in time_requests
    )
    assert all(r.headers["x-api-key"] == API_KEY for r in time_requests)


@pytest.mark.anyio
async def test_instruments_listing_request(fake: FakeAtomscale) -> None:
    from labstream.destinations.atomscale.sink import AtomscaleSink

    sink = AtomscaleSink(
        API_KEY, "http://atomscale.test", sleep=anyio.sleep, transport=fake.transport()
    )
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(200, json=[{"synth_source_id": 42, "source_name": "MBE-1"}])
            if rec.path == "/instruments/synthesis"
            else None
        )
    )
    try:
        assert await sink.list_growth_instruments() == [
            {"synth_source_id": 42, "source_name": "MBE-1"}
        ]
    finally:
        await sink.aclose()
    (req,) = fake.requests
    assert (req.method, req.path, req.body) == ("GET", "/instruments/synthesis", None)
    assert req.headers["x-api-key"] == API_KEY
    assert "content-type" not in req.headers  # no body, no JSON header


epoch_s = st.floats(min_value=631_152_000.0, max_value=4_102_444_800.0)


@given(
    timestamps=st.lists(epoch_s, min_size=1, max_size=20).map(sorted),
    data=st.data(),
    units=st.one_of(st.none(), st.text(min_size=1, max_size=3)),
    as_array=st.booleans(),
)
def test_run_bodies_made_before_the_chunk_is_built_are_the_same_bytes(
    timestamps: list[float], data: st.DataObject, units: str | None, as_array: bool
) -> None:
    """run()'s lane writes a body from the validated seconds without building the chunk; the
    bytes must be those of a pushed chunk's body (what a retry from the journal sends)."""
    from labstream._core.chunk import make_chunk, validate_series
    from labstream.destinations.atomscale.protocol import chunk_content, series_content

    n = len(timestamps)
    values = data.draw(st.lists(st.floats(), min_size=n, max_size=n))  # NaN and inf too
    ts: object = np.array(timestamps) if as_array else timestamps
    vals: object = np.array(values) if as_array else values
    try:
        raw = validate_series("d", 7, "T", ts, vals, units, max_points=20)
    except ValueError:  # units that cannot be UTF-8: refused for both paths
        return
    built = make_chunk("d", 7, [raw], multi=False, offset_ns=0)
    assert series_content("d", 7, raw) == chunk_content(built)
