"""``labstream spool``: look into the journal, finish what a dead process left, or forget a stream.

A streamer resumes unfinished streams by itself when it starts on the same spool directory with the
same destinations. These commands are for the other cases: checking what is held after a crash or
an outage, delivering it without starting an acquisition script, and dropping a stream for good.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.journal import Journal, SpoolStatus
from ..report import StreamReport
from ..settings import API_KEY_ENV, default_spool_dir, without_destinations
from ..sync import TimeseriesStreamer
from .common import say
from .progress import ProgressView

__all__ = ["Resumed", "add_commands", "format_status", "purge", "resume", "spool_dir", "status"]

Out = Callable[[str], None]


def spool_dir(path: str | None) -> Path:
    return Path(path).expanduser() if path else default_spool_dir()


def status(directory: Path) -> list[SpoolStatus]:
    journal = Journal(directory)
    try:
        return journal.status()
    finally:
        journal.close()


def format_status(rows: list[SpoolStatus], directory: Path) -> str:
    if not rows:
        return f"spool {directory}: empty"
    lines = [
        f"spool {directory}:",
        f"{'data_id':<38}{'stream':<20}{'destination':<12}{'pending':>9}{'points':>10}"
        f"{'rejected':>9}{'oldest':>9}  state",
    ]
    for r in rows:
        age = "-" if r.oldest_pending_age_s is None else _age(r.oldest_pending_age_s)
        state = "closed" if r.closed else ("finalizing" if r.finalize_requested else "open")
        lines.append(
            f"{r.data_id:<38}{(r.stream_name or '-')[:19]:<20}{r.destination:<12}"
            f"{r.pending_chunks:>9}{r.pending_points:>10}{r.rejected_chunks:>9}{age:>9}  {state}"
        )
    seen = set()
    for r in rows:
        if r.gaps and r.data_id not in seen:
            seen.add(r.data_id)
            missing = ", ".join(
                f"{ch} {a}" if a == b else f"{ch} {a}-{b}" for ch, a, b in r.gaps[:10]
            )
            more = f" and {len(r.gaps) - 10} more" if len(r.gaps) > 10 else ""
            lines.append(f"{r.data_id}: missing chunk indexes: {missing}{more}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@dataclass
class Resumed:
    """What ``resume`` did: a report per stream it finished, and why it left the others."""

    reports: list[StreamReport] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # owned by a live process: not touched

    @property
    def ok(self) -> bool:
        return not self.busy and all(r.ok for r in self.reports)


def resume(
    directory: Path,
    *,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    out: Out = print,
) -> Resumed:
    """Deliver and finalize every stream left unfinished in the journal.

    Each stream goes to the destinations that still need it (pending chunks, or not closed),
    whatever the environment says: Atomscale only when it needs the stream, and then with the API
    key (argument or environment), since it is never written to disk. A stream whose process is
    still running is left to it, and said so.

    Raises:
        ValueError: a stream needs Atomscale and no API key is available (the other streams
            were resumed first).
    """
    journal = Journal(directory)
    try:
        streams = journal.streams()
        pending = {(r.data_id, r.destination): r.pending_chunks for r in journal.status()}
    finally:
        journal.close()
    key = api_key or next((os.environ[n] for n in API_KEY_ENV if os.environ.get(n)), None)
    done = Resumed()
    groups: set[tuple[tuple[str, str], ...]] = set()  # the destinations streams still need
    need_key = []
    for stored in streams:
        needed = {
            name: address
            for name, address in stored.destinations.items()
            if name not in stored.closed or pending.get((stored.data_id, name), 0)
        }
        if not needed:
            continue  # closed everywhere, nothing pending: housekeeping forgets it
        if stored.owner_alive:
            held = sum(pending.get((stored.data_id, name), 0) for name in needed)
            if held:
                pid = stored.owner.partition(":")[0]
                done.busy.append(stored.data_id)
                out(
                    f"{stored.data_id}: {held} chunk(s) pending, owned by a running process "
                    f"(pid {pid}) that delivers them; not resumed here"
                )
            continue
        if "atomscale" in needed and key is None:
            need_key.append(stored.data_id)
            continue
        groups.add(tuple(sorted(needed.items())))
    for dests in sorted(groups):
        where = dict(dests)
        # Only the destinations the streams need: none chosen by the environment.
        streamer = TimeseriesStreamer(
            api_key=key if "atomscale" in where else None,
            endpoint=where.get("atomscale"),
            atlas=where.get("atlas"),
            spool_dir=directory,
            handle_sigterm=False,
            environ=without_destinations(os.environ),
        )
        with streamer:
            for data_id in streamer.recovered_streams():
                done.reports.append(_deliver(streamer, data_id, timeout_s, out))
    if need_key:
        raise ValueError(
            f"{len(need_key)} stream(s) for Atomscale are waiting in the spool "
            f"({', '.join(need_key)}): set AS_API_KEY (or pass --api-key) to deliver them"
        )
    if not done.reports and not done.busy:
        out(f"spool {directory}: nothing to resume")
    return done


def _deliver(
    streamer: TimeseriesStreamer, data_id: str, timeout_s: float, out: Out
) -> StreamReport:
    """Finalize one stream, with a progress bar per destination while its backlog drains."""
    done = threading.Event()
    result: list[StreamReport] = []

    def finalize() -> None:
        try:
            result.append(streamer.finalize(data_id, timeout=timeout_s))
        finally:
            done.set()

    start = streamer.report(data_id)
    totals = {name: d.points_accepted for name, d in start.destinations.items()}
    view = ProgressView(f"resuming {data_id}", totals, stream=sys.stdout, interval=5.0)
    worker = threading.Thread(target=finalize, name="labstream-spool-resume")
    worker.start()
    try:
        while not done.wait(0.5):
            view.update(streamer.report(data_id))
    finally:
        worker.join()
        view.close()
    report = result[0]
    out(str(report))
    return report


def purge(directory: Path, data_id: str) -> int:
    """Forget a stream and everything the journal holds for it; return the chunks removed."""
    journal = Journal(directory)
    try:
        return journal.purge(data_id)
    finally:
        journal.close()


# --------------------------------------------------------------------------------------------------
# The commands


def add_commands(sub: Any) -> None:
    """Register ``spool status``, ``spool resume`` and ``spool purge``."""
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


def _spool_status(args: argparse.Namespace) -> int:
    directory = spool_dir(args.spool_dir)
    rows = status(directory)
    if args.json:
        import dataclasses
        import json

        streams = [dataclasses.asdict(r) for r in rows]
        print(json.dumps({"spool_dir": str(directory), "streams": streams}, indent=1))
    else:
        print(format_status(rows, directory))
    return 0


def _spool_resume(args: argparse.Namespace) -> int:
    # With --json whatever resume says for people (progress, reports) goes to stderr, and only
    # the result to stdout.
    says = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with says:
            done = resume(spool_dir(args.spool_dir), api_key=args.api_key, timeout_s=args.timeout)
    except ValueError as exc:
        say(f"labstream spool resume: {exc}", sys.stderr)
        return 2
    if args.json:
        import dataclasses
        import json

        streams = [{**dataclasses.asdict(r), "ok": r.ok} for r in done.reports]
        print(json.dumps({"ok": done.ok, "streams": streams, "busy": done.busy}, indent=1))
    return 0 if done.ok else 1


def _spool_purge(args: argparse.Namespace) -> int:
    directory = spool_dir(args.spool_dir)
    if not args.yes:
        if not sys.stdin.isatty():
            say("labstream spool purge: confirm with --yes (no terminal to ask)", sys.stderr)
            return 2
        answer = input(f"Forget {args.data_id} and every undelivered point of it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            say("nothing purged")
            return 1
    removed = purge(directory, args.data_id)
    if args.json:
        import json

        print(json.dumps({"data_id": args.data_id, "chunks_removed": removed}))
    else:
        print(f"purged {args.data_id}: {removed} chunk(s) removed from {directory}")
    return 0
