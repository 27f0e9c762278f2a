"""``labstream push``: stream whole CSV/Parquet logs, and resume an interrupted push instead of
sending rows twice.

Every file is checked before anything is sent. What each destination confirmed is kept per file
(:class:`.progress.PushState`), so a re-run starts after the last row every destination holds.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .check import preflight
from .common import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    add_destination_args,
    add_read_args,
    add_run_args,
    add_stream_args,
    destination_identities,
    destinations_json,
    make_streamer,
    print_json,
    read_options,
    resolve_config,
    say,
    select_destinations,
)

if TYPE_CHECKING:
    from .. import StreamReport, TimeseriesStreamer
    from ..report import DestinationReport
    from .config import Resolved
    from .logfiles import LogFile, ScanResult
    from .progress import Part, ProgressView, PushState

__all__ = ["AFTER_CHUNK", "add_commands"]

#: Test seam: called with the number of chunks pushed so far after each chunk of ``push``.
#: Tests raise KeyboardInterrupt from it to interrupt a push deterministically.
AFTER_CHUNK: Callable[[int], None] | None = None


class _StalledError(Exception):
    """A destination confirmed nothing for ``stall_timeout`` seconds while holding chunks."""


@dataclass(slots=True)
class _Planned:
    log: LogFile
    scan: ScanResult
    stream_name: str


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


def _local_zone_text() -> str:
    now = datetime.now().astimezone()
    offset = now.strftime("%z")
    return f"{now.tzname()}, UTC{offset[:3]}:{offset[3:]}"


def _push(args: argparse.Namespace) -> int:
    from .logfiles import LogFileError, open_log

    cfg = resolve_config(args)
    options = read_options(args, cfg)
    plans: list[_Planned] = []
    bad = 0
    for name in args.files:
        try:
            log = open_log(name, options)
            scan = log.scan()
        except LogFileError as exc:
            say(f"error: {exc}")
            bad += 1
            continue
        plan = _Planned(log, scan, _stream_name(args, Path(name)))
        plans.append(plan)
        if not args.quiet:
            say(_describe(plan, cfg))
    if bad:
        say(f"{bad} file(s) cannot be read as asked; nothing was sent.")
        return EXIT_USAGE
    if args.dry_run:
        say("dry run: nothing was sent.")
        if args.json:
            for plan in plans:
                print_json(
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
    dests = select_destinations(args, cfg)
    preflight(cfg, dests)
    identities = destination_identities(cfg, dests)
    streamer = make_streamer(cfg, dests)
    code = EXIT_OK
    try:
        for plan in plans:
            code = max(code, _push_file(streamer, plan, cfg, args, identities))
            if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
                break
    finally:
        streamer.close(timeout=cfg["push.finalize_timeout"])
    return code


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
        say(
            f"{log.path}: already pushed completely to {', '.join(state.destinations)} "
            f"({_when(state.updated_at)}, stream {ids}); nothing to do. "
            "Use --restart to push it again as a new stream."
        )
        if args.json:
            print_json({"file": str(log.path), "already_complete": True, "exit_code": EXIT_OK})
        return EXIT_OK
    if scan.rows == 0:
        say(f"{log.path}: no data rows; nothing to push.")
        if args.json:
            print_json({"file": str(log.path), "rows": 0, "exit_code": EXIT_OK})
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
        say("\n".join([_explain_resume(state, first, log), *notes]))
    if first >= state.total_chunks:
        # Nothing left to send; what the journal holds of the earlier stream may still be on its
        # way: the push is complete only once it arrived.
        if adopted is not None:
            stall_s = float(cfg["push.stall_timeout"])
            behind = _journal_backlog(streamer, adopted.data_id, stall_s)
            if behind:
                say(_backlog_text(log, adopted.data_id, behind))
                if args.json:
                    print_json({"file": str(log.path), "complete": False, "exit_code": 1})
                return EXIT_INCOMPLETE
        state.complete = True
        state.save()
        say(f"{log.path}: every row was already confirmed by every destination.")
        code = EXIT_OK if not any(state.rejected.values()) else EXIT_INCOMPLETE
        if args.json:
            print_json({"file": str(log.path), "already_complete": True, "exit_code": code})
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
        say(f"error: cannot create the stream for {log.path}: {exc}")
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
        say(
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
                    ) from exc
                part.chunks_pushed += 1
                if AFTER_CHUNK is not None:
                    AFTER_CHUNK(part.chunks_pushed)
                tracker.after_push()
            tracker.drain()
        except (KeyboardInterrupt, SystemExit) as exc:
            # SystemExit: SIGTERM, which the streamer turns into SystemExit(143).
            code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
            say(
                f"\ninterrupted: finalizing stream {data_id} (waiting up to "
                f"{cfg['push.finalize_timeout']:g} s for unconfirmed chunks; Ctrl-C again to "
                "stop at once)"
            )
        except LogFileError as exc:
            code = EXIT_USAGE
            say(f"error: {exc}")
        except _StalledError as exc:
            code = EXIT_INCOMPLETE
            say(f"error: {exc}")
    finally:
        report = tracker.finish(code)
        view.close()
    if adopted is not None:  # the earlier stream's rows the journal still delivers
        behind = _journal_backlog(streamer, adopted.data_id, tracker.stall_s)
        if behind:
            state.complete = False
            state.save()
            say(_backlog_text(log, adopted.data_id, behind))
            if code == EXIT_OK:
                code = EXIT_INCOMPLETE
    if not args.json:
        print(_summary(state, report, log, totals))
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        again = "without --restart " if args.restart else "again "
        say(f"Run the same command {again}to resume where this run stopped.")
    elif code == EXIT_OK and not state.complete:
        code = EXIT_INCOMPLETE
        down = {n: e for n, e in tracker.down.items() if report[n].chunks_pending}
        for name, why in down.items():
            say(
                f"{log.path}: {name} confirmed nothing for {tracker.stall_s:g} s"
                f"{f' (last error: {why})' if why else ''}; its {report[name].points_pending:,} "
                "point(s) not confirmed stay in labstream's journal: run `labstream spool "
                "resume` (or this command again) once it is back."
            )
        if not down:
            say(
                f"{log.path}: not every destination confirmed every row; run the same command "
                "again to send the rest."
            )
    if args.json:
        print_json(_summary_json(state, report, log, code))
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
        "destinations": destinations_json(report),
    }


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
                say(
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
            say("stopped waiting; what is unconfirmed stays in labstream's journal")
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


def add_commands(sub: Any) -> None:
    """Register ``push``."""
    push = sub.add_parser(
        "push",
        help="stream CSV/Parquet instrument logs to the destinations",
        description="Stream instrument logs (CSV or Parquet) to Atomscale and/or ATLAS. Every "
        "file is checked first; a bad file stops everything before anything is sent. A re-run "
        "of an interrupted push resumes instead of sending rows twice.",
    )
    push.add_argument("files", nargs="+", metavar="FILE", help="CSV or Parquet log files")
    add_read_args(push)
    add_stream_args(push)
    run = push.add_argument_group("run")
    add_run_args(run)
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
    add_destination_args(push)
    push.set_defaults(func=_push)
