"""The public API as a user meets it: context managers, generator mode, asyncio, clock, secrets."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable

import anyio
import httpx
import numpy as np
import pytest

from labstream import (
    AsyncTimeseriesStreamer,
    DeliveryError,
    DeliveryTimeoutError,
    DestinationReport,
    RetryPolicy,
    TimeseriesStreamer,
)
from labstream.testing.fake import FakeAtomscale, Recorded, RecordingSleep

from . import API_KEY

T0 = 1_760_000_000.0


def series(n: int, start: int = 0) -> tuple[list[float], list[float]]:
    return [T0 + (start + i) * 0.1 for i in range(n)], [float(start + i) for i in range(n)]


def test_stream_context_finalizes_on_normal_exit(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    streamer = streamer_factory(clock_sync=False)
    with streamer.stream(stream_name="ctx") as s:
        s.push(0, "T", *series(100))
        s.push_multi(1, {"T": dict(zip(("timestamps", "values"), series(100, 100), strict=True))})
    assert s.report is not None and s.report.ok
    assert fake.finalized == [s.data_id]
    assert fake.points(s.data_id, "T")[1] == [float(i) for i in range(200)]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_stream_context_finalizes_when_the_loop_raises(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    exc_type: type[BaseException],
) -> None:
    streamer = streamer_factory(clock_sync=False)
    with pytest.raises(exc_type), streamer.stream() as s:
        s.push(0, "T", *series(50))
        raise exc_type("operator pressed Ctrl-C")
    assert fake.finalized == [s.data_id]
    assert s.report is not None and s.report["atomscale"].points_delivered == 50


def test_close_finalizes_streams_left_open(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    streamer = streamer_factory(clock_sync=False)
    a, b = streamer.initialize(), streamer.initialize()
    streamer.push(a, 0, "T", *series(10))
    streamer.finalize(b)
    streamer.close()
    assert sorted(fake.finalized) == sorted([a, b])
    assert streamer.report(a).ok


def test_run_numbers_chunks_splits_long_items_and_waits(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    streamer = streamer_factory(points_per_chunk=100, clock_sync=False, max_pending_chunks=4)
    data_id = streamer.initialize()
    ts, vs = series(1_000)

    def items():  # type: ignore[no-untyped-def]
        yield ts[:100], vs[:100]
        yield np.array(ts[100:350]), np.array(vs[100:350])  # longer than a chunk: split
        for start in range(350, 1_000, 50):
            yield ts[start : start + 50], vs[start : start + 50]

    streamer.run(data_id, "T", items(), units="C")
    # run() returns only once everything is delivered
    assert streamer.report(data_id)["atomscale"].points_delivered == 1_000
    indexes = [r.body["chunk_index"] for r in fake.chunk_requests()]
    assert sorted(indexes) == list(range(17))
    assert max(len(r.body["values"]) for r in fake.chunk_requests()) == 100
    assert fake.points(data_id, "T")[1] == vs
    assert streamer.finalize(data_id).ok


def test_run_raises_when_a_chunk_is_rejected(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(400, json={"detail": "bad chunk"})
            if rec.body and rec.body.get("chunk_index") == 2
            else None
        )
    )
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    ts, vs = series(500)
    with pytest.raises(DeliveryError, match=r"atomscale chunk 2 \(400\).*bad chunk"):
        streamer.run(data_id, "T", ((ts[i : i + 100], vs[i : i + 100]) for i in range(0, 500, 100)))


def test_run_times_out_without_losing_the_chunks(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(lambda rec, n: httpx.Response(503) if "chunk" in rec.path else None)
    policy = RetryPolicy(attempts=1, cooldown_s=0.01)
    streamer = streamer_factory(clock_sync=False, retry=policy, sleep=None)
    data_id = streamer.initialize()
    with pytest.raises(DeliveryTimeoutError, match="atomscale: 1 pending"):
        streamer.run(data_id, "T", [series(10)], timeout=0.1)
    fake.responders.clear()  # the destination comes back: the held chunk goes through
    assert streamer.finalize(data_id, timeout=5).ok


def test_run_rejects_malformed_items(
    streamer_factory: Callable[..., TimeseriesStreamer],
) -> None:
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    with pytest.raises(TypeError, match="run\\(\\) items must be \\(timestamps, values\\) pairs"):
        streamer.run(data_id, "T", [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="chunk_index=0: 2 timestamps but 1 values"):
        streamer.run(data_id, "T", [([T0, T0 + 1], [1.0])])


@pytest.mark.anyio
async def test_async_streamer(fake: FakeAtomscale, sleeper: RecordingSleep) -> None:
    async def readings():  # type: ignore[no-untyped-def]
        for c in range(3):
            yield series(100, c * 100)

    async with AsyncTimeseriesStreamer(
        api_key=API_KEY,
        endpoint="http://atomscale.test",
        http_transport=fake.transport(),
        sleep=sleeper,
        clock_sync=False,
    ) as streamer:
        data_id = await streamer.initialize(stream_name="async")
        await streamer.push(data_id, 10, "P", *series(5))
        await streamer.run(data_id, "T", readings())
        async with streamer.stream(stream_name="second") as s:
            await s.push_multi(0, {"T": {"timestamps": series(3)[0], "values": [1, 2, 3]}})
        report = await streamer.finalize(data_id)
    assert report.ok and s.report is not None and s.report.ok
    assert fake.points(data_id, "T")[1] == [float(i) for i in range(300)]
    assert sorted(fake.finalized) == sorted([data_id, s.data_id])


def test_clock_offset_is_applied_to_whole_chunks(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.clock_offset_s = 2.5  # the reference clock is 2.5 s ahead of this host
    streamer = streamer_factory()
    data_id = streamer.initialize()
    status = streamer.clock_status()
    assert status.enabled and status.synced and status.samples == 4
    assert status.offset_s == pytest.approx(2.5, abs=0.05)
    ts, vs = series(10)
    streamer.push(data_id, 0, "T", ts, vs)
    streamer.finalize(data_id)
    sent = fake.chunk_requests()[0].body["timestamps"]
    # every point of the chunk is shifted by the same offset (floats near 1.7e9 s carry ~240 ns)
    for s, t in zip(sent, ts, strict=True):
        assert s - t == pytest.approx(status.offset_s, abs=5e-7)


def test_clock_sync_can_be_skipped_by_env(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.clock_offset_s = 100.0
    monkeypatch.setenv("ATOMSCALE_SKIP_CLOCK_SYNC", "1")
    streamer = streamer_factory()
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *series(3))
    streamer.finalize(data_id)
    assert "/gateway/time" not in fake.paths()
    assert not streamer.clock_status().enabled
    assert fake.chunk_requests()[0].body["timestamps"] == series(3)[0]


def test_a_failing_clock_does_not_stop_the_stream(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: httpx.Response(404) if rec.path == "/gateway/time" else None
    )
    streamer = streamer_factory()
    data_id = streamer.initialize()
    status = streamer.clock_status()
    assert status.enabled and not status.synced and "404" in (status.error or "")
    streamer.push(data_id, 0, "T", *series(3))
    assert streamer.finalize(data_id).ok


def test_env_fallbacks(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATOMSCALE_API_KEY", "from-atomscale-env")
    monkeypatch.setenv("AS_API_ENDPOINT", "http://env-endpoint.test")
    streamer = streamer_factory(api_key=None, endpoint=None, clock_sync=False)
    streamer.initialize()
    assert fake.requests[0].headers["x-api-key"] == "from-atomscale-env"
    assert fake.requests[0].headers["host"] == "env-endpoint.test"
    monkeypatch.setenv("AS_API_KEY", "from-as-env")  # AS_API_KEY wins over ATOMSCALE_API_KEY
    streamer_factory(api_key=None, clock_sync=False).initialize()
    assert fake.requests[-1].headers["x-api-key"] == "from-as-env"


def test_the_api_key_is_never_shown(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.responders.append(  # a server that echoes the key back in its error body
        lambda rec, n: (
            httpx.Response(401, text=f"bad key {rec.headers['x-api-key']}")
            if "chunk" in rec.path
            else None
        )
    )
    streamer = streamer_factory(verbosity=4)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *series(3))
    report = streamer.finalize(data_id)
    shown = [repr(streamer), str(report), repr(report), caplog.text, *capsys.readouterr()]
    assert report["atomscale"].rejections  # the error was reported...
    assert "bad key ***" in str(report)  # ...with the key scrubbed
    for text in shown:
        assert API_KEY not in text


def hang_chunk_uploads(fake: FakeAtomscale) -> threading.Event:
    """Every chunk upload hangs until the returned event is set."""
    hang = threading.Event()

    async def hang_until_released(rec: Recorded, _: int) -> None:
        if "chunk" in rec.path:
            await anyio.to_thread.run_sync(hang.wait, 10)

    fake.responders.append(hang_until_released)
    return hang


def test_push_returns_while_the_destination_hangs(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    hang = hang_chunk_uploads(fake)
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    for c in range(200):
        streamer.push(data_id, c, "T", *series(100, c * 100))
    # every push returned while not one upload could finish
    report = streamer.report(data_id)["atomscale"]
    assert (report.chunks_accepted, report.chunks_delivered) == (200, 0)
    hang.set()
    assert streamer.finalize(data_id).ok


def settle(streamer: TimeseriesStreamer, data_id: str) -> DestinationReport:
    """The chunks pushed so far are built (report() takes them in) and committed to disk."""
    report = streamer.report(data_id)["atomscale"]
    assert streamer._core._journal is not None
    streamer._core._journal.flush()
    return report


def test_chunks_held_for_delivery_give_the_garbage_collector_little_to_scan(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    """A burst against a slow destination holds hundreds of chunks. Every object of theirs that
    the garbage collector tracks brings the next full collection closer, and that collection
    stops every thread, push() included, for tens of ms. A held chunk must stay a few objects:
    the chunk, its channel, the channel tuple (a view of the caller's list would add three)."""
    hang = hang_chunk_uploads(fake)
    # A small window: the hanging uploads each hold a thread of the fake's, which are not counted.
    streamer = streamer_factory(clock_sync=False, max_concurrency=8)
    data_id = streamer.initialize()
    warm_up = 50  # enough to keep every upload in the window hanging: they are not counted
    for c in range(warm_up):
        streamer.push(data_id, c, "T", *series(100, c * 100))
    settle(streamer, data_id)
    gc.collect()
    before = len(gc.get_objects())
    held = 600  # within the memory window (1,024 chunks): none is left on disk only
    for c in range(warm_up, warm_up + held):
        streamer.push(data_id, c, "T", *series(100, c * 100))
    assert settle(streamer, data_id).chunks_accepted == warm_up + held
    gc.collect()
    per_chunk = (len(gc.get_objects()) - before) / held
    hang.set()
    assert streamer.finalize(data_id).ok
    assert per_chunk < 4, f"{per_chunk:.1f} tracked objects per held chunk"


def test_chunks_not_built_yet_give_the_garbage_collector_little_to_scan(
    streamer_factory: Callable[..., TimeseriesStreamer],
) -> None:
    """In a burst the event loop falls behind and pushed chunks wait for it, not built yet:
    the same few objects as a built one (the waiting chunk, its channel tuple, its channel).
    A pushed list's points are held as bytes, which the collector does not scan; the
    array.array they were checked in would add two objects per chunk."""
    streamer = streamer_factory(clock_sync=False, spool=False)  # only the loop builds chunks
    data_id = streamer.initialize()
    loop_free = threading.Event()
    assert streamer._thread.loop is not None
    streamer._thread.loop.call_soon_threadsafe(loop_free.wait, 10)  # the loop falls behind
    try:
        gc.collect()
        before = len(gc.get_objects())
        held = 300
        for c in range(held):
            streamer.push(data_id, c, "T", *series(100, c * 100))
        gc.collect()
        per_chunk = (len(gc.get_objects()) - before) / held
    finally:
        loop_free.set()
    assert streamer.finalize(data_id).ok
    assert per_chunk < 4, f"{per_chunk:.1f} tracked objects per chunk not built yet"


def test_sync_api_inside_a_running_event_loop(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    """Jupyter runs cells inside an event loop; the sync API must not need that loop."""
    import asyncio

    async def cell() -> bool:
        streamer = streamer_factory(clock_sync=False)
        data_id = streamer.initialize()
        streamer.push(data_id, 0, "T", *series(10))
        return streamer.finalize(data_id).ok

    assert asyncio.run(cell())
