"""The ``labstream`` command: push instrument logs, check destinations, show the configuration,
and run the demo, the local emulators and the ATLAS protocol report.

argparse keeps the CLI dependency-free; each subcommand is a thin layer over the library and the
CLI's own modules: :mod:`.config` (what to connect to), :mod:`.logfiles` (what to send),
:mod:`.progress` (what was achieved). Whatever goes wrong is said in a sentence with a distinct
exit code, never as a traceback: 0 everything done, 1 a destination did not get
everything (or a check failed), 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .. import StreamReport, TimeseriesStreamer
    from ..destinations.base import Finding
    from ..report import DestinationReport
    from .config import Resolved
    from .logfiles import LogFile, ScanResult
    from .progress import Part, ProgressView, PushState

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # SIGTERM

#: Test seam: called with the number of chunks pushed so far after each chunk of ``push``.
#: Tests raise KeyboardInterrupt from it to interrupt a push deterministically.
AFTER_CHUNK: Callable[[int], None] | None = None


class _UsageError(Exception):
    """A problem to report in words, with the exit code it deserves."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _say(message: str, stream: TextIO | None = None) -> None:
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
def _library_logging(verbose: bool) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------------
# Existing subcommands: demo, emulators, ATLAS report


def _require_plot(path: str | None) -> None:
    """``--plot``: say at once what is missing, before any work is done.

    Raises:
        _UsageError: matplotlib is not installed, or the file's format is unknown.
    """
    if not path:
        return
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise _UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'labstream[plot]'"
        ) from None
    from .plot import FORMATS

    if Path(path).suffix.lower() not in FORMATS:
        raise _UsageError(
            f"--plot {path}: cannot tell the image format; use one of {', '.join(sorted(FORMATS))}"
        )


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoResult, run_demo

    _require_plot(args.plot)
    result = DemoResult()
    ok = run_demo(
        seconds=args.seconds,
        rate_hz=args.rate,
        points_per_chunk=args.points_per_chunk,
        fail_fraction=args.fail_fraction,
        drop_fraction=args.drop_fraction,
        pace_s=args.pace,
        plot=args.plot,
        out=_say if args.json else print,  # with --json, the sentences go to stderr
        result=result,
    )
    code = 0 if ok else 1
    if args.json:
        assert result.report is not None
        _print_json(
            {
                "ok": ok,
                "exit_code": code,
                "data_id": result.data_id,
                "points_per_chunk": result.points_per_chunk,
                "chunks": result.chunks,
                "elapsed_s": round(result.elapsed_s, 3),
                "clock_offset_s": result.clock_offset_s,
                "channels": result.channels,
                "destinations": _destinations_json(result.report),
                "faults_injected": result.faults,
                "atlas_session_clean": result.atlas_session_clean,
                "finalized": result.finalized,
                "plot": result.plot,
            }
        )
    return code


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

    _require_plot(args.plot)
    reports = check_sessions(load_record(args.file))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        print(format_report(reports, verbose=args.verbose))
    if args.plot:
        from .plot import plot_atlas_record

        print(f"plot written to {plot_atlas_record(args.file, args.plot, reports=reports)}")
    return 0 if all(r.ok for r in reports) else 1


# --------------------------------------------------------------------------------------------------
# Configuration and destinations (shared by push, check, config show)


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


def _resolve(args: argparse.Namespace) -> Resolved:
    from .config import ConfigError, resolve

    try:
        return resolve(_flags(args), config_file=getattr(args, "config", None))
    except ConfigError as exc:
        raise _UsageError(f"configuration: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Destinations:
    atomscale: bool
    atlas: bool

    @property
    def names(self) -> list[str]:
        return [n for n, on in (("atomscale", self.atomscale), ("atlas", self.atlas)) if on]


def _select(args: argparse.Namespace, cfg: Resolved, *, required: bool = True) -> _Destinations:
    """The destinations asked for (``--atomscale``/``--atlas``), else every configured one.

    Raises:
        _UsageError: a destination asked for is not configured, or none is (when ``required``).
    """
    want_atomscale = bool(getattr(args, "atomscale", False))
    want_atlas = getattr(args, "atlas", None) is not None
    if not (want_atomscale or want_atlas):
        chosen = _Destinations(cfg.atomscale_configured, cfg.atlas_configured)
        if required and not (chosen.atomscale or chosen.atlas):
            raise _UsageError(
                "no destination configured: set AS_API_KEY (Atomscale) and/or LABSTREAM_ATLAS "
                "(ATLAS host:port), or give --atlas HOST:PORT, or write them in labstream.toml "
                "(see `labstream config show` and docs/configuration.md)"
            )
        return chosen
    if want_atomscale and not cfg["atomscale.api_key"]:
        raise _UsageError(
            "--atomscale needs an API key: set AS_API_KEY (or ATOMSCALE_API_KEY), or api_key "
            "in the [atomscale] section of labstream.toml"
        )
    if want_atlas and not cfg["atlas.address"]:
        raise _UsageError(
            "--atlas needs an address: give --atlas HOST:PORT, set LABSTREAM_ATLAS, or "
            "address in the [atlas] section of labstream.toml"
        )
    return _Destinations(want_atomscale, want_atlas)


def _atlas_settings(cfg: Resolved) -> Any:
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
        raise _UsageError(f"ATLAS settings: {exc}") from None


def _identities(cfg: Resolved, dests: _Destinations) -> dict[str, str]:
    """Each destination as a string naming where its data goes (never the API key)."""
    out: dict[str, str] = {}
    if dests.atomscale:
        out["atomscale"] = str(cfg["atomscale.endpoint"]).rstrip("/")
    if dests.atlas:
        atlas = _atlas_settings(cfg)
        out["atlas"] = f"{atlas.address}/{atlas.data_source}/{atlas.stream}"
    return out


def _make_streamer(cfg: Resolved, dests: _Destinations) -> TimeseriesStreamer:
    from .. import TimeseriesStreamer
    from ..errors import JournalError
    from ..settings import without_destinations

    atlas = _atlas_settings(cfg) if dests.atlas else None
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
        raise _UsageError(f"cannot start streaming: {exc}") from None


def _timezone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _UsageError(
            f"unknown timezone {name!r}: use an IANA name such as Europe/Berlin or UTC "
            "(on Windows, `pip install tzdata` provides them)"
        ) from None


def _local_zone_text() -> str:
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return f"{now.tzname()}, UTC{offset[:3]}:{offset[3:]}"


# --------------------------------------------------------------------------------------------------
# labstream config show


def _config_show(args: argparse.Namespace) -> int:
    resolved = _resolve(args)
    if args.json:
        import json

        print(json.dumps(resolved.to_json(), indent=1))
    else:
        print(resolved.format())
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# labstream check


def _check(args: argparse.Namespace) -> int:
    import json

    import anyio

    cfg = _resolve(args)
    ok = True
    results: dict[str, Any] = {}
    for name, heading, probe in _probes(cfg, _select(args, cfg), args.timeout):
        if not args.json:
            print(heading, flush=True)
        findings = anyio.run(probe)
        if not args.json:
            for finding in findings:
                print(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.text}", flush=True)
        passed = all(f.ok for f in findings)
        ok &= passed
        results[name] = {
            "ok": passed,
            "checks": [{"ok": f.ok, "message": f.text} for f in findings],
        }
    if args.json:
        print(json.dumps({"ok": ok, "destinations": results}, indent=1))
    else:
        print("all destinations ok" if ok else "some destinations have problems (see above)")
    return EXIT_OK if ok else EXIT_INCOMPLETE


_PREFLIGHT_S = 3.0  # a push's quick look at each destination before it starts


# --------------------------------------------------------------------------------------------------
# labstream push


class _StalledError(Exception):
    """A destination confirmed nothing for ``stall_timeout`` seconds while holding chunks."""


@dataclass(slots=True)
class _Planned:
    log: LogFile
    scan: ScanResult
    stream_name: str


def _read_options(args: argparse.Namespace, cfg: Resolved) -> Any:
    from .logfiles import ReadOptions, parse_instant

    tz = _timezone(cfg["push.timezone"])
    start: float | None = None
    if args.start is not None:
        try:
            start = parse_instant(args.start, tz)
        except ValueError as exc:
            raise _UsageError(f"--start: {exc}") from None
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


def _stream_name(args: argparse.Namespace, path: Path) -> str:
    if args.stream_name and len(args.files) > 1:
        return f"{args.stream_name} - {path.stem}"
    return str(args.stream_name or path.stem)


def _describe(plan: _Planned, cfg: Resolved) -> str:
    log, scan = plan.log, plan.scan
    parts = [f"{log.path}: {scan.rows:,} rows, time column {log.time_column!r} ({log.time_format})"]
    if scan.first_time is not None and scan.last_time is not None:
        first = datetime.fromtimestamp(scan.first_time).astimezone().isoformat(timespec="seconds")
        span = scan.last_time - scan.first_time
        parts.append(f"  from {first}, {span:,.1f} s")
    chans = ", ".join(c.name + (f" [{c.units}]" if c.units else "") for c in log.channels)
    parts.append(f"  channels: {chans}")
    if log.skipped_columns:
        parts.append("  not numbers, skipped: " + ", ".join(map(repr, log.skipped_columns)))
    if scan.naive_times:
        zone = cfg["push.timezone"] or f"local time ({_local_zone_text()})"
        parts.append(
            f"  note: the times have no timezone; read as {zone}. Use --timezone to choose."
        )
    return "\n".join(parts)


def _push(args: argparse.Namespace) -> int:
    from .logfiles import LogFileError, open_log

    cfg = _resolve(args)
    options = _read_options(args, cfg)
    plans: list[_Planned] = []
    bad = 0
    for name in args.files:
        try:
            log = open_log(name, options)
            scan = log.scan()
        except LogFileError as exc:
            _say(f"error: {exc}")
            bad += 1
            continue
        plan = _Planned(log, scan, _stream_name(args, Path(name)))
        plans.append(plan)
        if not args.quiet:
            _say(_describe(plan, cfg))
    if bad:
        _say(f"{bad} file(s) cannot be read as asked; nothing was sent.")
        return EXIT_USAGE
    if args.dry_run:
        _say("dry run: nothing was sent.")
        if args.json:
            for plan in plans:
                _print_json(
                    {
                        "file": str(plan.log.path),
                        "rows": plan.scan.rows,
                        "time_column": plan.log.time_column,
                        "time_format": plan.log.time_format,
                        "first_time": plan.scan.first_time,
                        "last_time": plan.scan.last_time,
                        "channels": [
                            {"name": c.name, "column": c.column, "units": c.units}
                            for c in plan.log.channels
                        ],
                        "skipped_columns": list(plan.log.skipped_columns),
                        "dry_run": True,
                    }
                )
        return EXIT_OK
    dests = _select(args, cfg)
    _preflight(cfg, dests)
    identities = _identities(cfg, dests)
    streamer = _make_streamer(cfg, dests)
    code = EXIT_OK
    try:
        for plan in plans:
            code = max(code, _push_file(streamer, plan, cfg, args, identities))
            if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
                break
    finally:
        streamer.close(timeout=cfg["push.finalize_timeout"])
    return code


def _probes(
    cfg: Resolved, dests: _Destinations, timeout: float
) -> list[tuple[str, str, Callable[[], Awaitable[list[Finding]]]]]:
    """The library's probes for the selected destinations: (name, heading, probe)."""
    from ..destinations.proxy import redact_proxy
    from ..settings import proxy_for

    probes: list[tuple[str, str, Callable[[], Awaitable[list[Finding]]]]] = []
    if dests.atomscale:
        from ..destinations.atomscale.probe import probe as probe_atomscale

        endpoint = str(cfg["atomscale.endpoint"]).rstrip("/")
        key, key_source = str(cfg["atomscale.api_key"]), cfg.source("atomscale.api_key")
        proxy = cfg["atomscale.proxy"]
        used = str(proxy) if proxy is not None else proxy_for(endpoint)
        heading = f"atomscale  {endpoint} (proxy: {redact_proxy(used) if used else 'none'})"
        probes.append(
            (
                "atomscale",
                heading,
                lambda: probe_atomscale(
                    endpoint, key, key_source=key_source, timeout_s=timeout, proxy=used
                ),
            )
        )
    if dests.atlas:
        from ..destinations.atlas.probe import probe as probe_atlas

        settings = _atlas_settings(cfg)
        heading = (
            f"atlas      {settings.address} (key generator {settings.key_generator_address}, "
            f"data source {settings.data_source})"
        )
        probes.append(("atlas", heading, lambda: probe_atlas(settings, timeout)))
    return probes


_SHOWN_NAMES = {"atomscale": "Atomscale", "atlas": "ATLAS"}


def _preflight(cfg: Resolved, dests: _Destinations) -> None:
    """Say at once, on stderr, which destination cannot be reached (the checks of `labstream
    check`, a few seconds at most): the push still goes on, and that destination's rows wait in
    the journal, rather than a stall timeout saying so minutes later."""
    import anyio

    for name, _, probe in _probes(cfg, dests, _PREFLIGHT_S):
        problem = next((f.text for f in anyio.run(probe) if not f.ok), None)
        if problem is None:
            continue
        end = "" if problem.endswith(("?", ".")) else "."
        shown = _SHOWN_NAMES[name]
        _say(
            f"warning: {shown}: {problem}{end} The push goes on; {shown}'s rows wait in the "
            "journal until it answers (`labstream spool status` shows them).",
            sys.stderr,
        )


def _state_for(
    plan: _Planned, cfg: Resolved, identities: dict[str, str], options: Any, ppc: int
) -> PushState:
    from .config import user_state_dir
    from .progress import PushState

    log = plan.log
    identity = {
        "file": str(log.path.resolve()),
        "size": log.size,
        "mtime_ns": log.mtime_ns,
        "destinations": sorted(f"{k}={v}" for k, v in identities.items()),
        "time": [log.time_column, log.time_format, str(options.timezone), options.start],
        "channels": [[c.name, c.column, c.units] for c in log.channels],
        "points_per_chunk": ppc,
    }
    return PushState.load_or_new(
        user_state_dir() / "push",
        identity,
        file=str(log.path.resolve()),
        size=log.size,
        mtime_ns=log.mtime_ns,
        destinations=sorted(identities),
        total_chunks=math.ceil(plan.scan.rows / ppc),
        total_rows=plan.scan.rows,
        points_per_chunk=ppc,
    )


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _explain_resume(state: PushState, first: int, log: LogFile) -> str:
    ppc = state.points_per_chunk
    previous = state.parts[-1]
    lines = [
        f"{log.path}: resuming the push of {_when(previous.started_at)} "
        f"(stream {previous.data_id})."
    ]
    if first:
        lines.append(
            f"  rows 1-{min(first * ppc, state.total_rows):,} were confirmed by every "
            "destination and are not sent again."
        )
    else:
        lines.append("  no row was confirmed by every destination: every row is sent again.")
    if first < state.total_chunks:
        lines.append(
            f"  rows {first * ppc + 1:,}-{state.total_rows:,} go to a NEW stream: the earlier "
            "one takes no more (it was finalized, or labstream's journal does not hold it)."
        )
    for dest, mark in state.settled.items():
        if mark > first:
            lines.append(
                f"  {dest} had also confirmed rows up to {min(mark * ppc, state.total_rows):,}: "
                "those rows will be in both streams there."
            )
    if not previous.finalized:
        lines.append(
            f"  stream {previous.data_id} was not closed everywhere by the earlier run; "
            "labstream's journal finishes it if it still holds its data."
        )
    return "\n".join(lines)


def _push_file(
    streamer: TimeseriesStreamer,
    plan: _Planned,
    cfg: Resolved,
    args: argparse.Namespace,
    identities: dict[str, str],
) -> int:
    from ..errors import LabstreamError
    from .progress import Part

    log, scan = plan.log, plan.scan
    ppc = streamer.points_per_chunk
    state = _state_for(plan, cfg, identities, log.options, ppc)
    if args.restart:
        state.forget()
        state = _state_for(plan, cfg, identities, log.options, ppc)
    if state.complete:
        ids = ", ".join(p.data_id for p in state.parts)
        _say(
            f"{log.path}: already pushed completely to {', '.join(state.destinations)} "
            f"({_when(state.updated_at)}, stream {ids}); nothing to do. "
            "Use --restart to push it again as a new stream."
        )
        if args.json:
            _print_json({"file": str(log.path), "already_complete": True, "exit_code": EXIT_OK})
        return EXIT_OK
    if scan.rows == 0:
        _say(f"{log.path}: no data rows; nothing to push.")
        if args.json:
            _print_json({"file": str(log.path), "rows": 0, "exit_code": EXIT_OK})
        return EXIT_OK
    through = streamer.journaled_through(state.parts[-1].data_id) if state.parts else None
    if through is not None:
        # The earlier run died (kill -9, power cut) before finalizing its stream anywhere: the
        # journal knows up to which chunk it had everything safe; go on in that stream.
        part = state.parts[-1]
        return _push_rows(
            streamer, plan, cfg, args, identities, state, part, through, continuing=True
        )
    notes, adopted = _settle_adopted(
        streamer, state, min(10.0, float(cfg["push.finalize_timeout"]))
    )
    first = state.resume_from
    if state.parts:
        _say("\n".join([_explain_resume(state, first, log), *notes]))
    if first >= state.total_chunks:
        # Nothing left to send; what the journal holds of the earlier stream may still be on its
        # way: the push is complete only once it arrived.
        if adopted is not None:
            stall_s = float(cfg["push.stall_timeout"])
            behind = _journal_backlog(streamer, adopted.data_id, stall_s)
            if behind:
                _say(_backlog_text(log, adopted.data_id, behind))
                if args.json:
                    _print_json({"file": str(log.path), "complete": False, "exit_code": 1})
                return EXIT_INCOMPLETE
        state.complete = True
        state.save()
        _say(f"{log.path}: every row was already confirmed by every destination.")
        code = EXIT_OK if not any(state.rejected.values()) else EXIT_INCOMPLETE
        if args.json:
            _print_json({"file": str(log.path), "already_complete": True, "exit_code": code})
        return code
    name = plan.stream_name
    if state.parts:
        name = f"{name} (from row {first * ppc + 1})"
    tags = cfg["push.tags"] or None
    try:
        data_id = streamer.initialize(
            name,
            physical_sample=cfg["push.physical_sample"],
            project_id=cfg["push.project"],
            tags=tags,
        )
    except LabstreamError as exc:
        _say(f"error: cannot create the stream for {log.path}: {exc}")
        return EXIT_INCOMPLETE
    part = Part(data_id, first, name, time.time())
    state.parts.append(part)
    state.save()
    return _push_rows(streamer, plan, cfg, args, identities, state, part, -1, adopted)


def _push_rows(
    streamer: TimeseriesStreamer,
    plan: _Planned,
    cfg: Resolved,
    args: argparse.Namespace,
    identities: dict[str, str],
    state: PushState,
    part: Part,
    through: int,
    adopted: StreamReport | None = None,
    *,
    continuing: bool = False,
) -> int:
    """Push the file's chunks after ``part``'s chunk ``through`` into ``part``'s stream, finalize
    it, and say what happened."""
    from ..errors import StreamStateError
    from .logfiles import LogFileError
    from .progress import ProgressView

    log, scan = plan.log, plan.scan
    ppc = streamer.points_per_chunk
    data_id = part.data_id
    start = part.first_chunk + through + 1  # the first chunk of the file this run pushes
    already = {d: 0 for d in identities}  # what the stream held before this run (recovered)
    if continuing:
        part.chunks_pushed = through + 1
        held = streamer.report(data_id)
        already = {d: held[d].points_accepted for d in identities if d in held.destinations}
        _say(
            f"{log.path}: continuing stream {data_id}, left unfinished by the earlier run: "
            f"rows up to {min(start * ppc, state.total_rows):,} are delivered or in labstream's "
            f"journal; rows from {start * ppc + 1:,} on follow in the same stream."
        )
        state.save()
    rows_now = max(scan.rows - start * ppc, 0)
    totals = {d: rows_now * len(log.channels) + already.get(d, 0) for d in identities}
    view = ProgressView(
        f"{log.path.name} ({data_id})",
        totals,
        enabled=not (args.quiet or args.no_progress or args.json),
    )
    tracker = _Tracker(streamer, data_id, state, part, view, cfg)
    code = EXIT_OK
    try:
        try:
            for index, batch in enumerate(log.batches(ppc)):
                if index < start:
                    continue
                payload = {
                    c.name: {"timestamps": batch.timestamps, "values": batch.values[c.name]}
                    | ({"units": c.units} if c.units else {})
                    for c in log.channels
                }
                try:
                    streamer.push_multi(data_id, index - part.first_chunk, payload)
                except StreamStateError:
                    raise
                except (ValueError, TypeError) as exc:
                    raise LogFileError(
                        log.path,
                        f"rows up to {log.row_word} {batch.last_line} cannot be sent: {exc}",
                        line=batch.first_line,
                        row_word=log.row_word,
                    ) from None
                part.chunks_pushed += 1
                if AFTER_CHUNK is not None:
                    AFTER_CHUNK(part.chunks_pushed)
                tracker.after_push()
            tracker.drain()
        except (KeyboardInterrupt, SystemExit) as exc:
            # SystemExit: SIGTERM, which the streamer turns into SystemExit(143).
            code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
            _say(
                f"\ninterrupted: finalizing stream {data_id} (waiting up to "
                f"{cfg['push.finalize_timeout']:g} s for unconfirmed chunks; Ctrl-C again to "
                "stop at once)"
            )
        except LogFileError as exc:
            code = EXIT_USAGE
            _say(f"error: {exc}")
        except _StalledError as exc:
            code = EXIT_INCOMPLETE
            _say(f"error: {exc}")
    finally:
        report = tracker.finish(code)
        view.close()
    if adopted is not None:  # the earlier stream's rows the journal still delivers
        behind = _journal_backlog(streamer, adopted.data_id, tracker.stall_s)
        if behind:
            state.complete = False
            state.save()
            _say(_backlog_text(log, adopted.data_id, behind))
            if code == EXIT_OK:
                code = EXIT_INCOMPLETE
    if not args.json:
        print(_summary(state, report, log, totals))
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        again = "without --restart " if args.restart else "again "
        _say(f"Run the same command {again}to resume where this run stopped.")
    elif code == EXIT_OK and not state.complete:
        code = EXIT_INCOMPLETE
        down = {n: e for n, e in tracker.down.items() if report[n].chunks_pending}
        for name, why in down.items():
            _say(
                f"{log.path}: {name} confirmed nothing for {tracker.stall_s:g} s"
                f"{f' (last error: {why})' if why else ''}; its {report[name].points_pending:,} "
                "point(s) not confirmed stay in labstream's journal: run `labstream spool "
                "resume` (or this command again) once it is back."
            )
        if not down:
            _say(
                f"{log.path}: not every destination confirmed every row; run the same command "
                "again to send the rest."
            )
    if args.json:
        _print_json(_summary_json(state, report, log, code))
    return code


def _summary(state: PushState, report: StreamReport, log: LogFile, totals: dict[str, int]) -> str:
    from .progress import summary_table

    part = state.parts[-1]
    earlier_rows = part.first_chunk * state.points_per_chunk
    earlier = {d: min(earlier_rows, state.total_rows) * len(log.channels) for d in totals}
    return summary_table(
        report, earlier=earlier if part.first_chunk else None, totals=totals, title=str(log.path)
    )


def _summary_json(
    state: PushState, report: StreamReport, log: LogFile, code: int
) -> dict[str, Any]:
    """``push --json``: one object per file."""
    part = state.parts[-1]
    return {
        "file": str(log.path),
        "data_id": report.data_id,
        "stream_name": part.stream_name,
        "rows": state.total_rows,
        "first_row": part.first_chunk * state.points_per_chunk + 1,
        "complete": state.complete,
        "exit_code": code,
        "destinations": _destinations_json(report),
    }


def _destinations_json(report: StreamReport) -> dict[str, Any]:
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


def _print_json(obj: object) -> None:
    import json

    print(json.dumps(obj), flush=True)


def _settle_adopted(
    streamer: TimeseriesStreamer, state: PushState, wait_s: float
) -> tuple[list[str], StreamReport | None]:
    """Count what labstream's journal holds or delivered for the previous run's stream.

    When the earlier run ended with chunks unconfirmed, the streamer (same journal, same
    destinations) adopts that stream at start and delivers them there. A destination is settled
    up to everything that run pushed when the journal delivered it all, or when the journal still
    holds every chunk not yet confirmed (it will deliver them to that stream; sending them again
    to a new stream would duplicate them). Returns notes for the user, and the earlier stream's
    report when the journal still holds some of it (settled, but not delivered yet).
    """
    from ..errors import StreamStateError

    if not state.parts:
        return [], None
    previous = state.parts[-1]
    try:
        report = streamer.report(previous.data_id)
    except StreamStateError:
        return [], None  # not in the journal: nothing of it is pending
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if all(d.chunks_pending == 0 for d in report.destinations.values()):
            break
        time.sleep(0.05)
        report = streamer.report(previous.data_id)
    mark = previous.first_chunk + previous.chunks_pushed
    notes = []
    for name, rep in report.destinations.items():
        before = state.settled.get(name, 0)
        if before >= mark:
            continue
        unconfirmed = mark - max(before, previous.first_chunk)
        rejected = [previous.first_chunk + r.chunk_index for r in rep.rejections]
        if rep.chunks_pending == 0 and rep.chunks_dropped == 0:
            state.settle(name, mark, rejected)
        elif rep.chunks_pending == rep.chunks_accepted == unconfirmed and not rep.chunks_dropped:
            state.settle(name, mark, rejected)
            notes.append(
                f"  {name}: labstream's journal still holds the last {unconfirmed} chunk(s) of "
                f"stream {previous.data_id} and delivers them there; they are not sent again."
            )
    state.save()
    held = any(d.chunks_pending or not d.closed for d in report.destinations.values())
    return notes, report if held else None


def _journal_backlog(
    streamer: TimeseriesStreamer, data_id: str, stall_s: float
) -> dict[str, DestinationReport]:
    """Wait while labstream's journal delivers what it holds of an earlier stream and closes it;
    return the destinations not done with it once none of them moved for ``stall_s``."""
    last: dict[str, tuple[tuple[int, bool], float]] = {}
    finalized = False
    while True:
        report = streamer.report(data_id)
        now = time.monotonic()
        behind = {n: d for n, d in report.destinations.items() if d.chunks_pending or not d.closed}
        if behind and not finalized and not any(d.chunks_pending for d in behind.values()):
            # Everything delivered, not closed: a run killed before its finalize (or one that
            # is finishing now, which this waits for).
            finalized = True
            streamer.finalize(data_id, stall_s)
            continue
        for name, rep in behind.items():
            mark = (rep.chunks_delivered, rep.closed)
            if last.get(name, (None, 0.0))[0] != mark:
                last[name] = (mark, now)
        if not behind or all(now - last[n][1] > stall_s for n in behind):
            return behind
        time.sleep(0.05)


def _backlog_text(log: LogFile, data_id: str, behind: dict[str, DestinationReport]) -> str:
    lines = []
    for name, rep in behind.items():
        why = f" (last error: {rep.last_error})" if rep.last_error else ""
        what = (
            f"still misses {rep.points_pending:,} point(s) of stream {data_id}{why}; "
            "labstream's journal keeps them"
            if rep.chunks_pending
            else f"has not closed stream {data_id} yet{why}"
        )
        lines.append(
            f"{log.path}: {name} {what}: run `labstream spool resume` (or this command again) "
            "once it is back."
        )
    return "\n".join(lines)


class _Tracker:
    """Follows one stream's delivery from its reports: progress, back-pressure, resume marks."""

    POLL_S = 0.1
    POLL_CHUNKS = 16
    CHECKPOINT_S = 30.0  # drain at least this often, so a crash loses little of the resume mark
    SAVE_S = 1.0

    def __init__(
        self,
        streamer: TimeseriesStreamer,
        data_id: str,
        state: PushState,
        part: Part,
        view: ProgressView,
        cfg: Resolved,
    ) -> None:
        self.streamer = streamer
        self.data_id = data_id
        self.state = state
        self.part = part
        self.view = view
        self.cap = int(cfg["push.max_pending_chunks"])
        self.stall_s = float(cfg["push.stall_timeout"])
        self.finalize_s = float(cfg["push.finalize_timeout"])
        now = time.monotonic()
        self.last_poll = now
        self.polled_at_chunk = part.chunks_pushed
        # A stream continued from a dead run holds only what the journal still had of the
        # chunks pushed before: the rest was delivered.
        held = streamer.report(data_id).destinations
        self.carried = {n: part.chunks_pushed - r.chunks_accepted for n, r in held.items()}
        self.last_checkpoint = now
        self.last_save = now
        self.progress: dict[str, tuple[int, float]] = {}
        self.down: dict[str, str | None] = {}  # destination -> its last error

    def poll(self) -> StreamReport:
        report = self.streamer.report(self.data_id)
        now = time.monotonic()
        self.last_poll = now
        self.polled_at_chunk = self.part.chunks_pushed
        self.view.update(report)
        for name, rep in report.destinations.items():
            done = rep.chunks_delivered + rep.chunks_rejected + rep.chunks_dropped
            if self.progress.get(name, (-1, 0.0))[0] != done:
                self.progress[name] = (done, now)
        if self._settle(report) and now - self.last_save >= self.SAVE_S:
            self.state.save()
            self.last_save = now
        return report

    def _settle(self, report: StreamReport) -> bool:
        pushed = self.part.chunks_pushed
        moved = False
        for name, rep in report.destinations.items():
            accounted = rep.chunks_accepted + self.carried.get(name, 0)
            if accounted == pushed and rep.chunks_pending == 0 and not rep.chunks_dropped:
                rejected = [self.part.first_chunk + r.chunk_index for r in rep.rejections]
                moved |= self.state.settle(name, self.part.first_chunk + pushed, rejected)
        return moved

    def _up(self, report: StreamReport) -> list[DestinationReport]:
        """The destinations still taking chunks. One that confirmed nothing for ``stall_s`` while
        holding chunks is down: it is left behind (its chunks wait in the journal) and holds
        the others back no more, until it confirms again.

        Raises:
            _StalledError: every destination holding chunks is down.
        """
        now = time.monotonic()
        up = []
        for name, rep in report.destinations.items():
            since = self.progress.get(name, (0, now))[1]
            if not (rep.chunks_pending and now - since > self.stall_s):
                self.down.pop(name, None)
                up.append(rep)
            elif name not in self.down:
                self.down[name] = rep.last_error
                why = f" (last error: {rep.last_error})" if rep.last_error else ""
                _say(
                    f"{name} confirmed nothing for {self.stall_s:g} s with {rep.chunks_pending} "
                    f"chunks pending{why}; the other destinations go on, its chunks wait in "
                    "labstream's journal."
                )
        if not up:
            name, rep = next((n, d) for n, d in report.destinations.items() if d.chunks_pending)
            why = f" (last error: {rep.last_error})" if rep.last_error else ""
            raise _StalledError(
                f"{name} confirmed nothing for {self.stall_s:g} s with "
                f"{rep.chunks_pending} chunks pending{why}; stopping. Run the same command "
                "again later to send the rest."
            )
        return up

    def _wait_until(self, limit: int, *, every: bool = False) -> None:
        """Wait until the destinations that are up hold at most ``limit`` chunks: every one of
        them (``every``), or the one furthest ahead, so a slower one never holds the others back
        (its backlog waits in the journal)."""
        report = self.poll()
        while True:
            pending = [d.chunks_pending for d in self._up(report)]
            if (max if every else min)(pending, default=0) <= limit:
                return
            time.sleep(0.02)
            report = self.poll()

    def after_push(self) -> None:
        now = time.monotonic()
        if (
            now - self.last_poll < self.POLL_S
            and self.part.chunks_pushed - self.polled_at_chunk < self.POLL_CHUNKS
        ):
            return
        report = self.poll()
        if min((d.chunks_pending for d in report.destinations.values()), default=0) >= self.cap:
            self._wait_until(self.cap // 2)
        if now - self.last_checkpoint >= self.CHECKPOINT_S:
            self._wait_until(0)
            self.last_checkpoint = time.monotonic()

    def drain(self) -> None:
        self._wait_until(0, every=True)
        self.view.update(self.streamer.report(self.data_id), force=True)

    def finish(self, code: int) -> StreamReport:
        """Finalize the stream (a second Ctrl-C gives up waiting) and record what settled."""
        stopped = (EXIT_OK, EXIT_INTERRUPTED, EXIT_TERMINATED)
        short = code not in stopped or self.down  # a destination down: it waits in the journal
        timeout = min(self.finalize_s, 5.0) if short else self.finalize_s
        try:
            report = self.streamer.finalize(self.data_id, timeout)
        except KeyboardInterrupt:
            _say("stopped waiting; what is unconfirmed stays in labstream's journal")
            report = self.streamer.report(self.data_id)
        self.view.update(report, force=True)
        self._settle(report)
        self.part.finalized = all(d.closed for d in report.destinations.values())
        self.state.complete = (
            self.part.finalized
            and all(
                self.state.settled.get(d, 0) >= self.state.total_chunks
                for d in self.state.destinations
            )
            and not any(self.state.rejected.values())
        )
        self.state.save()
        return report


# --------------------------------------------------------------------------------------------------
# The parser


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read this config file only (default: the user's labstream.toml, then "
        "./labstream.toml; or LABSTREAM_CONFIG)",
    )


def _add_destination_args(parser: argparse.ArgumentParser) -> None:
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
    _add_config_arg(parser)
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show the library's log in detail"
    )


def _add_push_parser(sub: Any) -> None:
    push = sub.add_parser(
        "push",
        help="stream CSV/Parquet instrument logs to the destinations",
        description="Stream instrument logs (CSV or Parquet) to Atomscale and/or ATLAS. Every "
        "file is checked first; a bad file stops everything before anything is sent. A re-run "
        "of an interrupted push resumes instead of sending rows twice.",
    )
    push.add_argument("files", nargs="+", metavar="FILE", help="CSV or Parquet log files")
    _add_read_args(push)
    _add_stream_args(push)
    run = push.add_argument_group("run")
    _add_run_args(run)
    run.add_argument(
        "--stall-timeout",
        type=float,
        metavar="S",
        help="stop when a destination confirms nothing for this long (default 120)",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="forget an earlier run of this command and push everything as a new stream",
    )
    run.add_argument("--dry-run", action="store_true", help="check the files; send nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    run.add_argument("--quiet", "-q", action="store_true", help="only errors and the summary")
    run.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per file on stdout instead of the summary table (no progress)",
    )
    _add_destination_args(push)
    push.set_defaults(func=_push)


def _add_read_args(parser: argparse.ArgumentParser) -> None:
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


def _add_stream_args(parser: argparse.ArgumentParser) -> None:
    stream = parser.add_argument_group("stream")
    stream.add_argument("--stream-name", metavar="NAME", help="default: the file name")
    stream.add_argument("--physical-sample", metavar="SAMPLE", help="name or id")
    stream.add_argument("--project", metavar="ID", help="Atomscale project id")
    stream.add_argument("--tag", action="append", metavar="TAG", help="repeatable")
    stream.add_argument(
        "--points-per-chunk", type=int, metavar="N", help="rows per chunk (default 100)"
    )


def _add_run_args(run: argparse._ArgumentGroup) -> None:
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


# --------------------------------------------------------------------------------------------------
# labstream follow


def _follow_parser(sub: Any) -> None:
    follow = sub.add_parser(
        "follow",
        help="stream a growing CSV/text log (or each new log in a directory) live",
        description="Stream a log that an instrument is still writing: new rows are sent as "
        "they are written, across rotation and truncation. With a directory, each new log "
        "becomes a new stream. A restart continues where the last run stopped.",
    )
    follow.add_argument("target", metavar="FILE|DIR", help="the log, or a directory of logs")
    _add_read_args(follow)
    _add_stream_args(follow)
    group = follow.add_argument_group("follow")
    group.add_argument(
        "--glob",
        default="*",
        metavar="PATTERN",
        help="with a directory: the logs to follow, e.g. '*.csv' (default: every file)",
    )
    group.add_argument(
        "--idle",
        type=float,
        metavar="S",
        help="a log that has not grown for S seconds is finished: its stream is finalized "
        "(default: only when a newer log appears, or on rotation)",
    )
    group.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once the log is finished by --idle (for one run's log)",
    )
    group.add_argument(
        "--flush",
        type=float,
        default=1.0,
        metavar="S",
        help="send rows at the latest S seconds after they were written, in a chunk smaller "
        "than --points-per-chunk if need be (default 1)",
    )
    group.add_argument(
        "--poll", type=float, default=0.2, metavar="S", help="look for new rows every S s (0.2)"
    )
    group.add_argument(
        "--status-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="print a status line every S seconds (default 30)",
    )
    group.add_argument(
        "--on-bad-row",
        choices=("skip", "stop"),
        default="skip",
        help="a row that cannot be read is reported (file, line, column) and skipped, or stops "
        "the stream (default skip)",
    )
    group.add_argument(
        "--json", action="store_true", help="events and status as JSON lines on stdout"
    )
    _add_run_args(follow.add_argument_group("run"))
    _add_destination_args(follow)
    follow.set_defaults(func=_follow)


def _event_text(event: dict[str, Any]) -> str:
    """One follow event as a sentence."""
    kind = event["event"]
    if kind == "log":
        return (
            f"{event['file']}: time column {event['time_column']!r} ({event['time_format']}), "
            f"channels: {', '.join(event['channels'])}"
        )
    if kind == "stream":
        return f"{event['file']}: streaming to {event['name']!r} ({event['data_id']})"
    if kind == "bad_row":
        where = [event["file"], f"line {event['line']:,}"]
        if event["column"]:
            where.append(f"column {event['column']!r}")
        action = "skipped" if event["action"] == "skip" else "stopping"
        return f"bad row: {', '.join(where)}: {event['message']} ({action})"
    if kind == "status":
        dests = "; ".join(
            f"{n}: {d['pending_chunks']:,} chunk(s) pending"
            + (f" (last error: {d['last_error']})" if d["last_error"] else "")
            for n, d in event["destinations"].items()
        )
        return (
            f"{event['file'] or 'waiting for a log'}: line {event['line']:,}, "
            f"{event['rows_sent']:,} rows sent, {event['rows_confirmed']:,} confirmed, "
            f"{event['bad_rows']:,} bad" + (f"; {dests}" if dests else "")
        )
    if kind == "finished":
        return f"{event['file']}: finished ({event['reason']})"
    if kind == "finalized":
        parts = [
            f"{n}: {d['delivered_points']:,} points delivered"
            + (f", {d['rejected_points']:,} rejected" if d["rejected_points"] else "")
            + (f", {d['pending_points']:,} still pending" if d["pending_points"] else "")
            + (f", {d['dropped_points']:,} dropped" if d["dropped_points"] else "")
            for n, d in event["destinations"].items()
        ]
        return f"stream {event['data_id']} finalized: {event['rows']:,} rows; " + "; ".join(parts)
    if kind == "truncated":
        return f"{event['file']}: truncated; reading it again from its start as a new stream"
    if kind == "resumed":
        return (
            f"{event['file']}: continuing after line {event['line']:,} "
            f"({event['rows']:,} rows sent before)"
        )
    message = str(event.get("message", event))
    file = event.get("file")
    return message if not file or message.startswith(str(file)) else f"{file}: {message}"


def _follow(args: argparse.Namespace) -> int:
    import json

    from ..errors import LabstreamError
    from ..settings import default_spool_dir
    from .follow import Checkpoint, Follower, FollowError, FollowSettings

    cfg = _resolve(args)
    options = _read_options(args, cfg)
    target = Path(args.target)
    if not target.exists():
        raise _UsageError(f"{target}: no such file or directory")
    for flag, value in (("--flush", args.flush), ("--poll", args.poll), ("--idle", args.idle)):
        if value is not None and not value > 0:
            raise _UsageError(f"{flag} must be a positive number of seconds")
    if args.exit_when_idle and args.idle is None:
        raise _UsageError("--exit-when-idle needs --idle S")
    dests = _select(args, cfg)
    identities = _identities(cfg, dests)
    streamer = _make_streamer(cfg, dests)
    identity = {
        "target": str(target.resolve()),
        "destinations": sorted(f"{k}={v}" for k, v in identities.items()),
        "read": [
            options.time_column,
            options.time_format,
            options.time_unit,
            str(options.timezone),
            options.start,
            list(options.channels),
            options.delimiter,
            options.encoding,
        ],
        "points_per_chunk": streamer.points_per_chunk,
        "glob": args.glob,
    }
    settings = FollowSettings(
        target=target,
        options=options,
        stream_name=args.stream_name,
        physical_sample=cfg["push.physical_sample"],
        project=cfg["push.project"],
        tags=tuple(cfg["push.tags"] or ()),
        pattern=args.glob,
        idle_s=args.idle,
        exit_when_idle=args.exit_when_idle,
        flush_s=args.flush,
        poll_s=args.poll,
        status_s=args.status_interval,
        on_bad_row=args.on_bad_row,
        max_pending_chunks=int(cfg["push.max_pending_chunks"]),
        finalize_timeout=float(cfg["push.finalize_timeout"]),
    )

    def emit(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            _say(_event_text(event))

    code = EXIT_OK
    try:
        location = Checkpoint.location(default_spool_dir() / "follow", identity)
        checkpoint = Checkpoint(location, identity["target"])
        with checkpoint.locked():
            follower = Follower(
                streamer, settings, Checkpoint.load(location, checkpoint.target), emit
            )
            try:
                follower.run()
            except (KeyboardInterrupt, SystemExit) as exc:
                code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
        if code == EXIT_OK and not follower.all_ok:
            code = EXIT_INCOMPLETE
    except FollowError as exc:
        _say(f"error: {exc}")
        code = EXIT_USAGE
    except LabstreamError as exc:
        _say(f"error: {exc}")
        code = EXIT_INCOMPLETE
    finally:
        streamer.close(timeout=cfg["push.finalize_timeout"])
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        _say("stopped; run the same command again to continue where it stopped")
    return code


# --------------------------------------------------------------------------------------------------
# labstream spool


def _spool_status(args: argparse.Namespace) -> int:
    from . import spool

    directory = spool.spool_dir(args.spool_dir)
    rows = spool.status(directory)
    if args.json:
        import dataclasses
        import json

        streams = [dataclasses.asdict(r) for r in rows]
        print(json.dumps({"spool_dir": str(directory), "streams": streams}, indent=1))
    else:
        print(spool.format_status(rows, directory))
    return 0


def _spool_resume(args: argparse.Namespace) -> int:
    from . import spool

    # With --json whatever resume says for people (progress, reports) goes to stderr, and only
    # the result to stdout.
    says = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with says:
            done = spool.resume(
                spool.spool_dir(args.spool_dir), api_key=args.api_key, timeout_s=args.timeout
            )
    except ValueError as exc:
        _say(f"labstream spool resume: {exc}", sys.stderr)
        return 2
    if args.json:
        import dataclasses
        import json

        streams = [{**dataclasses.asdict(r), "ok": r.ok} for r in done.reports]
        print(json.dumps({"ok": done.ok, "streams": streams, "busy": done.busy}, indent=1))
    return 0 if done.ok else 1


def _spool_purge(args: argparse.Namespace) -> int:
    from . import spool

    directory = spool.spool_dir(args.spool_dir)
    if not args.yes:
        if not sys.stdin.isatty():
            _say("labstream spool purge: confirm with --yes (no terminal to ask)", sys.stderr)
            return 2
        answer = input(f"Forget {args.data_id} and every undelivered point of it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _say("nothing purged")
            return 1
    removed = spool.purge(directory, args.data_id)
    if args.json:
        import json

        print(json.dumps({"data_id": args.data_id, "chunks_removed": removed}))
    else:
        print(f"purged {args.data_id}: {removed} chunk(s) removed from {directory}")
    return 0


def _completion(args: argparse.Namespace) -> int:
    from .completion import bash_script

    print(bash_script(build_parser()), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="labstream",
        description="Stream lab instrument time series to Atomscale (and ATLAS) without loss.",
    )
    parser.add_argument(
        "--version", action="version", version=f"labstream {__version__}", help="show the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_push_parser(sub)
    _follow_parser(sub)

    check = sub.add_parser(
        "check", help="test connectivity and credentials of the configured destinations"
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="per request (default 5)"
    )
    check.add_argument("--json", action="store_true", help="machine-readable result")
    _add_destination_args(check)
    check.set_defaults(func=_check)

    config = sub.add_parser("config", help="the configuration")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser(
        "show", help="the resolved configuration, where each value comes from (key masked)"
    )
    _add_config_arg(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_config_show)

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
    from .atomscale_show import add_commands as add_show

    add_show(atomscale_sub)

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
    from .atlas_commands import add_commands

    add_commands(atlas_sub)  # verify, sessions

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Print a completion script. bash: add `eval "$(labstream completion '
        'bash)"` to ~/.bashrc. zsh: `autoload -U +X bashcompinit && bashcompinit` first.',
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    completion.set_defaults(func=_completion)

    spool_parser = sub.add_parser("spool", help="the durable journal of undelivered data")
    spool_sub = spool_parser.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("status", _spool_status, "per stream and destination: what is still held"),
        ("resume", _spool_resume, "deliver and finalize what a stopped process left"),
        ("purge", _spool_purge, "forget a stream and everything held for it"),
    ):
        cmd = spool_sub.add_parser(name, help=text)
        cmd.add_argument("--spool-dir", default=None, help="default: LABSTREAM_SPOOL_DIR or cache")
        cmd.set_defaults(func=func)
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "resume":
            cmd.add_argument("--api-key", default=None, help="default: AS_API_KEY (never stored)")
            cmd.add_argument("--timeout", type=float, default=300.0, help="seconds per stream")
        if name == "purge":
            cmd.add_argument("data_id", help="the stream to forget (see spool status)")
            cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import JournalError

    args = build_parser().parse_args(argv)
    try:
        with _library_logging(bool(getattr(args, "verbose", False))):
            code: int = args.func(args)
    except _UsageError as exc:
        _say(f"error: {exc}")
        return exc.code
    except JournalError as exc:  # the spool commands': the message names the path
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
