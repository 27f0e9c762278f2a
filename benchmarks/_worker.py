"""One measured run in a fresh process, for push_latency.py and run_throughput.py (not run by hand).

Usage: python _worker.py CLIENT MODE SCENARIO ENDPOINT N_CHUNKS [PACE_US] [FINALIZE]
       python _worker.py atlas-emulator shipped|nodecode   (an ATLAS emulator to stream to)
  CLIENT   labstream | sdk (the official ``atomscale.streaming.TimeseriesStreamer``)
  MODE     push (push() per chunk, each call timed) | run (run() over all chunks, then finalize())
  SCENARIO fast (ENDPOINT is the local nginx) | down (a throwaway nginx answers initialize, then
           is stopped, so every upload meets a closed port; ENDPOINT is ignored)
  PACE_US  push mode: one push() every PACE_US microseconds (0 = back to back, the default)
  FINALIZE yes (default) | no: skip finalize() and exit right after the timed pushes

Data and timing follow /work/shared/bench/anchor_atomscale.py: 100-point chunks as lists of floats,
built before the clock starts; initialize() is outside the timed part; clock sync is off for both
clients. labstream journals into a temporary spool directory of its own (removed at exit) unless
LABSTREAM_SPOOL_DIR is set (BENCH_SPOOL=0: no journal, ``spool=False``), and also streams to ATLAS
when LABSTREAM_ATLAS (and LABSTREAM_ATLAS_KEY_GENERATOR) name one. Prints one JSON line. With
BENCH_PROFILE=PREFIX (labstream only), cProfile runs in each of labstream's threads during the
timed part: the caller's
(``PREFIX.main``: run()'s iteration and push()), the event loop's (``PREFIX.loop``: delivery) and
the journal writer's (``PREFIX.journal``, until ``close()``); each is dumped as pstats.

``atlas-emulator``: labstream's ATLAS emulator on 127.0.0.1, ports chosen by the system, printed as
``READY <stream api port> <key generator port>``. ``nodecode`` replaces its per-packet content
decode with a stub (as atlas_writes.py does: the real server does not decode content either).
Commands on stdin, one reply line each: ``samples`` (samples in the data packets recorded so
far), ``quit``. The
recording is moved out of the garbage collector's way every second (``gc.freeze()``): the emulator
keeps every packet, a real server keeps none. Parents use :class:`AtlasProcess`.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("ATOMSCALE_SKIP_CLOCK_SYNC", "1")

PPC = 100


def make_streamer(client: str, endpoint: str):  # type: ignore[no-untyped-def]
    if client == "sdk":
        from atomscale.streaming import TimeseriesStreamer as SdkStreamer

        return SdkStreamer(api_key="k", endpoint=endpoint, points_per_chunk=PPC)
    from labstream import TimeseriesStreamer

    if os.environ.get("BENCH_SPOOL") == "0":  # the journal off: spool=False
        return TimeseriesStreamer(
            api_key="k", endpoint=endpoint, points_per_chunk=PPC, clock_sync=False, spool=False
        )
    if not os.environ.get("LABSTREAM_SPOOL_DIR"):
        global _SPOOL
        _SPOOL = tempfile.mkdtemp(prefix="labstream-worker-spool-")
        os.environ["LABSTREAM_SPOOL_DIR"] = _SPOOL
    return TimeseriesStreamer(
        api_key="k", endpoint=endpoint, points_per_chunk=PPC, clock_sync=False
    )


_SPOOL: str | None = None  # the worker's own spool directory, removed at exit


class ThreadProfiles:
    """cProfile in the caller's, the loop's and the journal writer's threads (BENCH_PROFILE)."""

    def __init__(self, prefix: str) -> None:
        import cProfile

        self.prefix = prefix
        self.main = cProfile.Profile()
        self.loop = cProfile.Profile()
        from labstream._core import journal

        writer = journal.Journal._writer

        def profiled_writer(j: object) -> None:  # the thread's target: profile its whole life
            prof = cProfile.Profile()
            prof.enable()
            try:
                writer(j)  # type: ignore[arg-type]
            finally:
                prof.disable()
                prof.dump_stats(f"{prefix}.journal")

        journal.Journal._writer = profiled_writer  # type: ignore[method-assign,assignment]

    def start(self, s) -> None:  # type: ignore[no-untyped-def]
        async def enable() -> None:
            self.loop.enable()

        s._thread.call(enable)  # runs on the loop thread, so it profiles that thread
        self.main.enable()

    def stop(self, s) -> None:  # type: ignore[no-untyped-def]
        self.main.disable()

        async def disable() -> None:
            self.loop.disable()

        s._thread.call(disable)
        self.main.dump_stats(f"{self.prefix}.main")
        self.loop.dump_stats(f"{self.prefix}.loop")
        s.close()  # stops the journal writer, which dumps its profile


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

    profiles = None
    if os.environ.get("BENCH_PROFILE") and client == "labstream":
        profiles = ThreadProfiles(os.environ["BENCH_PROFILE"])
    s = make_streamer(client, endpoint)
    data_id = s.initialize(stream_name="bench")
    if init_server is not None:
        init_server.stop()  # nginx has exited: the port is closed, every upload is refused

    out: dict[str, object] = {"client": client, "mode": mode, "scenario": scenario, "chunks": n}
    lat: list[float] = []
    if profiles is not None:
        profiles.start(s)
    cpu0 = time.process_time()
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
    out["cpu_push_seconds"] = time.process_time() - cpu0  # this process, all threads

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
            out["delivered"] = {k: v.chunks_delivered for k, v in rep.destinations.items()}
            out["report_ok"] = bool(rep.ok)
    except Exception as exc:  # the SDK raises when the destination is down
        fin_error = f"{type(exc).__name__}: {str(exc)[:120]}"
    end = time.perf_counter()
    out["finalize_returned_unix"] = time.time()
    out["cpu_seconds"] = time.process_time() - cpu0  # this process, all threads
    if profiles is not None:
        profiles.stop(s)
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
    if _SPOOL is not None:
        shutil.rmtree(_SPOOL, ignore_errors=True)
    # Exit at once: no atexit close of labstream's streams, and the SDK's runtime does not go on
    # with fire-and-forget uploads (the parent counts what reached the server).
    os._exit(0)


# -- an ATLAS emulator in its own process ---------------------------------------------------------


def serve_atlas(mode: str) -> None:
    """The emulator until stdin says ``quit`` (or closes); see the module docstring."""
    import asyncio

    from labstream.testing import atlas as emu_mod

    decode = emu_mod.decode_content
    data: list[tuple[str, bytes]] = []  # every data packet's content, decoded only when counted
    counted_so_far = [0, 0]  # packets decoded, samples in them

    def recorded(packet_type: str, content: bytes) -> tuple[object, str | None]:
        # called once per packet, under the emulator's lock, as it records it
        if packet_type in ("PeriodicData", "RowData"):
            data.append((packet_type, content))
        return (None, None) if mode == "nodecode" else decode(packet_type, content)

    def samples() -> int:
        """Samples in the data packets so far (a packet may carry many chunks), decoded now,
        after the timed run, so that counting costs the timed part nothing."""
        done, total = counted_so_far
        for packet_type, content in data[done:]:
            msg, _ = decode(packet_type, content)
            if packet_type == "RowData":
                total += len(msg.timestamps)  # type: ignore[attr-defined]
            else:
                total += len(msg.columns[0].double_samples.samples)  # type: ignore[attr-defined]
        counted_so_far[:] = [len(data), total]
        return total

    emu_mod.decode_content = recorded  # type: ignore[assignment]
    emulator = emu_mod.AtlasEmulator(host="127.0.0.1", port=0, key_generator_port=0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="emulator", daemon=True).start()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(30)

    def freeze() -> None:
        while True:
            time.sleep(1.0)
            gc.freeze()

    threading.Thread(target=freeze, name="gc-freeze", daemon=True).start()
    print(f"READY {emulator.port} {emulator.key_generator_port}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        print(samples() if cmd == "samples" else f"unknown command {cmd!r}", flush=True)
    os._exit(0)  # no orderly stop: nothing to keep, and it is quicker


class AtlasProcess:
    """``with AtlasProcess("shipped") as atlas:`` runs ``serve_atlas`` in a child process.

    ``atlas.env`` holds the LABSTREAM_ATLAS* variables a labstream worker needs to stream to it.
    """

    def __init__(self, mode: str = "shipped") -> None:
        self.mode = mode
        self.proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> AtlasProcess:
        from _server import _die_with_parent

        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "atlas-emulator", self.mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "READY":
            self.__exit__()
            raise RuntimeError(f"ATLAS emulator did not start: {line!r}")
        self.env = {
            "LABSTREAM_ATLAS": f"127.0.0.1:{line[1]}",
            "LABSTREAM_ATLAS_KEY_GENERATOR": f"127.0.0.1:{line[2]}",
        }
        return self

    def samples(self) -> int:
        """Samples the emulator has recorded so far, in every data packet."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("samples\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["atlas-emulator"]:
        serve_atlas(sys.argv[2] if len(sys.argv) > 2 else "shipped")
    else:
        main()
