"""Requests/s of the HTTP stacks labstream could upload with, against local nginx.

Run:  .venv/bin/python benchmarks/http_transport.py            (about 30 s on 2 cores)
      .venv/bin/python benchmarks/http_transport.py --rounds 3 --requests 2000

Every request is a real chunk upload: ``POST /tool-state/stream/chunk`` with a 100-point body
built the way labstream builds it (``make_chunk`` -> ``chunk_body`` -> ``orjson.dumps``, ~2.2 kB),
``X-API-KEY`` and ``Content-Type`` headers, 8 concurrent tasks sharing one client, response body
read. Bodies are encoded before timing, except in variant (d). Variants, alternated every round
(the order rotates so none always runs first):

  (a) httpx.AsyncClient, default transport (httpcore)
  (b) httpx.AsyncClient + httpx_aiohttp.AiohttpTransport (what labstream used first; needs the
      ``bench`` extra)
  (c) raw aiohttp.ClientSession (the ceiling)
  (d) labstream's own ``AtomscaleSink.send_chunk``, which now uses aiohttp directly: also encodes
      the body and translates errors per request, i.e. the whole per-chunk HTTP cost of labstream

Prints the median requests/s per variant and its ratio to (a). Loopback only; bounded counts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
from _server import BENCH_DATA_ID, BenchServer, server_description

from labstream.chunk import Chunk, make_chunk, validate_series
from labstream.sinks.atomscale import AtomscaleSink, chunk_body

CONCURRENCY = 8
PPC = 100
API_KEY = "bench-key"
PATH = "/tool-state/stream/chunk"
HEADERS = {"X-API-KEY": API_KEY}


def make_chunks(n: int) -> list[Chunk]:
    t0 = 1.7e9
    out = []
    for c in range(n):
        ts = [t0 + (c * PPC + i) * 0.01 for i in range(PPC)]
        vs = [25.0 + i * 0.001 for i in range(PPC)]
        raw = validate_series(BENCH_DATA_ID, c, "temperature", ts, vs, "C", max_points=PPC)
        out.append(make_chunk(BENCH_DATA_ID, c, [raw], multi=False, offset_ns=0))
    return out


def encode(chunk: Chunk) -> bytes:
    return orjson.dumps(chunk_body(chunk), option=orjson.OPT_SERIALIZE_NUMPY)


async def drive(n: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Send ``n`` requests from CONCURRENCY tasks; return seconds."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - start


async def run_httpx(
    url: str, bodies: list[bytes], n: int, transport: httpx.AsyncBaseTransport | None
) -> float:
    async with httpx.AsyncClient(
        base_url=url,
        headers=HEADERS,
        timeout=30.0,
        limits=httpx.Limits(
            max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY + 2
        ),
        transport=transport,
    ) as client:

        async def one(i: int) -> None:
            resp = await client.post(
                PATH, content=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
            )
            if resp.status_code != 200:
                raise RuntimeError(f"status {resp.status_code}")

        await drive(100, one)  # warm up: connections open, code paths hot
        return await drive(n, one)


async def run_aiohttp(url: str, bodies: list[bytes], n: int) -> float:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY + 2)
    async with aiohttp.ClientSession(base_url=url, headers=HEADERS, connector=connector) as session:

        async def one(i: int) -> None:
            async with session.post(
                PATH, data=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")

        await drive(100, one)
        return await drive(n, one)


def aiohttp_transport() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(
        max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY + 2
    )
    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits)
    return transport


async def run_sink(url: str, chunks: list[Chunk], n: int) -> float:
    sink = AtomscaleSink(API_KEY, url, sleep=asyncio.sleep, max_concurrency=CONCURRENCY)
    try:

        async def one(i: int) -> None:
            await sink.send_chunk(chunks[i % len(chunks)])

        await drive(100, one)
        return await drive(n, one)
    finally:
        await sink.aclose()


VARIANTS = {
    "a": "httpx default transport",
    "b": "httpx + AiohttpTransport",
    "c": "raw aiohttp (ceiling)",
    "d": "labstream AtomscaleSink.send_chunk",
}


async def main(rounds: int, n: int) -> None:
    chunks = make_chunks(200)
    bodies = [encode(c) for c in chunks]
    with BenchServer() as srv:
        print(
            f"server: {server_description(srv)}; body {len(bodies[0])} bytes; "
            f"{CONCURRENCY} concurrent tasks; {n} requests x {rounds} rounds per variant"
        )
        rates: dict[str, list[float]] = {k: [] for k in VARIANTS}
        keys = list(VARIANTS)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                if k == "a":
                    secs = await run_httpx(srv.url, bodies, n, None)
                elif k == "b":
                    secs = await run_httpx(srv.url, bodies, n, aiohttp_transport())
                elif k == "c":
                    secs = await run_aiohttp(srv.url, bodies, n)
                else:
                    secs = await run_sink(srv.url, chunks, n)
                rates[k].append(n / secs)
            print(
                f"  round {r + 1}: " + "  ".join(f"{k}={rates[k][-1]:,.0f}/s" for k in keys),
                flush=True,
            )
        base = statistics.median(rates["a"])
        print()
        print(f"{'variant':44} {'median req/s':>12} {'min':>8} {'max':>8} {'vs (a)':>7}")
        for k, label in VARIANTS.items():
            med = statistics.median(rates[k])
            print(
                f"({k}) {label:40} {med:12,.0f} {min(rates[k]):8,.0f} {max(rates[k]):8,.0f} "
                f"{med / base:6.2f}x"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--requests", type=int, default=3000, help="timed requests per variant per round"
    )
    args = ap.parse_args()
    asyncio.run(main(args.rounds, args.requests))
