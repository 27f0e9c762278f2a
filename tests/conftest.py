"""Shared pytest configuration: async tests run on asyncio through anyio's plugin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labstream import TimeseriesStreamer
from labstream.testing.fake import FakeAtomscale, RecordingSleep

from . import API_KEY


@pytest.fixture
def anyio_backend() -> str:
    # grpc.aio needs asyncio; labstream runs on asyncio everywhere.
    return "asyncio"


@pytest.fixture(autouse=True)
def isolated_spool(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own journal directory: no test resumes another's streams."""
    spool = tmp_path_factory.mktemp("spool")
    monkeypatch.setenv("LABSTREAM_SPOOL_DIR", str(spool))
    return spool


@pytest.fixture
def fake() -> FakeAtomscale:
    return FakeAtomscale()


@pytest.fixture
def sleeper() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def streamer_factory(
    fake: FakeAtomscale, sleeper: RecordingSleep, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TimeseriesStreamer]]:
    """Build sync streamers wired to the fake Atomscale; every one is closed after the test."""
    for var in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT", "ATOMSCALE_SKIP_CLOCK_SYNC"):
        monkeypatch.delenv(var, raising=False)
    made: list[TimeseriesStreamer] = []

    def make(**kw: Any) -> TimeseriesStreamer:
        kw.setdefault("api_key", API_KEY)
        kw.setdefault("endpoint", "http://atomscale.test")
        kw.setdefault("http_transport", fake.transport())
        kw.setdefault("sleep", sleeper)
        kw.setdefault("handle_sigterm", False)
        s = TimeseriesStreamer(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(timeout=5)
