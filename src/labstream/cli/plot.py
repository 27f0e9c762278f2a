"""Receipts plots: each channel as Atomscale and ATLAS stored it, next to what was pushed.

Why it exists: labstream promises that both destinations end up holding exactly what the
acquisition loop pushed. A report counts points; it cannot show *where* a destination is missing
some, which samples went out as gaps (NaN, ``null``, a non-valid ATLAS ``DataStatus``), or whether a
marker sits where the operator clicked. One picture per run answers all three at a glance, for the
demo (``labstream demo --plot FILE``), for an ATLAS ``--record`` file
(``labstream atlas report FILE --plot OUT``), and for a user's own run against the emulators.

Each channel gets a value panel and, under it, a receipt strip with one row per destination:

* value panel: what was pushed (a wide grey band), what Atomscale stored (solid blue) and what
  ATLAS stored (dashed orange) on one time axis, so identical data shows as the blue and orange
  lines over the grey band and a difference shows as a line leaving the band. Lines break at
  NaN/inf and at time gaps instead of bridging them. Markers are vertical lines (spans when they
  have an end time) across every panel.
* receipt strip: green where the destination holds the pushed point exactly, red where it holds
  nothing, magenta where it holds something else, grey where the point is a gap on purpose (NaN
  or inf pushed; ``null`` in Atomscale, status MISSING/ERROR in ATLAS). With nothing pushed to
  compare to (an ATLAS record), green marks samples, grey non-valid ones and orange time gaps.

Timestamps are plotted on the host clock: the builders below take ``clock_offset_s`` (what
``streamer.clock_status().offset_s`` reports) and remove it from what the destinations hold, so
received points line up with pushed ones. Inputs are built from the two emulators, an ATLAS
``SessionReport`` or a ``--record`` file; rendering uses matplotlib's object API (no pyplot, no
global state, no display needed) and writes PNG, SVG or PDF by the file's extension.

matplotlib is an optional dependency (the ``plot`` extra): it is imported when a figure is drawn,
so ``import labstream.cli.plot`` works without it and fails only with a message saying what to
install.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from .._core.timebase import ns_to_seconds

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..testing.atlas_checker import SessionReport
    from ..testing.atomscale import AtomscaleEmulator

__all__ = [
    "MarkerSpan",
    "Series",
    "atlas_parameter_name",
    "markers_from_atlas",
    "plot_atlas_record",
    "plot_demo",
    "plot_receipts",
    "series_from_atlas",
    "series_from_atomscale",
    "series_from_pushed",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: ATLAS ``DataStatus`` values (open_data.proto).
STATUS_VALID: Final = 1
STATUS_MISSING: Final = 2
STATUS_ERROR: Final = 3

FORMATS: Final = frozenset({".png", ".svg", ".pdf"})
#: A step longer than this many median steps is a gap: lines break there.
GAP_FACTOR: Final = 2.5
#: Lines longer than this are thinned to a min/max envelope: per bucket its lowest and highest
#: point, and one of its gaps if it has any, so spikes and breaks stay visible.
MAX_LINE_POINTS: Final = 3_000
#: A receipt row with more runs than this is drawn on a grid of this many cells, each cell in the
#: worst state it covers (its counts stay exact), so a lone missing point still shows.
MAX_STRIP_CELLS: Final = 2_000
#: At most this many channel panels in one figure; the rest are named in a note.
MAX_PANELS: Final = 40
#: The tallest figure, in inches (3,520 pixels in a PNG): panels shrink to fit, down to
#: `_MIN_PANEL`, and the channels that still do not fit are named in a note.
MAX_HEIGHT_IN: Final = 32.0

# Receipt states, one per point.
_OK, _GAP_VALUE, _MISSING, _DIFFERS, _NO_SAMPLES = range(5)
_STATE_COLORS: Final = {
    _OK: "#7fc97f",
    _GAP_VALUE: "#9e9e9e",
    _MISSING: "#d62728",
    _DIFFERS: "#c51b8a",
    _NO_SAMPLES: "#fdae61",
}
_PUSHED_COLOR: Final = "#b0b0b0"
_DEST_COLORS: Final = {"atomscale": "#1f77b4", "atlas": "#ff7f0e"}
_DEST_LABELS: Final = {"atomscale": "Atomscale", "atlas": "ATLAS"}
# Solid under dashed: where both destinations hold the same points, both lines stay visible.
_DEST_STYLES: Final[dict[str, Any]] = {"atomscale": "-", "atlas": (0, (4, 3))}
_MARKER_COLOR: Final = "#6a3d9a"
_ATLAS_NAME_RE: Final = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, slots=True, eq=False)
class Series:
    """One channel as pushed, or as one destination holds it.

    Attributes:
        timestamps: epoch seconds on the host clock, float64, in time order.
        values: float64; NaN and ±inf are kept (they are gaps and faults, not noise).
        units: the channel's units, if known.
        statuses: ATLAS ``DataStatus`` per sample (1 valid, 2 missing, 3 error); None when the
            destination has no statuses (Atomscale, what was pushed).
    """

    timestamps: FloatArray
    values: FloatArray
    units: str | None = None
    statuses: IntArray | None = None

    @classmethod
    def of(
        cls,
        timestamps: npt.ArrayLike,
        values: npt.ArrayLike,
        units: str | None = None,
        statuses: npt.ArrayLike | None = None,
    ) -> Series:
        """Build a series from any array-likes, sorted by time.

        Raises:
            ValueError: the lengths differ.
        """
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        vs = np.asarray(values, dtype=np.float64).reshape(-1)
        st = None if statuses is None else np.asarray(statuses, dtype=np.int64).reshape(-1)
        if ts.shape != vs.shape or (st is not None and st.shape != ts.shape):
            raise ValueError(
                f"a series needs one value (and status) per timestamp: {ts.shape[0]} timestamps, "
                f"{vs.shape[0]} values" + ("" if st is None else f", {st.shape[0]} statuses")
            )
        if ts.shape[0] > 1 and bool(np.any(np.diff(ts) < 0)):
            order = np.argsort(ts, kind="stable")
            ts, vs = ts[order], vs[order]
            st = None if st is None else st[order]
        return cls(ts, vs, units, st)

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def shifted(self, seconds: float) -> Series:
        """The same series with ``seconds`` added to every timestamp."""
        if not seconds:
            return self
        return Series(self.timestamps + seconds, self.values, self.units, self.statuses)


@dataclass(frozen=True, slots=True)
class MarkerSpan:
    """A marker: an instant, or a span when ``end`` is set (epoch seconds, host clock)."""

    label: str
    start: float
    end: float | None = None


def series_from_pushed(
    timestamps: npt.ArrayLike, channels: Mapping[str, tuple[npt.ArrayLike, str | None]]
) -> dict[str, Series]:
    """What was pushed: one timeline shared by several channels, ``{name: (values, units)}``."""
    return {
        name: Series.of(timestamps, values, units) for name, (values, units) in channels.items()
    }


def series_from_atomscale(
    emulator: AtomscaleEmulator, data_id: str, *, clock_offset_s: float = 0.0
) -> dict[str, Series]:
    """What the Atomscale emulator stored for a stream: every channel, ``null`` read as NaN.

    Args:
        emulator: a running (or stopped) :class:`~labstream.testing.atomscale.AtomscaleEmulator`.
        data_id: the stream.
        clock_offset_s: the streamer's clock offset; removed from the stored timestamps.

    Raises:
        KeyError: the emulator has no such stream.
    """
    summary = emulator.summary()["streams"][data_id]
    out: dict[str, Series] = {}
    for name, info in summary["channels"].items():
        ts, vs = emulator.points(data_id, name)
        out[name] = Series.of(ts, vs, info.get("units")).shifted(-clock_offset_s)
    return out


def atlas_parameter_name(channel: str, application_name: str = "labstream") -> str:
    """The ATLAS parameter identifier labstream gives a channel (``<channel>:<app>``)."""
    return f"{_ATLAS_NAME_RE.sub('_', channel)}:{application_name}"


def series_from_atlas(
    report: SessionReport,
    *,
    channels: Iterable[str] | None = None,
    application_name: str | None = "labstream",
    clock_offset_s: float = 0.0,
) -> dict[str, Series]:
    """What ATLAS received for a session, from its ``check_session()`` report.

    Args:
        report: the session's report; its ``parameters`` hold samples, values and statuses.
        channels: the pushed channel names. Parameters are then keyed by these names (matched
            through :func:`atlas_parameter_name`) so they line up with what was pushed. A
            parameter renamed with ``ChannelOptions`` keeps its own identifier.
        application_name: the suffix ``:<application_name>`` is removed from the other parameter
            identifiers; None keeps identifiers as they are.
        clock_offset_s: the streamer's clock offset; removed from ATLAS's timestamps.
    """
    by_identifier = {
        atlas_parameter_name(c, application_name or "labstream"): c for c in channels or ()
    }
    suffix = f":{application_name}" if application_name else None
    out: dict[str, Series] = {}
    for identifier, param in report.parameters.items():
        name = by_identifier.get(identifier)
        if name is None:
            name = identifier
            if suffix and name.endswith(suffix):
                name = name[: -len(suffix)]
        ts = ns_to_seconds(np.asarray(param.timestamps_ns, dtype=np.int64))
        series = Series.of(ts, param.values, param.units, param.statuses)
        out[name] = series.shifted(-clock_offset_s)
    return out


def markers_from_atlas(report: SessionReport, *, clock_offset_s: float = 0.0) -> list[MarkerSpan]:
    """The markers ATLAS received, in host-clock seconds (an ``end_time`` of 0 means an instant)."""
    out = []
    for m in report.markers:
        start = float(ns_to_seconds(np.asarray([m.timestamp_ns], dtype=np.int64))[0])
        end = None
        if m.end_time_ns and m.end_time_ns != m.timestamp_ns:
            end = float(ns_to_seconds(np.asarray([m.end_time_ns], dtype=np.int64))[0])
            end -= clock_offset_s
        out.append(MarkerSpan(m.label, start - clock_offset_s, end))
    return out


# --------------------------------------------------------------------------------------------------
# Entry points


def plot_receipts(
    path: str | Path,
    *,
    pushed: Mapping[str, Series] | None = None,
    atomscale: Mapping[str, Series] | None = None,
    atlas: Mapping[str, Series] | None = None,
    markers: Sequence[MarkerSpan] = (),
    title: str | None = None,
) -> Path:
    """Draw every channel as pushed and as each destination stored it; save to ``path``.

    Channels are those of ``pushed`` (in its order), then any a destination holds that was not
    pushed. Give whichever inputs you have: with ``pushed``, the receipt strips compare each
    destination with it point by point; without, they show samples, non-valid samples and gaps.

    Args:
        path: output file; ``.png``, ``.svg`` or ``.pdf``.
        pushed, atomscale, atlas: channel name -> :class:`Series`.
        markers: drawn across every panel.
        title: the figure's title.

    Returns:
        The path written.

    Raises:
        ValueError: an unsupported extension, or no channel to draw.
        ModuleNotFoundError: matplotlib is not installed (``pip install 'labstream[plot]'``).
    """
    group = _Group("", pushed or {}, {"atomscale": atomscale, "atlas": atlas}, markers)
    return _render(Path(path), title or "labstream: what each destination stored", [group])


def plot_demo(
    path: str | Path,
    *,
    timestamps: npt.ArrayLike,
    channels: Mapping[str, tuple[npt.ArrayLike, str | None]],
    atomscale: AtomscaleEmulator,
    data_id: str,
    atlas: SessionReport | None = None,
    clock_offset_s: float = 0.0,
    markers: Sequence[MarkerSpan] | None = None,
    title: str | None = None,
) -> Path:
    """The demo's picture: the simulated growth against what both emulators stored.

    Args:
        path: output file (``.png``, ``.svg`` or ``.pdf``).
        timestamps: the pushed timeline (epoch seconds, host clock).
        channels: ``{name: (values, units)}`` as pushed.
        atomscale: the Atomscale emulator the demo streamed to.
        data_id: the demo's stream.
        atlas: the ATLAS session's report (``check_session(...)``), if ATLAS was streamed to.
        clock_offset_s: ``streamer.clock_status().offset_s``.
        markers: markers to draw; default the ones ATLAS received.
        title: the figure's title.

    Returns:
        The path written.

    Raises:
        ValueError, ModuleNotFoundError: see :func:`plot_receipts`.
    """
    pushed = series_from_pushed(timestamps, channels)
    stored = series_from_atomscale(atomscale, data_id, clock_offset_s=clock_offset_s)
    atlas_series = None
    if atlas is not None:
        atlas_series = series_from_atlas(atlas, channels=pushed, clock_offset_s=clock_offset_s)
        if markers is None:
            markers = markers_from_atlas(atlas, clock_offset_s=clock_offset_s)
    return plot_receipts(
        path,
        pushed=pushed,
        atomscale=stored,
        atlas=atlas_series,
        markers=markers or (),
        title=title or f"labstream demo: stream {data_id}, pushed vs stored",
    )


def plot_atlas_record(
    record_path: str | Path,
    out_path: str | Path,
    *,
    session: str | None = None,
    reports: Sequence[SessionReport] | None = None,
) -> Path:
    """Plot what an ATLAS ``--record`` file holds: every session's parameters and markers.

    Args:
        record_path: a JSON-lines file written by ``labstream atlas serve --record``.
        out_path: output file (``.png``, ``.svg`` or ``.pdf``).
        session: only this session (its key or identifier); default every session in the file.
        reports: the file's sessions as ``check_sessions(load_record(record_path))`` gives them,
            when the caller has them already: the file is then not read (and decoded) twice.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: no such record file.
        ValueError: no session (or not the one asked for) with data, or an unsupported extension.
        ModuleNotFoundError: see :func:`plot_receipts`.
    """
    from ..testing.atlas import load_record
    from ..testing.atlas_checker import check_sessions

    _check_extension(Path(out_path))
    if reports is None:
        reports = check_sessions(load_record(record_path))
    if session is not None:
        reports = [r for r in reports if session in (r.session_key, r.identifier)]
        if not reports:
            raise ValueError(f"{record_path}: no session with key or identifier {session!r}")
    groups = [
        _Group(
            f"{r.identifier or r.session_key} (data source {r.data_source!r}; "
            f"protocol {'clean' if r.clean else 'NOT clean'})",
            {},
            {"atlas": series_from_atlas(r)},
            markers_from_atlas(r),
        )
        for r in reports
        if r.parameters
    ]
    if not groups:
        raise ValueError(f"{record_path}: no session with parameter data to plot")
    return _render(Path(out_path), f"ATLAS record {Path(record_path).name}", groups)


# --------------------------------------------------------------------------------------------------
# Analysis: what each destination holds of each pushed point


@dataclass(frozen=True, slots=True)
class _Receipt:
    """One destination's row of a receipt strip: states over time, and the counts behind them."""

    destination: str
    segments: list[tuple[float, float, int]]  # (start s, end s, state), host clock
    points: int
    missing: int = 0
    differs: int = 0
    gaps: int = 0  # time gaps (without a reference to compare to)
    invalid: int = 0  # NaN/inf values, non-valid statuses


def _median_step(ts: FloatArray) -> float:
    steps = np.diff(ts)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def _is_gap_value(values: FloatArray, statuses: IntArray | None) -> npt.NDArray[np.bool_]:
    bad = ~np.isfinite(values)
    if statuses is not None:
        bad |= statuses != STATUS_VALID
    return bad


def _segments(
    ts: FloatArray, states: npt.NDArray[np.int_], step: float
) -> list[tuple[float, float, int]]:
    """Runs of equal state, each point covering ±step/2; runs also end at time gaps."""
    if ts.size == 0:
        return []
    half = step / 2
    breaks = np.flatnonzero((states[1:] != states[:-1]) | (np.diff(ts) > GAP_FACTOR * step)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [ts.size])) - 1
    return _runs(ts[starts] - half, ts[ends] + half, states[starts])


def _runs(
    starts: FloatArray, ends: FloatArray, states: npt.NDArray[np.int_]
) -> list[tuple[float, float, int]]:
    """(start, end, state) runs; past MAX_STRIP_CELLS of them, a grid of that many cells, each
    in the worst state it covers (empty cells stay empty), merged into runs again."""
    if starts.size > MAX_STRIP_CELLS:
        starts, ends, states = _coarsen(starts, ends, states)
    return list(zip(starts.tolist(), ends.tolist(), states.tolist(), strict=True))


def _compare(pushed: Series, got: Series | None, destination: str) -> _Receipt:
    """State of every pushed point in one destination: held exactly, a gap as pushed, or not."""
    step = _median_step(pushed.timestamps)
    n = len(pushed)
    states = np.full(n, _MISSING, dtype=np.int_)
    if got is not None and len(got):
        tol = max(1e-6, 0.25 * step) if n > 1 else 1e-3
        gt = got.timestamps
        right = np.clip(np.searchsorted(gt, pushed.timestamps), 0, gt.size - 1)
        left = np.clip(right - 1, 0, gt.size - 1)
        nearest = np.where(
            np.abs(gt[left] - pushed.timestamps) <= np.abs(gt[right] - pushed.timestamps),
            left,
            right,
        )
        found = np.abs(gt[nearest] - pushed.timestamps) <= tol
        pv, gv = pushed.values, got.values[nearest]
        g_gap = _is_gap_value(gv, None if got.statuses is None else got.statuses[nearest])
        p_gap = ~np.isfinite(pv)
        same = np.where(p_gap, g_gap, (gv == pv) & ~g_gap)
        states = np.where(found, np.where(same, np.where(p_gap, _GAP_VALUE, _OK), _DIFFERS), states)
    return _Receipt(
        destination,
        _segments(pushed.timestamps, states, step),
        points=0 if got is None else len(got),
        missing=int(np.count_nonzero(states == _MISSING)),
        differs=int(np.count_nonzero(states == _DIFFERS)),
        invalid=int(np.count_nonzero(states == _GAP_VALUE)),
    )


def _presence(got: Series, destination: str) -> _Receipt:
    """With nothing to compare to: samples, non-valid samples, and gaps in time."""
    ts = got.timestamps
    step = _median_step(ts)
    bad = _is_gap_value(got.values, got.statuses)
    states = np.where(bad, _GAP_VALUE, _OK).astype(np.int_)
    segments = _segments(ts, states, step)
    steps = np.diff(ts)
    holes = np.flatnonzero(steps > GAP_FACTOR * step)
    segments += _runs(
        ts[holes] + step / 2, ts[holes + 1] - step / 2, np.full(holes.size, _NO_SAMPLES)
    )
    return _Receipt(
        destination,
        segments,
        points=len(got),
        gaps=int(holes.size),
        invalid=int(np.count_nonzero(bad)),
    )


# --------------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True, slots=True)
class _Group:
    """Channels sharing one time axis (one stream, or one recorded ATLAS session)."""

    title: str
    pushed: Mapping[str, Series]
    destinations: Mapping[str, Mapping[str, Series] | None]
    markers: Sequence[MarkerSpan]

    def channels(self) -> list[str]:
        names = list(self.pushed)
        for held in self.destinations.values():
            names += [c for c in held or () if c not in names]
        return names

    def present(self) -> list[str]:
        return [d for d, held in self.destinations.items() if held is not None]


def _check_extension(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"{path}: cannot tell the image format; use one of {', '.join(sorted(FORMATS))}"
        )


def _import_figure() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "plotting needs matplotlib: pip install 'labstream[plot]' (or matplotlib>=3.8)"
        ) from exc
    return Figure


def _time_unit(span_s: float) -> tuple[str, float]:
    if span_s <= 600:
        return "s", 1.0
    if span_s <= 6 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _thin(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """At most MAX_LINE_POINTS points: each bucket keeps its min, its max and one of its gaps."""
    n = x.size
    if n <= MAX_LINE_POINTS:
        return x, y
    size = math.ceil(n / (MAX_LINE_POINTS // 3))
    buckets = math.ceil(n / size)
    pad = buckets * size - n
    filled = np.concatenate((y, np.full(pad, np.nan))).reshape(buckets, size)
    low = np.where(np.isnan(filled), np.inf, filled)
    high = np.where(np.isnan(filled), -np.inf, filled)
    gap = np.concatenate((np.isnan(y), np.zeros(pad, dtype=bool))).reshape(buckets, size)
    base = np.arange(buckets) * size
    with_gap = gap.any(axis=1)
    keep = np.concatenate(
        (
            base + low.argmin(axis=1),
            base + high.argmax(axis=1),
            (base + gap.argmax(axis=1))[with_gap],  # the line breaks in this bucket
        )
    )
    keep = np.unique(np.clip(keep, 0, n - 1))
    return x[keep], y[keep]


def _line_data(s: Series, t0: float, unit: float) -> tuple[FloatArray, FloatArray]:
    """x in plot units, y with NaN at non-finite values and inserted at time gaps."""
    x = (s.timestamps - t0) / unit
    y = np.where(np.isfinite(s.values), s.values, np.nan)
    if x.size > 2:
        step = _median_step(s.timestamps) / unit
        holes = np.flatnonzero(np.diff(x) > GAP_FACTOR * step) + 1
        if holes.size:
            x = np.insert(x, holes, x[holes - 1] + step)
            y = np.insert(y, holes, np.nan)
    return _thin(x, y)


def _use_log(series: Iterable[Series]) -> bool:
    finite = [s.values[np.isfinite(s.values)] for s in series]
    vals = np.concatenate(finite) if finite else np.empty(0)
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 1e3)


def _summary(pushed: Series | None, receipts: list[_Receipt], by_ref: bool) -> tuple[str, bool]:
    """The panel's counts, and whether any of them is a problem (then drawn in red)."""
    parts, trouble = [], False
    if pushed is not None and len(pushed):
        invalid = int(np.count_nonzero(~np.isfinite(pushed.values)))
        parts.append(f"pushed {len(pushed)}" + (f" ({invalid} NaN/inf)" if invalid else ""))
    for r in receipts:
        notes = []
        if by_ref:
            notes += [f"{r.missing} not received"] if r.missing else []
            notes += [f"{r.differs} differ"] if r.differs else []
            trouble |= bool(notes)
        else:
            notes += [f"{r.gaps} time gap{'s' if r.gaps > 1 else ''}"] if r.gaps else []
            trouble |= bool(notes)
            notes += [f"{r.invalid} not valid"] if r.invalid else []
        parts.append(
            f"{_DEST_LABELS[r.destination]} {r.points}"
            + (f" ({', '.join(notes)})" if notes else "")
        )
    return "  ·  ".join(parts), trouble


# Layout, in inches: fixed margins so every panel of a figure shares the same left and right edge.
_WIDTH: Final = 11.0
_LEFT: Final = 0.95
_RIGHT: Final = 0.2
_HEADER: Final = 1.0  # title and legend
_GROUP_HEAD: Final = 0.4
_PANEL_TITLE: Final = 0.3
_PANEL: Final = 1.9
_MIN_PANEL: Final = 1.0
_STRIP_ROW: Final = 0.24
_PANEL_GAP: Final = 0.12
_AXIS: Final = 0.6  # x tick labels and label under a group's last panel
_FOOTNOTE: Final = 0.25


def _render(path: Path, title: str, groups: list[_Group]) -> Path:
    _check_extension(path)
    figure_cls = _import_figure()
    panels = [(g, c) for g in groups for c in g.channels()]
    if not panels:
        raise ValueError("nothing to plot: no channel in pushed, atomscale or atlas")
    shown = panels[:MAX_PANELS]
    # Panels shrink so the figure fits MAX_HEIGHT_IN; those that still do not fit are left out.
    panel = min(_PANEL, max(_MIN_PANEL, (MAX_HEIGHT_IN - _height(groups, shown, 0.0)) / len(shown)))
    while len(shown) > 1 and _height(groups, shown, panel) > MAX_HEIGHT_IN:
        shown = shown[:-1]
    hidden = panels[len(shown) :]
    layout = _layout(groups, shown)
    height = _height(groups, shown, panel)
    fig: Figure = figure_cls(figsize=(_WIDTH, height), dpi=110)
    fig.text(0.5, 1 - 0.22 / height, title, ha="center", va="center", fontsize=13, weight="bold")
    _legend(fig, groups, 1 - 0.42 / height)
    top = _HEADER  # inches from the top of the figure
    for g, chans in layout:
        top = _draw_group(fig, height, top, g, chans, panel)
    if hidden:
        names = ", ".join(c for _, c in hidden[:8]) + (" ..." if len(hidden) > 8 else "")
        fig.text(0.01, 0.08 / height, f"{len(hidden)} more channel(s) not shown: {names}", size=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=_metadata(path))
    return path


def _layout(
    groups: list[_Group], shown: list[tuple[_Group, str]]
) -> list[tuple[_Group, list[str]]]:
    """The groups with a channel shown, each with its shown channels."""
    layout = []
    for g in groups:
        chans = [c for gg, c in shown if gg is g]
        if chans:
            layout.append((g, chans))
    return layout


def _height(groups: list[_Group], shown: list[tuple[_Group, str]], panel: float) -> float:
    """The figure's height in inches with `shown` panels of `panel` inches."""
    height = _HEADER + (_FOOTNOTE if len(shown) < sum(len(g.channels()) for g in groups) else 0.0)
    for g, chans in _layout(groups, shown):
        strip = _STRIP_ROW * len(g.present()) + (0.04 if g.present() else 0.0)
        height += (_GROUP_HEAD if g.title else 0.0) + _AXIS
        height += len(chans) * (_PANEL_TITLE + panel + strip) + (len(chans) - 1) * _PANEL_GAP
    return height


def _metadata(path: Path) -> dict[str, Any]:
    # No creation date in vector files, so the same data gives the same bytes.
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return {"Date": None, "Creator": "labstream"}
    if suffix == ".pdf":
        return {"CreationDate": None, "Creator": "labstream"}
    return {"Software": "labstream"}


def _draw_group(
    fig: Figure, height: float, top: float, group: _Group, chans: list[str], panel: float
) -> float:
    """Draw one group's panels from ``top`` (inches from the figure's top); return where it ends."""
    present = group.present()
    all_series = [group.pushed.get(c) for c in chans] + [
        (held or {}).get(c) for held in group.destinations.values() for c in chans
    ]
    nonempty = [s for s in all_series if s is not None and len(s)]
    t0 = min([float(s.timestamps[0]) for s in nonempty] + [m.start for m in group.markers])
    t1 = max(
        [float(s.timestamps[-1]) for s in nonempty] + [m.end or m.start for m in group.markers]
    )
    unit_name, unit = _time_unit(t1 - t0)
    width = (_WIDTH - _LEFT - _RIGHT) / _WIDTH
    left = _LEFT / _WIDTH

    def box(top_in: float, height_in: float) -> tuple[float, float, float, float]:
        return (left, 1 - (top_in + height_in) / height, width, height_in / height)

    if group.title:
        fig.text(left, 1 - (top + 0.2) / height, group.title, va="center", size=10.5, weight="bold")
        top += _GROUP_HEAD
    shared: Axes | None = None
    last: Axes | None = None
    for k, chan in enumerate(chans):
        top += _PANEL_TITLE
        ax: Axes = fig.add_axes(box(top, panel), sharex=shared)
        top += panel
        if shared is None:
            shared = ax
            shared.set_xlim(0.0, max((t1 - t0) / unit, 1e-9))
        strip: Axes | None = None
        if present:
            top += 0.04
            strip = fig.add_axes(box(top, _STRIP_ROW * len(present)), sharex=shared)
            top += _STRIP_ROW * len(present)
        _draw_channel(ax, strip, group, chan, t0, unit)
        _draw_markers(ax, strip, group.markers, t0, unit, label=k == 0)
        for a in (ax, strip):
            if a is not None:
                a.tick_params(labelbottom=False)
        last = strip or ax
        if k < len(chans) - 1:
            top += _PANEL_GAP
    assert last is not None
    last.tick_params(labelbottom=True)
    when = dt.datetime.fromtimestamp(t0, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    last.set_xlabel(f"time since {when} UTC ({unit_name})")
    return top + _AXIS


def _draw_channel(
    ax: Axes, strip: Axes | None, group: _Group, chan: str, t0: float, unit: float
) -> None:
    pushed = group.pushed.get(chan)
    held = {d: (m or {}).get(chan) for d, m in group.destinations.items() if m is not None}
    drawn = [s for s in (pushed, *held.values()) if s is not None and len(s)]
    if pushed is not None and len(pushed):
        x, y = _line_data(pushed, t0, unit)
        ax.plot(x, y, color=_PUSHED_COLOR, lw=5, alpha=0.8, solid_capstyle="butt", zorder=1)
    for dest, s in held.items():
        if s is not None and len(s):
            x, y = _line_data(s, t0, unit)
            ax.plot(x, y, color=_DEST_COLORS[dest], ls=_DEST_STYLES[dest], lw=1.3, zorder=2)
    if _use_log(drawn):
        ax.set_yscale("log")
    ax.grid(True, color="#e6e6e6", lw=0.6)
    units = next((s.units for s in drawn if s.units), None)
    ax.set_title(f"{chan}" + (f"  [{units}]" if units else ""), loc="left", fontsize=10)
    receipts = []
    by_ref = pushed is not None and len(pushed) > 0
    for dest, s in held.items():
        if by_ref:
            assert pushed is not None
            receipts.append(_compare(pushed, s, dest))
        elif s is not None and len(s):
            receipts.append(_presence(s, dest))
        else:
            receipts.append(_Receipt(dest, [], 0))
    text, trouble = _summary(pushed, receipts, by_ref)
    ax.set_title(text, loc="right", fontsize=9, color="#c00000" if trouble else "#404040")
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    if strip is not None:
        _draw_strip(strip, receipts, t0, unit)


def _draw_strip(strip: Axes, receipts: list[_Receipt], t0: float, unit: float) -> None:
    n = len(receipts)
    lo, hi = strip.get_xlim()
    min_width = (hi - lo) * 0.0025  # a single point stays visible however long the run
    for row, r in enumerate(receipts):
        y = n - 1 - row
        by_state: dict[int, list[tuple[float, float]]] = {}
        for start, end, state in r.segments:
            width = max((end - start) / unit, min_width)
            by_state.setdefault(state, []).append(((start - t0) / unit, width))
        # Problems last, so they are drawn over the green.
        for state in sorted(by_state, key=lambda s: s != _OK):
            strip.broken_barh(
                by_state[state], (y + 0.12, 0.76), facecolors=_STATE_COLORS[state], lw=0
            )
    strip.set_ylim(0, n)
    strip.set_yticks([n - 1 - i + 0.5 for i in range(n)])
    strip.set_yticklabels([_DEST_LABELS[r.destination] for r in receipts], fontsize=8)
    strip.tick_params(axis="y", length=0)
    strip.set_facecolor("#fbfbfb")
    for side in ("top", "right"):
        strip.spines[side].set_visible(False)


# Which state a strip cell shows when it covers several: problems first.
_WORST_LAST: Final = (_OK, _GAP_VALUE, _NO_SAMPLES, _DIFFERS, _MISSING)


def _coarsen(
    starts: FloatArray, ends: FloatArray, states: npt.NDArray[np.int_]
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int_]]:
    """Runs on a grid of MAX_STRIP_CELLS cells, each in the worst state it covers."""
    t0, t1 = float(starts.min()), float(ends.max())
    cell = (t1 - t0) / MAX_STRIP_CELLS or 1.0
    first = np.clip(((starts - t0) / cell).astype(np.int64), 0, MAX_STRIP_CELLS - 1)
    last = np.clip(((ends - t0) / cell).astype(np.int64), 0, MAX_STRIP_CELLS - 1)
    shown = np.full(MAX_STRIP_CELLS, -1, dtype=np.int64)
    for state in _WORST_LAST:
        mine = states == state
        edges = np.zeros(MAX_STRIP_CELLS + 1, dtype=np.int64)
        np.add.at(edges, first[mine], 1)
        np.add.at(edges, last[mine] + 1, -1)
        shown[np.cumsum(edges[:-1]) > 0] = state
    breaks = np.flatnonzero(shown[1:] != shown[:-1]) + 1
    first = np.concatenate(([0], breaks))
    after = np.concatenate((breaks, [MAX_STRIP_CELLS]))
    drawn = shown[first] >= 0
    first, after = first[drawn], after[drawn]
    return (
        np.asarray(t0 + first * cell, dtype=np.float64),
        np.asarray(t0 + after * cell, dtype=np.float64),
        shown[first].astype(np.int_),
    )


def _draw_markers(
    ax: Axes,
    strip: Axes | None,
    markers: Sequence[MarkerSpan],
    t0: float,
    unit: float,
    *,
    label: bool,
) -> None:
    if label and markers:
        _headroom(ax, 0.2)  # room for the labels above the data
    for i, m in enumerate(sorted(markers, key=lambda m: m.start)):
        x0 = (m.start - t0) / unit
        x1 = None if m.end is None else (m.end - t0) / unit
        if x1 is not None:
            ax.axvspan(x0, x1, color=_MARKER_COLOR, alpha=0.07, lw=0, zorder=0)
        for a in (ax, strip):
            if a is not None:
                a.axvline(x0, color=_MARKER_COLOR, lw=1.1, ls=(0, (2, 2)), zorder=3)
                if x1 is not None:
                    a.axvline(x1, color=_MARKER_COLOR, lw=0.8, ls=(0, (1, 2)), zorder=3)
        if label:
            right = x0 > 0.8 * ax.get_xlim()[1]  # near the right edge: label to the left
            ax.annotate(
                m.label,
                xy=(x0, 1),
                xycoords=("data", "axes fraction"),
                xytext=(-3 if right else 3, -11 - 11 * (i % 3)),
                textcoords="offset points",
                ha="right" if right else "left",
                fontsize=8,
                color=_MARKER_COLOR,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                zorder=4,
            )


def _headroom(ax: Axes, share: float) -> None:
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** share)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * share)


def _legend(fig: Figure, groups: list[_Group], y: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    has_pushed = any(g.pushed for g in groups)
    present = {d for g in groups for d in g.present()}
    lines: list[Any] = []
    if has_pushed:
        lines.append(Line2D([], [], color=_PUSHED_COLOR, lw=5, label="pushed"))
    for dest in ("atomscale", "atlas"):
        if dest in present:
            label = f"{_DEST_LABELS[dest]} stored"
            style = _DEST_STYLES[dest]
            lines.append(Line2D([], [], color=_DEST_COLORS[dest], ls=style, lw=1.3, label=label))
    if any(g.markers for g in groups):
        lines.append(Line2D([], [], color=_MARKER_COLOR, ls=(0, (2, 2)), label="marker"))
    states: list[tuple[int, str]] = []
    if present and has_pushed:
        states = [
            (_OK, "held as pushed"),
            (_GAP_VALUE, "NaN/inf as pushed (null; MISSING/ERROR)"),
            (_MISSING, "not received"),
            (_DIFFERS, "value differs"),
        ]
    elif present:
        states = [
            (_OK, "samples"),
            (_GAP_VALUE, "NaN/inf; status MISSING/ERROR"),
            (_NO_SAMPLES, "gap in time"),
        ]
    patches: list[Any] = [Patch(color=_STATE_COLORS[s], label=text) for s, text in states]
    # Lines on the first row, receipt colours on the second: the legend fills column by column.
    ncols = max(len(lines), len(patches))
    blank = Line2D([], [], alpha=0.0, label=" ")
    lines += [blank] * (ncols - len(lines))
    patches += [blank] * (ncols - len(patches))
    handles = [h for pair in zip(lines, patches, strict=True) for h in pair] if patches else lines
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, y),
        ncols=ncols,
        fontsize=8.5,
        frameon=False,
        handlelength=2.6,
    )
