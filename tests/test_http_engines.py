"""The HTTP engine (libcurl on its thread) answers the sink: status, headers, body, a
TransportError for a refused connection or a timeout; and what it refuses to do for a server
(follow a redirect, read an endless answer) or sends it (no form content type without a body)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from labstream.destinations.atomscale.curl import CurlClient, RequestMulti, trust_store
from labstream.destinations.atomscale.http import HttpClient, TransportError

KEY = "secret-key-123"


@dataclass
class Server:
    url: str
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def server() -> AsyncIterator[Server]:
    srv = Server("")

    async def echo(request: web.Request) -> web.Response:
        srv.seen.append(request)
        srv.arrived.set()
        srv.bodies.append(await request.read())
        if request.path == "/busy":
            return web.Response(status=503, text="try later", headers={"retry-after": "7"})
        if request.path == "/slow":
            await asyncio.sleep(1)
        if request.path == "/elsewhere":
            location = request.headers.get("X-Redirect-To", "")
            raise web.HTTPTemporaryRedirect(location)
        if request.path == "/bomb":  # 64 MiB of zeros in ~64 kB of gzip
            import gzip

            bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})
        if request.path == "/endless":  # no Content-Length: only counting can stop it
            response = web.StreamResponse()
            await response.prepare(request)
            block = b"x" * (1 << 20)
            for _ in range(64):
                await response.write(block)
            return response
        return web.json_response({"method": request.method}, headers={"X-Thing": "a"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def client(url: str, timeout_s: float = 5.0) -> HttpClient:
    return CurlClient(url, {"X-API-KEY": KEY}, max_connections=4, timeout_s=timeout_s)


def test_requests_and_answers() -> None:
    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            try:
                posted = await http.request(
                    "POST", "/chunk", b'{"a":1}', {"Content-Type": "application/json"}
                )
                got = await http.request("GET", "/time", None, {})
                deleted = await http.request("DELETE", "/thing", None, {})
                busy = await http.request("POST", "/busy", b"{}", {})
                many = await asyncio.gather(
                    *(http.request("POST", f"/c/{i}", str(i).encode(), {}) for i in range(20))
                )
            finally:
                await http.aclose()
            assert (posted.status, posted.body) == (200, b'{"method": "POST"}')
            assert posted.headers.get("x-thing") == "a"  # case-insensitive, as aiohttp's
            assert got.body == b'{"method": "GET"}'
            assert deleted.body == b'{"method": "DELETE"}'
            assert (busy.status, busy.text) == (503, "try later")
            assert busy.headers.get("Retry-After") == "7"
            assert [a.status for a in many] == [200] * 20
            assert srv.seen[0].headers["X-API-KEY"] == KEY
            assert srv.seen[0].headers["Content-Type"] == "application/json"
            assert "Expect" not in srv.seen[0].headers
            assert srv.bodies[0] == b'{"a":1}' and sorted(srv.bodies[4:]) == sorted(
                str(i).encode() for i in range(20)
            )

    run(main)


def test_refused_and_timed_out_are_transport_errors() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    async def main() -> None:
        refused = client(f"http://127.0.0.1:{closed_port}")
        with pytest.raises(TransportError) as err:
            await refused.request("POST", "/chunk", b"{}", {})
        await refused.aclose()
        assert not err.value.timed_out
        assert KEY not in str(err.value)
        async with server() as srv:
            slow = client(srv.url, timeout_s=0.2)
            with pytest.raises(TransportError) as err:
                await slow.request("GET", "/slow", None, {})
            await slow.aclose()
        assert err.value.timed_out

    run(main)


def test_a_request_without_a_body_carries_no_content_type() -> None:
    """As the official SDK sends finalize: libcurl would otherwise add a form content type."""

    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            try:
                await http.request("POST", "/tool-state/stream/d/finalize", None, {})
            finally:
                await http.aclose()
            assert "Content-Type" not in srv.seen[0].headers
            assert srv.bodies == [b""]

    run(main)


def test_a_redirect_is_not_followed_and_the_key_stays_home() -> None:
    """An upload is never re-posted elsewhere, and the API key never goes to another host."""

    async def main() -> None:
        async with server() as home, server() as other:
            http = client(home.url)
            try:
                answer = await http.request(
                    "POST", "/elsewhere", b"{}", {"X-Redirect-To": f"{other.url}/chunk"}
                )
            finally:
                await http.aclose()
            assert answer.status == 307
            assert other.seen == []

    run(main)


def test_an_endless_answer_is_cut_off() -> None:
    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            try:
                with pytest.raises(TransportError, match="curl error 63"):
                    await http.request("GET", "/endless", None, {})
            finally:
                await http.aclose()

    run(main)


def test_a_compressed_answer_is_never_inflated() -> None:
    """A gzip bomb stays the few kB it was sent as: no encoding is asked for, none is decoded."""

    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            try:
                answer = await http.request("GET", "/bomb", None, {})
            finally:
                await http.aclose()
            assert "Accept-Encoding" not in srv.seen[0].headers
            assert answer.status == 200 and len(answer.body) < 1 << 20

    run(main)


def test_closing_fails_what_is_in_flight() -> None:
    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            pending = asyncio.ensure_future(http.request("GET", "/slow", None, {}))
            await srv.arrived.wait()
            await http.aclose()
            with pytest.raises(TransportError, match="closed"):
                await pending
            with pytest.raises(TransportError, match="closed"):
                await http.request("GET", "/time", None, {})

    run(main)


@asynccontextmanager
async def https_server(ca: trustme.CA) -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"tls": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_curl_trusts_what_the_system_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wheel's libcurl looks for a Red Hat CA path; the engine must use the system's store
    (here SSL_CERT_FILE, as OpenSSL and Python's ssl read it) instead."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def main() -> None:
        async with https_server(ca) as url:
            untrusted = client(url)
            with pytest.raises(TransportError) as err:
                await untrusted.request("GET", "/", None, {})
            await untrusted.aclose()
            assert not err.value.timed_out
            assert "certificate" in str(err.value)  # says what is wrong
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
            trust_store.cache_clear()
            trusted = client(url)
            try:
                answer = await trusted.request("POST", "/chunk", b"{}", {})
            finally:
                await trusted.aclose()
            assert (answer.status, answer.body) == (200, b'{"tls": true}')

    trust_store.cache_clear()
    try:
        run(main)
    finally:
        trust_store.cache_clear()


def test_a_failing_engine_thread_fails_its_requests_and_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the curl thread must not leave requests waiting forever."""
    step = RequestMulti.step
    calls = {"n": 0}

    def broken_once(self: RequestMulti[object]) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return step(self)

    monkeypatch.setattr(RequestMulti, "step", broken_once)

    async def main() -> None:
        async with server() as srv:
            http = client(srv.url)
            try:
                with pytest.raises(TransportError, match="HTTP engine failed: RuntimeError: boom"):
                    await http.request("GET", "/time", None, {})
                answer = await http.request("GET", "/time", None, {})  # a new thread serves it
            finally:
                await http.aclose()
            assert answer.status == 200

    run(main)


def test_streaming_with_the_default_engine_imports_neither_aiohttp_nor_httpx() -> None:
    """Both are imported only by whoever uses them: aiohttp alone is ~30,000 objects that every
    full garbage collection scans (a stall in the caller's push()), and a quarter second of
    import."""
    probe = (
        "import sys, labstream\n"
        "s = labstream.TimeseriesStreamer(api_key='k', endpoint='http://127.0.0.1:9',"
        " clock_sync=False, spool=False)\n"
        "s.close()\n"
        "print(sorted(m for m in ('aiohttp', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr
