"""labstream.cli.plot: the receipt comparison is right, and real runs render to PNG, SVG and PDF.

The comparison (which pushed points a destination holds exactly, holds differently, or lacks) is
what makes the picture trustworthy, so it is tested on exact cases. Rendering is tested end to
end: a small stream through the real client to both emulators (the ATLAS one recording to a file),
then ``plot_demo`` and ``plot_atlas_record`` on what they stored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from labstream import Atlas, RetryPolicy, TimeseriesStreamer
from labstream.cli.plot import (
    MAX_HEIGHT_IN,
    MAX_LINE_POINTS,
    MAX_STRIP_CELLS,
    MarkerSpan,
    Series,
    _compare,
    _presence,
    _thin,
    atlas_parameter_name,
    markers_from_atlas,
    plot_atlas_record,
    plot_demo,
    plot_receipts,
    series_from_atlas,
    series_from_atomscale,
)
from labstream.testing import atlas as atlas_emulator
from labstream.testing.atlas_checker import SessionReport, check_session
from labstream.testing.atomscale import AtomscaleEmulator, run_in_thread

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_790_000_000.0


def _series(n: int = 10, step: float = 0.1, units: str | None = None) -> Series:
    return Series.of(T0 + np.arange(n) * step, np.arange(n, dtype=float), units)


def test_series_sorts_by_time_and_checks_lengths() -> None:
    s = Series.of([T0 + 2, T0, T0 + 1], [2.0, 0.0, 1.0], statuses=[3, 1, 2])
    assert s.timestamps.tolist() == [T0, T0 + 1, T0 + 2]
    assert s.values.tolist() == [0.0, 1.0, 2.0]
    assert s.statuses is not None and s.statuses.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="3 timestamps, 2 values"):
        Series.of([T0, T0 + 1, T0 + 2], [1.0, 2.0])


def test_identical_copy_is_all_held() -> None:
    pushed = _series()
    r = _compare(pushed, _series(), "atomscale")
    assert (r.points, r.missing, r.differs, r.invalid) == (10, 0, 0, 0)
    assert len(r.segments) == 1


def test_missing_and_different_points_are_counted_where_they_are() -> None:
    pushed = _series(20)
    keep = np.r_[0:5, 8:20]
    values = pushed.values[keep].copy()
    values[-1] += 0.5  # the last point arrived with another value
    got = Series.of(pushed.timestamps[keep], values)
    r = _compare(pushed, got, "atomscale")
    assert (r.missing, r.differs) == (3, 1)
    missing = [seg for seg in r.segments if seg[2] == 2]  # _MISSING
    assert len(missing) == 1
    start, end, _ = missing[0]
    assert start < T0 + 0.5 < T0 + 0.7 < end  # points 5..7


def test_nan_and_inf_are_gaps_when_the_destination_keeps_them_as_gaps() -> None:
    pushed = Series.of(T0 + np.arange(4) * 0.1, [1.0, math.nan, math.inf, 4.0])
    # Atomscale stores null for both NaN and inf; ATLAS keeps the bits and sets a status.
    atomscale = Series.of(pushed.timestamps, [1.0, math.nan, math.nan, 4.0])
    atlas = Series.of(pushed.timestamps, [1.0, math.nan, math.inf, 4.0], statuses=[1, 2, 3, 1])
    for got in (atomscale, atlas):
        r = _compare(pushed, got, "atlas")
        assert (r.missing, r.differs, r.invalid) == (0, 0, 2)
    # A finite value where a gap was pushed, or a gap where a value was pushed, differs.
    wrong = Series.of(pushed.timestamps, [math.nan, 2.0, math.inf, 4.0])
    assert _compare(pushed, wrong, "atomscale").differs == 2
    # A finite value with a non-valid status is not the pushed point either.
    bad_status = Series.of(pushed.timestamps, pushed.values, statuses=[2, 2, 3, 1])
    assert _compare(pushed, bad_status, "atlas").differs == 1


def test_clock_offset_is_removed_before_comparing() -> None:
    pushed = _series()
    corrected = pushed.shifted(0.05)  # what the destination holds: host clock + offset
    assert _compare(pushed, corrected, "atlas").missing == 10
    assert _compare(pushed, corrected.shifted(-0.05), "atlas").missing == 0


def test_nothing_received_is_all_missing() -> None:
    r = _compare(_series(), None, "atlas")
    assert (r.points, r.missing) == (0, 10)


def test_presence_shows_time_gaps_and_invalid_samples() -> None:
    ts = np.r_[T0 + np.arange(10) * 0.1, T0 + 5 + np.arange(10) * 0.1]
    values = np.ones(20)
    values[3] = math.nan
    r = _presence(Series.of(ts, values), "atlas")
    assert (r.gaps, r.invalid) == (1, 1)
    (hole,) = [seg for seg in r.segments if seg[2] == 4]  # _NO_SAMPLES
    assert T0 + 0.9 < hole[0] < hole[1] < T0 + 5


def test_thinning_keeps_extremes_and_gaps() -> None:
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 1000.0)
    y[12_345] = 7.0
    y[54_321] = math.nan
    tx, ty = _thin(x, y)
    assert tx.size < 15_000
    assert np.nanmax(ty) == 7.0
    assert np.isnan(ty).sum() == 1


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures `plot_receipts` saves, kept for a look at what they hold."""
    from matplotlib.figure import Figure

    saved: list[Any] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head.startswith(PNG_MAGIC)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_a_long_run_plots_bounded_lines_with_spikes_gaps_and_a_lone_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1_000_000
    ts = T0 + np.arange(n) * 0.01
    values = np.sin(np.arange(n) / 5000.0)
    values[654_321] = 50.0  # one spike
    values[::997] = math.nan  # a gap about every 10 s
    pushed = Series.of(ts, values)
    lacking = np.ones(n, dtype=bool)
    lacking[333_333] = False  # Atomscale lacks one point
    figures = _drawn(monkeypatch)
    out = plot_receipts(
        tmp_path / "long.png",
        pushed={"T": pushed},
        atomscale={"T": Series.of(ts[lacking], values[lacking])},
        atlas={"T": pushed},
    )
    (fig,) = figures
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
    assert len(lines) == 3  # pushed, Atomscale, ATLAS
    for line in lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        assert y.size <= MAX_LINE_POINTS
        assert np.nanmax(y) == 50.0 and np.isnan(y).any()  # the spike and the gaps stay
    panel, strip = fig.axes[:2]
    assert "Atomscale 999999 (1 not received)" in panel.get_title(loc="right")
    rows = strip.collections  # broken_barh: one collection per state and row
    assert all(len(c.get_paths()) <= MAX_STRIP_CELLS for c in rows)
    red = [c for c in rows if tuple(c.get_facecolor()[0][:3]) == (214 / 255, 39 / 255, 40 / 255)]
    assert len(red) == 1 and len(red[0].get_paths()) == 1  # the lone miss is still drawn
    assert _png_size(out)[1] <= MAX_HEIGHT_IN * 110


def test_a_receipt_row_of_alternating_states_is_bounded_and_its_counts_exact() -> None:
    values = np.arange(100_000, dtype=float)
    values[::2] = math.nan  # every other sample a gap: 100,000 runs
    r = _presence(Series.of(T0 + np.arange(100_000) * 0.1, values), "atlas")
    assert (r.points, r.invalid, r.gaps) == (100_000, 50_000, 0)
    assert len(r.segments) <= MAX_STRIP_CELLS
    assert {state for _, _, state in r.segments} == {1}  # _GAP_VALUE: the worst in every cell


def test_many_channels_fit_a_bounded_figure_and_the_rest_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushed = {f"ch{i:02d}": _series(20) for i in range(60)}
    figures = _drawn(monkeypatch)
    out = plot_receipts(tmp_path / "many.png", pushed=pushed, atlas=pushed)
    width, height = _png_size(out)
    assert height <= MAX_HEIGHT_IN * 110 and width == 11 * 110
    notes = [t.get_text() for t in figures[0].texts if "not shown" in t.get_text()]
    shown = sum(1 for ax in figures[0].axes if ax.get_title(loc="left").startswith("ch"))
    assert 10 <= shown < 60
    assert notes == [f"{60 - shown} more channel(s) not shown: " + notes[0].split(": ", 1)[1]]
    assert notes[0].split(": ", 1)[1].startswith(f"ch{shown:02d}, ")


def test_atlas_parameter_names_match_labstreams_naming() -> None:
    assert atlas_parameter_name("substrate temp (C)") == "substrate_temp__C_:labstream"
    assert atlas_parameter_name("p", "MBE1") == "p:MBE1"


def test_bad_extension_and_empty_input_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image format"):
        plot_receipts(tmp_path / "out.jpg", pushed={"a": _series()})
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_receipts(tmp_path / "out.png")


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_plot_receipts_writes_each_format(tmp_path: Path, suffix: str) -> None:
    pushed = {"a": _series(50, units="C"), "b": _series(50, step=1.0)}
    partial = {"a": Series.of(pushed["a"].timestamps[:30], pushed["a"].values[:30], "C")}
    out = plot_receipts(
        tmp_path / "sub" / f"receipts{suffix}",
        pushed=pushed,
        atomscale=partial,
        atlas=pushed,
        markers=[MarkerSpan("go", T0 + 1), MarkerSpan("hold", T0 + 2, T0 + 3)],
        title="t",
    )
    head = out.read_bytes()[:64]
    assert {".png": head.startswith(PNG_MAGIC), ".svg": b"<svg" in out.read_bytes()[:2000]}.get(
        suffix, head.startswith(b"%PDF")
    )


@dataclass
class _Run:
    timestamps: np.ndarray
    channels: dict[str, tuple[np.ndarray, str]]
    atomscale: AtomscaleEmulator
    data_id: str
    report: SessionReport
    offset: float


def _stream_to_emulators(record: Path) -> _Run:
    """A short two-channel run with a NaN, an inf and markers, through the real client."""
    n = 400
    ts = time.time() - 60 + np.arange(n) * 0.1
    temp = 600.0 + np.arange(n) * 0.01
    pressure = np.full(n, 2e-9)
    pressure[[50, 300]] = math.nan
    pressure[200] = math.inf
    channels = {"substrate temperature": (temp, "C"), "chamber_pressure": (pressure, "mbar")}
    policy = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, jitter_s=0, cooldown_s=0.02)
    with (
        run_in_thread() as atomscale,
        atlas_emulator.run_in_thread(record_path=record) as atlas,
        TimeseriesStreamer(
            api_key="k",
            endpoint=atomscale.url,
            retry=policy,
            handle_sigterm=False,
            atlas=Atlas(address=atlas.address, key_generator_address=atlas.key_generator_address),
        ) as streamer,
    ):
        with streamer.stream(stream_name="plot-test") as s:
            for c in range(n // 100):
                sl = slice(c * 100, (c + 1) * 100)
                s.push_multi(
                    c,
                    {k: {"timestamps": ts[sl], "values": v[sl], "units": u}
                     for k, (v, u) in channels.items()},
                )  # fmt: skip
            s.mark("shutter open", timestamp=float(ts[120]))
            s.mark("layer", timestamp=float(ts[150]), end_time=float(ts[250]))
        offset = streamer.clock_status().offset_s
        assert s.report is not None and s.report.ok, s.report
        (session,) = atlas.sessions.values()
        return _Run(ts, channels, atomscale, s.data_id, check_session(session), offset)


def test_demo_and_record_plots_from_a_real_run(tmp_path: Path) -> None:
    record = tmp_path / "atlas.jsonl"
    run = _stream_to_emulators(record)
    # The builders line destinations up with what was pushed: nothing missing, nothing differs.
    stored = series_from_atomscale(run.atomscale, run.data_id, clock_offset_s=run.offset)
    got = series_from_atlas(run.report, channels=run.channels, clock_offset_s=run.offset)
    assert set(stored) == set(got) == set(run.channels)
    for name, (values, units) in run.channels.items():
        pushed = Series.of(run.timestamps, values, units)
        for dest, series in (("atomscale", stored[name]), ("atlas", got[name])):
            r = _compare(pushed, series, dest)
            assert (r.missing, r.differs) == (0, 0), (name, dest)
            assert r.invalid == (3 if name == "chamber_pressure" else 0)
    statuses = got["chamber_pressure"].statuses
    assert statuses is not None and sorted(set(statuses.tolist())) == [1, 2, 3]
    markers = markers_from_atlas(run.report, clock_offset_s=run.offset)
    assert [(m.label, m.end is None) for m in markers] == [
        ("shutter open", True),
        ("layer", False),
    ]
    assert markers[0].start == pytest.approx(run.timestamps[120], abs=1e-6)

    png = plot_demo(
        tmp_path / "demo.png",
        timestamps=run.timestamps,
        channels=run.channels,
        atomscale=run.atomscale,
        data_id=run.data_id,
        atlas=run.report,
        clock_offset_s=run.offset,
    )
    assert png.read_bytes().startswith(PNG_MAGIC)
    svg = plot_atlas_record(record, tmp_path / "record.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    assert plot_atlas_record(record, tmp_path / "one.png", session="plot-test").exists()
    with pytest.raises(ValueError, match="no session"):
        plot_atlas_record(record, tmp_path / "none.png", session="nope")
    with pytest.raises(FileNotFoundError):
        plot_atlas_record(tmp_path / "missing.jsonl", tmp_path / "x.png")
