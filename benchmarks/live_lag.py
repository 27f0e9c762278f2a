"""A live growth over slow links: does delivery keep up, and how long does finalize() wait?

Run:  .venv/bin/python benchmarks/live_lag.py                       (about 1.5 min on 2 cores)
      .venv/bin/python benchmarks/live_lag.py --channels 20 --seconds 60
      .venv/bin/python benchmarks/live_lag.py --atlas-latency 0.03 --atomscale-latency 0.15

Each case pushes ``--channels`` channels one by one (``push()``, one point each) at 10 Hz for
``--seconds`` seconds, to the Atomscale emulator answering every chunk request
``--atomscale-latency`` seconds later and the ATLAS emulator answering every RPC
``--atlas-latency`` seconds later, each in a process of its own; then ``finalize()``.

Everything is counted at the destinations, after the run:
  * Atomscale: the emulator's record of every request (when each chunk was answered);
  * ATLAS: the session read back through the Stream API's reader service (when each packet
    arrived), as ``labstream atlas verify`` reads it.
A point's lag is when its destination had it minus when it was pushed (its timestamp). The
table gives the lag's median and 99th percentile over the first and the last 3 s of pushes
(flat from start to end means delivery keeps up), how long ``finalize()`` took after the last
push, and the share of points each destination holds.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

WINDOW_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(cmd: list[str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if ready in line:
            return proc
    raise RuntimeError(f"{cmd[1:3]} did not start")


def percentiles(lags: list[float]) -> str:
    if not lags:
        return f"{'-':>15}"
    p50, p99 = np.percentile(np.asarray(lags), [50, 99])
    return f"{p50:>7.2f}/{p99:<7.2f}"


def atomscale_lags(url: str) -> tuple[list[tuple[float, float]], int]:
    records = json.loads(urllib.request.urlopen(f"{url}/_emulator/requests").read())
    lags, stored = [], set()
    for r in records:
        if r["path"].endswith("/chunk") and r["status"] == 200:
            body = r["body"]
            for t in body["timestamps"]:
                lags.append((t, r["answered_at"] - t))
            stored.add((body["channel_name"], body["chunk_index"]))
    return lags, len(stored)


def atlas_lags(address: str, data_id: str) -> tuple[list[tuple[float, float]], int]:
    from labstream.cli.atlas_verify import read_session

    _, recorded, _ = read_session(address, data_id, idle_s=1.0)
    lags, points = [], 0
    for p in recorded.packets:
        c, arrived = p.content, p.received_ns / 1e9
        if p.type == "PeriodicData":
            n = len(c.columns[0].double_samples.samples)
            times = [(c.start_time + i * c.interval) / 1e9 for i in range(n)]
        elif p.type == "RowData":
            times = [t / 1e9 for t in c.timestamps]
        else:
            continue
        points += len(times) * len(c.columns if p.type == "PeriodicData" else c.rows[0:1] or [0])
        lags.extend((t, arrived - t) for t in times)
    return lags, points


def one_case(channels: int, seconds: float, atlas_latency: float, atomscale_latency: float) -> str:
    from labstream import Atlas, TimeseriesStreamer

    labstream = str(Path(sys.executable).parent / "labstream")
    web_port, grpc_port, key_port = free_port(), free_port(), free_port()
    # The whole request log: every chunk's answer time is read back from it.
    web_cmd = [
        labstream,
        "atomscale",
        "serve",
        "--port",
        str(web_port),
        "--request-log",
        "10000000",
    ]
    web = start([*web_cmd, "--latency", str(atomscale_latency)], "Atomscale emulator")
    grpc_cmd = [labstream, "atlas", "serve", "--port", str(grpc_port)]
    grpc_cmd += ["--key-generator-port", str(key_port), "--latency", str(atlas_latency)]
    grpc = start(grpc_cmd, "Stream API")
    url, address = f"http://127.0.0.1:{web_port}", f"127.0.0.1:{grpc_port}"
    try:
        with tempfile.TemporaryDirectory() as spool:
            s = TimeseriesStreamer(
                api_key="k",
                endpoint=url,
                atlas=Atlas(address=address, key_generator_address=f"127.0.0.1:{key_port}"),
                clock_sync=False,
                spool_dir=spool,
                handle_sigterm=False,
            )
            data_id = s.initialize(stream_name=f"live-{channels}")
            names = [f"ch{k:03d}" for k in range(channels)]
            first = time.time()
            tick = 0
            while time.time() - first < seconds:
                for name in names:
                    s.push(data_id, tick, name, [time.time()], [float(tick)])
                tick += 1
                time.sleep(max(0.0, first + tick * 0.1 - time.time()))
            last_push = time.time()
            report = s.finalize(data_id, timeout=300)
            waited = time.time() - last_push
            s.close()
        sent = tick * channels
        web_lags, web_chunks = atomscale_lags(url)
        atlas_lag, _ = atlas_lags(address, data_id)
    finally:
        for proc in (web, grpc):
            proc.terminate()
            proc.wait()

    def early_late(lags: list[tuple[float, float]]) -> str:
        early = [lag for t, lag in lags if t < first + WINDOW_S]
        late = [lag for t, lag in lags if t >= last_push - WINDOW_S]
        return f"{percentiles(early)} {percentiles(late)}"

    atlas_points = len({t for t, _ in atlas_lag})
    return (
        f"{channels:>8} {'atomscale':<10}{early_late(web_lags)}{waited:>9.2f}"
        f"{web_chunks / sent:>9.1%}  window {report['atomscale'].window}\n"
        f"{'':>8} {'atlas':<10}{early_late(atlas_lag)}{'':>9}{atlas_points / sent:>9.1%}"
        f"  {'ok' if report.ok else 'INCOMPLETE'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="1,20,100")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--atlas-latency", type=float, default=0.02)
    parser.add_argument("--atomscale-latency", type=float, default=0.1)
    args = parser.parse_args()
    print(
        f"live: push() per channel at 10 Hz for {args.seconds:g} s; Atomscale "
        f"{args.atomscale_latency:g} s away, ATLAS {args.atlas_latency:g} s per RPC"
    )
    print(
        f"{'channels':>8} {'to':<10}{'lag p50/p99 first 3 s':>16}{'last 3 s':>16}"
        f"{'finalize':>9}{'stored':>9}"
    )
    for channels in [int(c) for c in args.channels.split(",")]:
        print(
            one_case(channels, args.seconds, args.atlas_latency, args.atomscale_latency),
            flush=True,
        )


if __name__ == "__main__":
    main()
