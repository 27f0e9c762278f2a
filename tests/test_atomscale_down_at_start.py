"""Atomscale unreachable when the stream is initialized: ATLAS still gets everything at once.

Before, ``initialize()`` needed Atomscale's data_id: with Atomscale on a closed port it raised, and
ATLAS got nothing. Now the stream goes on under a data_id of labstream's; Atomscale's stream is
created once Atomscale answers, by this process or by the one that takes the journal over.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labstream import Atlas, TimeseriesStreamer
from labstream.testing.atlas import run_in_thread as atlas_in_thread
from labstream.testing.atlas_checker import check_session
from labstream.testing.atomscale import run_in_thread as atomscale_in_thread

from .test_reliability import KEY, QUICK, free_port, series

CHUNKS, N = 10, 50


def expected() -> list[float]:
    return [v for c in range(CHUNKS) for v in series(c, N)[1]]


@pytest.mark.parametrize("comes_back", ["same process", "next process"])
def test_atlas_gets_every_point_while_atomscale_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, comes_back: str
) -> None:
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"

    def streamer(atlas: Atlas) -> TimeseriesStreamer:
        return TimeseriesStreamer(
            KEY, url, atlas=atlas, spool_dir=spool, retry=QUICK, clock_sync=False,
            handle_sigterm=False,
        )  # fmt: skip

    with atlas_in_thread() as grpc:
        where = Atlas(address=grpc.address, key_generator_address=grpc.key_generator_address)
        first = streamer(where)
        data_id = first.initialize(stream_name="atomscale-down")  # raised before
        for c in range(CHUNKS):
            first.push(data_id, c, "T", *series(c, N))
        if comes_back == "same process":
            with atomscale_in_thread(port=port, api_key=KEY) as web:
                report = first.finalize(data_id, timeout=20)
                first.close(timeout=5)
                streams = dict(web.streams)
        else:
            report = first.finalize(data_id, timeout=1.0)
            assert report["atlas"].complete and report["atlas"].points_delivered == CHUNKS * N
            assert report["atomscale"].points_pending == CHUNKS * N  # kept, not lost
            assert not report.ok
            first.close(timeout=0.2)
            with atomscale_in_thread(port=port, api_key=KEY) as web:
                second = streamer(where)
                assert second.recovered_streams() == [data_id]
                report = second.finalize(data_id, timeout=20)
                second.close(timeout=5)
                streams = dict(web.streams)
        (session,) = grpc.sessions.values()
        checked = check_session(session)
    assert report.ok, str(report)
    assert checked.clean
    assert checked.parameters["T:labstream"].values == expected()
    (stored,) = streams.values()  # one Atomscale stream, created once it answered
    assert stored.finalized
    assert stored.points("T")[1] == expected()
    assert data_id not in streams  # Atomscale's own data_id, not labstream's
