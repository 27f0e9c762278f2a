"""Run the reliability scenarios and write their figures to docs/reliability.md.

The scenarios, and the checks they must pass, are those of ``tests/test_reliability.py`` (the same
functions, imported from there): both local emulators in this process, over loopback, with seeded
fault injection and a short retry policy. For every scenario and destination the report gives the
points sent, received and duplicated, the scenario's own measurements, and whether its checks
passed. It ends with the bugs in ``src/`` the suite pins as ``xfail(strict=True)``.

    .venv/bin/python scripts/reliability_report.py            # writes docs/reliability.md
    .venv/bin/python scripts/reliability_report.py --out -    # prints it instead

Exit status 1 when a scenario's check failed (the report is written all the same).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests.test_reliability import (  # noqa: E402 - needs the paths above
    CRASH_DUPLICATE_CHECKS,
    DATA_DEPENDENT_CHECKS,
    KILL_SEED,
    SCENARIOS,
    Outcome,
    fixed_bugs,
    known_bugs,
    scenario_kill_9,
)

COMMAND = ".venv/bin/python scripts/reliability_report.py"


# Scenarios checked by their own tests (test_disk_faults.py, test_clock.py, test_validation.py),
# not run by this script: the page lists them with the figures those tests assert.
HOSTILE = """\
## A failing disk, a hostile server, a bogus clock, masked input

What labstream does in each case, and the test that checks it at the destination (figures are what that test asserts, on every run of `./scripts/test`):

| scenario | what happens | test, and its figures |
| --- | --- | --- |
| A journal write fails (disk full, I/O error) while a destination lags and its backlog is beyond the memory window | The chunks stay in memory and are delivered from there. The journal logs the error with its path once, tries the disk with every later commit, and says when writes succeed again. The report counts them: `not durable: N chunk(s) / P point(s) kept in memory only …`, `report.durable` false | `tests/test_disk_faults.py::test_chunks_a_failed_write_could_not_store_are_still_delivered_and_reported`: every write failing, memory window 4, 60 chunks: 6,000 of 6,000 points stored, at least 55 chunks reported not durable |
| The disk fills up mid-stream (a real 320 kB tmpfs, free-space floor 0) | As above: what the disk cannot take is kept in memory and delivered | `test_a_disk_that_fills_up_mid_stream_loses_nothing` (needs root to mount; skipped otherwise): 40,000 of 40,000 points stored |
| Less free space than `spool_min_free_bytes` | Durability off, not delivery: a WARNING (`durability is off`), chunks accepted and delivered from memory, nothing written; the report flag and a `not durable` line in the report and in the `labstream push` summary | `test_below_the_free_space_floor_chunks_are_delivered_from_memory_and_said_so`: 30 chunks, 0 on disk, 3,000 of 3,000 points stored, 0 refused |
| Chunks kept in memory reach their bound (256 MB of chunk data) | New chunks are refused and counted (`refused before storing: … reached their bound`); `push()` does not raise; every accepted chunk is delivered | `test_kept_in_memory_only_up_to_a_bound_then_refused_and_counted`: bound of 10 chunks, 30 pushed: at most 11 accepted, all delivered, the rest counted as refused |
| The streamer closes with a destination down and chunks the disk could not take | Counted as dropped with the reason `not in the journal (…)`, not as pending | `test_chunks_lost_with_a_failed_write_are_counted_as_dropped_with_the_reason`: 10 of 10 chunks dropped, 0 pending |
| Reading the backlog back from the journal fails | Logged with the path and tried again; no chunk is skipped | `test_a_backlog_the_disk_cannot_read_for_a_while_is_delivered_once_it_reads_again`: 5 failed reads, 4,000 of 4,000 points stored |
| The journal cannot be opened: the spool directory is a file, or an existing journal is on a read-only filesystem | `JournalError` (a `LabstreamError`) naming the path, cause chained; the `labstream` commands print one line and exit 2 | `test_a_journal_directory_that_is_a_file_is_named_in_the_error`, `test_an_existing_journal_on_a_read_only_disk_is_named_in_the_error`, `test_the_spool_commands_name_a_journal_path_they_cannot_open` |
| `/gateway/time` answers 0, 1e300, NaN, ±inf, a time before 2000 or from 2100, or an offset beyond 24 h | Refused with a WARNING; the correction in effect stays; `clock_status().error` says why | `tests/test_clock.py`: 8 such answers, each refused; with an answer of 0 the stored timestamps are the pushed ones |
| The host clock is hours off (5 h, -23.5 h) | The offset is applied and logged as a WARNING; `clock_status().offset_s` is the offset applied, to the ns | `test_a_large_plausible_offset_is_applied_and_said_loudly` |
| numpy masked arrays | A masked value is sent as missing, the way NaN is (`null` to Atomscale, `DATA_STATUS_MISSING` to ATLAS); a masked timestamp is refused naming the channel and chunk; `run()` keeps the mask of an item it splits | `tests/test_validation.py`: masked arrays of 14 dtypes in 600 hypothesis examples; `tests/test_atlas_end_to_end.py::test_masked_values_reach_atlas_as_missing` |
| An answer without end (a server streaming a body forever) | Cut off at 8 MiB (libcurl's size limit, curl error 63) and retried like any transport failure; no answer of Atomscale's comes near that size | `tests/test_http_engines.py::test_an_endless_answer_is_cut_off`: a 64 MiB answer is refused |
| A compressed answer (a gzip bomb) | Never decompressed: labstream asks for no encoding, and libcurl decodes none unasked | `tests/test_http_engines.py::test_a_compressed_answer_is_never_inflated`: 64 MiB of zeros gzipped stay ~64 kB |
| A redirect to another host | Not followed: the upload is not re-posted and the API key is not sent elsewhere; the 3xx is the answer (a rejection) | `test_a_redirect_is_not_followed_and_the_key_stays_home`: the other host sees no request |
| The finalize request hangs | `finalize(timeout=T)` returns within T + 5 s (`CLOSE_GRACE_S`); the report says the close got no answer | `tests/test_delivery.py::test_finalize_returns_within_its_timeout_and_a_stated_grace_when_the_close_hangs` (grace set to 0.2 s: returns in under 3 s against a 10 s hang) |
| An ATLAS write stored by the server but answered after its deadline | Written again with twice the deadline each time (up to 120 s), so the stream moves on; every repeat is a retry in the report and a WARNING saying the packet may be there twice | `tests/test_atlas_end_to_end.py::test_a_write_answered_after_its_deadline_is_not_repeated_forever`: answers 0.3 s late against a 0.1 s deadline: each packet stored at most 3 times, the stream complete |
| Re-sends | Every re-send of a chunk counts as a retry in the report: at once, after a cooldown, and libcurl's own re-send of a request on a kept-alive connection the server had closed (read from the header bytes libcurl sent) | `tests/test_delivery.py::test_one_in_four_503_loses_nothing`: retries equal the failed requests; `tests/test_end_to_end.py::test_the_report_counts_every_request_the_server_saw`: 25 % failures and 10 % dropped connections, delivered + retries = the requests the server saw |

"""  # noqa: E501


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def details(out: Outcome) -> list[str]:
    """The scenario's own measurements, as sentences."""
    f = out.facts
    title = out.scenario
    if title.startswith("1."):
        return [
            f"Atomscale: {f['atomscale_503'] + f['atomscale_429']} of "
            f"{f['atomscale_requests']} chunk uploads failed ({f['atomscale_503']} x 503 in the "
            f"first half, {f['atomscale_429']} x 429 with `Retry-After: 1` in the second).",
            f"ATLAS: {f['atlas_unavailable']} of {f['atlas_rpcs']} RPCs answered UNAVAILABLE.",
            f"Retries: {_join(f['retries'])}. `Retry-After` honoured (a 1 s wait was asked of "
            f"the injected sleep): {_yes(f['retry_after_honoured'])}.",
        ]
    if title.startswith("2."):
        down = f["down"]
        healthy = "atlas" if down == "atomscale" else "atomscale"
        p50, top = f["healthy_lag_ms_p50"], f["healthy_lag_ms_max"]
        return [
            f"{down} down for {f['outage_s']:.2f} s (chunks 20-39, one pushed every 20 ms); it "
            f"received {f['down_received_during_outage']} of them during the outage, and all "
            f"after it: {_yes(f['down_first_delivery_after_outage'])}.",
            f"{healthy} received {f['healthy_delivered_during_outage']} of those 20 chunks during "
            "the outage, each before the next push.",
            f"{healthy} delivery lag (push to arrival): median {_ms(p50['before'])} before the "
            f"outage, {_ms(p50['during'])} during it; worst {_ms(top['before'])} before, "
            f"{_ms(top['during'])} during.",
        ]
    if title.startswith("3."):
        down = f["down"]
        healthy = "atlas" if down == "atomscale" else "atomscale"
        first = f["first"]
        return [
            f"First streamer: finalize(timeout=1) returned in {f['finalize_s']:.2f} s; "
            f"{healthy} had all {first[healthy]['delivered']} points and was closed "
            f"(checked at the destination: {_yes(f['healthy_done_first'])}).",
            f"{down} in that report: delivered {first[down]['delivered']}, pending "
            f"{first[down]['pending']}, dropped {first[down]['dropped']}, closed "
            f"{_yes(first[down]['closed'])} (close error: {_short(first[down]['close_error'])}).",
            f"Second streamer on the same spool directory, once {down} was up: resumed the "
            f"stream: {_yes(f['recovered'])}; {down} delivered {f['resumed'][down]['delivered']} "
            f"points and closed: {_yes(f['resumed'][down]['closed'])}.",
            f"Atomscale finalize requests for the stream: {f['atomscale_finalize_calls']}"
            + (
                " (one too many: see the bugs below)." if f["atomscale_finalize_calls"] > 1 else "."
            ),
        ]
    if title.startswith("4."):
        trials = f["trials"]
        w_ms = f["window_s"] * 1e3
        beyond = sum(
            len(t["atomscale_lost_beyond_window"]) + len(t["atlas_lost_beyond_window"])
            for t in trials
        )
        lines = [
            f"{len(trials)} children, each killed with SIGKILL from a thread of its own at a "
            f"moment drawn from seed {f['seed']} (`--seed`), then recovered by a new streamer on "
            "its journal. Destinations slowed to 30 ms an upload and 10 ms a packet, so the "
            "journal holds a backlog at the kill. Counted at the emulators, not from labstream's "
            "report.",
            f"Pushes that had returned more than W = {w_ms:.0f} ms before the kill and are "
            f"missing at a destination: {beyond} (the check: none).",
            f"ATLAS sessions never ended: "
            f"{sum(t['atlas_orphaned'] for t in trials)} (of which empty, left by a kill between "
            f"CreateSession and the journal's commit of its key: "
            f"{sum(t['atlas_orphaned_empty'] for t in trials)}); ended twice: "
            f"{sum(t['atlas_ended_twice'] for t in trials)}; Atomscale streams never finalized: "
            f"{sum(1 for t in trials if t['atomscale_finalize_calls'] < 1)}, finalized twice: "
            f"{sum(1 for t in trials if t['atomscale_finalize_calls'] > 1)}.",
            f"Points written again after recovery: ATLAS "
            f"{sum(t['duplicated']['atlas'] for t in trials):,} (most in one trial: "
            f"{max(t['duplicated']['atlas'] for t in trials):,}), Atomscale "
            f"{sum(t['duplicated']['atomscale'] for t in trials):,} (replaced in place).",
            'A resumed ATLAS session reads itself back and skips what landed (see "What a '
            'crash costs on ATLAS" below); the check allows at most one write in flight twice.',
            "Per trial (moment +delay: pushes returned; lost at Atomscale / ATLAS, as ms between "
            "the push and the kill; ATLAS points written twice):",
        ]
        for t in trials:
            lost = t["lost_ms_before_kill"]
            failed = t["atlas_failed_checks"]
            lines.append(
                f"`{t['moment']} +{t['delay_ms']} ms`: {t['pushed']} pushed; lost "
                f"{_ages(lost['atomscale'])} / {_ages(lost['atlas'])}; "
                f"{t['duplicated']['atlas']:,} twice"
                + (f"; ATLAS checks failed: {', '.join(failed)}" if failed else "")
            )
        return lines
    if title.startswith("5."):
        return [
            "The Stream API was stopped after chunk 19 and started again on the same port once "
            "chunks 20-39 had been pushed and retried against it. Same session key throughout: "
            f"{_yes(f['same_session_key'])}; CreateSession calls: {f['create_session_calls']}; "
            f"successful EndSession calls: {f['end_session_calls']}; ATLAS retries: "
            f"{f['atlas_retries']}.",
        ]
    if title.startswith("6."):
        return [
            f"`spool_max_bytes` = 20 chunks (by the journal's estimate); Atomscale down while 50 "
            f"chunks were pushed: {len(f['accepted_while_down'])} accepted (chunks 0-"
            f"{len(f['accepted_while_down']) - 1}), {f['refused_during']} refused, push() never "
            "raised.",
            f"Report: {f['refused_chunks']} chunks / {f['refused_points']} points refused before "
            f"storing: “{f['refusal_reason']}”.",
            f"After Atomscale came back: chunks {f['accepted_after_recovery'][0]}-"
            f"{f['accepted_after_recovery'][-1]} accepted again; every accepted chunk delivered "
            f"and closed at both: {_yes(f['complete_per_destination'])}.",
            "ATLAS checks failed: "
            + (", ".join(f["atlas_failed_checks"]) or "none")
            + " (a warning: the refused chunks are a gap in time).",
        ]
    if title.startswith("7."):
        p = f["push_us"]
        return [
            f"push() latency over {f['pushes']} pushes: p50 {p['fast_p50']:.0f} µs / p99 "
            f"{p['fast_p99']:.0f} µs with fast destinations; p50 {p['slow_p50']:.0f} µs / p99 "
            f"{p['slow_p99']:.0f} µs with slow ones.",
            f"Backlog right after the pushes: {_join(f['backlog_after_pushes'])} chunks; most "
            f"chunks held in memory at any time: {_join(f['max_held'])} "
            f"(`memory_window_chunks` = {f['window']}); the rest waited in the journal.",
        ]
    if title.startswith("8."):
        refused = f["refused"]
        return [
            f"{f['examples']} examples (a fresh stream each), {f['pushes']} pushes: "
            f"{f['accepted']} accepted, {sum(refused.values())} refused "
            f"({_join(refused)}); every refusal named the data_id: "
            f"{_yes(not f['refusals_not_naming_the_push'])}; left out because they would hit an "
            f"open bug: {f['skipped_open_bugs']}.",
            f"Background machinery alive afterwards: {_yes(f['machinery_alive'])}; a finalize "
            f"after the fuzz: {'ok' if f['finalize_after_fuzz_ok'] else 'FAILED'}; journal "
            f"`PRAGMA integrity_check`: {f['journal_integrity']}; streams a fresh streamer "
            f"found unfinished in it: {len(f['left_in_journal'])}.",
        ]
    return [f"{k}: {v}" for k, v in f.items()]


def _ages(ms: list[float]) -> str:
    if not ms:
        return "none"
    return f"{len(ms)} (oldest {max(ms):.0f} ms)"


def _join(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _yes(flag: object) -> str:
    return "yes" if flag else "NO"


def _short(text: str | None, limit: int = 90) -> str:
    if not text:
        return "none"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run(kill_trials: int, seed: int) -> tuple[list[tuple[Outcome, str | None, float]], float]:
    results = []
    started = time.monotonic()
    for scenario, check in SCENARIOS:
        if scenario is scenario_kill_9:
            scenario = functools.partial(scenario_kill_9, trials=kill_trials, seed=seed)
        name = getattr(scenario, "__name__", None) or scenario.func.__name__  # type: ignore[attr-defined]
        print(f"running {name} {getattr(scenario, 'keywords', '')}...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="labstream-reliability-") as tmp:
            t0 = time.monotonic()
            try:
                out = scenario(Path(tmp) / "spool")
            except Exception:
                out = Outcome(name)
                error: str | None = traceback.format_exc(limit=3)
            else:
                try:
                    check(out)
                    error = None
                except AssertionError:
                    error = traceback.format_exc(limit=2)
            results.append((out, error, time.monotonic() - t0))
    return results, time.monotonic() - started


def render(results: list[tuple[Outcome, str | None, float]], total_s: float) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [
        "# Reliability",
        "",
        "What labstream delivers when things go wrong, streaming to Atomscale (HTTP) and ATLAS "
        "(gRPC) at once. Each scenario below is a test in `tests/test_reliability.py` (run by "
        "`./scripts/test`); this page holds the figures of one run of the same scenarios.",
        "",
        f"Produced by `{COMMAND}` on {today} (UTC), in {total_s:.0f} s: Python "
        f"{platform.python_version()}, {platform.system()}, {os.cpu_count()} CPU(s).",
        "",
        "## Setup",
        "",
        "- Both destinations are the local emulators (`labstream.testing.atomscale` and "
        "`labstream.testing.atlas`), running in the test process on loopback. Faults come "
        "from their seeded fault plans: HTTP 503, 429 with `Retry-After`, gRPC UNAVAILABLE, "
        "outages and latency. The ATLAS emulator records every packet, and its protocol "
        "checker (`atlas_checker.check_session`) rebuilds each parameter's samples.",
        "- The streamers use a short retry policy, `RetryPolicy(initial_backoff_s=0.01, "
        "max_backoff_s=0.05, jitter_s=0, cooldown_s=0.05)`, the durable journal (spool) in a "
        "temporary directory, and no clock correction.",
        "- Data: channels at 10 Hz, chunks of 50 points (20 in scenario 7), every value "
        "distinct, so a missing, extra or misplaced point shows.",
        "",
        "What the columns count, in points:",
        "",
        "- **sent**: points accepted by `push()`. Refused points are not sent (scenario 6 counts "
        "them apart). In scenario 4 it is every point whose `push()` returned in the killed "
        "processes, all trials together.",
        "- **received**: distinct points the destination stores. Atomscale stores by (channel, "
        "chunk_index). For ATLAS it is the samples of the session's parameter data, each "
        "timestamp once. Every scenario also checks the values one by one.",
        "- **duplicated**: extra copies that reached the destination. Atomscale replaces a "
        "re-sent chunk, so its stored result has no duplicates; the column counts the re-sent "
        "points it received. ATLAS appends, so its duplicates stay in the session data.",
        "",
        "## Figures",
        "",
        "| scenario | destination | sent | received | duplicated | checks |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for out, error, _ in results:
        verdict = "pass" if error is None else "**FAIL**"
        for row in out.rows:
            lines.append(
                f"| {out.scenario} | {row.destination} | {row.sent:,} | {row.received:,} | "
                f"{row.duplicated:,} | {verdict} |"
            )
        if not out.rows:
            lines.append(f"| {out.scenario} | - | - | - | - | {verdict} |")
    lines += ["", "## Scenario by scenario", ""]
    for out, error, seconds in results:
        lines += [f"### {out.scenario}", "", f"Took {seconds:.1f} s.", ""]
        if out.facts:
            lines += [f"- {sentence}" for sentence in details(out)]
        if error is not None:
            lines += ["", "Check failed:", "", "```", error.rstrip(), "```"]
        lines.append("")
    lines += [
        "## run()",
        "",
        "`tests/test_run_faults.py` runs `run()` (generator mode) through the faults above: "
        "25 % of uploads failing (with ATLAS too), an outage, rejections, a slow iterator, an "
        "exception from the iterator, no journal, two `run()` calls into one stream, uploads "
        "still unanswered at `run()`'s deadline, and an upload libcurl refuses. `run()` takes "
        "the same path as `push()`: every chunk goes through the destination's runner and its "
        "adaptive window. "
        "Scenario 4 kills children in `run()` too. The other figures come from the `push()` "
        "scenarios.",
        "",
        "## What a crash costs on ATLAS",
        "",
        "The Stream API acknowledges every packet; labstream journals where the session "
        "stands (packet ids, timelines) after each batch. After a `kill -9` the next process "
        "continues the same session. Where the Stream API has a reader service (the emulator "
        "does), it first reads the session back from the last journaled state and skips every "
        "point that landed: one session per stream, ended once, every protocol check passing. "
        "A write the killed process still had in flight can be stored by the server after "
        "that read; so the read is repeated until two reads agree, each lasting at least the "
        "read-back idle time (1 s). Before that, a loaded machine repeated one write in 2 of 3 "
        "runs (100 and 1,700 points). Scenario 4 still allows that one write's points twice, "
        "and then only the checks a repeat breaks: "
        + ", ".join(f"`{c}`" for c in sorted(CRASH_DUPLICATE_CHECKS))
        + ". "
        "Without a reader, the batch in flight is "
        "journaled before its first write and is the only thing sent again, counted in the "
        "report as `points_maybe_duplicated` (tests/test_atlas_resume.py). The intent to create "
        "a session is journaled before CreateSession, so a kill between its answer and the "
        "commit of its key is continued in that session, found by its data_id.",
        "",
        "Atomscale has no such problem: it stores a re-sent chunk in place of the first copy.",
        "",
        "In the fuzz (scenario 8), a few ATLAS checks depend on the fuzzed data itself "
        "(overlapping or sub-microsecond timestamps, one-sample chunks), not on labstream: "
        + ", ".join(f"`{c}`" for c in sorted(DATA_DEPENDENT_CHECKS))
        + ". All the other checks must pass.",
        "",
        *HOSTILE.splitlines(),
        "## Bugs in src/ found by the suite",
        "",
        "Open bugs are pinned by `test_bug_*` tests marked `xfail(strict=True)`: such a test "
        "fails (XPASS) once its bug is fixed, and then becomes a `test_regression_*` test; the "
        "fuzz keeps the inputs of open bugs out of its strategies until then.",
        "",
        "Open:",
        "",
    ]
    lines += [f"- `{name}`: {reason}." for name, reason in known_bugs()] or ["- none"]
    lines += ["", "Fixed since they were found (each kept as a regression test):", ""]
    lines += [f"- `{name}`: {what}" for name, what in fixed_bugs()] or ["- none"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "reliability.md"), help="or - ")
    parser.add_argument("--kill-trials", type=int, default=30, help="kill -9 trials (30)")
    parser.add_argument("--seed", type=int, default=KILL_SEED, help="of the kill moments")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the scenarios provoke every warning labstream has
    results, total_s = run(args.kill_trials, args.seed)
    text = render(results, total_s)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    failed = [out.scenario for out, error, _ in results if error is not None]
    for scenario in failed:
        print(f"FAILED: {scenario}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
