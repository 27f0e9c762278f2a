"""libcurl (pycurl), labstream's one HTTP engine: uploads run on a thread of their own.

Why: in Python on the event loop (aiohttp, httpx) a request costs several times the CPU it costs
here (docs/performance.md); one thread drives a ``CurlMulti`` (:class:`RequestMulti`), libcurl
builds requests, parses responses and keeps connections alive in C with the GIL released, and the
event loop only hands requests over and is woken once per batch of finished ones. Hundreds of
uploads can be in flight at once (the adaptive window, ``labstream._core.window``).

What it does and does not do: the proxy is the one :mod:`.proxy` chose (libcurl's own reading of
the environment is off); no redirect is followed (an upload is never re-posted, and the API key
never sent, elsewhere); no ``Expect: 100-continue`` round trip; a request without a body has no
Content-Type, as the official SDK sends it; and the certificates trusted are the system's, as
Python's :mod:`ssl` finds them (``SSL_CERT_FILE``/``SSL_CERT_DIR`` included). That one is not a
detail: the libcurl in pycurl's wheels looks for a Red Hat CA bundle path that Debian and Ubuntu
do not have, so without it every HTTPS upload would fail there.
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
from typing import Generic, TypeVar

import anyio
import pycurl

from .http import HttpAnswer, TransportError, TransportKind

__all__ = ["MAX_ANSWER_BYTES", "CurlClient", "RequestMulti", "answer_of", "failure", "trust_store"]

log = logging.getLogger("labstream.http")

_POLL_S = 0.001  # how long the thread waits on sockets before taking new requests
_CLOSED = "the HTTP client was closed"
# No Atomscale answer comes near this; a server sending more is cut off (curl error 63).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# (status or 0, headers, body, curl error number or 0, error message, times libcurl re-sent it)
Outcome = tuple[int, Mapping[str, str], bytes, int, str, int]
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Job:
    method: str
    path: str
    content: bytes | None
    headers: list[str]
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop


@functools.cache
def trust_store() -> tuple[str | None, str | None]:
    """(CA file, CA directory) that Python's ssl, and so aiohttp, trusts; certifi's bundle when the
    system has neither."""
    paths = ssl.get_default_verify_paths()  # honours SSL_CERT_FILE / SSL_CERT_DIR
    if paths.cafile is None and paths.capath is None:
        import certifi

        return certifi.where(), None
    return paths.cafile, paths.capath


# libcurl's error numbers (curl/curl.h) by what the person running labstream must look at.
_KINDS: dict[int, TransportKind] = {
    1: "url",  # UNSUPPORTED_PROTOCOL
    3: "url",  # URL_MALFORMAT
    5: "dns",  # COULDNT_RESOLVE_PROXY
    6: "dns",  # COULDNT_RESOLVE_HOST
    7: "refused",  # COULDNT_CONNECT
    35: "tls",  # SSL_CONNECT_ERROR
    53: "tls",  # SSL_ENGINE_NOTFOUND
    58: "tls",  # SSL_CERTPROBLEM
    59: "tls",  # SSL_CIPHER
    60: "tls",  # PEER_FAILED_VERIFICATION
    77: "tls",  # SSL_CACERT_BADFILE
    83: "tls",  # SSL_ISSUER_ERROR
    90: "tls",  # SSL_PINNEDPUBKEYNOTMATCH
    91: "tls",  # SSL_INVALIDCERTSTATUS
}


def answer_of(outcome: Outcome) -> HttpAnswer | TransportError:
    """A finished request as the sink reads it: an HTTP answer, or why there was none."""
    status, headers, body, errno, message, resent = outcome
    if errno:
        timed_out = errno == pycurl.E_OPERATION_TIMEDOUT
        kind = _KINDS.get(errno, "other")
        return TransportError(message, timed_out=timed_out, resent=resent, kind=kind)
    return HttpAnswer(status, headers, body, resent)


@dataclass(eq=False, slots=True)
class _InFlight(Generic[T]):
    token: T
    kind: tuple[str, str]  # method and path: requests of a kind have headers of one size
    body: list[bytes] = field(default_factory=list)
    header_lines: list[bytes] = field(default_factory=list)


class RequestMulti(Generic[T]):
    """A ``CurlMulti`` with its handles, driven by one thread (:class:`CurlClient`'s). Each
    request carries a ``token`` that comes back with its outcome."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        timeout_s: float,
        proxy: str,
    ) -> None:
        self._endpoint = endpoint
        self._proxy = proxy
        self._headers = [f"{k}: {v}" for k, v in headers.items()] + ["Expect:"]
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self._free: list[pycurl.Curl] = []
        self._busy: dict[pycurl.Curl, _InFlight[T]] = {}
        self._request_size: dict[tuple[str, str], int] = {}  # one request's header bytes

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def add(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: list[str],
        token: T,
    ) -> None:
        """Start a request (it progresses in :meth:`step`).

        Raises:
            pycurl.error: libcurl refused this request (a bad header, say); nothing was started.
        """
        handle = self._free.pop() if self._free else pycurl.Curl()
        request = _InFlight(token, (method, path))
        try:
            self._prepare(handle, method, self._endpoint + path, content, headers, request)
            self._multi.add_handle(handle)
        except pycurl.error:
            self._free.append(handle)
            raise
        self._busy[handle] = request

    def step(self) -> list[tuple[T, Outcome]]:
        """Move every request along without waiting; the ones that finished, with outcomes."""
        while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        done: list[tuple[T, Outcome]] = []
        while True:
            left, ok, failed = self._multi.info_read()
            for handle in ok:
                request = self._busy.pop(handle)
                status = int(handle.getinfo(pycurl.RESPONSE_CODE))
                headers, body = _Headers(request.header_lines), b"".join(request.body)
                outcome = (status, headers, body, 0, "", self._resent(handle, request.kind))
                done.append((request.token, outcome))
            for handle, errno, message in failed:
                request = self._busy.pop(handle)
                resent = self._resent(handle, request.kind)
                done.append((request.token, failure(int(errno), message, resent)))
            for handle in (*ok, *(f[0] for f in failed)):
                self._multi.remove_handle(handle)
                self._free.append(handle)
            if not left:
                return done

    def _resent(self, handle: pycurl.Curl, kind: tuple[str, str]) -> int:
        """How many times libcurl sent a request again on its own: it does when a kept-alive
        connection turns out closed by the server before any answer. The header bytes it sent
        then add up over the sends, so their count is that size over one request's (the least
        seen for this kind of request; a body's length changes it by a few bytes at most)."""
        sent = int(handle.getinfo(pycurl.REQUEST_SIZE))
        if sent <= 0:
            return 0
        one = self._request_size.get(kind)
        if one is None or sent < one:
            self._request_size[kind] = one = sent
        return max(0, round(sent / one) - 1)

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a socket to be ready (the GIL is let go meanwhile)."""
        self._multi.select(seconds)

    def abort(self) -> list[T]:
        """Stop every request in flight; their tokens (their outcome is unknown)."""
        tokens = []
        for handle, request in self._busy.items():
            self._multi.remove_handle(handle)
            self._free.append(handle)
            tokens.append(request.token)
        self._busy.clear()
        return tokens

    def close(self) -> None:
        self.abort()
        for handle in self._free:
            handle.close()
        self._free.clear()
        self._multi.close()

    def _prepare(
        self,
        handle: pycurl.Curl,
        method: str,
        url: str,
        content: bytes | None,
        headers: list[str],
        request: _InFlight[T],
    ) -> None:
        # A handle keeps its options (and its connection) from one request to the next; only
        # what changes is set: a chunk upload is five setopt() calls, and the answer comes in
        # through two C-level appends (no Python frame).
        if getattr(handle, "method", None) != method:
            handle.reset()
            handle.setopt(pycurl.NOSIGNAL, 1)
            handle.setopt(pycurl.PROXY, self._proxy)  # "" also stops libcurl reading the env
            handle.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
            handle.setopt(pycurl.MAXFILESIZE_LARGE, MAX_ANSWER_BYTES)
            cafile, capath = trust_store()
            if cafile is not None:
                handle.setopt(pycurl.CAINFO, cafile)
            if capath is not None:
                handle.setopt(pycurl.CAPATH, capath)
            if method == "GET":
                handle.setopt(pycurl.HTTPGET, 1)
            elif method != "POST":
                handle.setopt(pycurl.CUSTOMREQUEST, method)
            handle.method = method  # pycurl handles take attributes
        handle.setopt(pycurl.URL, url)
        if method != "GET" and content is None:
            headers = [*headers, "Content-Type:"]  # libcurl would add a form content type
        handle.setopt(pycurl.HTTPHEADER, self._headers + headers)
        handle.setopt(pycurl.WRITEFUNCTION, request.body.append)
        handle.setopt(pycurl.HEADERFUNCTION, request.header_lines.append)
        if method != "GET":
            handle.setopt(pycurl.POSTFIELDS, content or b"")


class CurlClient:
    """One :class:`RequestMulti` on a daemon thread, started on first use."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        timeout_s: float,
        proxy: str = "",
    ) -> None:
        self._endpoint = endpoint
        self._default_headers = dict(headers)
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._proxy = proxy
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
            path,
            content,
            [f"{k}: {v}" for k, v in headers.items()],
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
        answer = answer_of(await job.future)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    async def aclose(self) -> None:
        self._closed = True
        with self._lock:
            thread = self._thread if self._running else None
            self._jobs.put(None)  # the thread fails what is in flight and stops
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)

    # -- the curl thread -----------------------------------------------------------------------

    def _run(self) -> None:
        multi: RequestMulti[_Job] = RequestMulti(
            self._endpoint,
            self._default_headers,
            max_connections=self._max_connections,
            timeout_s=self._timeout_s,
            proxy=self._proxy,
        )
        why = _CLOSED
        try:
            while True:
                # Take new requests; block only when nothing is in flight.
                refused: list[tuple[_Job, Outcome]] = []
                try:
                    while True:
                        job = self._jobs.get(block=not multi.in_flight and not refused)
                        if job is None:
                            return
                        try:
                            multi.add(job.method, job.path, job.content, job.headers, job)
                        except pycurl.error as exc:  # this request only (a bad header, say)
                            refused.append((job, failure(exc.args[0], str(exc))))
                except queue.Empty:
                    pass
                done = refused + multi.step()
                if done:
                    _resolve_all(done)
                else:
                    multi.wait(_POLL_S)
        except Exception as exc:  # a bug: logged, and nothing is left waiting on it
            log.exception("the HTTP engine's thread failed; the next request starts a new one")
            why = f"the HTTP engine failed: {type(exc).__name__}: {exc}"
        finally:
            failed = [(job, failure(-1, why)) for job in multi.abort()]
            with self._lock:
                with contextlib.suppress(queue.Empty):
                    while True:
                        queued = self._jobs.get_nowait()
                        if queued is not None:
                            failed.append((queued, failure(-1, why)))
                self._running = False
            _resolve_all(failed)
            multi.close()


def failure(errno: int, message: str, resent: int = 0) -> Outcome:
    """The outcome of a request that got no answer."""
    text = message if errno < 0 else f"curl error {errno}: {message}"
    return (0, {}, b"", errno, text, resent)


def _resolve_all(done: list[tuple[_Job, Outcome]]) -> None:
    """Hand finished requests to their event loops: one wake-up per loop, not per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Outcome]]] = {}
    for job, outcome in done:
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is gone: nobody waits any more
            loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[tuple[_Job, Outcome]]) -> None:
    for job, outcome in items:
        if not job.future.done():  # the caller may have been cancelled meanwhile
            job.future.set_result(outcome)


class _Headers(Mapping[str, str]):
    """The last response's headers (after any interim 1xx), by lower-case name, parsed on first
    use: a successful upload never looks at them."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: dict[str, str] | None = None

    def _headers(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = {}
            for raw in self._lines:
                line = raw.decode("latin-1").rstrip("\r\n")
                if line.startswith("HTTP/"):
                    self._parsed = {}
                elif ":" in line:
                    name, _, value = line.partition(":")
                    self._parsed[name.strip().lower()] = value.strip()
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._headers()[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())
