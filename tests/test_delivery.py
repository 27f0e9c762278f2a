"""Delivery: retries with injected sleep, Retry-After, final rejections, deferral, and finalize
waiting for everything — no chunk is ever lost silently."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import httpx
import pytest

from labstream import DestinationReport, RetryPolicy, TimeseriesStreamer
from labstream._core.chunk import Chunk
from labstream.errors import DestinationError
from labstream.testing.fake import FakeAtomscale, Recorded, RecordingSleep, fail_every

T0 = 1_760_000_000.0
FAST = RetryPolicy(attempts=3, initial_backoff_s=0.5, multiplier=2, max_backoff_s=4, jitter_s=0)


def chunk(c: int, n: int = 100) -> tuple[list[float], list[float]]:
    return [T0 + (c * n + i) * 0.01 for i in range(n)], [float(c * n + i) for i in range(n)]


def test_policy_waits_grow_cap_and_honour_retry_after() -> None:
    p = RetryPolicy(initial_backoff_s=0.5, multiplier=2, max_backoff_s=3, jitter_s=1)
    assert [p.wait_for(n, None, 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert p.wait_for(1, None, 0.5) == 1.0  # jitter adds up to jitter_s
    assert p.wait_for(1, 7.0, 0.0) == 7.0  # never less than the server asked
    assert RetryPolicy(max_retry_after_s=10).wait_for(1, 3600.0, 0.0) == 10.0
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_one_in_four_503_loses_nothing(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    """The official SDK loses 25 % of the points here (specs/atomscale-http-api.md)."""
    fake.responders.append(fail_every(4))
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    for c in range(200):
        streamer.push(data_id, c, "T", *chunk(c))
    report = streamer.finalize(data_id)
    assert report.ok
    assert report["atomscale"].points_delivered == 20_000
    _, vs = fake.points(data_id, "T")
    assert vs == [float(i) for i in range(20_000)]
    failed = len(fake.chunk_requests()) - 200  # every chunk got through once
    assert failed >= 50  # a quarter of the requests, at least
    # Each failure was sent again and counted as a retry: at once, or, at a chunk's third failure
    # in a row, after the cooldown (set aside, logged).
    assert report["atomscale"].retries == failed


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses_are_retried_with_backoff(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    sleeper: RecordingSleep,
    status: int,
) -> None:
    remaining = [status, status]
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(remaining.pop(), text="busy")
            if rec.path == "/tool-state/stream/chunk" and remaining
            else None
        )
    )
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    sleeper.waits.clear()
    streamer.push(data_id, 0, "T", *chunk(0))
    report = streamer.finalize(data_id)
    assert report.ok
    assert report["atomscale"].retries == 2
    assert sleeper.waits == [0.5, 1.0]


def test_an_unexpected_error_in_a_sink_is_a_bug_not_a_rejection(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in labstream is logged as one, and the chunk stays pending and is tried again: it
    is never counted as the destination's refusal."""
    failed: list[int] = []

    def boom(rec: Recorded, _: int) -> httpx.Response | None:
        if rec.body and rec.body.get("chunk_index") == 0 and not failed:
            failed.append(0)
            raise RuntimeError("bug in a transport")
        return None

    fake.responders.append(boom)
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *chunk(0))
    streamer.push(data_id, 1, "T", *chunk(1))
    dest = streamer.finalize(data_id)["atomscale"]
    assert failed == [0]
    assert (dest.chunks_delivered, dest.chunks_rejected) == (2, 0)
    assert dest.closed
    assert "BUG" in caplog.text and "bug in a transport" in caplog.text


def test_retry_after_is_honoured(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    sleeper: RecordingSleep,
) -> None:
    fake.responders.append(fail_every(2, status=429, headers={"Retry-After": "7"}))
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    sleeper.waits.clear()
    streamer.push(data_id, 0, "T", *chunk(0))
    streamer.push(data_id, 1, "T", *chunk(1))
    assert streamer.finalize(data_id).ok
    assert 7.0 in sleeper.waits


def test_a_4xx_is_final_and_reported_with_the_body(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(422, json={"detail": "chunk 1 is malformed"})
            if rec.body and rec.body.get("chunk_index") == 1
            else None
        )
    )
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    for c in range(3):
        streamer.push(data_id, c, "T", *chunk(c))
    report = streamer.finalize(data_id)
    dest = report["atomscale"]
    assert not report.ok
    assert (dest.chunks_delivered, dest.chunks_rejected, dest.retries) == (2, 1, 0)
    (rejection,) = dest.rejections
    assert rejection.chunk_index == 1
    assert rejection.status == 422
    assert "chunk 1 is malformed" in rejection.reason
    assert "chunk 1 is malformed" in str(report)
    assert dest.closed


def test_a_chunk_out_of_attempts_is_set_aside_and_delivered_later(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    sleeper: RecordingSleep,
) -> None:
    failures = {"left": 7}  # more than one round of 3 attempts

    def flaky(rec: Recorded, _: int) -> httpx.Response | None:
        if rec.path.startswith("/tool-state/stream/chunk") and failures["left"] > 0:
            failures["left"] -= 1
            return httpx.Response(503)
        return None

    fake.responders.append(flaky)
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, jitter_s=0, cooldown_s=30)
    streamer = streamer_factory(retry=policy, clock_sync=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *chunk(0))
    report = streamer.finalize(data_id)
    assert report.ok
    # 7 failures, 7 re-sends: 2 at once per round of 3 attempts, 1 after each cooldown
    assert report["atomscale"].retries == 7
    assert sleeper.waits.count(30) == 2  # set aside twice for the cooldown


def test_finalize_waits_for_slow_uploads(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    release = threading.Event()

    async def slow(rec: Recorded, _: int) -> None:
        if rec.path.startswith("/tool-state/stream/chunk"):
            await anyio.to_thread.run_sync(release.wait, 10)

    fake.responders.append(slow)
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    for c in range(5):
        t = time.perf_counter()
        streamer.push(data_id, c, "T", *chunk(c))
        assert time.perf_counter() - t < 0.5, "push() must not wait for the network"
    threading.Timer(0.2, release.set).start()
    report = streamer.finalize(data_id)
    assert report.ok
    assert fake.paths()[-1].endswith("/finalize")
    assert len(fake.chunks) == 5


def test_finalize_deadline_reports_pending_then_close_counts_the_drop(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: httpx.Response(503) if rec.path == "/tool-state/stream/chunk" else None
    )
    policy = RetryPolicy(attempts=2, initial_backoff_s=0, jitter_s=0, cooldown_s=0.01)
    # memory only: with the journal (the default) nothing is dropped, see test_journal.py
    streamer = streamer_factory(retry=policy, clock_sync=False, sleep=None, spool=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *chunk(0))
    report = streamer.finalize(data_id, timeout=0.2)
    dest = report["atomscale"]
    assert not report.ok
    assert (dest.chunks_pending, dest.points_pending, dest.chunks_dropped) == (1, 100, 0)
    assert dest.closed  # the stream is closed at the destination anyway
    assert "503" in (dest.last_error or "")
    streamer.close()
    after = streamer.report(data_id)["atomscale"]
    assert (after.chunks_pending, after.chunks_dropped, after.points_dropped) == (0, 1, 100)
    assert after.drop_reason and "closed before the destination confirmed" in after.drop_reason


def test_connection_errors_are_transient(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    calls = {"n": 0}

    def refuse_first(rec: Recorded, _: int) -> httpx.Response | None:
        if rec.path == "/tool-state/stream/chunk" and calls["n"] == 0:
            calls["n"] += 1
            raise httpx.ConnectError("connection refused")
        return None

    fake.responders.append(refuse_first)
    streamer = streamer_factory(retry=FAST, clock_sync=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *chunk(0))
    report = streamer.finalize(data_id)
    assert report.ok
    assert report["atomscale"].retries == 1


def test_attempts_are_counted_since_the_last_progress() -> None:
    """A multi-step operation that advances between failures is not given up on."""
    from labstream import TransientDestinationError

    policy = RetryPolicy(attempts=2, initial_backoff_s=1, multiplier=2, jitter_s=0)
    sleeper = RecordingSleep()
    outcomes = iter([True, True, True, False, False])  # progress, progress, progress, stuck...

    async def operation() -> None:
        exc = TransientDestinationError("step failed", destination="atlas")
        exc.made_progress = next(outcomes)
        raise exc

    async def main() -> None:
        with pytest.raises(TransientDestinationError):
            async for attempt in policy.retrying(sleep=sleeper):
                with attempt:
                    await operation()

    anyio.run(main)
    # Each failure after progress starts a fresh budget of 2 (so the back-off restarts at 1 s);
    # the failure after the third progress plus one stuck attempt use it up.
    assert sleeper.waits == [1.0, 1.0, 1.0]
    assert next(outcomes) is False  # the fifth attempt was never made


def test_finalize_timeout_bounds_the_close_too(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    fake.responders.append(
        lambda rec, n: httpx.Response(503) if rec.path.endswith("/finalize") else None
    )
    policy = RetryPolicy(attempts=50, initial_backoff_s=0.05, max_backoff_s=0.05, jitter_s=0)
    streamer = streamer_factory(retry=policy, clock_sync=False, sleep=None)
    data_id = streamer.initialize()
    dest = streamer.finalize(data_id, timeout=0.3)["atomscale"]
    closes = [p for p in fake.paths() if p.endswith("/finalize")]
    assert 1 <= len(closes) < 50  # tried, then given up at the deadline instead of 50 times
    assert not dest.closed
    assert "503" in (dest.close_error or "")


def test_finalize_returns_within_its_timeout_and_a_stated_grace_when_the_close_hangs(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The close request is made whatever the deadline, but waited for at most CLOSE_GRACE_S past
    it, not a whole request timeout."""
    import time

    from labstream._core import delivery

    monkeypatch.setattr(delivery, "CLOSE_GRACE_S", 0.2)
    released = anyio.Event()

    async def hang(rec: Recorded, _: int) -> None:
        if rec.path.endswith("/finalize"):
            with anyio.move_on_after(10):
                await released.wait()

    fake.responders.append(hang)
    streamer = streamer_factory(clock_sync=False)
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "T", *chunk(0))
    started = time.monotonic()
    dest = streamer.finalize(data_id, timeout=0.3)["atomscale"]
    assert time.monotonic() - started < 3  # 0.3 s + 0.2 s, far below the hang's 10 s
    assert not dest.closed
    assert "no answer within finalize's deadline + 0.2 s" in (dest.close_error or "")
    assert dest.chunks_delivered == 1


class BatchingSink:
    """A destination taking queued chunks together; the first call waits until released."""

    name = "batching"
    max_concurrency = 1
    max_batch_points = 500  # five 100-point chunks

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []  # chunk indexes per call
        self.called = anyio.Event()
        self.release = anyio.Event()
        self.failures_left = 0
        self.refuse: set[int] = set()  # chunk indexes refused for good

    async def open_stream(self, stream: object) -> None:
        return None

    async def send_chunk(self, chunk: object) -> None:
        raise AssertionError("a batching sink is given batches")

    async def send_chunks(self, chunks: tuple[Chunk, ...]) -> dict[int, DestinationError]:
        from labstream import RejectedError, TransientDestinationError

        self.calls.append(tuple(c.chunk_index for c in chunks))
        self.called.set()
        await self.release.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise TransientDestinationError("busy", destination=self.name)
        return {
            c.seq: RejectedError("no", destination=self.name, chunk_index=c.chunk_index)
            for c in chunks
            if c.chunk_index in self.refuse
        }

    async def close_stream(self, stream: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


def run_batches(sink: BatchingSink, chunks: int, policy: RetryPolicy) -> DestinationReport:
    from labstream._core.chunk import make_chunk, validate_series
    from labstream._core.delivery import DeliveryRunner
    from labstream.destinations.base import StreamInfo

    sleeper = RecordingSleep()
    runner = DeliveryRunner(sink, policy, sleep=sleeper)

    async def main() -> DestinationReport:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.serve)
            runner.open(StreamInfo("d1"))
            for c in range(chunks):
                raw = validate_series("d1", c, "T", *chunk(c), None, max_points=100)
                runner.submit(make_chunk("d1", c, [raw], multi=False, offset_ns=0, seq=c + 1))
                await sink.called.wait()  # the first chunk goes alone: the others come later
            sink.release.set()  # ... and queue behind its write
            report = await runner.finalize("d1", anyio.current_time() + 10)
            tg.cancel_scope.cancel()
        return report

    return anyio.run(main)


def test_a_batching_sink_gets_the_queued_chunks_together() -> None:
    sink = BatchingSink()
    report = run_batches(sink, 13, FAST)
    assert sink.calls == [(0,), (1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12)]
    assert (report.chunks_delivered, report.points_delivered) == (13, 1300)
    assert report.complete


def test_a_batch_is_retried_whole_and_its_refusals_count_per_chunk() -> None:
    sink = BatchingSink()
    sink.failures_left = 3  # all of the first call's attempts: it is set aside
    sink.refuse = {3}
    policy = RetryPolicy(attempts=3, initial_backoff_s=0.1, jitter_s=0, cooldown_s=30)
    report = run_batches(sink, 6, policy)
    # (0,) failed 3 times, was set aside, and came back after the batch queued behind it; a
    # retried batch always comes back with the same chunks, so the sink can resume its writes.
    assert sink.calls == [(0,), (0,), (0,), (1, 2, 3, 4, 5), (0,)]
    assert (report.chunks_delivered, report.chunks_rejected, report.points_rejected) == (5, 1, 100)
    assert [r.chunk_index for r in report.rejections] == [3]
    assert report.retries == 3  # 2 at once, then the third failure set aside and sent again
