"""The floor for run_throughput.py: the least Python a chunk upload can cost (not run by hand).

Usage: python _floor.py ENDPOINT N_CHUNKS

The same 100-point chunks as the anchor (lists of floats, built before the clock starts), sent as
labstream's Atomscale requests with labstream's libraries (numpy, orjson, pycurl), with nothing
else: one thread, 8 uploads in flight, a finiteness and order check, no clock correction, no
journal, no retries, no report. It is what a chunk costs in Python on this machine before any of
labstream's promises, so the gap between it and labstream is what those promises and labstream's
layers cost. It is not a client anyone should use: a failed upload stops it.

Prints one JSON line: seconds, and the process's user and system CPU seconds, both over the timed
part only.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import orjson
import pycurl

PPC = 100
IN_FLIGHT = 8


def main() -> None:
    endpoint, n = sys.argv[1], int(sys.argv[2])
    url = endpoint + "/tool-state/stream/chunk"
    t0 = 1.7e9
    ts = [[t0 + (c * PPC + i) * 0.01 for i in range(PPC)] for c in range(n)]
    vs = [[25.0 + i * 0.001 for i in range(PPC)] for _ in range(n)]
    multi = pycurl.CurlMulti()
    idle: list[pycurl.Curl] = []

    def handle() -> pycurl.Curl:
        if idle:
            return idle.pop()
        h = pycurl.Curl()
        h.setopt(pycurl.NOSIGNAL, 1)
        h.setopt(pycurl.URL, url)
        h.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json", "Expect:"])
        return h

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sent = done = 0
    while done < n:
        while sent - done < IN_FLIGHT and sent < n:
            t, v = np.array(ts[sent]), np.array(vs[sent])
            if not (np.isfinite(t).all() and (t[1:] >= t[:-1]).all()):
                raise ValueError(f"chunk {sent}: bad timestamps")
            body = orjson.dumps(
                {"data_id": "floor", "chunk_index": sent, "channel_name": "temperature",
                 "timestamps": t, "values": v, "units": "C"},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )  # fmt: skip
            h = handle()
            h.setopt(pycurl.WRITEFUNCTION, lambda _: None)
            h.setopt(pycurl.POSTFIELDS, body)
            multi.add_handle(h)
            sent += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        left = 1
        while left:
            left, ok, failed = multi.info_read()
            if failed:
                raise RuntimeError(f"upload failed: {failed[0][2]}")
            for h in ok:
                if h.getinfo(pycurl.RESPONSE_CODE) != 200:
                    raise RuntimeError(f"upload answered {h.getinfo(pycurl.RESPONSE_CODE)}")
                multi.remove_handle(h)
                idle.append(h)
                done += 1
        if sent - done >= IN_FLIGHT or sent == n:
            multi.select(0.001)
    seconds = time.perf_counter() - start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "user_seconds": ru1.ru_utime - ru0.ru_utime,
                "system_seconds": ru1.ru_stime - ru0.ru_stime,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
