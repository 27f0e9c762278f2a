"""Packets/s writing ATLAS data packets to the Stream API emulator running in another process.

Run:  .venv/bin/python benchmarks/atlas_writes.py                 (about 1 min on 2 cores)
      .venv/bin/python benchmarks/atlas_writes.py --server nodecode --rounds 3
      .venv/bin/python benchmarks/atlas_writes.py --server nodecode --samples 1000  (bigger packets)

The server is labstream's ATLAS emulator (``labstream.testing.atlas.AtlasEmulator``) in a child
process (this file run with ``--serve``), so server and client do not share a GIL. The child binds
port 0 on 127.0.0.1, prints the port, and answers a side channel on its stdin/stdout (not gRPC):
how many packets it has recorded, its CPU time, and which packets of a run arrived, in what order
and through which calls. The count comes from wrapping, in the child only, the emulator's
``decode_content``, which it calls exactly once per packet while recording it (under its lock, just
before appending it). Two server modes, each its own child, both started before any channel opens:

  emulator   the emulator as shipped. Recording a packet decodes its content and walks it for
             unknown fields (``atlas_checker.decode_content``) and turns it into a dict for the
             ``--record`` line even when there is no record file: 0.3-1.3 ms of Python per packet
             of 1-4 columns. Every variant waits on that.
  nodecode   the same emulator with ``decode_content`` answering "no content" at once (the real
             server 1.3.5 does not look at the content either). Everything else is unchanged:
             each request is parsed, each packet numbered and kept, and ``WriteDataPackets``
             still never answers after half-close.

Before each run the child calls ``gc.freeze()``: the emulator keeps every packet (a real server
keeps nothing), and without it later rounds slow down as the garbage collector rescans them.

Every packet is a ``PeriodicData`` packet of 100 samples (``--samples``) with 1, 2, 3, 4, 1, ...
columns (one format id per column count; content 1.3-5.2 kB), in one session made with
``CreateSession``, with ``Packet.id`` 1..N. All request bytes are built with
``labstream.destinations.atlas.encoding`` before the clock starts. Variants, alternated every
round (the order rotates):

  (a)   unary ``WriteDataPacket``, each call awaited before the next (what ``AtlasSink`` does):
        grpc.aio, ``request_serializer=None``, a deadline per call.
  (b)   client-streaming ``WriteDataPackets``, one packet per message, each ``write()`` awaited,
        then ``done_writing()``; the response is never awaited (server 1.3.5 never sends it).
  (c10) as (b) with 10 packets per message.
  (c50) as (b) with 50 packets per message.

Packets per run are sized from a warm-up so a run takes about ``--seconds`` (at most
``--max-packets``, a multiple of 50). When is a run done? (a): when the last call's OK has come
back. (b)/(c): a ``write()`` that returned only means gRPC took the message, not that the server
has it, and the real server offers no way to ask. Here the side channel does: the clock stops when
the emulator has recorded all N packets, and only then is the call cancelled (the emulator logs it
``CANCELLED``). Every run is then checked through the side channel: all N packets arrived,
``Packet.id`` 1..N in arrival order, through the expected calls (N unary OKs, or one stream). A
separate pass (not timed) shows what a client without that channel risks: cancel as soon as the
last ``write()`` returned, then count what arrives within 2 s.

Prints, per server mode: median packets/s, its ratio to (a), client and server CPU per packet, and
the cancel-at-once check. Loopback only; bounded counts; the children are stopped at the end
(``quit`` on stdin, killed after 15 s; they also get SIGTERM if this process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np
import orjson
from _server import _die_with_parent

from labstream.destinations.atlas import encoding as enc

DATA_SOURCE = "BenchSource"
STREAM = "Stream1"
THIS_FILE = os.path.abspath(__file__)
INTERVAL_NS = 10_000_000  # 100 Hz
START_NS = 1_700_000_000_000_000_000
RPC_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 120.0
# 50 packets of 4 columns in one WriteDataPackets message must stay under 4 MiB.
MAX_SAMPLES = (enc.MAX_REQUEST_BYTES // 50 - 400) // (4 * enc.SAMPLE_BYTES)
_API = "/ma.streaming.api.v1.PacketWriterService/"
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", enc.MAX_REQUEST_BYTES),
    ("grpc.max_receive_message_length", enc.MAX_REQUEST_BYTES),
]

VARIANTS = {
    "a": "unary WriteDataPacket, awaited (labstream)",
    "b": "WriteDataPackets, 1 packet/message",
    "c10": "WriteDataPackets, 10 packets/message",
    "c50": "WriteDataPackets, 50 packets/message",
}
BATCH = {"b": 1, "c10": 10, "c50": 50}


# --------------------------------------------------------------------------------------------------
# The child: the emulator plus a side channel on stdin/stdout


def serve_child(nodecode: bool) -> None:
    """Run the emulator until stdin says ``quit`` (or closes); answer side-channel commands."""
    from labstream.testing import atlas as emu_mod

    # The emulator decodes each packet's content exactly once, while it records the packet (under
    # its lock, just before appending it). Counting those calls is the cheap, event-driven side
    # channel; in nodecode mode the decode itself is skipped.
    decode = emu_mod.decode_content
    count = 0
    target = 0
    reached = threading.Event()

    def counted(packet_type: str, content: bytes) -> tuple[object, str | None]:
        nonlocal count
        count += 1
        if target and count >= target:
            reached.set()
        return (None, None) if nodecode else decode(packet_type, content)

    emu_mod.decode_content = counted  # type: ignore[assignment]

    emulator = emu_mod.AtlasEmulator(host="127.0.0.1", port=0, key_generator_port=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(30)
    out = sys.stdout
    out.write(f"READY {emulator.port}\n")
    out.flush()

    def reply(obj: object) -> None:
        out.write(orjson.dumps(obj).decode() + "\n")
        out.flush()

    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "quit":
            break
        if cmd == "stat":  # packets recorded so far, CPU seconds of this process (all threads)
            # Before each run: what the emulator has kept so far (every packet, every call) is
            # moved out of the garbage collector's way, so later rounds do not get slower as
            # the recording grows (a real server keeps nothing).
            gc.freeze()
            reply([count, time.process_time()])
        elif cmd == "wait":  # until `n` packets are recorded or `timeout` s passed
            reached.clear()
            target = int(args[0])
            if count < target:
                reached.wait(float(args[1]))
            target = 0
            reply(count)
        elif cmd == "check":  # packets[start:start+n]: ids, and the calls that carried them
            start, n = int(args[0]), int(args[1])
            packets = emulator.packets[start : start + n]
            calls = {c.seq: c for c in emulator.calls}
            used = [calls[i] for i in dict.fromkeys(p.call_id for p in packets)]
            deadline = time.monotonic() + 5.0  # a cancelled stream ends on the server a bit later
            while any(c.code is None for c in used) and time.monotonic() < deadline:
                time.sleep(0.001)
            reply(
                {
                    "count": len(packets),
                    "ordered": [p.packet.id for p in packets] == list(range(1, n + 1)),
                    "calls": dict(Counter(f"{c.method}:{c.code}" for c in used)),
                    "half_closed": sum(bool(c.half_closed) for c in used),
                    "answered": sum(c.answered for c in used),
                }
            )
        else:
            reply({"error": f"unknown command {cmd!r}"})
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


class Child:
    """The emulator child process and its side channel (one command, one reply line)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        cmd = [sys.executable, THIS_FILE, "--serve"]
        if self.mode == "nodecode":
            cmd.append("--nodecode")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"emulator child did not start: {line!r}")
        self.port = int(line.split()[1])

    async def ask(self, *words: object) -> object:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.proc.stdin.drain()
        return orjson.loads(await self.proc.stdout.readline())

    async def stat(self) -> tuple[int, float]:
        count, cpu = await self.ask("stat")  # type: ignore[misc]
        return int(count), float(cpu)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 15)
        except (TimeoutError, OSError):
            proc.kill()
            await proc.wait()


# --------------------------------------------------------------------------------------------------
# The client side


@dataclass
class Payloads:
    """Request bytes for packets 1..N, ready for each variant."""

    unary: list[bytes]
    batches: dict[str, list[bytes]] = field(default_factory=dict)
    content_bytes: int = 0


def build_payloads(n: int, session_key: str, format_ids: dict[int, int], samples: int) -> Payloads:
    rng = np.random.default_rng(7)
    details: list[bytes] = []
    content_total = 0
    for i in range(n):
        k = 1 + i % 4
        cols = [20.0 + rng.standard_normal(samples) for _ in range(k)]
        content = enc.encode_periodic(
            format_ids[k], START_NS + i * samples * INTERVAL_NS, INTERVAL_NS, cols
        )
        content_total += len(content)
        packet = enc.encode_packet("PeriodicData", session_key, False, content, i + 1)
        details.append(enc.encode_data_packet_details(packet, DATA_SOURCE, STREAM, session_key))
    out = Payloads([enc.encode_write_data_packet_request(d) for d in details])
    for name, size in BATCH.items():
        out.batches[name] = [
            enc.encode_write_data_packets_request(details[i : i + size]) for i in range(0, n, size)
        ]
    out.content_bytes = content_total // n
    return out


async def open_session(channel: grpc.aio.Channel) -> tuple[str, dict[int, int]]:
    from labstream._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc

    sessions = api_pb2_grpc.SessionManagementServiceStub(channel)
    formats = api_pb2_grpc.DataFormatManagerServiceStub(channel)
    reply = await sessions.CreateSession(
        api_pb2.CreateSessionRequest(
            data_source=DATA_SOURCE, type="Session", version=1, identifier="atlas_writes bench"
        ),
        timeout=RPC_TIMEOUT_S,
    )
    format_ids = {}
    for k in range(1, 5):
        params = [f"p{j}:Bench" for j in range(k)]
        f = await formats.GetParameterDataFormatId(
            api_pb2.GetParameterDataFormatIdRequest(data_source=DATA_SOURCE, parameters=params),
            timeout=RPC_TIMEOUT_S,
        )
        format_ids[k] = f.data_format_identifier
    return reply.session_key, format_ids


@dataclass
class Calls:
    unary: Callable[..., Awaitable[object]]
    stream: Callable[..., Any]


def write_calls(channel: grpc.aio.Channel) -> Calls:
    from labstream._proto.ma.streaming.api.v1 import api_pb2

    unary = channel.unary_unary(
        _API + "WriteDataPacket",
        request_serializer=None,
        response_deserializer=api_pb2.WriteDataPacketResponse.FromString,
    )
    stream = channel.stream_unary(
        _API + "WriteDataPackets",
        request_serializer=None,
        response_deserializer=api_pb2.WriteDataPacketsResponse.FromString,
    )
    return Calls(unary, stream)


async def write_unary(unary: Callable[..., Awaitable[object]], requests: list[bytes]) -> None:
    for request in requests:
        await unary(request, timeout=RPC_TIMEOUT_S)


async def write_stream(stream: Callable[..., Any], messages: list[bytes]) -> Any:
    """Write every message on one stream and half-close; return the call, still open."""
    call = stream(timeout=STREAM_TIMEOUT_S)
    for message in messages:
        await call.write(message)
    await call.done_writing()
    return call


async def end_stream(call: Any) -> grpc.StatusCode:
    call.cancel()
    return await call.code()  # type: ignore[no-any-return]


@dataclass
class Sample:
    rate: float
    client_cpu_us: float
    server_cpu_us: float
    writes_done_s: float  # streams: until the last write() + done_writing() returned


async def one_run(variant: str, child: Child, calls: Calls, payloads: Payloads, n: int) -> Sample:
    """Write packets 1..n with `variant`; time it until they are known to be at the server."""
    base, server_cpu0 = await child.stat()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if variant == "a":
        await write_unary(calls.unary, payloads.unary[:n])
        writes_done = t1 = time.perf_counter()
    else:
        call = await write_stream(calls.stream, payloads.batches[variant][: n // BATCH[variant]])
        writes_done = time.perf_counter()
        arrived = await child.ask("wait", base + n, 60)
        t1 = time.perf_counter()
        await end_stream(call)
        if arrived != base + n:
            raise RuntimeError(f"({variant}): {arrived - base}/{n} packets arrived in 60 s")
    cpu1 = time.process_time()
    count, server_cpu1 = await child.stat()
    check = await child.ask("check", base, n)
    assert isinstance(check, dict)
    want = {"WriteDataPacket:OK": n} if variant == "a" else {"WriteDataPackets:CANCELLED": 1}
    if count != base + n or not check["ordered"] or check["calls"] != want:
        raise RuntimeError(f"({variant}) check failed: {check}, {count - base}/{n} packets")
    return Sample(
        n / (t1 - t0),
        (cpu1 - cpu0) / n * 1e6,
        (server_cpu1 - server_cpu0) / n * 1e6,
        writes_done - t0,
    )


async def cancel_at_once(
    variant: str, child: Child, calls: Calls, payloads: Payloads, n: int
) -> tuple[int, float]:
    """Cancel as soon as the last write() returned; (packets arrived within 2 s, seconds taken)."""
    base, _ = await child.stat()
    call = calls.stream(timeout=STREAM_TIMEOUT_S)
    t0 = time.perf_counter()
    for message in payloads.batches[variant][: n // BATCH[variant]]:
        await call.write(message)
    secs = time.perf_counter() - t0
    call.cancel()
    await call.code()
    arrived = await child.ask("wait", base + n, 2.0)
    assert isinstance(arrived, int)
    return arrived - base, secs


def _size(rate: float, target_s: float, pool: int) -> int:
    """Packets for a run of about `target_s` at `rate`: a multiple of 50, 200..pool."""
    return max(200, min(pool, int(rate * target_s) // 50 * 50))


async def bench_mode(child: Child, rounds: int, pool: int, target_s: float, samples: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{child.port}", options=_CHANNEL_OPTIONS)
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        session_key, format_ids = await open_session(channel)
        payloads = build_payloads(pool, session_key, format_ids, samples)
        calls = write_calls(channel)
        # Warm up (code paths hot, flow-control windows grown) and size each variant's runs.
        sizes = {}
        for v in VARIANTS:
            await one_run(v, child, calls, payloads, 200)
            sizes[v] = _size((await one_run(v, child, calls, payloads, 400)).rate, target_s, pool)
        print(
            f"\n== server: {child.mode}; content {payloads.content_bytes} B per packet on "
            f"average; {rounds} rounds; packets per run: "
            + ", ".join(f"({k}) {n:,}" for k, n in sizes.items()),
            flush=True,
        )
        samples: dict[str, list[Sample]] = {k: [] for k in VARIANTS}
        keys = list(VARIANTS)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                samples[k].append(await one_run(k, child, calls, payloads, sizes[k]))
            print(
                f"  round {r + 1}: " + "  ".join(f"{k}={samples[k][-1].rate:,.0f}/s" for k in keys),
                flush=True,
            )
        base = statistics.median(s.rate for s in samples["a"])
        print()
        print(
            f"{'variant':46} {'pkt/s':>7} {'min':>7} {'max':>7} {'vs (a)':>7} "
            f"{'cli µs':>7} {'srv µs':>7} {'writes':>7}"
        )
        for k, label in VARIANTS.items():
            s = samples[k]
            rates = [x.rate for x in s]
            med = statistics.median(rates)
            written = statistics.median(x.writes_done_s * x.rate / sizes[k] for x in s) * 100
            print(
                f"({k}) {label:{42 - len(k)}} {med:7,.0f} {min(rates):7,.0f} {max(rates):7,.0f} "
                f"{med / base:6.2f}x {statistics.median(x.client_cpu_us for x in s):7.1f} "
                f"{statistics.median(x.server_cpu_us for x in s):7.1f} {written:6.0f}%"
            )
        print(
            "  cli/srv µs: CPU per packet of the client / emulator process (all threads).\n"
            "  writes: share of the run until the last write() and done_writing() returned; "
            "the rest is\n  waiting until the emulator has recorded every packet."
        )
        print("cancel as soon as the last write() returned, then count arrivals for 2 s:")
        for k in BATCH:
            arrived, secs = await cancel_at_once(k, child, calls, payloads, sizes[k])
            print(
                f"  ({k}) {sizes[k]:,} packets written in {secs * 1e3:,.0f} ms; {arrived:,} "
                f"arrived, {sizes[k] - arrived:,} lost",
                flush=True,
            )
    finally:
        await channel.close()


async def main(modes: list[str], rounds: int, pool: int, target_s: float, samples: int) -> None:
    print(
        f"grpcio {grpc.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"PeriodicData packets of {samples} samples, 1-4 columns; up to {pool:,} packets per run"
    )
    # Start every child before this process opens a gRPC channel (forking later makes gRPC warn).
    children = [Child(mode) for mode in modes]
    try:
        for child in children:
            await child.start()
        for child in children:
            await bench_mode(child, rounds, pool, target_s, samples)
    finally:
        for child in children:
            await child.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--seconds", type=float, default=0.8, help="aim of one run (sets packets per run)"
    )
    ap.add_argument("--max-packets", type=int, default=10_000, help="most packets in one run")
    ap.add_argument("--samples", type=int, default=100, help="samples per column per packet")
    ap.add_argument("--server", choices=["emulator", "nodecode", "both"], default="both")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nodecode", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_child(args.nodecode)
    else:
        if not 0 < args.samples <= MAX_SAMPLES:
            ap.error(f"--samples must be 1..{MAX_SAMPLES} (50 packets per message under 4 MiB)")
        chosen = ["emulator", "nodecode"] if args.server == "both" else [args.server]
        # The pool is held 4 times over (one copy per variant): keep it near 200 MB at most.
        pool = min(args.max_packets, 200_000_000 // (4 * 2.5 * enc.SAMPLE_BYTES * args.samples))
        pool = max(400, int(pool) // 50 * 50)  # whole batches of 50
        asyncio.run(main(chosen, args.rounds, pool, args.seconds, args.samples))
