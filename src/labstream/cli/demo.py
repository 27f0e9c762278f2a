"""``labstream demo``: a simulated MBE growth streamed through the real client to local emulators.

It is the project's "main job": one command, no account, no Docker. Both destinations run locally:
the Atomscale emulator injects faults (503s, dropped connections), the ATLAS Stream API emulator
fails some RPCs with UNAVAILABLE and checks the protocol. The run shows what labstream is for: every
point pushed arrives in both, the ATLAS session is clean, and both streams are finalized. It prints
what was pushed next to what each destination stored, and exits non-zero if anything differs.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .._core.timebase import ns_to_seconds
from ..destinations.atlas.config import Atlas
from ..report import StreamReport
from ..retry import RetryPolicy
from ..sync import TimeseriesStreamer
from .common import destinations_json, print_json, require_plot, say

__all__ = ["DemoResult", "Growth", "add_commands", "run_demo", "simulate_growth"]

FloatArray = npt.NDArray[np.float64]
DEMO_KEY = "demo-key"  # the emulator accepts any key; this one is not a secret


@dataclass(frozen=True)
class Growth:
    """A simulated growth: one timeline and a few instrument channels."""

    timestamps: FloatArray
    channels: dict[str, tuple[FloatArray, str]]  # name -> (values, units)
    shutter_open_at: float


def simulate_growth(seconds: float, rate_hz: float, start: float, seed: int = 7) -> Growth:
    """Substrate ramp and hold, two effusion cells, chamber pressure rising when shutters open."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    ramp = np.clip(t / (0.3 * seconds), 0.0, 1.0)
    substrate = 200.0 + 430.0 * ramp + rng.normal(0, 0.3, n)
    ga_cell = 950.0 + 2.0 * np.sin(t / 17.0) + rng.normal(0, 0.05, n)
    as_cell = 340.0 + rng.normal(0, 0.05, n)
    shutter_open = (t > 0.4 * seconds) & (t < 0.9 * seconds)
    pressure = np.where(shutter_open, 4.0e-6, 2.0e-9) * (1 + rng.normal(0, 0.02, n))
    pressure[rng.choice(n, size=max(1, n // 500), replace=False)] = math.nan  # gauge dropouts
    return Growth(
        timestamps=start + t,
        channels={
            "substrate_temperature": (substrate, "C"),
            "ga_cell_temperature": (ga_cell, "C"),
            "as_cell_temperature": (as_cell, "C"),
            "chamber_pressure": (pressure, "mbar"),
        },
        shutter_open_at=start + 0.4 * seconds,
    )


@dataclass
class DemoResult:
    """What a demo run did (``labstream demo --json`` prints it)."""

    ok: bool = False
    data_id: str = ""
    points_per_chunk: int = 0
    chunks: int = 0
    elapsed_s: float = 0.0
    clock_offset_s: float = 0.0
    report: StreamReport | None = None
    # name -> {"pushed", "atomscale", "atlas" (points), "identical"}
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, dict[str, int]] = field(default_factory=dict)  # emulator -> kind -> count
    atlas_session_clean: bool = False
    finalized: bool = False
    plot: str | None = None


def _same(sent: FloatArray, received: list[float]) -> bool:
    got = np.asarray(received, dtype=np.float64)
    return sent.shape == got.shape and bool(np.array_equal(sent, got, equal_nan=True))


def run_demo(
    *,
    seconds: float = 300.0,
    rate_hz: float = 10.0,
    points_per_chunk: int = 100,
    fail_fraction: float = 0.25,
    drop_fraction: float = 0.05,
    atlas_unavailable_fraction: float = 0.1,
    pace_s: float = 0.01,
    plot: str | None = None,
    out: Callable[[str], None] = print,
    result: DemoResult | None = None,
) -> bool:
    """Run the demo; return True when both destinations stored exactly what was pushed.

    ``result``, when given, is filled with what the run did.
    """
    # Imported here: the command's parser is built whenever the CLI starts, and the emulators
    # need the testing extra (grpc, aiohttp).
    from ..testing import atlas as atlas_emulator
    from ..testing.atlas_checker import check_session, format_report
    from ..testing.atomscale import FaultPlan, run_in_thread

    result = result if result is not None else DemoResult()
    result.points_per_chunk = points_per_chunk
    faults = FaultPlan(
        fail_fraction=fail_fraction, drop_connection_fraction=drop_fraction, seed=2024
    )
    atlas_faults = atlas_emulator.AtlasFaultPlan(
        unavailable_fraction=atlas_unavailable_fraction, seed=7
    )
    growth = simulate_growth(seconds, rate_hz, start=time.time() - seconds)
    n = growth.timestamps.shape[0]
    n_chunks = math.ceil(n / points_per_chunk)
    result.chunks = n_chunks
    out(
        f"labstream demo: simulated MBE growth, {seconds:.0f} s at {rate_hz:g} Hz, "
        f"{len(growth.channels)} channels, {n_chunks} chunks of {points_per_chunk} points"
    )
    with (
        run_in_thread(faults=faults) as emulator,
        atlas_emulator.run_in_thread(faults=atlas_faults) as atlas,
    ):
        out(
            f"Atomscale emulator at {emulator.url}: failing {fail_fraction:.0%} of chunk uploads "
            f"with 503 and dropping {drop_fraction:.0%} of connections"
        )
        out(
            f"ATLAS Stream API emulator at {atlas.address} (key generator "
            f"{atlas.key_generator_address}): failing {atlas_unavailable_fraction:.0%} of RPCs "
            "with UNAVAILABLE"
        )
        started = time.perf_counter()
        # Short back-off so the demo takes seconds; production defaults start at 0.5 s.
        policy = RetryPolicy(
            initial_backoff_s=0.05, max_backoff_s=0.5, jitter_s=0.05, cooldown_s=0.2
        )
        destination = Atlas(
            address=atlas.address, key_generator_address=atlas.key_generator_address
        )
        with TimeseriesStreamer(
            api_key=DEMO_KEY,
            endpoint=emulator.url,
            points_per_chunk=points_per_chunk,
            retry=policy,
            atlas=destination,
        ) as streamer:
            with streamer.stream(stream_name="MBE-growth-demo", tags=["demo"]) as stream:
                shutter_marked = False
                for c in range(n_chunks):
                    sl = slice(c * points_per_chunk, (c + 1) * points_per_chunk)
                    ts = growth.timestamps[sl]
                    stream.push_multi(
                        c,
                        {
                            name: {"timestamps": ts, "values": values[sl], "units": units}
                            for name, (values, units) in growth.channels.items()
                        },
                    )
                    if not shutter_marked and ts[-1] > growth.shutter_open_at:
                        stream.mark("Ga shutter open", timestamp=growth.shutter_open_at)
                        shutter_marked = True
                    time.sleep(pace_s)  # the acquisition loop's own pace, compressed
            offset = streamer.clock_status().offset_s
        elapsed = time.perf_counter() - started
        report = stream.report
        assert report is not None
        stored = emulator.streams[stream.data_id]
        (session,) = atlas.sessions.values()
        atlas_report = check_session(session)
        if plot:
            from .plot import plot_demo

            path = plot_demo(
                plot,
                timestamps=growth.timestamps,
                channels=growth.channels,
                atomscale=emulator,
                data_id=stream.data_id,
                atlas=atlas_report,
                clock_offset_s=offset,
            )
            out(f"receipts plot written to {path}")
            result.plot = str(path)
        out(f"streamed and finalized in {elapsed:.1f} s; clock offset {offset * 1e3:+.3f} ms\n")
        out(str(report) + "\n")
        out(f"{'channel':<24}{'pushed':>8}{'Atomscale':>11}{'ATLAS':>8}  identical")
        all_same = True
        for name, (values, _units) in growth.channels.items():
            ts_got, vals_got = emulator.points(stream.data_id, name)
            same = (
                _same(values, vals_got)
                and len(ts_got) == n
                and bool(
                    np.allclose(np.asarray(ts_got) - offset, growth.timestamps, rtol=0, atol=1e-6)
                )
            )
            param = atlas_report.parameters.get(f"{name}:labstream")
            atlas_n = len(param.values) if param else 0
            if param is not None:
                atlas_s = ns_to_seconds(np.asarray(param.timestamps_ns, dtype=np.int64))
                same = (
                    same
                    and _same(values, param.values)
                    and bool(np.allclose(atlas_s - offset, growth.timestamps, rtol=0, atol=1e-6))
                )
            else:
                same = False
            all_same &= same
            result.channels[name] = {
                "pushed": n,
                "atomscale": len(vals_got),
                "atlas": atlas_n,
                "identical": same,
            }
            out(f"{name:<24}{n:>8}{len(vals_got):>11}{atlas_n:>8}  {'yes' if same else 'NO'}")
        out(f"\nfaults the Atomscale emulator injected: {_faults(emulator.fault_counts)}")
        out(f"faults the ATLAS emulator injected: {_faults(atlas.fault_counts)}")
        out("\nATLAS protocol report:\n" + format_report(atlas_report))
        result.data_id, result.report = stream.data_id, report
        result.elapsed_s, result.clock_offset_s = elapsed, offset
        result.faults = {
            "atomscale": dict(emulator.fault_counts),
            "atlas": dict(atlas.fault_counts),
        }
        result.atlas_session_clean, result.finalized = atlas_report.clean, stored.finalized
        result.ok = _verdict(report, all_same and atlas_report.clean, stored.finalized, out)
        return result.ok


def _verdict(
    report: StreamReport, all_same: bool, finalized: bool, out: Callable[[str], None]
) -> bool:
    if report.ok and all_same and finalized:
        points = report["atomscale"].points_delivered
        retries = sum(d.retries for d in report.destinations.values())
        out(
            f"All {points} points stored exactly as pushed in both destinations, through "
            f"{retries} retries; both streams finalized, ATLAS session clean."
        )
        return True
    out("Something was not delivered; see the reports above.")
    return False


# What each kind of injected fault did, in words (the emulators count them by kind).
_FAULT_WORDS = {
    "fail_fraction": "request(s) answered with an error",
    "fail_every": "request(s) answered with an error",
    "down": "request(s) refused while down",
    "outage": "request(s) refused during an outage",
    "drop": "connection(s) closed without an answer",
    "latency": "request(s) answered late",
    "capacity": "request(s) refused over capacity",
    "unavailable_fraction": "call(s) failed with UNAVAILABLE",
    "unavailable_every": "call(s) failed with UNAVAILABLE",
}


def _faults(counts: dict[str, int]) -> str:
    """``{"fail_fraction": 3, "drop": 1}`` as a sentence."""
    parts = [f"{n:,} {_FAULT_WORDS.get(kind, kind)}" for kind, n in counts.items() if n]
    return ", ".join(parts) if parts else "none"


# --------------------------------------------------------------------------------------------------
# The command


def add_commands(sub: Any) -> None:
    """Register ``demo``."""
    demo = sub.add_parser(
        "demo", help="stream a simulated MBE growth to the local emulator, with faults"
    )
    demo.add_argument(
        "--seconds", type=float, default=300.0, help="simulated growth length (default 300)"
    )
    demo.add_argument(
        "--rate", type=float, default=10.0, help="samples per second per channel (default 10)"
    )
    demo.add_argument(
        "--points-per-chunk", type=int, default=100, help="points per chunk (default 100)"
    )
    demo.add_argument(
        "--fail-fraction",
        type=float,
        default=0.25,
        help="share of chunk uploads the emulators fail (default 0.25)",
    )
    demo.add_argument(
        "--drop-fraction",
        type=float,
        default=0.05,
        help="share of connections the Atomscale emulator drops (default 0.05)",
    )
    demo.add_argument(
        "--pace", type=float, default=0.01, help="seconds between chunks (default 0.01)"
    )
    demo.add_argument("--plot", metavar="FILE", help="draw what each destination received")
    demo.add_argument(
        "--json",
        action="store_true",
        help="the result as one JSON object on stdout (the running account goes to stderr)",
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    require_plot(args.plot)
    result = DemoResult()
    ok = run_demo(
        seconds=args.seconds,
        rate_hz=args.rate,
        points_per_chunk=args.points_per_chunk,
        fail_fraction=args.fail_fraction,
        drop_fraction=args.drop_fraction,
        pace_s=args.pace,
        plot=args.plot,
        out=say if args.json else print,  # with --json, the sentences go to stderr
        result=result,
    )
    code = 0 if ok else 1
    if args.json:
        assert result.report is not None
        print_json(
            {
                "ok": ok,
                "exit_code": code,
                "data_id": result.data_id,
                "points_per_chunk": result.points_per_chunk,
                "chunks": result.chunks,
                "elapsed_s": round(result.elapsed_s, 3),
                "clock_offset_s": result.clock_offset_s,
                "channels": result.channels,
                "destinations": destinations_json(result.report),
                "faults_injected": result.faults,
                "atlas_session_clean": result.atlas_session_clean,
                "finalized": result.finalized,
                "plot": result.plot,
            }
        )
    return code
