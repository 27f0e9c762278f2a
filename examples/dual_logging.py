"""Logging to Atomscale and ATLAS at once while one of them fails mid-run.

Each destination has its own delivery runner, so one being down delays neither the acquisition
loop nor the other destination. This example streams a 10 Hz run to both local emulators and, a
third of the way in, breaks one of them with the emulators' fault injection:

* ``--outage recover`` (default): the destination answers every request with a failure (Atomscale:
  503; ATLAS: gRPC UNAVAILABLE) for the middle third of the run, then comes back. Its chunks are
  retried and delivered late; the other destination never falls behind. Both end complete.
* ``--outage reject`` (Atomscale only): Atomscale answers 422 instead. A 4xx is final, so those
  chunks are rejected, not retried, and the report lists each with the server's reason.
* ``--outage stay-down``: the destination never comes back. ``finalize(timeout=...)`` waits that
  long, closes the stream everywhere it can, and the report shows what is still pending.

While it runs, it prints what each destination has confirmed so far (``streamer.report()``).
It needs the local emulators (fault injection is theirs), so it takes no destination options.

    python examples/dual_logging.py
    python examples/dual_logging.py --fail atlas
    python examples/dual_logging.py --outage reject
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _destinations import destinations

from labstream import RetryPolicy, StreamReport, TimeseriesStreamer
from labstream.testing.atlas import AtlasFaultPlan
from labstream.testing.atomscale import FaultPlan

RATE_HZ = 10.0
POINTS_PER_CHUNK = 20  # one chunk every 2 s of data
LABELS = {"atomscale": "Atomscale", "atlas": "ATLAS"}


def progress(report: StreamReport, t: float) -> str:
    parts = [
        f"{LABELS[name]}: {d.points_delivered:>4} delivered, {d.points_pending:>3} pending"
        for name, d in report.destinations.items()
    ]
    return f"  t={t:5.0f} s  " + "  |  ".join(parts)


def outcome(report: StreamReport) -> list[str]:
    lines = []
    for name, d in report.destinations.items():
        if d.complete:
            lines.append(
                f"{LABELS[name]}: complete, {d.points_delivered} points, {d.retries} retries"
            )
        else:
            lines.append(
                f"{LABELS[name]}: INCOMPLETE: {d.points_delivered} delivered, "
                f"{d.points_rejected} rejected, {d.points_pending} pending, "
                f"{d.points_dropped} dropped; stream closed: {'yes' if d.closed else 'no'}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fail", choices=["atomscale", "atlas"], default="atomscale")
    parser.add_argument("--outage", choices=["recover", "reject", "stay-down"], default="recover")
    parser.add_argument("--duration", type=float, default=60.0, help="run length, seconds")
    parser.add_argument("--speed", type=float, default=30.0, help="time compression factor")
    parser.add_argument("--finalize-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    args.atomscale_url = args.atlas = None  # always the local emulators
    if args.outage == "reject" and args.fail != "atomscale":
        parser.error("--outage reject needs --fail atomscale (ATLAS faults are UNAVAILABLE)")

    # Short back-off so the example takes seconds; the defaults start at 0.5 s and set a chunk
    # aside for 5 s after 5 failed attempts.
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.25, jitter_s=0.02, cooldown_s=0.2)
    n = int(args.duration * RATE_HZ)
    chunks = -(-n // POINTS_PER_CHUNK)
    fail_at, recover_at = chunks // 3, 2 * chunks // 3  # chunk numbers
    rng = np.random.default_rng(3)
    with destinations(args) as dest:
        assert dest.atomscale is not None
        assert dest.atlas is not None
        healthy = "atlas" if args.fail == "atomscale" else "atomscale"
        print(f"streaming {args.duration:.0f} s at {RATE_HZ:g} Hz to {dest.describe()}")
        with TimeseriesStreamer(retry=policy, **dest.streamer_kwargs) as streamer:
            data_id = streamer.initialize(stream_name="dual logging example")
            start = time.time()
            wall0 = time.perf_counter()
            slowest_push = 0.0
            for chunk, first in enumerate(range(0, n, POINTS_PER_CHUNK)):
                if chunk == fail_at:
                    print(f"  !! {LABELS[args.fail]} fails now ({args.outage})")
                    if args.fail == "atlas":
                        dest.atlas.faults = AtlasFaultPlan(down=True)
                    elif args.outage == "reject":
                        dest.atomscale.faults = FaultPlan(fail_every=1, fail_status=422)
                    else:  # every stream request, finalize included, answers 503
                        dest.atomscale.faults = FaultPlan(down=True, paths=("/tool-state/*",))
                if chunk == recover_at and args.outage != "stay-down":
                    print(f"  !! {LABELS[args.fail]} is back")
                    dest.atomscale.faults = FaultPlan()
                    dest.atlas.faults = AtlasFaultPlan()
                ts = start + np.arange(first, min(first + POINTS_PER_CHUNK, n)) / RATE_HZ
                channels = {
                    "substrate_temperature": {
                        "timestamps": ts,
                        "values": 600.0 + rng.normal(0, 0.3, ts.size),
                        "units": "C",
                    },
                    "chamber_pressure": {
                        "timestamps": ts,
                        "values": 2e-9 * (1 + rng.normal(0, 0.02, ts.size)),
                        "units": "mbar",
                    },
                }
                before = time.perf_counter()
                streamer.push_multi(data_id, chunk, channels)
                slowest_push = max(slowest_push, time.perf_counter() - before)
                if chunk % 5 == 4:
                    print(progress(streamer.report(data_id), first / RATE_HZ))
                end_of_chunk = wall0 + (first + POINTS_PER_CHUNK) / RATE_HZ / args.speed
                time.sleep(max(0.0, end_of_chunk - time.perf_counter()))
            print(f"slowest push_multi(): {slowest_push * 1e3:.2f} ms (the loop never waited)")
            report = streamer.finalize(data_id, timeout=args.finalize_timeout)
        print()
        print(report)
        print()
        for line in outcome(report):
            print(line)
        others_ok = report[healthy].complete
        print(
            f"{LABELS[healthy]} got everything on time while {LABELS[args.fail]} was failing: "
            f"{'yes' if others_ok else 'NO'}"
        )
    expected_ok = args.outage == "recover"
    return 0 if others_ok and report.ok == expected_ok else 1


if __name__ == "__main__":
    sys.exit(main())
