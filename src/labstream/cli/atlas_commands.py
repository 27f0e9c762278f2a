"""``labstream atlas``: ``serve`` runs the local Stream API, ``report`` checks the sessions of
its ``--record`` file, and ``verify`` and ``sessions`` ask a Stream API what it holds.

Only the argument parsing is imported whenever the CLI starts; the emulator, the checker and the
reading (:mod:`labstream.cli.atlas_verify`) are imported when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import require_plot

__all__ = ["add_commands"]

_SERVER_HELP = "Stream API HOST:PORT (default localhost:13579, the emulator's)"


def add_commands(sub: Any) -> None:
    """Register ``atlas serve``, ``report``, ``verify`` and ``sessions``."""
    atlas = sub.add_parser("atlas", help="the local ATLAS Stream API and its protocol checker")
    atlas_sub = atlas.add_subparsers(dest="action", required=True)
    aserve = atlas_sub.add_parser(
        "serve", help="run a Stream API + key generator; print protocol reports on Ctrl-C"
    )
    aserve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    aserve.add_argument("--port", type=int, default=13579, help="Stream API port (default 13579)")
    aserve.add_argument(
        "--key-generator-port", type=int, default=15379, help="key generator port (default 15379)"
    )
    aserve.add_argument(
        "--record", default=None, metavar="FILE", help="append every packet to this JSONL file"
    )
    aserve.add_argument(
        "--unavailable-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of RPCs answered UNAVAILABLE, 0 to 1",
    )
    aserve.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds added per RPC"
    )
    aserve.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed fails the same RPCs"
    )
    aserve.add_argument(
        "--json",
        action="store_true",
        help="a JSON line when ready (addresses, ports) and one on exit (each session's checks "
        "and samples) instead of the text reports",
    )
    aserve.set_defaults(func=_atlas_serve)
    areport = atlas_sub.add_parser("report", help="check the sessions of a --record file")
    areport.add_argument("file", help="a file written by `labstream atlas serve --record`")
    areport.add_argument("--json", action="store_true", help="machine-readable report")
    areport.add_argument("--verbose", action="store_true", help="also list passed checks")
    areport.add_argument("--plot", metavar="FILE", help="draw the data each session received")
    areport.set_defaults(func=_atlas_report)
    _add_reading(atlas_sub)


def _atlas_serve(args: argparse.Namespace) -> int:
    from ..testing.atlas import AtlasFaultPlan, serve

    faults = AtlasFaultPlan(
        unavailable_fraction=args.unavailable_fraction, latency_s=args.latency, seed=args.seed
    )
    serve(
        args.host,
        args.port,
        args.key_generator_port,
        args.record,
        faults=faults,
        json_lines=args.json,
    )
    return 0


def _atlas_report(args: argparse.Namespace) -> int:
    import json

    from ..testing.atlas import load_record
    from ..testing.atlas_checker import check_sessions, format_report

    require_plot(args.plot)
    reports = check_sessions(load_record(args.file))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        print(format_report(reports, verbose=args.verbose))
    if args.plot:
        from .plot import plot_atlas_record

        print(f"plot written to {plot_atlas_record(args.file, args.plot, reports=reports)}")
    return 0 if all(r.ok for r in reports) else 1


def _add_reading(atlas_sub: Any) -> None:
    """Register ``verify`` and ``sessions`` under ``labstream atlas``."""
    verify = atlas_sub.add_parser(
        "verify",
        help="read a session back from a Stream API and check what the server holds",
    )
    verify.add_argument(
        "session",
        nargs="?",
        default=None,
        help="session key, identifier or labstream data_id (default: the newest session)",
    )
    _common(verify)
    verify.add_argument(
        "--idle",
        type=float,
        default=2.0,
        metavar="S",
        help="stop reading after S seconds without a packet (default 2)",
    )
    verify.add_argument(
        "--against",
        metavar="FILE",
        help="also compare every channel with this pushed log (CSV or Parquet), row by row",
    )
    verify.add_argument(
        "--time-unit",
        choices=("s", "ms", "us", "ns"),
        default="s",
        help="unit of the log's epoch time column, as given to push (default s)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.add_argument("--verbose", action="store_true", help="also list passed checks")
    verify.set_defaults(func=_verify)
    sessions = atlas_sub.add_parser("sessions", help="the sessions a Stream API holds")
    _common(sessions)
    sessions.add_argument("--json", action="store_true", help="machine-readable list")
    sessions.set_defaults(func=_sessions)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default="localhost:13579", metavar="HOST:PORT", help=_SERVER_HELP
    )
    parser.add_argument(
        "--data-source", default="Default", help="ATLAS data source (default Default)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per RPC (default 10)"
    )


def _verify(args: argparse.Namespace) -> int:
    from .atlas_verify import (
        VerifyError,
        compare_with_log,
        format_compared,
        format_verified,
        verify,
    )

    try:
        result = verify(
            args.server,
            args.session,
            data_source=args.data_source,
            idle_s=args.idle,
            timeout_s=args.timeout,
        )
        compared = (
            compare_with_log(result.report, args.against, time_unit=args.time_unit)
            if args.against
            else []
        )
    except VerifyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        answer = result.to_json()
        if args.against:
            answer["compared_with"] = {
                "file": args.against,
                "channels": [c.to_json() for c in compared],
            }
        print(json.dumps(answer, indent=2))
    else:
        print(format_verified(result, args.server, verbose=args.verbose))
        if args.against:
            print(format_compared(compared, args.against))
    return 0 if result.clean and all(c.same for c in compared) else 1


def _sessions(args: argparse.Namespace) -> int:
    from .atlas_verify import VerifyError, list_sessions

    try:
        found = list_sessions(args.server, args.data_source, timeout_s=args.timeout)
    except VerifyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps([s.to_json() for s in found], indent=2))
        return 0
    if not found:
        print(f"{args.server} holds no session of data source {args.data_source!r}")
    for s in found:
        state = "ended" if s.is_complete else "open"
        data_id = s.details.get("labstream_data_id")
        extra = f", labstream data_id {data_id}" if data_id else ""
        streams = ", ".join(repr(x) for x in s.info.streams) or "none"
        print(f"{s.key}  {state:5}  {s.identifier!r}{extra}; named streams {streams}")
    return 0
