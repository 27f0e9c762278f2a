"""Atomscale's requests go through the proxy the environment names (or ``proxy=``), as with the
official SDK; a local forward proxy records what passes through it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from labstream import TimeseriesStreamer
from labstream.destinations.proxy import proxy_for, redact_proxy
from labstream.testing.atomscale import run_in_thread as atomscale_in_thread

KEY = "proxy-test-key"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class RecordingProxy:
    """A plain-HTTP forward proxy on loopback that keeps each request line it forwards."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _forward(self, request: web.Request) -> web.Response:
        self.forwarded.append(f"{request.method} {request.url}")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, str(request.url), data=body, headers=headers) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"Content-Type": answer.headers.get("Content-Type", "text/plain")},
            )

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def stream_three_chunks(endpoint: str, spool: Path, **kw: object) -> str:
    with TimeseriesStreamer(
        KEY, endpoint, clock_sync=False, spool_dir=spool, handle_sigterm=False, **kw
    ) as s:
        data_id = s.initialize(stream_name="behind a proxy")
        for c in range(3):
            s.push(data_id, c, "T", [1.7e9 + c + i / 10 for i in range(10)], [float(c)] * 10)
        assert s.finalize(data_id, timeout=10).ok
    return data_id


def test_uploads_go_through_the_environments_proxy(
    no_proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with atomscale_in_thread(api_key=KEY) as web_emulator, RecordingProxy() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        data_id = stream_three_chunks(web_emulator.url, tmp_path)
        assert web_emulator.points(data_id, "T")[1] == [
            float(c) for c in range(3) for _ in range(10)
        ]
    chunk_lines = [line for line in proxy.forwarded if line.endswith("/tool-state/stream/chunk")]
    assert len(chunk_lines) == 3
    assert f"POST {web_emulator.url}/tool-state/stream/{data_id}/finalize" in proxy.forwarded
    assert all(line.split()[1].startswith(web_emulator.url) for line in proxy.forwarded)


def test_no_proxy_and_an_explicit_empty_proxy_go_direct(
    no_proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with atomscale_in_thread(api_key=KEY) as web_emulator, RecordingProxy() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        stream_three_chunks(web_emulator.url, tmp_path / "a", proxy="")
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        stream_three_chunks(web_emulator.url, tmp_path / "b")
    assert proxy.forwarded == []


def test_an_explicit_proxy_wins_over_the_environment(
    no_proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with atomscale_in_thread(api_key=KEY) as web_emulator, RecordingProxy() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        stream_three_chunks(web_emulator.url, tmp_path, proxy=proxy.url)
    assert sum(line.endswith("/chunk") for line in proxy.forwarded) == 3


def test_check_says_which_proxy_it_used(no_proxy_env: pytest.MonkeyPatch) -> None:
    with atomscale_in_thread(api_key=KEY) as web_emulator, RecordingProxy() as proxy:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.upper() not in PROXY_VARS and not k.startswith(("AS_", "ATOMSCALE_", "LABSTREAM_"))
        }
        env["HTTP_PROXY"] = proxy.url.replace("http://", "http://lab:s3cret@")
        labstream = str(Path(sys.executable).parent / "labstream")
        out = subprocess.run(
            [labstream, "check", "--atomscale", "--endpoint", web_emulator.url, "--api-key", KEY],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"(proxy: {proxy.url.replace('http://', 'http://lab:***@')})" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr
    assert any(line.endswith("/gateway/time") for line in proxy.forwarded)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.atomscale.ai", "http://p:3128"),
        ({"HTTP_PROXY": "http://p:3128"}, "https://api.atomscale.ai", ""),
        ({"ALL_PROXY": "socks5://p:1080"}, "https://api.atomscale.ai", "socks5://p:1080"),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "atomscale.ai"},
            "https://api.atomscale.ai",
            "",
        ),
        ({"https_proxy": "http://lower:1"}, "https://api.atomscale.ai", "http://lower:1"),
    ],
)
def test_which_proxy_the_environment_names(
    no_proxy_env: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str
) -> None:
    for name, value in env.items():
        no_proxy_env.setenv(name, value)
    assert proxy_for(url) == expected


def test_a_proxy_password_is_never_shown() -> None:
    assert redact_proxy("http://lab:s3cret@proxy:3128") == "http://lab:***@proxy:3128"
    assert redact_proxy("http://proxy:3128") == "http://proxy:3128"
