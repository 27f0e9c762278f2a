"""What several ``labstream`` commands share: exit codes, the usage error, how a command speaks,
the library's log on stderr, the configuration resolved into destinations and a streamer, and
the parser arguments common to more than one command.

Whatever goes wrong is said in a sentence with a distinct exit code, never as a traceback: 0
everything done, 1 a destination did not get everything (or a check failed), 2 bad input or
usage, 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .. import StreamReport, TimeseriesStreamer
    from .config import Resolved

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Destinations",
    "UsageError",
    "add_config_arg",
    "add_destination_args",
    "add_read_args",
    "add_run_args",
    "add_stream_args",
    "atlas_settings",
    "destination_identities",
    "destinations_json",
    "library_logging",
    "make_streamer",
    "print_json",
    "read_options",
    "require_plot",
    "resolve_config",
    "say",
    "select_destinations",
]

EXIT_OK = 0

EXIT_INCOMPLETE = 1

EXIT_USAGE = 2

EXIT_INTERRUPTED = 130

EXIT_TERMINATED = 143  # SIGTERM


class UsageError(Exception):
    """A problem to report in words, with the exit code it deserves."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def say(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr, flush=True)


class _LogToStderr(logging.Handler):
    """The library's log lines on the current ``sys.stderr`` (rich's live display redirects it),
    one line each: tracebacks only with ``--verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.DEBUG if verbose else logging.WARNING)
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) if self.verbose else f"{record.name}: {record.getMessage()}"
            print(text, file=sys.stderr, flush=True)
        except Exception:  # logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def library_logging(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("labstream")
    handler = _LogToStderr(verbose)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = logger.level
    logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def require_plot(path: str | None) -> None:
    """``--plot``: say at once what is missing, before any work is done.

    Raises:
        UsageError: matplotlib is not installed, or the file's format is unknown.
    """
    if not path:
        return
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'labstream[plot]'"
        ) from exc
    from .plot import FORMATS

    if Path(path).suffix.lower() not in FORMATS:
        raise UsageError(
            f"--plot {path}: cannot tell the image format; use one of {', '.join(sorted(FORMATS))}"
        )


def _flags(args: argparse.Namespace) -> dict[str, object]:
    """Command-line values by config key; None where the flag was not given."""
    atlas = getattr(args, "atlas", None)
    flags: dict[str, object] = {
        "atomscale.endpoint": getattr(args, "endpoint", None),
        "atomscale.api_key": getattr(args, "api_key", None),
        "atlas.address": atlas if isinstance(atlas, str) else None,
        "atlas.key_generator": getattr(args, "atlas_key_generator", None),
    }
    for key, attr in (
        ("push.points_per_chunk", "points_per_chunk"),
        ("push.project", "project"),
        ("push.physical_sample", "physical_sample"),
        ("push.timezone", "timezone"),
        ("push.finalize_timeout", "finalize_timeout"),
        ("push.max_pending_chunks", "max_pending_chunks"),
        ("push.stall_timeout", "stall_timeout"),
    ):
        flags[key] = getattr(args, attr, None)
    tags = getattr(args, "tag", None)
    flags["push.tags"] = list(tags) if tags else None
    return flags


def resolve_config(args: argparse.Namespace) -> Resolved:
    from .config import ConfigError, resolve

    try:
        return resolve(_flags(args), config_file=getattr(args, "config", None))
    except ConfigError as exc:
        raise UsageError(f"configuration: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Destinations:
    atomscale: bool
    atlas: bool

    @property
    def names(self) -> list[str]:
        return [n for n, on in (("atomscale", self.atomscale), ("atlas", self.atlas)) if on]


def select_destinations(
    args: argparse.Namespace, cfg: Resolved, *, required: bool = True
) -> Destinations:
    """The destinations asked for (``--atomscale``/``--atlas``), else every configured one.

    Raises:
        UsageError: a destination asked for is not configured, or none is (when ``required``).
    """
    want_atomscale = bool(getattr(args, "atomscale", False))
    want_atlas = getattr(args, "atlas", None) is not None
    if not (want_atomscale or want_atlas):
        chosen = Destinations(cfg.atomscale_configured, cfg.atlas_configured)
        if required and not (chosen.atomscale or chosen.atlas):
            raise UsageError(
                "no destination configured: set AS_API_KEY (Atomscale) and/or LABSTREAM_ATLAS "
                "(ATLAS host:port), or give --atlas HOST:PORT, or write them in labstream.toml "
                "(see `labstream config show` and docs/configuration.md)"
            )
        return chosen
    if want_atomscale and not cfg["atomscale.api_key"]:
        raise UsageError(
            "--atomscale needs an API key: set AS_API_KEY (or ATOMSCALE_API_KEY), or api_key "
            "in the [atomscale] section of labstream.toml"
        )
    if want_atlas and not cfg["atlas.address"]:
        raise UsageError(
            "--atlas needs an address: give --atlas HOST:PORT, set LABSTREAM_ATLAS, or "
            "address in the [atlas] section of labstream.toml"
        )
    return Destinations(want_atomscale, want_atlas)


def atlas_settings(cfg: Resolved) -> Any:
    from .. import Atlas

    try:
        return Atlas(
            address=cfg["atlas.address"],
            key_generator_address=cfg["atlas.key_generator"],
            data_source=cfg["atlas.data_source"],
            stream=cfg["atlas.stream"],
            application_name=cfg["atlas.application_name"],
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"ATLAS settings: {exc}") from exc


def destination_identities(cfg: Resolved, dests: Destinations) -> dict[str, str]:
    """Each destination as a string naming where its data goes (never the API key)."""
    out: dict[str, str] = {}
    if dests.atomscale:
        out["atomscale"] = str(cfg["atomscale.endpoint"]).rstrip("/")
    if dests.atlas:
        atlas = atlas_settings(cfg)
        out["atlas"] = f"{atlas.address}/{atlas.data_source}/{atlas.stream}"
    return out


def make_streamer(cfg: Resolved, dests: Destinations) -> TimeseriesStreamer:
    from .. import TimeseriesStreamer
    from ..errors import JournalError
    from ..settings import without_destinations

    atlas = atlas_settings(cfg) if dests.atlas else None
    try:
        # The destinations as resolved here (flags, files, environment): a destination the user
        # did not choose is not added from the environment.
        return TimeseriesStreamer(
            api_key=cfg["atomscale.api_key"] if dests.atomscale else None,
            endpoint=cfg["atomscale.endpoint"],
            points_per_chunk=cfg["push.points_per_chunk"],
            atlas=atlas,
            finalize_timeout=cfg["push.finalize_timeout"],
            clock_sync=bool(cfg["atomscale.clock_sync"]),
            proxy=cfg["atomscale.proxy"],
            environ=without_destinations(os.environ),
        )
    except (ValueError, TypeError, JournalError) as exc:
        raise UsageError(f"cannot start streaming: {exc}") from exc


def _timezone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(
            f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin or UTC "
            "(on Windows, `pip install tzdata` provides them)"
        ) from exc


def read_options(args: argparse.Namespace, cfg: Resolved) -> Any:
    from .logfiles import ReadOptions, parse_instant

    tz = _timezone(cfg["push.timezone"])
    start: float | None = None
    if args.start is not None:
        try:
            start = parse_instant(args.start, tz)
        except ValueError as exc:
            raise UsageError(f"--start: {exc}") from exc
    return ReadOptions(
        time_column=args.time_column,
        time_format=args.time_format,
        time_unit=args.time_unit,
        timezone=tz,
        start=start,
        channels=tuple(args.channel or ()),
        delimiter=args.delimiter,
        encoding=args.encoding,
    )


def destinations_json(report: StreamReport) -> dict[str, Any]:
    """Each destination's part of a report, for ``--json``."""
    return {
        name: {
            "accepted_points": d.points_accepted,
            "delivered_points": d.points_delivered,
            "rejected_points": d.points_rejected,
            "pending_points": d.points_pending,
            "dropped_points": d.points_dropped,
            "retries": d.retries,
            "closed": d.closed,
            "rejections": [
                {"chunk_index": r.chunk_index, "status": r.status, "reason": r.reason}
                for r in d.rejections
            ],
            "last_error": d.last_error,
        }
        for name, d in report.destinations.items()
    }


def print_json(obj: object) -> None:
    import json

    print(json.dumps(obj), flush=True)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read this config file only (default: the user's labstream.toml, then "
        "./labstream.toml; or LABSTREAM_CONFIG)",
    )


def add_destination_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "destinations",
        "Without --atomscale or --atlas, every configured destination is used.",
    )
    group.add_argument("--atomscale", action="store_true", help="use Atomscale")
    group.add_argument("--endpoint", metavar="URL", help="Atomscale API base URL")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help="Atomscale API key; prefer AS_API_KEY (a flag shows in the process list)",
    )
    group.add_argument(
        "--atlas",
        nargs="?",
        const=True,
        metavar="HOST:PORT",
        help="use ATLAS, at this Stream API address or the configured one",
    )
    group.add_argument(
        "--atlas-key-generator",
        metavar="HOST:PORT",
        help="ATLAS key generator (default: the Stream API host, port 15379)",
    )
    add_config_arg(parser)
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show the library's log in detail"
    )


def add_read_args(parser: argparse.ArgumentParser) -> None:
    """How to read a log: shared by push and follow."""
    time_group = parser.add_argument_group("time")
    time_group.add_argument("--time-column", metavar="NAME", help="default: found by name")
    time_group.add_argument(
        "--time-format",
        choices=("auto", "epoch", "iso", "elapsed"),
        default="auto",
        help="how to read the time column (default: from its first value)",
    )
    time_group.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA timezone of datetimes without one, e.g. Europe/Berlin (default: local time)",
    )
    time_group.add_argument(
        "--start",
        metavar="WHEN",
        help="instant of elapsed time 0 (ISO-8601 or epoch seconds), for elapsed-seconds logs",
    )
    time_group.add_argument(
        "--time-unit",
        choices=("s", "ms", "us", "ns"),
        default="s",
        help="unit of epoch times (default s): ms, us or ns for logs that count those since 1970",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--channel",
        action="append",
        metavar="NAME=COLUMN[:UNITS]",
        help="stream this column as this channel (repeatable; default: every numeric column)",
    )
    data.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default: detected)")
    data.add_argument(
        "--encoding", default="utf-8-sig", help="CSV text encoding (default utf-8, BOM or not)"
    )


def add_stream_args(parser: argparse.ArgumentParser) -> None:
    stream = parser.add_argument_group("stream")
    stream.add_argument("--stream-name", metavar="NAME", help="default: the file name")
    stream.add_argument("--physical-sample", metavar="SAMPLE", help="name or id")
    stream.add_argument("--project", metavar="ID", help="Atomscale project id")
    stream.add_argument("--tag", action="append", metavar="TAG", help="repeatable")
    stream.add_argument(
        "--points-per-chunk", type=int, metavar="N", help="rows per chunk (default 100)"
    )


def add_run_args(run: argparse._ArgumentGroup) -> None:
    run.add_argument(
        "--finalize-timeout",
        type=float,
        metavar="S",
        help="how long the end (or Ctrl-C) waits for unconfirmed chunks (default 60)",
    )
    run.add_argument(
        "--max-pending-chunks",
        type=int,
        metavar="N",
        help="reading pauses while a destination holds this many unconfirmed chunks (default 256)",
    )
