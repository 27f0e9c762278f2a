"""Requests/s and Python-side cost of the HTTP engines labstream could upload with (local nginx).

Run:  .venv/bin/python benchmarks/http_transport.py            (about 1.5 min on 2 cores)
      .venv/bin/python benchmarks/http_transport.py --rounds 3 --requests 1000 --variants c,e,f,g
      .venv/bin/python benchmarks/http_transport.py --errors   (how each engine reports failures)
      .venv/bin/python benchmarks/http_transport.py --switch-interval-ms 0.2   (fairer GIL)

Every request is a real chunk upload: ``POST /tool-state/stream/chunk`` with a 100-point body
built the way labstream builds it (``make_chunk`` -> ``chunk_body`` -> ``orjson.dumps``, ~2.2 kB),
``X-API-KEY`` and ``Content-Type`` headers, 8 requests in flight on one client (keep-alive),
response body read, status checked. Bodies are encoded before timing, except in (d)/(e2).
Variants, alternated every round (the order rotates so none always runs first):

  (a)  httpx.AsyncClient, default transport (httpcore)
  (b)  httpx.AsyncClient + httpx_aiohttp.AiohttpTransport (what labstream used first; ``bench``
       extra)
  (c)  raw aiohttp.ClientSession on the default asyncio loop
  (d2) labstream's own ``AtomscaleSink.send_chunk`` (also encodes the body and translates errors
       per request, i.e. the whole per-chunk HTTP cost): the engine of (f) behind labstream's
       ``HttpClient`` seam, its one engine since (f) was measured (the aiohttp engine that was
       (d) is gone)                                                     [needs ``pycurl``]
  (e)  (c) on a uvloop event loop                                      [needs ``uvloop``]
  (e2) (d2) on a uvloop event loop                                     [needs ``uvloop``]
  (f)  pycurl: one dedicated thread drives a ``CurlMulti`` (``perform``/``select`` release the
       GIL), 8 reused easy handles, jobs fed through a queue; 8 asyncio tasks submit and await
       futures that the curl thread resolves in batches (``call_soon_threadsafe``), i.e. how it
       would plug into labstream's event loop                          [needs ``pycurl``]
  (f2) the same curl thread fed straight from a plain thread: all jobs queued up front, no
       event loop at all (the floor of the pycurl engine)              [needs ``pycurl``]
  (g)  pyreqwest (Rust reqwest/hyper on a tokio thread), 8 asyncio tasks [needs ``pyreqwest``]
  (g2) rnet (Rust, wreq/hyper), 8 asyncio tasks                        [needs ``rnet``]

A variant whose package is missing is skipped with the reason printed.

Each variant, each round, after 100 warm-up requests, runs two timed passes of ``--requests``
(which one goes first alternates by round):
  solo:      requests/s, and CPU of the whole process (getrusage RUSAGE_SELF user+sys, every
             thread: event loop, curl thread, tokio threads; nginx is another process) / request
  contended: the same while a second Python thread spins a pure-Python counter loop. Reported:
             the requests/s then, and "GIL left": the counter's iterations/s relative to the same
             loop running alone (measured right before and after the pass: the shared machine's
             speed drifts). That is how much of one Python core the engine leaves to the rest of
             labstream (validation, journaling) while it uploads. "ctr core" (the counter thread's
             own CPU time / wall time) cross-checks it independently of clock speed.
Reading the contended columns: at Python's default 5 ms switch interval a CPU-bound thread wins
the GIL almost every time an I/O thread lets go of it (the "convoy effect"), so every engine shows
GIL left ~80-100% and its upload rate collapses 10-100x; that says more about CPython's GIL than
about the engine. ``--switch-interval-ms 0.2`` makes the sharing visible: then (1 - GIL left) /
(req/s+ctr) is the Python core time one upload takes away from the rest of the process.
After every variant nginx's log must show exactly the requests sent, all 200. Medians over rounds
are printed. Loopback only; bounded counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import queue
import resource
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
import orjson
from _server import BENCH_DATA_ID, BenchServer, free_port, server_description

from labstream._core.chunk import Chunk, make_chunk, validate_series
from labstream.destinations.atomscale.protocol import chunk_body
from labstream.destinations.atomscale.sink import AtomscaleSink

CONCURRENCY = 8
PPC = 100
API_KEY = "bench-key"
PATH = "/tool-state/stream/chunk"
HEADERS = {"X-API-KEY": API_KEY}
CTYPE = {"Content-Type": "application/json"}
WARMUP = 100
COUNTER_ALONE_S = 0.15  # x2 per contended pass, bracketing it


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


# -- measurement ---------------------------------------------------------------------------------


class Counter:
    """A pure-Python loop in its own thread: how much GIL/core time is left for Python code."""

    def __init__(self) -> None:
        self.stop = False
        self.rate = 0.0  # iterations per wall-clock second
        self.core = 0.0  # the thread's own CPU seconds per wall-clock second
        self._thread = threading.Thread(target=self._run, name="gil-counter", daemon=True)

    def _run(self) -> None:
        n = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        while not self.stop:
            n += 1
        wall = time.perf_counter() - t0
        self.rate, self.core = n / wall, (time.thread_time() - c0) / wall

    def __enter__(self) -> Counter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self._thread.join()


def counter_alone(seconds: float = COUNTER_ALONE_S) -> float:
    """Iterations/s of the counter loop with the main thread asleep (GIL free).

    The machine is shared and its clock varies (+-25% from one 0.3 s to the next), so every
    contended pass is compared with this measured right before and right after it.
    """
    with Counter() as c:
        time.sleep(seconds)
    return c.rate


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Sample:
    rate: float  # requests/s, solo
    cpu_us: float  # process CPU microseconds per request, solo
    rate_contended: float  # requests/s while the counter thread runs
    counter_rate: float  # counter iterations/s during the contended pass
    counter_core: float  # counter thread CPU s / wall s during the contended pass
    alone_rate: float  # counter iterations/s alone, just before and after the contended pass
    requests: float  # sent in all (warm-up, solo, contended), to check against nginx's log


async def drive(
    n: int | None, one: Callable[[int], Awaitable[None]], seconds: float | None = None
) -> tuple[int, float]:
    """Send ``n`` requests, or as many as start within ``seconds``, from CONCURRENCY tasks.

    Returns (requests completed, seconds until the last one finished).
    """
    counter = iter(range(n)) if n is not None else itertools.count()
    deadline = time.perf_counter() + seconds if seconds is not None else None
    done = 0

    async def worker() -> None:
        nonlocal done
        for i in counter:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            await one(i)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done, time.perf_counter() - start


# A pass: (number of requests or None, seconds or None) -> (requests completed, seconds).
Pass = Callable[[int | None, float | None], tuple[int, float]]


def _solo(out: dict[str, float], n: int, sent: int, secs: float, cpu: float) -> None:
    out["rate"], out["cpu_us"], out["requests"] = n / secs, cpu / n * 1e6, out["requests"] + sent


def _contended(out: dict[str, float], done: int, secs: float, c: Counter, before: float) -> None:
    out["rate_contended"], out["requests"] = done / secs, out["requests"] + done
    out["alone_rate"] = (before + counter_alone()) / 2
    out["counter_rate"], out["counter_core"] = c.rate, c.core


async def measure(
    n: int, one: Callable[[int], Awaitable[None]], contended_first: bool, contended_s: float
) -> Sample:
    """Warm up, then a solo pass of ``n`` requests and a contended pass of ``contended_s``.

    The contended pass is bounded by time, not count: its rate varies tenfold with GIL luck.
    """
    await drive(WARMUP, one)
    out = {"requests": float(WARMUP)}
    for contended in (contended_first, not contended_first):
        if contended:
            before = counter_alone()
            with Counter() as c:
                done, secs = await drive(None, one, contended_s)
            _contended(out, done, secs, c, before)
        else:
            cpu0 = cpu_seconds()
            done, secs = await drive(n, one)
            _solo(out, n, done, secs, cpu_seconds() - cpu0)
    return Sample(**out)


def measure_sync(n: int, run: Pass, contended_first: bool, contended_s: float) -> Sample:
    """:func:`measure` for an engine driven without an event loop."""
    run(WARMUP, None)
    out = {"requests": float(WARMUP)}
    for contended in (contended_first, not contended_first):
        if contended:
            before = counter_alone()
            with Counter() as c:
                done, secs = run(None, contended_s)
            _contended(out, done, secs, c, before)
        else:
            cpu0 = cpu_seconds()
            done, secs = run(n, None)
            _solo(out, n, done, secs, cpu_seconds() - cpu0)
    return Sample(**out)


Measure = Callable[[int, Callable[[int], Awaitable[None]]], Awaitable[Sample]]


# -- (a)-(e2): httpx, aiohttp, labstream's sink ---------------------------------------------------


async def run_httpx(
    url: str, bodies: list[bytes], n: int, m: Measure, transport: httpx.AsyncBaseTransport | None
) -> Sample:
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
            resp = await client.post(PATH, content=bodies[i % len(bodies)], headers=CTYPE)
            if resp.status_code != 200:
                raise RuntimeError(f"status {resp.status_code}")

        return await m(n, one)


def aiohttp_transport() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(
        max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY + 2
    )
    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits)
    return transport


async def run_aiohttp(url: str, bodies: list[bytes], n: int, m: Measure) -> Sample:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY + 2)
    async with aiohttp.ClientSession(base_url=url, headers=HEADERS, connector=connector) as session:

        async def one(i: int) -> None:
            async with session.post(PATH, data=bodies[i % len(bodies)], headers=CTYPE) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")

        return await m(n, one)


async def run_sink(url: str, chunks: list[Chunk], n: int, m: Measure) -> Sample:
    sink = AtomscaleSink(API_KEY, url, sleep=asyncio.sleep, max_concurrency=CONCURRENCY)
    try:

        async def one(i: int) -> None:
            await sink.send_chunk(chunks[i % len(chunks)])

        return await m(n, one)
    finally:
        await sink.aclose()


# -- (f)/(f2): pycurl CurlMulti on one dedicated thread --------------------------------------------

# One finished request: (token, HTTP status or 0, response body, curl error or None).
Done = tuple[Any, int, bytes, str | None]


class CurlEngine:
    """A ``CurlMulti`` driven by one thread; jobs ``(body, token)`` come in through a queue.

    ``concurrency`` easy handles are created once and reused (their connections stay in the
    multi's keep-alive cache). Every pass of the loop hands all requests that finished to
    ``deliver`` in one call, so an event loop is woken once per batch, not once per request.
    """

    def __init__(
        self,
        url: str,
        deliver: Callable[[list[Done]], None],
        *,
        concurrency: int = CONCURRENCY,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        import pycurl

        self._pycurl = pycurl
        self._deliver = deliver
        self._jobs: queue.SimpleQueue[tuple[bytes, Any] | None] = queue.SimpleQueue()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, concurrency + 2)
        headers = [f"{k}: {v}" for k, v in {**HEADERS, **CTYPE}.items()] + ["Expect:"]
        self._handles = []
        for _ in range(concurrency):
            h = pycurl.Curl()
            h.setopt(pycurl.URL, url + PATH)
            h.setopt(pycurl.HTTPHEADER, headers)
            h.setopt(pycurl.NOSIGNAL, 1)
            h.setopt(pycurl.TIMEOUT_MS, int(timeout_s * 1000))
            h.setopt(pycurl.CONNECTTIMEOUT_MS, int(connect_timeout_s * 1000))
            buf: list[bytes] = []
            h.setopt(pycurl.WRITEFUNCTION, buf.append)
            self._handles.append((h, buf))
        self._thread = threading.Thread(target=self._loop, name="curl-multi", daemon=True)
        self._thread.start()

    def submit(self, body: bytes, token: Any) -> None:
        self._jobs.put((body, token))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        for h, _ in self._handles:
            h.close()
        self._multi.close()

    def _loop(self) -> None:
        pycurl, multi, jobs = self._pycurl, self._multi, self._jobs
        free = list(self._handles)
        busy: dict[Any, tuple[Any, list[bytes], Any]] = {}  # handle -> (handle, buf, token)
        closing = False
        while True:
            # Refill free handles; block on the queue only when nothing is in flight.
            while free and not closing:
                try:
                    job = jobs.get(block=not busy)
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                    break
                h, buf = free.pop()
                buf.clear()
                h.setopt(pycurl.POSTFIELDS, job[0])
                busy[h] = (h, buf, job[1])
                multi.add_handle(h)
            if not busy:
                if closing:
                    return
                continue
            ret = pycurl.E_CALL_MULTI_PERFORM
            while ret == pycurl.E_CALL_MULTI_PERFORM:
                ret, _ = multi.perform()  # releases the GIL
            finished: list[Done] = []
            while True:
                left, ok, failed = multi.info_read()
                for h in ok:
                    h_, buf, token = busy.pop(h)
                    finished.append((token, h.getinfo(pycurl.RESPONSE_CODE), b"".join(buf), None))
                    multi.remove_handle(h)
                    free.append((h_, buf))
                for h, errno, msg in failed:
                    h_, buf, token = busy.pop(h)
                    finished.append((token, 0, b"", f"curl error {errno}: {msg}"))
                    multi.remove_handle(h)
                    free.append((h_, buf))
                if not left:
                    break
            if finished:
                self._deliver(finished)
            elif busy:
                multi.select(0.001)  # releases the GIL; short so new jobs are picked up soon


async def run_pycurl_async(url: str, bodies: list[bytes], n: int, m: Measure) -> Sample:
    loop = asyncio.get_running_loop()

    def resolve(batch: list[Done]) -> None:
        for fut, status, _body, err in batch:
            if not fut.done():
                fut.set_result((status, err))

    engine = CurlEngine(url, lambda batch: loop.call_soon_threadsafe(resolve, batch))
    try:

        async def one(i: int) -> None:
            fut: asyncio.Future[tuple[int, str | None]] = loop.create_future()
            engine.submit(bodies[i % len(bodies)], fut)
            status, err = await fut
            if err is not None or status != 200:
                raise RuntimeError(err or f"status {status}")

        return await m(n, one)
    finally:
        engine.close()


def run_pycurl_thread(
    url: str, bodies: list[bytes], n: int, contended_first: bool, contended_s: float
) -> Sample:
    """(f2): no event loop. The main thread queues a backlog and sleeps until the pass is over;
    the curl thread tops the queue up from ``deliver`` as requests finish (so the queue never runs
    dry, as with a bulk upload whose chunks are all ready)."""
    lock = threading.Lock()
    st = {"submitted": 0, "done": 0, "errors": 0, "limit": 0, "deadline": 0.0}
    over = threading.Event()

    def submit(k: int) -> None:
        for _ in range(k):
            engine.submit(bodies[st["submitted"] % len(bodies)], None)
            st["submitted"] += 1

    def deliver(batch: list[Done]) -> None:  # runs on the curl thread
        with lock:
            st["errors"] += sum(1 for _, status, _, err in batch if err or status != 200)
            st["done"] += len(batch)
            if time.perf_counter() < st["deadline"]:
                submit(min(len(batch), int(st["limit"] - st["submitted"])))
            if st["done"] == st["submitted"]:
                over.set()

    engine = CurlEngine(url, deliver)
    try:

        def run(k: int | None, seconds: float | None) -> tuple[int, float]:
            over.clear()
            start = time.perf_counter()
            with lock:
                st["submitted"] = st["done"] = 0
                st["limit"] = k if k is not None else 1 << 60
                st["deadline"] = start + seconds if seconds is not None else float("inf")
                submit(min(2 * CONCURRENCY, int(st["limit"])))
            over.wait()
            secs = time.perf_counter() - start
            if st["errors"]:
                raise RuntimeError(f"{st['errors']} requests failed")
            return int(st["done"]), secs

        return measure_sync(n, run, contended_first, contended_s)
    finally:
        engine.close()


# -- (g)/(g2): Rust-backed async clients ----------------------------------------------------------


async def run_pyreqwest(url: str, bodies: list[bytes], n: int, m: Measure) -> Sample:
    from pyreqwest.client import ClientBuilder

    client = (
        ClientBuilder()
        .base_url(url)
        .default_headers(HEADERS)
        .max_connections(CONCURRENCY + 2)
        .pool_max_idle_per_host(CONCURRENCY + 2)
        .timeout(timedelta(seconds=30))
        .build()
    )
    async with client:

        async def one(i: int) -> None:
            req = client.post(PATH).body_bytes(bodies[i % len(bodies)]).headers(CTYPE).build()
            resp = await req.send()
            await resp.bytes()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")

        return await m(n, one)


async def run_rnet(url: str, bodies: list[bytes], n: int, m: Measure) -> Sample:
    import rnet

    client = rnet.Client(
        default_headers=HEADERS, timeout=30, pool_max_idle_per_host=CONCURRENCY + 2
    )
    full = url + PATH

    async def one(i: int) -> None:
        resp = await client.post(full, body=bodies[i % len(bodies)], headers=CTYPE)
        await resp.bytes()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")

    return await m(n, one)


# -- variants --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    needs: tuple[str, ...] = ()  # importable modules
    loop: str = "asyncio"  # "asyncio", "uvloop" or "thread" (no event loop)


VARIANTS = {
    "a": Variant("httpx default transport"),
    "b": Variant("httpx + AiohttpTransport", ("httpx_aiohttp",)),
    "c": Variant("raw aiohttp (asyncio loop)"),
    "d2": Variant("labstream AtomscaleSink.send_chunk (libcurl)", ("pycurl",)),
    "e": Variant("raw aiohttp on uvloop", ("uvloop",), "uvloop"),
    "e2": Variant("labstream sink on uvloop", ("uvloop",), "uvloop"),
    "f": Variant("pycurl multi thread <- asyncio tasks", ("pycurl",)),
    "f2": Variant("pycurl multi thread <- plain thread", ("pycurl",), "thread"),
    "g": Variant("pyreqwest (Rust) on asyncio", ("pyreqwest",)),
    "g2": Variant("rnet (Rust) on asyncio", ("rnet",)),
}


def missing(v: Variant) -> list[str]:
    return [mod for mod in v.needs if importlib.util.find_spec(mod) is None]


def run_variant(
    key: str,
    url: str,
    bodies: list[bytes],
    chunks: list[Chunk],
    n: int,
    contended_first: bool,
    contended_s: float,
) -> Sample:
    v = VARIANTS[key]
    if v.loop == "thread":
        return run_pycurl_thread(url, bodies, n, contended_first, contended_s)

    def m(k: int, one: Callable[[int], Awaitable[None]]) -> Awaitable[Sample]:
        return measure(k, one, contended_first, contended_s)

    coro: Coroutine[Any, Any, Sample]
    if key == "a":
        coro = run_httpx(url, bodies, n, m, None)
    elif key == "b":
        coro = run_httpx(url, bodies, n, m, aiohttp_transport())
    elif key in ("c", "e"):
        coro = run_aiohttp(url, bodies, n, m)
    elif key in ("d2", "e2"):
        coro = run_sink(url, chunks, n, m)
    elif key == "f":
        coro = run_pycurl_async(url, bodies, n, m)
    elif key == "g":
        coro = run_pyreqwest(url, bodies, n, m)
    else:
        coro = run_rnet(url, bodies, n, m)
    factory = None
    if v.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("aiohttp", "httpx", "httpx-aiohttp", "uvloop", "pycurl", "pyreqwest", "rnet"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{dist} {version(dist)}")
    if importlib.util.find_spec("pycurl") is not None:
        import pycurl

        out.append(str(pycurl.version))
    return "; ".join(out)


def main(rounds: int, n: int, wanted: list[str], contended_s: float, switch_ms: float) -> None:
    if switch_ms:
        sys.setswitchinterval(switch_ms / 1000)
    keys = []
    for k in wanted:
        gone = missing(VARIANTS[k])
        if gone:
            print(f"skip ({k}) {VARIANTS[k].label}: {', '.join(gone)} not installed")
        else:
            keys.append(k)
    if not keys:
        return
    chunks = make_chunks(200)
    bodies = [encode(c) for c in chunks]
    with BenchServer() as srv:
        print(
            f"server: {server_description(srv)}; body {len(bodies[0])} bytes; "
            f"{CONCURRENCY} in flight; per variant and round: {WARMUP} warm-up, {n} solo, "
            f"{contended_s:g} s contended; {rounds} rounds; "
            f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms"
        )
        print(f"versions: {versions()}", flush=True)
        samples: dict[str, list[Sample]] = {k: [] for k in keys}
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                srv.clear_chunk_log()
                s = run_variant(k, srv.url, bodies, chunks, n, r % 2 == 1, contended_s)
                samples[k].append(s)
                arrived = srv.chunk_log()
                if srv.kind == "nginx" and (
                    len(arrived) != s.requests or any(st != 200 for _, st in arrived)
                ):
                    raise RuntimeError(
                        f"({k}): nginx logged {len(arrived)} chunk requests, expected "
                        f"{s.requests:.0f} all 200"
                    )
            print(
                f"  round {r + 1}: " + "  ".join(f"{k}={samples[k][-1].rate:,.0f}/s" for k in keys),
                flush=True,
            )

    def med(k: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[k])

    def gil_left(k: str) -> float:
        return statistics.median(s.counter_rate / s.alone_rate for s in samples[k])

    base = med(keys[0], "rate")
    print()
    print(
        f"{'variant':42} {'req/s':>7} {'min':>7} {'max':>7} {'vs (' + keys[0] + ')':>7} "
        f"{'CPU us/req':>10} {'req/s+ctr':>9} {'GIL left':>8} {'ctr core':>8}"
    )
    for k in keys:
        label = f"({k}) {VARIANTS[k].label}"
        rates = [s.rate for s in samples[k]]
        print(
            f"{label:42} {med(k, 'rate'):7,.0f} {min(rates):7,.0f} {max(rates):7,.0f} "
            f"{med(k, 'rate') / base:6.2f}x {med(k, 'cpu_us'):10.0f} "
            f"{med(k, 'rate_contended'):9,.0f} {gil_left(k):8.0%} {med(k, 'counter_core'):8.0%}"
        )
    print(
        "\nreq/s, min, max: solo passes. CPU us/req: process user+sys CPU (all threads) per "
        "request, solo pass.\nreq/s+ctr: requests/s while a pure-Python counter loop spins in a "
        "second thread. GIL left: that loop's\niterations/s relative to the same loop alone, "
        "measured just before and after (100% = the engine leaves one\nwhole Python core free). "
        "ctr core: the counter thread's own CPU time / wall time (a clock-independent\n"
        "cross-check). Medians over rounds."
    )


# -- --errors: how each engine reports failures ----------------------------------------------------


class _FakeServer:
    """Loopback listener: ``mode="silent"`` accepts and never answers; ``"503"`` answers 503."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self._conns.append(conn)
                if self.mode == "503":
                    threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += conn.recv(65536)
            body = b'{"detail":"overloaded"}'
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


async def _probe_async(engine: str, url: str, body: bytes) -> str:
    """One POST with a 1 s total timeout; describe what came back or what was raised."""
    try:
        if engine == "aiohttp":
            timeout = aiohttp.ClientTimeout(total=1.0)
            async with (
                aiohttp.ClientSession(headers=HEADERS, timeout=timeout) as session,
                session.post(url + PATH, data=body, headers=CTYPE) as resp,
            ):
                return f"status {resp.status}, body {await resp.read()!r}"
        if engine == "pyreqwest":
            from pyreqwest.client import ClientBuilder

            async with (
                ClientBuilder().default_headers(HEADERS).timeout(timedelta(seconds=1)).build()
            ) as client:
                resp = await client.post(url + PATH).body_bytes(body).headers(CTYPE).build().send()
                return f"status {resp.status}, body {bytes(await resp.bytes())!r}"
        if engine == "rnet":
            import rnet

            client = rnet.Client(default_headers=HEADERS, timeout=1)
            resp = await client.post(url + PATH, body=body, headers=CTYPE)
            return f"status {resp.status}, body {await resp.bytes()!r}"
        if engine == "pycurl":
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Done] = loop.create_future()

            def resolve(batch: list[Done]) -> None:
                fut.set_result(batch[0])

            curl = CurlEngine(
                url,
                lambda b: loop.call_soon_threadsafe(resolve, b),
                concurrency=1,
                timeout_s=1.0,
                connect_timeout_s=1.0,
            )
            try:
                curl.submit(body, None)
                _, status, got, err = await fut
            finally:
                curl.close()
            return err if err is not None else f"status {status}, body {got!r}"
    except Exception as exc:
        mro = [c.__name__ for c in type(exc).__mro__[1:] if c not in (object, BaseException)]
        return f"raises {type(exc).__module__}.{type(exc).__name__} ({', '.join(mro)}): {exc}"
    raise ValueError(engine)


def probe_errors() -> None:
    """Refused connection, silent server (1 s timeout) and HTTP 503, through every engine.

    Seen here: after a timed-out request, pyreqwest 0.15.1 (SIGABRT, "PyGILState_Release: thread
    state must be current") and rnet 2.4.2 (SIGSEGV) each crash the interpreter at exit about one
    run in six; aiohttp and pycurl never did.
    """
    body = encode(make_chunks(1)[0])
    engines = ["aiohttp"] + [
        name for name in ("pycurl", "pyreqwest", "rnet") if importlib.util.find_spec(name)
    ]
    silent, overloaded = _FakeServer("silent"), _FakeServer("503")
    cases = {
        "connection refused": f"http://127.0.0.1:{free_port()}",
        "no answer (1 s timeout)": silent.url,
        "HTTP 503": overloaded.url,
    }
    try:
        for engine in engines:
            print(f"{engine}:")
            for case, url in cases.items():
                t0 = time.perf_counter()
                what = asyncio.run(_probe_async(engine, url, body))
                print(f"  {case:24} after {time.perf_counter() - t0:4.2f}s: {what[:200]}")
    finally:
        silent.close()
        overloaded.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--requests", type=int, default=1500, help="timed requests per pass per variant per round"
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)",
    )
    ap.add_argument(
        "--contended-seconds",
        type=float,
        default=0.5,
        help="length of the pass with the counter thread running",
    )
    ap.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0.0,
        help="sys.setswitchinterval for the run (default: leave Python's 5 ms)",
    )
    ap.add_argument(
        "--errors", action="store_true", help="only show how each engine reports failures"
    )
    args = ap.parse_args()
    if args.errors:
        probe_errors()
    else:
        wanted = [k.strip() for k in args.variants.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        main(args.rounds, args.requests, wanted, args.contended_seconds, args.switch_interval_ms)
