"""libcurl (pycurl) as labstream's HTTP engine: uploads run on a thread of their own.

Why: with aiohttp, each chunk upload costs the event loop ~90-125 µs of Python per request (the
request and response objects, the protocol callbacks); that, not the network, capped ``run()``.
Here one thread drives a ``CurlMulti``; libcurl builds requests, parses responses and keeps the
connections alive in C, with the GIL released while it waits or works, so a request costs ~25 µs
of the process's CPU (``benchmarks/http_transport.py``). The event loop only hands a request over
and is woken once per batch of finished ones.

Behaviour matches :class:`~labstream.sinks.http.AiohttpClient`: the same answers and
:class:`~labstream.sinks.http.TransportError` (``timed_out`` for curl's timeout), no proxy taken
from the environment, no ``Expect: 100-continue`` round trip, and the same certificates trusted:
the system's, as Python's :mod:`ssl` finds them (``SSL_CERT_FILE``/``SSL_CERT_DIR`` included).
That one is not a detail: the libcurl in pycurl's wheels looks for a Red Hat CA bundle path that
Debian and Ubuntu do not have, so without it every HTTPS upload would fail there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import anyio
import pycurl
from multidict import CIMultiDict

from .http import HttpAnswer, TransportError

log = logging.getLogger("labstream.http")

_POLL_S = 0.001  # how long the thread waits on sockets before taking new requests
_CLOSED = "the HTTP client was closed"
# (status or 0, headers, body, curl error number or 0, error message)
_Outcome = tuple[int, Mapping[str, str], bytes, int, str]


@dataclass(eq=False, slots=True)
class _Job:
    method: str
    url: str
    content: bytes | None
    headers: list[str]
    future: asyncio.Future[_Outcome]
    loop: asyncio.AbstractEventLoop
    body: list[bytes] = field(default_factory=list)
    header_lines: list[bytes] = field(default_factory=list)


@functools.cache
def trust_store() -> tuple[str | None, str | None]:
    """(CA file, CA directory) that Python's ssl, and so aiohttp, trusts; certifi's bundle when the
    system has neither."""
    paths = ssl.get_default_verify_paths()  # honours SSL_CERT_FILE / SSL_CERT_DIR
    if paths.cafile is None and paths.capath is None:
        import certifi

        return certifi.where(), None
    return paths.cafile, paths.capath


class CurlClient:
    """One ``CurlMulti`` on a daemon thread, started on first use."""

    def __init__(
        self, endpoint: str, headers: Mapping[str, str], *, max_connections: int, timeout_s: float
    ) -> None:
        self._endpoint = endpoint
        self._headers = [f"{k}: {v}" for k, v in headers.items()] + ["Expect:"]
        self._max_connections = max_connections
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._lock = threading.Lock()
        self._closed = False

    async def request(
        self, method: str, path: str, content: bytes | None, headers: Mapping[str, str]
    ) -> HttpAnswer:
        if self._closed:
            raise TransportError(_CLOSED, timed_out=False)
        loop = asyncio.get_running_loop()
        job = _Job(
            method,
            self._endpoint + path,
            content,
            self._headers + [f"{k}: {v}" for k, v in headers.items()],
            loop.create_future(),
            loop,
        )
        with self._lock:  # against a thread that is ending: it fails what it finds queued
            self._jobs.put(job)
            if not self._running:  # first use, or the thread died (a bug): start one
                self._running = True
                self._thread = threading.Thread(
                    target=self._run, name="labstream-curl", daemon=True
                )
                self._thread.start()
        status, answer_headers, body, errno, message = await job.future
        if errno:
            raise TransportError(message, timed_out=errno == pycurl.E_OPERATION_TIMEDOUT)
        return HttpAnswer(status, answer_headers, body)

    async def aclose(self) -> None:
        self._closed = True
        with self._lock:
            thread = self._thread if self._running else None
            self._jobs.put(None)  # the thread fails what is in flight and stops
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)

    # -- the curl thread -----------------------------------------------------------------------

    def _run(self) -> None:
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_MAXCONNECTS, self._max_connections)
        free: list[pycurl.Curl] = []
        busy: dict[pycurl.Curl, _Job] = {}
        why = _CLOSED
        try:
            while True:
                # Take new requests; block only when nothing is in flight.
                refused: list[tuple[_Job, _Outcome]] = []
                try:
                    while True:
                        job = self._jobs.get(block=not busy and not refused)
                        if job is None:
                            return
                        handle = free.pop() if free else pycurl.Curl()
                        try:
                            self._prepare(handle, job)
                            multi.add_handle(handle)
                        except pycurl.error as exc:  # this request only (a bad header, say)
                            refused.append((job, _failure(exc.args[0], str(exc))))
                            free.append(handle)
                        else:
                            busy[handle] = job
                except queue.Empty:
                    pass
                while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                done = refused + self._finished(multi, busy, free)
                if done:
                    _resolve_all(done)
                else:
                    multi.select(_POLL_S)  # releases the GIL
        except Exception as exc:  # a bug: logged, and nothing is left waiting on it
            log.exception("the HTTP engine's thread failed; the next request starts a new one")
            why = f"the HTTP engine failed: {type(exc).__name__}: {exc}"
        finally:
            failed = [(job, _failure(-1, why)) for job in busy.values()]
            with self._lock:
                with contextlib.suppress(queue.Empty):
                    while True:
                        queued = self._jobs.get_nowait()
                        if queued is not None:
                            failed.append((queued, _failure(-1, why)))
                self._running = False
            _resolve_all(failed)
            for handle in [*busy, *free]:
                handle.close()
            multi.close()

    def _prepare(self, handle: pycurl.Curl, job: _Job) -> None:
        # A handle keeps its options (and its connection) from one request to the next; only
        # what changes is set: a chunk upload is five setopt() calls, and the answer comes in
        # through two C-level appends (no Python frame).
        if getattr(handle, "method", None) != job.method:
            handle.reset()
            handle.setopt(pycurl.NOSIGNAL, 1)
            handle.setopt(pycurl.PROXY, "")  # as aiohttp: no proxy from the environment
            handle.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
            cafile, capath = trust_store()
            if cafile is not None:
                handle.setopt(pycurl.CAINFO, cafile)
            if capath is not None:
                handle.setopt(pycurl.CAPATH, capath)
            if job.method == "GET":
                handle.setopt(pycurl.HTTPGET, 1)
            elif job.method != "POST":
                handle.setopt(pycurl.CUSTOMREQUEST, job.method)
            handle.method = job.method  # pycurl handles take attributes
        handle.setopt(pycurl.URL, job.url)
        handle.setopt(pycurl.HTTPHEADER, job.headers)
        handle.setopt(pycurl.WRITEFUNCTION, job.body.append)
        handle.setopt(pycurl.HEADERFUNCTION, job.header_lines.append)
        if job.method != "GET":
            handle.setopt(pycurl.POSTFIELDS, job.content or b"")

    @staticmethod
    def _finished(
        multi: pycurl.CurlMulti, busy: dict[pycurl.Curl, _Job], free: list[pycurl.Curl]
    ) -> list[tuple[_Job, _Outcome]]:
        done: list[tuple[_Job, _Outcome]] = []
        while True:
            left, ok, failed = multi.info_read()
            for handle in ok:
                job = busy.pop(handle)
                status = int(handle.getinfo(pycurl.RESPONSE_CODE))
                outcome = (status, _Headers(job.header_lines), b"".join(job.body), 0, "")
                done.append((job, outcome))
            for handle, errno, message in failed:
                done.append((busy.pop(handle), _failure(int(errno), message)))
            for handle in (*ok, *(f[0] for f in failed)):
                multi.remove_handle(handle)
                free.append(handle)
            if not left:
                return done


def _failure(errno: int, message: str) -> _Outcome:
    text = message if errno < 0 else f"curl error {errno}: {message}"
    return (0, CIMultiDict(), b"", errno, text)


def _resolve_all(done: list[tuple[_Job, _Outcome]]) -> None:
    """Hand finished requests to their event loops: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, _Outcome]]] = {}
    for job, outcome in done:
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is gone: nobody waits any more
            loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[tuple[_Job, _Outcome]]) -> None:
    for job, outcome in items:
        if not job.future.done():  # the caller may have been cancelled meanwhile
            job.future.set_result(outcome)


class _Headers(Mapping[str, str]):
    """The last response's headers (after any interim 1xx), case-insensitive, parsed on first
    use: a successful upload never looks at them."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: CIMultiDict[str] | None = None

    def _headers(self) -> CIMultiDict[str]:
        if self._parsed is None:
            self._parsed = CIMultiDict()
            for raw in self._lines:
                line = raw.decode("latin-1").rstrip("\r\n")
                if line.startswith("HTTP/"):
                    self._parsed = CIMultiDict()
                elif ":" in line:
                    name, _, value = line.partition(":")
                    self._parsed.add(name.strip(), value.strip())
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())
