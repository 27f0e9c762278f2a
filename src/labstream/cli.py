"""The ``labstream`` command: the demo, the local emulators and the ATLAS protocol report.

argparse keeps the CLI dependency-free; each subcommand is a thin call into the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    ok = run_demo(
        seconds=args.seconds,
        rate_hz=args.rate,
        points_per_chunk=args.points_per_chunk,
        fail_fraction=args.fail_fraction,
        drop_fraction=args.drop_fraction,
        pace_s=args.pace,
    )
    return 0 if ok else 1


def _atomscale_serve(args: argparse.Namespace) -> int:
    from .emulators.atomscale import FaultPlan, serve

    faults = FaultPlan(
        fail_fraction=args.fail_fraction,
        fail_every=args.fail_every,
        retry_after_s=args.retry_after,
        latency_s=args.latency,
        drop_connection_fraction=args.drop_fraction,
        seed=args.seed,
    )
    serve(args.host, args.port, faults, api_key=args.api_key)
    return 0


def _atlas_serve(args: argparse.Namespace) -> int:
    from .emulators.atlas import AtlasFaultPlan, serve

    faults = AtlasFaultPlan(
        unavailable_fraction=args.unavailable_fraction, latency_s=args.latency, seed=args.seed
    )
    serve(args.host, args.port, args.key_generator_port, args.record, faults=faults)
    return 0


def _atlas_report(args: argparse.Namespace) -> int:
    import json

    from .emulators.atlas import load_record
    from .emulators.atlas_checker import check_sessions, format_report

    reports = check_sessions(load_record(args.file))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        print(format_report(reports, verbose=args.verbose))
    return 0 if all(r.ok for r in reports) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labstream",
        description="Stream lab instrument time series to Atomscale (and ATLAS) without loss.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="stream a simulated MBE growth to the local emulator, with faults"
    )
    demo.add_argument("--seconds", type=float, default=300.0, help="simulated growth length")
    demo.add_argument("--rate", type=float, default=10.0, help="samples per second per channel")
    demo.add_argument("--points-per-chunk", type=int, default=100)
    demo.add_argument("--fail-fraction", type=float, default=0.25, help="chunk uploads to fail")
    demo.add_argument("--drop-fraction", type=float, default=0.05, help="connections to drop")
    demo.add_argument("--pace", type=float, default=0.01, help="seconds between chunks")
    demo.set_defaults(func=_demo)

    atomscale = sub.add_parser("atomscale", help="the local Atomscale emulator")
    atomscale_sub = atomscale.add_subparsers(dest="action", required=True)
    serve = atomscale_sub.add_parser("serve", help="run the emulator until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8790)
    serve.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    serve.add_argument("--fail-fraction", type=float, default=0.0)
    serve.add_argument("--fail-every", type=int, default=0)
    serve.add_argument(
        "--retry-after", type=float, default=None, help="answer failures 429 + Retry-After"
    )
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    serve.add_argument("--drop-fraction", type=float, default=0.0)
    serve.add_argument("--seed", type=int, default=0)
    serve.set_defaults(func=_atomscale_serve)

    atlas = sub.add_parser("atlas", help="the local ATLAS Stream API and its protocol checker")
    atlas_sub = atlas.add_subparsers(dest="action", required=True)
    aserve = atlas_sub.add_parser(
        "serve", help="run a Stream API + key generator; print protocol reports on Ctrl-C"
    )
    aserve.add_argument("--host", default="127.0.0.1")
    aserve.add_argument("--port", type=int, default=13579)
    aserve.add_argument("--key-generator-port", type=int, default=15379)
    aserve.add_argument("--record", default=None, help="append every packet to this JSONL file")
    aserve.add_argument("--unavailable-fraction", type=float, default=0.0)
    aserve.add_argument("--latency", type=float, default=0.0)
    aserve.add_argument("--seed", type=int, default=0)
    aserve.set_defaults(func=_atlas_serve)
    areport = atlas_sub.add_parser("report", help="check the sessions of a --record file")
    areport.add_argument("file")
    areport.add_argument("--json", action="store_true", help="machine-readable report")
    areport.add_argument("--verbose", action="store_true", help="also list passed checks")
    areport.set_defaults(func=_atlas_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
