"""``run()`` (generator mode) under the faults of ``test_reliability.py``: flaky uploads, an
outage, rejections, a slow or failing iterator, no journal, two threads, a deadline.

Each scenario streams over loopback to the Atomscale emulator (with libcurl, as in production)
and, where it matters, to the ATLAS emulator, and checks what the destinations stored, not only
what labstream reports. Kill -9 during ``run()`` is ``test_reliability``'s kill -9 scenario with
``mode="run"``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycurl
import pytest

from labstream import DeliveryError, DeliveryTimeoutError, TimeseriesStreamer
from labstream.destinations.atomscale.curl import RequestMulti
from labstream.testing.atomscale import AtomscaleEmulator, FaultPlan
from labstream.testing.atomscale import run_in_thread as atomscale_in_thread

from .test_reliability import (
    KEY,
    QUICK,
    CappedSleep,
    atlas_figures,
    atomscale_chunk_requests,
    atomscale_figures,
    destinations,
    expected_values,
    series,
    the_session,
    wait_until,
)

N = 50  # points per chunk


@contextlib.contextmanager
def atomscale_only(
    spool_dir: Path, **kw: Any
) -> Iterator[tuple[AtomscaleEmulator, TimeseriesStreamer]]:
    """The Atomscale emulator on loopback and a streamer to it alone (libcurl uploads)."""
    kw.setdefault("retry", QUICK)
    with atomscale_in_thread(api_key=KEY) as web:
        s = TimeseriesStreamer(
            KEY, web.url, spool_dir=spool_dir, clock_sync=False, handle_sigterm=False, **kw
        )
        try:
            yield web, s
        finally:
            s.close(timeout=1)


def stored_once(web: AtomscaleEmulator, data_id: str, chunks: range) -> None:
    """Atomscale stored exactly these chunks of ``series``, each point once."""
    expected = {"T": expected_values(chunks, N)}
    figures = atomscale_figures(web, data_id, expected, len(chunks) * N)
    assert figures.received == figures.sent


def test_run_with_a_quarter_of_uploads_failing_delivers_everything_once(tmp_path: Path) -> None:
    chunks = range(80)
    sleep = CappedSleep()
    with destinations() as rig:
        assert rig.grpc is not None
        s = rig.streamer(tmp_path, sleep=sleep)
        data_id = s.initialize(stream_name="run-flaky")
        rig.web.faults = FaultPlan(fail_fraction=0.25, seed=3)
        s.run(data_id, "T", (series(c, N) for c in chunks), units="C")
        report = s.finalize(data_id, timeout=30)

        assert report.ok, str(report)
        expected = {"T": expected_values(chunks, N)}
        for dest in ("atomscale", "atlas"):
            assert report[dest].chunks_accepted == report[dest].chunks_delivered == len(chunks)
            assert report[dest].points_delivered == len(chunks) * N
        statuses = Counter(r.status for r in atomscale_chunk_requests(rig.web, data_id))
        assert statuses[503] > 5  # the failures really happened...
        assert report["atomscale"].retries > 0  # ... and were retried
        # A failed upload stores nothing, so every point is stored exactly once.
        row = atomscale_figures(rig.web, data_id, expected, len(chunks) * N)
        assert row.duplicated == 0 and row.received == row.sent
        atlas = atlas_figures(the_session(rig.grpc, data_id), expected, len(chunks) * N)
        assert atlas.duplicated == 0 and atlas.received == atlas.sent


def test_run_through_an_atomscale_outage_delivers_everything_after_it(tmp_path: Path) -> None:
    chunks = range(60)
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-outage")

        def readings() -> Iterator[tuple[list[float], list[float]]]:
            for c in chunks:
                if c == 20:
                    web.faults = FaultPlan(down=True)
                if c == 40:
                    web.faults = FaultPlan()
                yield series(c, N)
                time.sleep(0.002)  # an instrument's pace: the outage lasts ~40 ms

        s.run(data_id, "T", readings())
        report = s.finalize(data_id, timeout=20)

        assert report.ok, str(report)
        assert report["atomscale"].chunks_delivered == len(chunks)
        assert report["atomscale"].retries > 0
        statuses = Counter(r.status for r in atomscale_chunk_requests(web, data_id))
        assert statuses[503] > 0  # it really was down
        stored_once(web, data_id, chunks)


def test_run_reports_rejected_chunks_and_delivers_the_rest(tmp_path: Path) -> None:
    chunks = range(40)
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-rejected")
        web.faults = FaultPlan(fail_every=10, fail_status=422)
        with pytest.raises(
            DeliveryError, match=r"4 chunk\(s\) rejected: atomscale chunk \d+ \(422\)"
        ):
            s.run(data_id, "T", (series(c, N) for c in chunks))
        report = s.finalize(data_id, timeout=10)

        r = report["atomscale"]
        assert (r.chunks_rejected, r.points_rejected) == (4, 4 * N)
        assert r.chunks_delivered == 36 and r.chunks_pending == 0
        assert r.retries == 0  # a rejection is final
        rejected = sorted(rej.chunk_index for rej in r.rejections)
        assert len(rejected) == 4
        stored = sorted(k[1] for k in web.streams[data_id].chunks)
        assert stored == [c for c in chunks if c not in rejected]
        assert all(rej.status == 422 for rej in r.rejections)


def test_run_keeps_uploading_while_the_iterator_is_slow(tmp_path: Path) -> None:
    """A live generator waits for its instrument between items: each chunk must still reach
    Atomscale meanwhile, not when the next item comes."""
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-slow-iterator")

        def readings() -> Iterator[tuple[list[float], list[float]]]:
            for c in range(5):
                yield series(c, N)
                # The next reading comes only once Atomscale has this one.
                wait_until(
                    lambda c=c: ("T", c) in web.streams[data_id].chunks,
                    5,
                    f"chunk {c} at Atomscale while run() waits for the next reading",
                )

        s.run(data_id, "T", readings())
        assert s.finalize(data_id, timeout=5).ok
        stored_once(web, data_id, range(5))


def test_run_interrupted_by_its_iterator_delivers_what_it_took(tmp_path: Path) -> None:
    with atomscale_only(tmp_path) as (web, s):
        web.faults = FaultPlan(latency_s=0.02)  # uploads still in flight at the exception
        data_id = s.initialize(stream_name="run-interrupted")

        def readings() -> Iterator[tuple[list[float], list[float]]]:
            for c in range(12):
                yield series(c, N)
            raise RuntimeError("instrument disconnected")

        with pytest.raises(RuntimeError, match="instrument disconnected"):
            s.run(data_id, "T", readings())
        report = s.finalize(data_id, timeout=10)
        assert report.ok, str(report)
        assert report["atomscale"].chunks_delivered == 12
        points = web.points(data_id, "T")[1]
        assert points == expected_values(range(12), N)


def test_run_without_a_journal_counts_what_it_could_not_deliver(tmp_path: Path) -> None:
    with atomscale_only(tmp_path, spool=False, max_pending_chunks=1000) as (web, s):
        data_id = s.initialize(stream_name="run-down-no-spool")
        web.faults = FaultPlan(down=True)
        with pytest.raises(DeliveryTimeoutError, match="atomscale: 10 pending"):
            s.run(data_id, "T", (series(c, N) for c in range(10)), timeout=0.3)
        s.close(timeout=0.1)
        r = s.report(data_id)["atomscale"]
        assert (r.chunks_accepted, r.chunks_delivered, r.chunks_dropped) == (10, 0, 10)
        assert r.points_dropped == 10 * N and r.drop_reason


def test_two_runs_into_one_stream_from_two_threads_are_both_delivered(tmp_path: Path) -> None:
    """Two channels of one stream, each run() on a thread of its own (one report)."""
    chunks = range(30)
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-two-lanes")
        errors: list[BaseException] = []

        def stream(channel: str, offset: float) -> None:
            try:
                items = ((ts, [v + offset for v in vs]) for ts, vs in map(series, chunks))
                s.run(data_id, channel, items)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(ch, k)) for k, ch in enumerate("AB")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)  # each run() waits for the whole stream, the other thread's chunks too
        assert not any(t.is_alive() for t in threads), "a run() missed the other's confirmations"
        assert not errors
        report = s.finalize(data_id, timeout=10)
        assert report.ok and report["atomscale"].chunks_delivered == 2 * len(chunks)
        values = expected_values(chunks, N)
        assert web.points(data_id, "A")[1] == values
        assert web.points(data_id, "B")[1] == [v + 1 for v in values]


def test_run_raises_at_its_deadline_and_the_uploads_still_land(tmp_path: Path) -> None:
    """run(timeout=...) does not wait past its deadline for uploads in flight: it raises, and
    the runner still holds and delivers them."""
    chunks = range(4)
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-deadline")
        web.faults = FaultPlan(latency_s=1.5)  # no answer before run()'s deadline
        with pytest.raises(DeliveryTimeoutError, match="atomscale: 4 pending"):
            s.run(data_id, "T", (series(c, N) for c in chunks), timeout=0.2)
        web.faults = FaultPlan()
        report = s.finalize(data_id, timeout=10)

        assert report.ok, str(report)
        assert report["atomscale"].chunks_delivered == len(chunks)
        stored_once(web, data_id, chunks)


def test_run_retries_an_upload_libcurl_refuses_to_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[int] = []
    real_add = RequestMulti.add

    def add(self: RequestMulti[Any], method: str, path: str, content: Any, *rest: Any) -> None:
        if path.endswith("/chunk") and b'"chunk_index":3,' in content and not refused:
            refused.append(3)
            raise pycurl.error(pycurl.E_OUT_OF_MEMORY, "refused by the test")
        real_add(self, method, path, content, *rest)

    monkeypatch.setattr(RequestMulti, "add", add)
    chunks = range(10)
    with atomscale_only(tmp_path) as (web, s):
        data_id = s.initialize(stream_name="run-refused")
        s.run(data_id, "T", (series(c, N) for c in chunks))
        report = s.finalize(data_id, timeout=10)

        assert refused == [3]
        assert report.ok, str(report)
        assert report["atomscale"].chunks_delivered == len(chunks)
        assert report["atomscale"].retries > 0
        stored_once(web, data_id, chunks)
