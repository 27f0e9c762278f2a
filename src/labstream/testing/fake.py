"""Fakes at the seams, for your own tests: an in-memory Atomscale behind ``httpx.MockTransport``,
and a sleep that records how long labstream wanted to wait without waiting.

    fake = FakeAtomscale()
    streamer = TimeseriesStreamer(api_key="any", http_transport=fake.transport(), spool=False,
                                  sleep=RecordingSleep())
    ...
    assert fake.points(data_id, "temperature") == (timestamps, values)

``responders`` answer instead of the fake, one request at a time: a 503 every n-th chunk
(:func:`fail_every`), a slow server, a refusal. No socket is opened.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import httpx


class RecordingSleep:
    """Injected instead of ``anyio.sleep``: records each wait, then just yields to the loop."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


__all__ = ["FakeAtomscale", "Recorded", "RecordingSleep", "Responder", "fail_every"]


@dataclass
class Recorded:
    """One request as the fake received it (``body`` parsed from JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


# A responder may return a Response to override the fake's normal answer for one request; an async
# responder can also hold the request (a slow or hanging destination) without blocking the loop.
Responder = Callable[[Recorded, int], httpx.Response | Awaitable[httpx.Response | None] | None]


@dataclass
class FakeAtomscale:
    """Answers like Atomscale; stores chunks by (data_id, channel, chunk_index)."""

    responders: list[Responder] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    chunks: dict[tuple[str, str, int], tuple[list[float], list[float | None]]] = field(
        default_factory=dict
    )
    finalized: list[str] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    clock_offset_s: float = 0.0
    _next_id: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _id(self, prefix: str) -> str:
        self._next_id += 1
        return (
            f"00000000-0000-4000-8000-{self._next_id:012d}"
            if prefix == "uuid"
            else (f"{prefix}-{self._next_id}")
        )

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        rec = Recorded(
            request.method, request.url.path, dict(request.headers), body, request.content
        )
        self.requests.append(rec)
        for responder in self.responders:
            override = responder(rec, len(self.requests))
            if inspect.isawaitable(override):
                override = await override
            if override is not None:
                return override
        return self.answer(rec)

    def answer(self, rec: Recorded) -> httpx.Response:
        path, body = rec.path, rec.body
        if path == "/gateway/time":
            now = (time.time() + self.clock_offset_s) * 1000
            return httpx.Response(200, json={"receivedAtUnixMs": now, "transmittedAtUnixMs": now})
        if path == "/tool-state/stream/initialize":
            return httpx.Response(
                200, json={"data_id": self._id("data"), "processed_data_id": self._id("proc")}
            )
        if path == "/tool-state/stream/chunk":
            self.chunks[(body["data_id"], body["channel_name"], body["chunk_index"])] = (
                body["timestamps"],
                body["values"],
            )
            return httpx.Response(200, json={})
        if path == "/tool-state/stream/chunk/multi":
            for name, ch in body["channels"].items():
                self.chunks[(body["data_id"], name, body["chunk_index"])] = (
                    ch["timestamps"],
                    ch["values"],
                )
            return httpx.Response(200, json={})
        if path.endswith("/finalize"):
            self.finalized.append(path.split("/")[3])
            return httpx.Response(200, json={})
        if path == "/physical_samples/" and rec.method == "GET":
            return httpx.Response(200, json=self.samples)
        if path == "/physical_samples/":
            new = {"id": self._id("uuid"), "name": body["name"]}
            self.samples.append(new)
            return httpx.Response(200, json={"physical_sample_id": new["id"]})
        if path == "/tags/" and rec.method == "GET":
            return httpx.Response(200, json=self.tags)
        if path == "/tags/":
            new = {"id": self._id("uuid"), "name": body["name"]}
            self.tags.append(new)
            return httpx.Response(200, json={"id": new["id"]})
        if path in ("/data_entries/physical_sample", "/tags/data-items/") or path.startswith(
            "/projects/"
        ):
            return httpx.Response(200, json={})
        return httpx.Response(404, json={"detail": "not found"})

    # -- what was stored -----------------------------------------------------------------------

    def points(self, data_id: str, channel: str) -> tuple[list[float], list[float]]:
        keys = sorted(k for k in self.chunks if k[0] == data_id and k[1] == channel)
        ts: list[float] = []
        vs: list[float] = []
        for key in keys:
            t, v = self.chunks[key]
            ts.extend(t)
            vs.extend(math.nan if x is None else x for x in v)
        return ts, vs

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def chunk_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/tool-state/stream/chunk")]


def fail_every(n: int, status: int = 503, headers: dict[str, str] | None = None) -> Responder:
    """Answer every n-th chunk request with ``status``."""
    seen = {"chunks": 0}

    def responder(rec: Recorded, _: int) -> httpx.Response | None:
        if not rec.path.startswith("/tool-state/stream/chunk"):
            return None
        seen["chunks"] += 1
        if seen["chunks"] % n == 0:
            return httpx.Response(status, json={"detail": "try again"}, headers=headers)
        return None

    return responder
