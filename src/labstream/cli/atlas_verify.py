"""Read a session back from an ATLAS Stream API and judge what the server holds.

Why it exists: an OK from the real Stream API means only "queued"; the server validates nothing and
ATLAS silently ignores what breaks its rules. This asks the server itself -- the real one or
labstream's emulator -- through its reader service (``ConnectionManagerService`` and
``PacketReaderService``, as ATLAS's own reader does), and runs the project's protocol checker
(:mod:`labstream.testing.atlas_checker`) on the packets it gives back.

What the server keeps is the packets per stream, not the writer's RPCs: the checks that need the
RPCs' order (``order_of_operations``) or the key generator's answers
(``config_id_from_key_generator``) are left out and named as such. ``create_session`` and
``end_session_called`` are judged from the server's session info (it knows the key, and
``is_complete``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from ..destinations.atlas import reader
from ..destinations.atlas.reader import ServerSession
from ..errors import DestinationError, LabstreamError
from ..testing.atlas_checker import (
    FormatRecord,
    RecordedPacket,
    RecordedSession,
    SessionReport,
    check_session,
    decode_content,
    format_report,
)

__all__ = [
    "NOT_FROM_SERVER",
    "ServerSession",
    "Verified",
    "VerifyError",
    "format_verified",
    "list_sessions",
    "read_session",
    "verify",
]

#: Checks that need what only the writer's side saw; left out of a verdict from the server.
NOT_FROM_SERVER: Final = frozenset({"order_of_operations", "config_id_from_key_generator"})


class VerifyError(LabstreamError):
    """The server could not be asked, or does not have the session: said in a sentence."""


@dataclass(frozen=True, slots=True)
class Verified:
    """The checker's report on what the server holds, and what was read."""

    session: ServerSession
    report: SessionReport
    packets: int
    essentials: int

    @property
    def clean(self) -> bool:
        return self.report.clean

    def to_json(self) -> dict[str, Any]:
        return {
            **self.session.to_json(),
            "packets_read": self.packets,
            "essentials_read": self.essentials,
            "not_judged": sorted(NOT_FROM_SERVER),
            "report": self.report.to_json(),
        }


def list_sessions(
    address: str, data_source: str, *, timeout_s: float = 10.0
) -> list[ServerSession]:
    """Every session the server knows for `data_source`, oldest first."""
    try:
        return reader.list_sessions(address, data_source, timeout_s=timeout_s)
    except DestinationError as exc:
        raise VerifyError(exc.message) from exc


def read_session(
    address: str,
    session: str | None = None,
    *,
    data_source: str = "Default",
    idle_s: float = 2.0,
    timeout_s: float = 10.0,
) -> tuple[ServerSession, RecordedSession, int]:
    """Read a session's packets back through the reader service
    (:func:`labstream.destinations.atlas.reader.read_session`).

    Returns the session's info, its packets as the checker's `RecordedSession` (in the order the
    server gave them), and the number of essentials read.
    """
    try:
        back = reader.read_session(
            address, session, data_source=data_source, idle_s=idle_s, timeout_s=timeout_s
        )
    except DestinationError as exc:
        raise VerifyError(exc.message) from exc
    return back.session, _as_recorded(back), back.essentials


def _as_recorded(back: reader.ReadBack) -> RecordedSession:
    found = back.session
    packets = []
    for seq, p in enumerate(back.packets, start=1):
        content, problem = decode_content(p.type, bytes(p.packet.content))
        packets.append(
            RecordedPacket(
                seq=seq,
                rpc="ReadPackets",
                call_id=0,
                received_ns=p.submit_time_ns,
                data_source=found.data_source,
                stream=p.stream,
                # the reader's session-key filter let only records keyed by the session through
                details_session_key=found.key,
                packet=p.packet,
                content=content,
                content_error=problem,
            )
        )
    formats = [
        FormatRecord(found.data_source, fid, "parameter", parameters=names)
        for fid, names in back.parameter_formats.items()
    ] + [
        FormatRecord(found.data_source, fid, "event", event=event)
        for fid, event in back.event_formats.items()
    ]
    return RecordedSession(
        session_key=found.key,
        data_source=found.data_source,
        identifier=found.identifier,
        details=found.details,
        created_seq=0,  # the server knows the key: it was created, before any packet
        end_session_seqs=(len(packets) + 1,) if found.is_complete else (),
        packets=tuple(packets),
        formats=tuple(sorted(formats, key=lambda f: (f.kind, f.format_id))),
    )


def verify(
    address: str,
    session: str | None = None,
    *,
    data_source: str = "Default",
    idle_s: float = 2.0,
    timeout_s: float = 10.0,
) -> Verified:
    """Read a session back (`read_session`) and check it, without the checks the server cannot
    answer (`NOT_FROM_SERVER`)."""
    found, recorded, essentials = read_session(
        address, session, data_source=data_source, idle_s=idle_s, timeout_s=timeout_s
    )
    report = check_session(recorded)
    judged = tuple(c for c in report.checks if c.name not in NOT_FROM_SERVER)
    return Verified(
        found, dataclasses.replace(report, checks=judged), len(recorded.packets), essentials
    )


def format_verified(v: Verified, address: str, *, verbose: bool = False) -> str:
    """What was read, the checker's report, and the checks left out."""
    state = "ended" if v.session.is_complete else "NOT ended (no EndSession yet)"
    head = (
        f"read from {address}: {v.packets} packets of session {v.session.key} ({state}), "
        f"{v.essentials} on the essentials topic"
    )
    tail = "not judged from the server (they need the writer's RPCs): " + ", ".join(
        sorted(NOT_FROM_SERVER)
    )
    return "\n".join([head, format_report(v.report, verbose=verbose), tail])


#: How far apart a sample's time on the server and its row's may be, beyond one offset for the
#: whole channel (a clock correction): periodic packets rebuild times as start + i x interval.
TIME_TOLERANCE_NS: Final = 1_000


@dataclass(frozen=True, slots=True)
class Compared:
    """One channel of a pushed log against what the server holds for it."""

    channel: str
    parameter: str
    rows: int  # in the log
    samples: int  # on the server
    different_values: int  # same position, another value (NaN equals NaN: a gap)
    different_times: int  # same position, a time off by more than the tolerance
    offset_ns: int  # the server's times minus the log's (a clock correction), at the median

    @property
    def same(self) -> bool:
        return self.rows == self.samples and not self.different_values and not self.different_times

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "same": self.same}


def compare_with_log(
    report: SessionReport, path: str, *, application: str = "labstream", time_unit: str = "s"
) -> list[Compared]:
    """Each channel of the log at ``path`` (read as ``labstream push`` reads it) against the
    parameter ``{channel}:{application}`` the server holds, row by row in time order.

    Raises:
        VerifyError: the log cannot be read.
    """
    import numpy as np

    from .._core.timebase import seconds_to_ns
    from .logfiles import LogFileError, ReadOptions, open_log

    try:
        log = open_log(path, ReadOptions(time_unit=time_unit))  # type: ignore[arg-type]
        times: list[Any] = []
        values: dict[str, list[Any]] = {c.name: [] for c in log.channels}
        for batch in log.batches(65_536):
            times.append(seconds_to_ns(batch.timestamps))
            for name, column in batch.values.items():
                values[name].append(column)
    except (LogFileError, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}") from exc
    file_ns = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
    out = []
    for name, parts in values.items():
        parameter = f"{name}:{application}"
        data = report.parameters.get(parameter)
        want = np.concatenate(parts) if parts else np.zeros(0)
        got_ns = np.asarray(data.timestamps_ns if data else [], dtype=np.int64)
        got = np.asarray(data.values if data else [], dtype=np.float64)
        order = np.argsort(got_ns, kind="stable")
        got_ns, got = got_ns[order], got[order]
        n = min(len(want), len(got))
        diff = got_ns[:n] - file_ns[:n]
        offset = int(np.median(diff)) if n else 0
        same_value = (got[:n] == want[:n]) | (np.isnan(got[:n]) & np.isnan(want[:n]))
        out.append(
            Compared(
                name,
                parameter,
                len(want),
                len(got),
                int(n - np.count_nonzero(same_value)),
                int(np.count_nonzero(np.abs(diff - offset) > TIME_TOLERANCE_NS)),
                offset,
            )
        )
    return out


def format_compared(compared: list[Compared], path: str) -> str:
    """One line per channel: the log's rows against the server's samples."""
    lines = [f"compared with {path}:"]
    for c in compared:
        if c.same:
            verdict = "same"
        else:
            problems = []
            if c.rows != c.samples:
                problems.append(f"{c.samples - c.rows:+,} samples")
            if c.different_values:
                problems.append(f"{c.different_values:,} other values")
            if c.different_times:
                problems.append(f"{c.different_times:,} other times")
            verdict = "DIFFERENT: " + ", ".join(problems)
        shift = (
            f" (times shifted {c.offset_ns / 1e9:+.6f} s: a clock correction)"
            if c.offset_ns
            else ""
        )
        lines.append(
            f"  {c.channel}: {c.rows:,} rows, {c.samples:,} on the server: {verdict}{shift}"
        )
    return "\n".join(lines)
