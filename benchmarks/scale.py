"""Cost per point as chunks grow (10 -> 10,000 points) and as channels grow (1 -> 100, push_multi).

Run:  .venv/bin/python benchmarks/scale.py              (about 1.2 min on 2 cores)
      .venv/bin/python benchmarks/scale.py --rounds 1   (quicker, noisier)
      .venv/bin/python benchmarks/scale.py --no-sdk     (labstream alone)
      .venv/bin/python benchmarks/scale.py --atlas      (also to Atomscale + ATLAS; ~2.5 min)

Against local nginx (``_server.py``), each run is a fresh process (this file with ``--child``) that
initializes a stream with ``points_per_chunk`` set to the chunk size, then, timed:

  chunk size  ``run(data_id, "temperature", zip(ts, vs), units="C")`` over chunks of 10, 100, 1,000
              and 10,000 points (one channel; one request per chunk), then ``finalize()``
  channels    ``push_multi(data_id, i, {name: {"timestamps", "values", "units"}, ...})`` with 1, 10
              and 100 channels of 100 points each (one request per call), then ``finalize()``

The clock stops when finalize() has returned **and** nginx has logged every chunk request (the
child polls nginx's chunk log every 2 ms after finalize() returns; the official SDK's finalize does
not wait for its uploads, labstream's does). A run counts only if every request got a 200. Input is
lists of floats built before the clock starts (as in the other benchmarks); clock sync is off;
labstream journals into a temporary spool directory (the default ``spool=True``, other options at
their defaults). Run sizes are bounded (50k to 2M points, at most 5,000 requests). labstream and the
SDK (if installed) alternate within every round. With ``--atlas``, a third client, ``+atlas``, is
labstream streaming to nginx and to labstream's ATLAS emulator at once (``_worker.py
atlas-emulator nodecode``, in its own process: per-packet content decode stubbed out, as the real
server does not decode either); its runs also count only if labstream's report says ATLAS got
every chunk. ATLAS gets the channels of a push_multi in one packet, and the chunks that queue up
behind a write in one packet too (up to 10,000 points), so its "requests" are fewer than
Atomscale's when it is busy.

Prints, per case and client: median points/s, microseconds per point and per request; and a
two-part model of each series, us/request = fixed + per_point x points (per_point: the slope
between the two largest sizes; fixed: what is left at the smallest), with the chunk size at which
the per-point part equals the fixed part, i.e. where the per-request cost stops dominating. For
the channel series the same with channels in place of points.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _server import BenchServer, server_description
from _worker import AtlasProcess

HERE = Path(__file__).resolve().parent
T0 = 1.7e9

# (kind, chunk points, channels, requests)
CASES = [
    ("chunk", 10, 1, 5000),
    ("chunk", 100, 1, 5000),
    ("chunk", 1000, 1, 1000),
    ("chunk", 10000, 1, 200),
    ("multi", 100, 1, 5000),
    ("multi", 100, 10, 1000),
    ("multi", 100, 100, 200),
]


# --------------------------------------------------------------------------------------------------
# The child: one timed run


def child(client: str, kind: str, ppc: int, channels: int, n: int, url: str, log: str) -> None:
    os.environ.setdefault("ATOMSCALE_SKIP_CLOCK_SYNC", "1")
    spool = tempfile.mkdtemp(prefix="labstream-scale-spool-")
    os.environ["LABSTREAM_SPOOL_DIR"] = spool
    if client == "sdk":
        from atomscale.streaming import TimeseriesStreamer as SdkStreamer

        s = SdkStreamer(api_key="k", endpoint=url, points_per_chunk=ppc)
    else:
        from labstream import TimeseriesStreamer

        s = TimeseriesStreamer(api_key="k", endpoint=url, points_per_chunk=ppc, clock_sync=False)
    data_id = s.initialize(stream_name="scale")

    ts = [[T0 + (c * ppc + i) * 0.01 for i in range(ppc)] for c in range(n)]
    if kind == "chunk":
        vs = [[25.0 + i * 0.001 for i in range(ppc)] for _ in range(n)]
    else:
        per_channel = [[k + i * 0.001 for i in range(ppc)] for k in range(channels)]
        names = [f"ch{k:03d}" for k in range(channels)]
        calls = [
            {
                name: {"timestamps": ts[c], "values": per_channel[k], "units": "V"}
                for k, name in enumerate(names)
            }
            for c in range(n)
        ]

    start = time.perf_counter()
    if kind == "chunk":
        s.run(data_id, "temperature", zip(ts, vs, strict=True), units="C")
    else:
        for c in range(n):
            s.push_multi(data_id, c, calls[c])
    delivered = {}
    if client == "sdk":
        s.finalize(data_id)
    else:
        report = s.finalize(data_id, 120.0)
        delivered = {k: v.chunks_delivered for k, v in report.destinations.items()}
    finalized = time.perf_counter()
    # The SDK's finalize does not wait for push_multi uploads: wait for nginx to have them all.
    deadline = finalized + 60
    while _lines(log) < n and time.perf_counter() < deadline:
        time.sleep(0.002)
    end = max(finalized, time.perf_counter() if _lines(log) >= n else deadline)
    out = {"seconds": end - start, "finalize_wait": end - finalized, "delivered": delivered}
    print(json.dumps(out), flush=True)
    shutil.rmtree(spool, ignore_errors=True)
    os._exit(0)  # no atexit work (and the SDK has nothing left in flight)


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------------------------------
# The parent


def one_run(
    client: str, srv: BenchServer, case: tuple[str, int, int, int], atlas: AtlasProcess | None
) -> dict:
    kind, ppc, channels, n = case
    srv.clear_chunk_log()
    log = str(srv._tmp / "chunks.log")
    worker = "sdk" if client == "sdk" else "labstream"
    cmd = [sys.executable, __file__, "--child", worker, kind, str(ppc), str(channels), str(n)]
    env = {**os.environ, **(atlas.env if atlas is not None else {})}
    proc = subprocess.run(
        [*cmd, srv.url, log], capture_output=True, text=True, timeout=180, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{client} {case} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    res = json.loads(lines[-1])
    got = srv.chunk_log()
    ok = sum(1 for _, status in got if status == 200)
    if ok != n or len(got) != n:
        raise RuntimeError(f"{client} {case}: nginx logged {ok} OK of {len(got)}, wanted {n}")
    if atlas is not None and res["delivered"].get("atlas") != n:
        raise RuntimeError(f"{client} {case}: ATLAS got {res['delivered']}, wanted {n}")
    return res


def two_part(series: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per unit) of y = fixed + per_unit x: the slope between the two largest x, and
    the fixed part left at the smallest x. A least-squares line would be set by the largest x."""
    (x0, y0), (x1, y1), (x2, y2) = series[0], series[-2], series[-1]
    per_unit = (y2 - y1) / (x2 - x1)
    return y0 - per_unit * x0, per_unit


def main(rounds: int, with_sdk: bool, with_atlas: bool) -> None:
    have_sdk = with_sdk and importlib.util.find_spec("atomscale") is not None
    clients = ["labstream", "sdk"] if have_sdk else ["labstream"]
    if with_atlas:
        clients.append("+atlas")
    secs: dict[tuple[str, tuple[str, int, int, int]], list[float]] = {}
    started = time.perf_counter()
    with BenchServer() as srv, contextlib.ExitStack() as stack:
        atlas = stack.enter_context(AtlasProcess("nodecode")) if with_atlas else None
        if srv.kind != "nginx":
            raise SystemExit("scale.py needs nginx (it counts requests in nginx's log)")
        print(f"server: {server_description(srv)}; {rounds} rounds; clients: {', '.join(clients)}")
        for r in range(rounds):
            order = clients[r % len(clients) :] + clients[: r % len(clients)]
            for case in CASES:
                for client in order:
                    res = one_run(client, srv, case, atlas if client == "+atlas" else None)
                    secs.setdefault((client, case), []).append(res["seconds"])
            print(f"  round {r + 1} done ({time.perf_counter() - started:.0f} s)", flush=True)

    print()
    print(
        f"{'case':22} {'client':10} {'requests':>8} {'points':>9} {'points/s':>11} "
        f"{'us/point':>9} {'us/request':>11} {'requests/s':>10}"
    )
    per_request: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for case in CASES:
        kind, ppc, channels, n = case
        label = f"run, {ppc} pts/chunk" if kind == "chunk" else f"push_multi, {channels} ch x 100"
        for client in clients:
            med = statistics.median(secs[(client, case)])
            points = n * ppc * channels
            us_req = med / n * 1e6
            per_request.setdefault((client, kind), []).append(
                (ppc if kind == "chunk" else channels, us_req)
            )
            print(
                f"{label:22} {client:10} {n:8,} {points:9,} {points / med:11,.0f} "
                f"{med / points * 1e6:9.3f} {us_req:11.1f} {n / med:10,.0f}"
            )
    print("\nus/request = fixed + per unit x units (slope of the two largest sizes):")
    for kind, unit in (("chunk", "point"), ("multi", "channel")):
        for client in clients:
            a, b = two_part(per_request[(client, kind)])
            even = a / b if b > 0 else float("inf")
            print(
                f"  {'chunk size' if kind == 'chunk' else 'channels':10} {client:10} "
                f"fixed {a:6.1f} us/request, {b:7.3f} us/{unit}; the {unit}s cost as much as "
                f"the fixed part at {even:,.0f} {unit}s/request"
            )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-sdk", action="store_true", help="labstream alone")
    ap.add_argument("--atlas", action="store_true", help="also labstream to Atomscale + ATLAS")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        c = args.child
        child(c[0], c[1], int(c[2]), int(c[3]), int(c[4]), c[5], c[6])
    else:
        main(args.rounds, not args.no_sdk, args.atlas)
