"""``labstream atomscale serve`` runs the local Atomscale emulator; ``labstream atomscale show``
says what a running one has stored.

``show`` reads the emulator's ``/_emulator/streams`` readback endpoints (no key needed), never the
points themselves, so it answers at once however much the emulator holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import LabstreamError

__all__ = ["ShowError", "add_commands", "format_stored", "stored"]

DEFAULT_URL = "http://127.0.0.1:8790"
# Chunk-index runs printed per channel; the rest are counted.
_RUNS_SHOWN = 6
# The emulator is asked directly: a proxy from the environment has no business in between.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ShowError(LabstreamError):
    """The emulator could not be asked, or does not hold what was asked for."""


def add_commands(sub: Any) -> None:
    """Register ``atomscale serve`` and ``atomscale show``."""
    atomscale = sub.add_parser("atomscale", help="the local Atomscale emulator")
    atomscale_sub = atomscale.add_subparsers(dest="action", required=True)
    serve = atomscale_sub.add_parser("serve", help="run the emulator until Ctrl-C")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8790, help="port (default 8790)")
    serve.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    serve.add_argument(
        "--fail-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of chunk uploads answered 503 (or 429 with --retry-after), 0 to 1",
    )
    serve.add_argument(
        "--fail-every", type=int, default=0, metavar="N", help="fail every N-th chunk upload"
    )
    serve.add_argument(
        "--retry-after",
        type=float,
        default=None,
        metavar="S",
        help="answer failures 429 with Retry-After: S",
    )
    serve.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds added per request"
    )
    serve.add_argument(
        "--drop-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of chunk uploads whose connection is closed without an answer, 0 to 1",
    )
    serve.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed fails the same requests"
    )
    serve.add_argument(
        "--capacity",
        type=int,
        default=0,
        metavar="N",
        help="handle at most N chunk requests at once; answer the rest 429 + Retry-After",
    )
    serve.add_argument(
        "--request-log",
        type=int,
        default=10_000,
        metavar="N",
        help="keep the last N requests (and at most 64 MiB of their bodies) for "
        "/_emulator/requests; older ones are dropped and counted (default 10000). Chunk data "
        "is kept in a temporary file, not in memory",
    )
    serve.add_argument(
        "--json",
        action="store_true",
        help="a JSON line when ready (url, port) and one on exit (what the emulator holds)",
    )
    serve.set_defaults(func=_atomscale_serve)
    _add_show(atomscale_sub)


def _atomscale_serve(args: argparse.Namespace) -> int:
    from ..testing.atomscale import FaultPlan, serve

    faults = FaultPlan(
        fail_fraction=args.fail_fraction,
        fail_every=args.fail_every,
        retry_after_s=args.retry_after,
        latency_s=args.latency,
        capacity=args.capacity,
        drop_connection_fraction=args.drop_fraction,
        seed=args.seed,
    )
    serve(
        args.host,
        args.port,
        faults,
        api_key=args.api_key,
        request_log=args.request_log,
        json_lines=args.json,
    )
    return 0


def _add_show(atomscale_sub: Any) -> None:
    """Register ``show`` under ``labstream atomscale``."""
    show = atomscale_sub.add_parser("show", help="what a running emulator has stored")
    show.add_argument("data_id", nargs="?", default=None, help="one stream (default: every stream)")
    show.add_argument(
        "--url", default=DEFAULT_URL, help=f"the emulator's URL (default {DEFAULT_URL})"
    )
    show.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per request (default 10)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable")
    show.set_defaults(func=_show)


def stored(url: str, data_id: str | None = None, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The emulator's summary (``GET /_emulator/streams``) with each channel's chunk-index runs,
    narrowed to `data_id` when given; raises `ShowError`."""
    base = url.rstrip("/")
    summary = _get(base, "/_emulator/streams", timeout_s)
    streams = summary.get("streams", {})
    if data_id is not None:
        if data_id not in streams:
            raise ShowError(f"{base} holds no stream {data_id!r} ({len(streams)} streams)")
        streams = {data_id: streams[data_id]}
    summary["streams"] = {
        key: _get(base, f"/_emulator/streams/{urllib.parse.quote(key)}?points=false", timeout_s)
        for key in streams
    }
    return summary


def format_stored(summary: dict[str, Any], url: str) -> str:
    """`stored`'s answer as text: a line per stream, then one per channel."""
    streams = summary["streams"]
    points = sum(c["points"] for s in streams.values() for c in s["channels"].values())
    logged = summary.get("requests_logged", summary["requests"])
    lines = [
        f"{url.rstrip('/')}: {_n(len(streams), 'stream')}, {_n(points, 'point')}; "
        f"{_n(summary['requests'], 'request')} received, the last {logged:,} logged"
    ]
    for data_id, s in streams.items():
        state = "finalized" if s["finalized"] else "open"
        channels = s["channels"]
        total = sum(c["points"] for c in channels.values())
        lines.append(
            f"{data_id}  {s['stream_name']!r}  {state}  {_n(len(channels), 'channel')}, "
            f"{_n(total, 'point')} in {_n(s['chunks'], 'chunk')}"
        )
        if s["chunks_after_finalize"]:
            lines.append(f"  {_n(s['chunks_after_finalize'], 'channel chunk')} after finalize")
        width = max((len(name) for name in channels), default=0)
        for name, c in channels.items():
            units = f"  [{c['units']}]" if c["units"] else ""
            lines.append(
                f"  {name:<{width}}  {_n(c['points'], 'point')} in {_n(c['chunks'], 'chunk')}"
                f", indexes {_runs(c['chunk_indexes'])}{units}"
            )
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    try:
        summary = stored(args.url, args.data_id, timeout_s=args.timeout)
    except ShowError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_stored(summary, args.url))
    return 0


def _get(base: str, path: str, timeout_s: float) -> dict[str, Any]:
    try:
        with _DIRECT.open(base + path, timeout=timeout_s) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except urllib.error.HTTPError as exc:
        message = f"{base}{path} answered {exc.code}; is it `labstream atomscale serve`?"
        raise ShowError(message) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ShowError(f"cannot reach the Atomscale emulator at {base}: {reason}") from exc
    except ValueError as exc:
        raise ShowError(f"{base}{path} did not answer JSON ({exc})") from exc


def _runs(runs: list[list[int]]) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:_RUNS_SHOWN])
    if len(runs) > _RUNS_SHOWN:
        text += f", … ({len(runs) - _RUNS_SHOWN} more runs)"
    return text or "none"


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
