"""A local Atomscale stand-in that is not the bottleneck: nginx on 127.0.0.1, for the benchmarks.

Not a benchmark itself. ``with BenchServer() as srv:`` starts nginx (``daemon off``, one worker)
as a child process with a temp config on a free loopback port, and stops it on exit (and at
interpreter exit). It answers:

- ``POST /tool-state/stream/initialize`` -> 200 ``{"data_id": BENCH_DATA_ID,
  "processed_data_id": BENCH_DATA_ID}``
- ``GET /gateway/time`` -> 200 ``{"receivedAtUnixMs": ..., "transmittedAtUnixMs": ...}``
  (nginx's clock, millisecond resolution)
- anything else -> 200 ``{}`` (application/json)

Chunk uploads (``/tool-state/stream/chunk*``) are logged, unbuffered, as ``msec status`` lines so
a benchmark can count what really arrived (:meth:`BenchServer.chunk_log`).

If nginx is not installed, the Python stub (``/work/shared/bench/atomscale_stub.py``) is run
under uvicorn instead; ``srv.kind`` says which, and every benchmark prints it. The stub is slower
than the clients, so throughput figures from it measure the stub, not the client.

``python benchmarks/_server.py`` starts one and prints its URL for manual poking (Ctrl-C stops).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_DATA_ID = "0b7e6c1e-0000-4000-8000-00000000be0c"
STUB_DIR = Path("/work/shared/bench")

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 65536;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    default_type application/json;
    log_format chunks '$msec $status';
    map $msec $msec_ms {{ "~^(?<s>[0-9]+)\\.(?<ms>[0-9]+)$" "$s$ms"; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /tool-state/stream/initialize {{
            return 200 '{{"data_id":"{data_id}","processed_data_id":"{data_id}"}}';
        }}
        location = /gateway/time {{
            return 200 '{{"receivedAtUnixMs":$msec_ms,"transmittedAtUnixMs":$msec_ms}}';
        }}
        location ^~ /tool-state/stream/chunk {{
            access_log {tmp}/chunks.log chunks;
            return 200 '{{}}';
        }}
        location / {{
            return 200 '{{}}';
        }}
    }}
}}
"""


def free_port() -> int:
    """A loopback port nobody listens on right now (closed again before returning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark process dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout}s")


class BenchServer:
    """nginx (or the uvicorn stub as a fallback) on a free loopback port."""

    def __init__(self, prefer: str = "nginx") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.gettempdir())  # replaced by a private folder in start()
        self._proc: subprocess.Popen[bytes] | None = None
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        prefer = os.environ.get("BENCH_SERVER", prefer)  # BENCH_SERVER=stub forces the fallback
        self.kind = "nginx" if (prefer == "nginx" and nginx) else "uvicorn-stub"
        self._nginx = nginx

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> BenchServer:
        if self.kind != "nginx" and importlib.util.find_spec("uvicorn") is None:
            raise RuntimeError(
                "no server to benchmark against: install nginx (apt-get install -y "
                "nginx-light) or, for the slow fallback, uvicorn (pip install uvicorn)"
            )
        self._tmp = Path(tempfile.mkdtemp(prefix="labstream-bench-"))
        if self.kind == "nginx":
            assert self._nginx is not None
            user = "user root;" if os.geteuid() == 0 else ""
            conf = _NGINX_CONF.format(
                user=user, tmp=self._tmp, port=self.port, data_id=BENCH_DATA_ID
            )
            (self._tmp / "nginx.conf").write_text(conf)
            self._proc = subprocess.Popen(
                [
                    self._nginx,
                    "-p",
                    str(self._tmp),
                    "-c",
                    str(self._tmp / "nginx.conf"),
                    "-e",
                    str(self._tmp / "error.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        else:
            print(
                "NOTE: nginx not found (or BENCH_SERVER=stub); falling back to the Python stub "
                "under uvicorn "
                "(slower than the clients: throughput figures then measure the stub)",
                file=sys.stderr,
            )
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(STUB_DIR),
                    "atomscale_stub:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)
        try:
            _wait_listening(self.port, self._proc)
        except RuntimeError:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            self.stop()
            raise RuntimeError(f"{self.kind} failed to start: {err.strip()[-2000:]}") from None
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._tmp.name.startswith("labstream-bench-"):
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived ----------------------------------------------------------------------------

    def chunk_log(self) -> list[tuple[float, int]]:
        """``(unix seconds, status)`` of every chunk request so far (nginx only; [] for stub)."""
        path = self._tmp / "chunks.log"
        if self.kind != "nginx" or not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            t, status = line.split()
            out.append((float(t), int(status)))
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far: nginx's master and worker, or
        the stub's process. Take it before and after a run for the server's cost of that run."""
        if self._proc is None:
            return 0.0
        total = 0.0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                parent, cpu = proc_stat(f"/proc/{pid}/stat")
            except OSError:  # gone meanwhile
                continue
            if self._proc.pid in (int(pid), parent):
                total += cpu
        return total

    def clear_chunk_log(self) -> None:
        """Empty the chunk log (nginx keeps its file descriptor; truncation is seen at once)."""
        path = self._tmp / "chunks.log"
        if path.exists():
            os.truncate(path, 0)


def proc_stat(path: str) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) from a ``/proc/<pid>[/task/<tid>]/stat`` file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_description(srv: BenchServer) -> str:
    return f"{srv.kind} at {srv.url}" + (
        "" if srv.kind == "nginx" else " (FALLBACK: slow Python stub)"
    )


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with BenchServer() as srv:
        print(server_description(srv))
        for path in ("/gateway/time", "/tool-state/stream/initialize", "/anything"):
            req = urllib.request.Request(srv.url + path, data=b"{}" if "init" in path else None)
            with urllib.request.urlopen(req, timeout=5) as resp:
                print(path, resp.status, resp.headers.get("Content-Type"), resp.read().decode())
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
