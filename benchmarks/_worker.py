"""One measured run in a fresh process, for push_latency.py and run_throughput.py (not run by hand).

Usage: python _worker.py CLIENT MODE SCENARIO ENDPOINT N_CHUNKS [PACE_US] [FINALIZE]
  CLIENT   labstream | sdk (the official ``atomscale.streaming.TimeseriesStreamer``)
  MODE     push (push() per chunk, each call timed) | run (run() over all chunks, then finalize())
  SCENARIO fast (ENDPOINT is the local nginx) | down (a throwaway nginx answers initialize, then
           is stopped, so every upload meets a closed port; ENDPOINT is ignored)
  PACE_US  push mode: one push() every PACE_US microseconds (0 = back to back, the default)
  FINALIZE yes (default) | no: skip finalize() and exit right after the timed pushes

Data and timing follow /work/shared/bench/anchor_atomscale.py: 100-point chunks as lists of floats,
built before the clock starts; initialize() is outside the timed part; clock sync is off for both
clients. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("ATOMSCALE_SKIP_CLOCK_SYNC", "1")

PPC = 100


def make_streamer(client: str, endpoint: str):  # type: ignore[no-untyped-def]
    if client == "sdk":
        from atomscale.streaming import TimeseriesStreamer as SdkStreamer

        return SdkStreamer(api_key="k", endpoint=endpoint, points_per_chunk=PPC)
    from labstream import TimeseriesStreamer

    return TimeseriesStreamer(
        api_key="k", endpoint=endpoint, points_per_chunk=PPC, clock_sync=False
    )


def main() -> None:
    client, mode, scenario, endpoint, n_chunks = sys.argv[1:6]
    pace_s = float(sys.argv[6]) / 1e6 if len(sys.argv) > 6 else 0.0
    do_finalize = (sys.argv[7] if len(sys.argv) > 7 else "yes") == "yes"
    n = int(n_chunks)
    t0 = 1.7e9
    ts = [[t0 + (c * PPC + i) * 0.01 for i in range(PPC)] for c in range(n)]
    vs = [[25.0 + i * 0.001 for i in range(PPC)] for _ in range(n)]

    init_server = None
    if scenario == "down":
        # A server of its own, in another process: the SDK holds the GIL while it waits on the
        # network in initialize(), so a Python server thread in this process could not answer.
        from _server import BenchServer  # this script's folder is on sys.path

        init_server = BenchServer().start()
        endpoint = init_server.url

    s = make_streamer(client, endpoint)
    data_id = s.initialize(stream_name="bench")
    if init_server is not None:
        init_server.stop()  # nginx has exited: the port is closed, every upload is refused

    out: dict[str, object] = {"client": client, "mode": mode, "scenario": scenario, "chunks": n}
    lat: list[float] = []
    start = time.perf_counter()
    if mode == "run":
        s.run(data_id, "temperature", zip(ts, vs, strict=True), units="C")
    else:
        for c in range(n):
            if pace_s:
                ahead = start + c * pace_s - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            a = time.perf_counter()
            s.push(data_id, c, "temperature", ts[c], vs[c], units="C")
            lat.append(time.perf_counter() - a)
    pushed = time.perf_counter()

    # finalize: the SDK sends the finalize request only (it does not wait for push() uploads);
    # labstream waits for pending chunks first (bounded to 2 s when the destination is down).
    fin_error = None
    if not do_finalize:
        finish(out, lat, start, pushed, pushed, None)
    try:
        if client == "sdk":
            s.finalize(data_id)
        else:
            rep = s.finalize(data_id, 2.0 if scenario == "down" else 60.0)
            d = rep.destinations["atomscale"]
            out["delivered_chunks"] = d.chunks_delivered
            out["report_ok"] = bool(rep.ok)
    except Exception as exc:  # the SDK raises when the destination is down
        fin_error = f"{type(exc).__name__}: {str(exc)[:120]}"
    end = time.perf_counter()
    out["finalize_returned_unix"] = time.time()
    finish(out, lat, start, pushed, end, fin_error)


def finish(
    out: dict[str, object],
    lat: list[float],
    start: float,
    pushed: float,
    end: float,
    fin_error: str | None,
) -> None:
    out.update(
        seconds=end - start,
        push_loop_seconds=pushed - start,
        finalize_seconds=end - pushed,
        finalize_error=fin_error,
    )
    if lat:
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] * 1e6  # noqa: E731
        out.update(
            p50_us=q(0.5),
            p99_us=q(0.99),
            p999_us=q(0.999),
            max_us=lat[-1] * 1e6,
            mean_us=sum(lat) / len(lat) * 1e6,
            lat_us=[round(x * 1e6, 2) for x in lat],
        )
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    # Exit at once: no atexit close of labstream's streams, and the SDK's runtime does not go on
    # with fire-and-forget uploads (the parent counts what reached the server).
    os._exit(0)


if __name__ == "__main__":
    main()
