"""``labstream spool``: look into the journal, finish what a dead process left, or forget a stream.

A streamer resumes unfinished streams by itself when it starts on the same spool directory with the
same destinations. These commands are for the other cases: checking what is held after a crash or
an outage, delivering it without starting an acquisition script, and dropping a stream for good.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .journal import Journal, SpoolStatus, default_spool_dir
from .progress import ProgressView
from .report import StreamReport
from .streamer import resolve_api_key
from .sync import TimeseriesStreamer

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
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def resume(
    directory: Path,
    *,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    out: Out = print,
) -> list[StreamReport]:
    """Deliver and finalize every stream left unfinished in the journal.

    Streams are grouped by their destinations; Atomscale needs the API key (argument or
    environment) since it is never written to disk.

    Raises:
        ValueError: Atomscale streams are waiting but no API key is available.
    """
    journal = Journal(directory)
    try:
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for stored in journal.streams():
            if not stored.owner_alive:
                groups.setdefault(tuple(sorted(stored.destinations.items())), []).append(
                    stored.data_id
                )
    finally:
        journal.close()
    key = resolve_api_key(api_key)
    reports: list[StreamReport] = []
    for dests, _ids in groups.items():
        where = dict(dests)
        if "atomscale" in where and key is None:
            raise ValueError(
                "streams for Atomscale are waiting in the spool: set AS_API_KEY (or pass "
                "--api-key) to deliver them"
            )
        with TimeseriesStreamer(
            api_key=key if "atomscale" in where else None,
            endpoint=where.get("atomscale"),
            atlas=where.get("atlas"),
            spool_dir=directory,
            handle_sigterm=False,
        ) as streamer:
            for data_id in streamer.recovered_streams():
                reports.append(_deliver(streamer, data_id, timeout_s, out))
    if not reports:
        out(f"spool {directory}: nothing to resume")
    return reports


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
