"""The clock correction refuses answers that cannot be true, applies large plausible offsets
loudly, and ``clock_status()`` reports exactly the correction applied."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from labstream import TimeseriesStreamer
from labstream._core.clock import ClockCorrection, TimeSample
from labstream.testing.fake import FakeAtomscale

NOW = 1_760_000_000.0  # the host's clock in these tests
HOUR = 3600.0


def answers(*server_times: float) -> Callable[[], object]:
    """An exchange whose reference answers the given times, one per call (instant round trips)."""
    queue = list(server_times)

    async def exchange() -> TimeSample:
        t = queue.pop(0)
        return (NOW, t, t, NOW)

    return exchange


async def measured(*server_times: float, clock: ClockCorrection | None = None) -> ClockCorrection:
    clock = clock or ClockCorrection(enabled=True, now=lambda: NOW)
    await clock.measure(answers(*server_times), rounds=len(server_times))  # type: ignore[arg-type]
    return clock


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("server_time", "why"),
    [
        (0.0, "not between 2000 and 2100"),  # seen from a real gateway: moved data to 1968
        (1e300, "not between 2000 and 2100"),  # was reported as an offset never applied
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (946_684_799.0, "not between 2000 and 2100"),  # 1999-12-31T23:59:59Z
        (4_102_444_800.0, "not between 2000 and 2100"),  # 2100-01-01
        (NOW + 24 * HOUR + 1, "beyond the 24 h bound"),
        (NOW - 25 * HOUR, "beyond the 24 h bound"),
    ],
)
async def test_an_answer_that_cannot_be_true_is_refused_with_a_warning(
    server_time: float, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = await measured(server_time)
    status = clock.status
    assert clock.offset_ns == 0
    assert (status.synced, status.offset_s, status.samples) == (False, 0.0, 0)
    assert status.error is not None and why in status.error
    assert any(r.levelno == logging.WARNING and why in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_a_refused_answer_keeps_the_correction_in_effect() -> None:
    clock = await measured(NOW + 2.5)
    clock = await measured(0.0, clock=clock)
    assert clock.offset_ns == 2_500_000_000
    assert clock.status.synced and clock.status.offset_s == 2.5
    assert "not between 2000 and 2100" in (clock.status.error or "")


@pytest.mark.anyio
async def test_refused_answers_are_left_out_of_a_round_the_others_are_used() -> None:
    clock = await measured(NOW + 3.0, 0.0, NOW + 3.0, float("nan"))
    assert clock.offset_ns == 3_000_000_000
    assert clock.status.samples == 2


@pytest.mark.anyio
@pytest.mark.parametrize("offset_h", [5.0, -23.5])
async def test_a_large_plausible_offset_is_applied_and_said_loudly(
    offset_h: float, caplog: pytest.LogCaptureFixture
) -> None:
    """An instrument PC whose clock is hours off is what the correction is for."""
    offset = offset_h * HOUR + 0.123456789
    clock = await measured(NOW + offset)
    assert clock.status.synced
    assert clock.offset_ns == pytest.approx(offset * 1e9, abs=1e3)
    assert clock.status.offset_s * 1e9 == clock.offset_ns  # exactly what is applied
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("every timestamp is shifted" in m for m in warned), warned


def test_a_gateway_answering_zero_does_not_move_the_data(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.responders.append(
        lambda rec, n: (
            httpx.Response(200, json={"receivedAtUnixMs": 0, "transmittedAtUnixMs": 0})
            if rec.path == "/gateway/time"
            else None
        )
    )
    streamer = streamer_factory()
    data_id = streamer.initialize()
    ts = [NOW + i for i in range(3)]
    streamer.push(data_id, 0, "T", ts, [1.0, 2.0, 3.0])
    assert streamer.finalize(data_id).ok
    assert fake.chunk_requests()[0].body["timestamps"] == ts
    status = streamer.clock_status()
    assert not status.synced and status.offset_s == 0.0
    assert any("cannot be true" in r.getMessage() for r in caplog.records)


def test_a_stream_keeps_the_correction_of_its_initialize_when_a_later_one_measures_another(
    streamer_factory: Callable[..., TimeseriesStreamer],
    fake: FakeAtomscale,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every push took the correction in effect at the time, so a re-measure for another
    stream moved this one's timestamps by the difference, and on ATLAS its periodic packets
    overlapped or left a gap where they changed (found by benchmarks/follow_soak.py, whose
    restarted process measured the clock again)."""
    monkeypatch.setattr("labstream.streamer.CLOCK_MAX_AGE_S", 0.0)  # measure at every initialize
    fake.clock_offset_s = 2.0
    streamer = streamer_factory(clock_sync=True)
    first = streamer.initialize("first")
    fake.clock_offset_s = 3.0
    second = streamer.initialize("second")
    assert streamer.clock_status().offset_s == pytest.approx(3.0, abs=0.05)
    ts = [NOW + i for i in range(3)]
    streamer.push(first, 0, "T", ts, [1.0, 2.0, 3.0])
    streamer.push(second, 0, "T", ts, [1.0, 2.0, 3.0])
    streamer.mark(first, "step", NOW + 1)
    assert streamer.finalize(first).ok and streamer.finalize(second).ok
    stored = {r.body["data_id"]: r.body["timestamps"] for r in fake.chunk_requests()}
    assert stored[first] == pytest.approx([t + 2.0 for t in ts], abs=0.05)
    assert stored[second] == pytest.approx([t + 3.0 for t in ts], abs=0.05)
