"""The validated, immutable chunk: the one unit of data every destination receives.

``push()``/``push_multi()`` validate user input (lists, numpy arrays, anything array-like) here,
on the caller's thread, before anything is stored or sent; the event loop or the journal's
writer then makes the :class:`Chunk` from it (:func:`make_chunk`). Everything that can be wrong
with the input is caught here and named (data_id, channel, chunk_index), so a destination never
sees a point that a user would not recognise. Timestamps are converted once, exactly, to integer
nanoseconds with the clock correction in effect, so every destination gets the same instant.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any, TypeAlias, cast

import numpy as np

from .timebase import Float64Array, Int64Array, ns_to_seconds, seconds_to_ns

__all__ = [
    "EARLIEST_S",
    "LATEST_S",
    "ChannelSeries",
    "Chunk",
    "RawSeries",
    "as_float_array",
    "check_chunk_index",
    "concatenate",
    "continues",
    "make_chunk",
    "validate_multi",
    "validate_series",
    "where",
]

# Plausible epoch-second range: anything outside is almost always a unit mistake.
EARLIEST_S = 631_152_000.0  # 1990-01-01T00:00:00Z
LATEST_S = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MAX_CHUNK_INDEX = 2**63 - 1
_NONE = object()  # "no such item" where None is a possible item
_PYTHON_CHECK_MAX = 128  # see _check_timestamp_list
_MASKED = np.ma.MaskedArray
_UNIT_HINTS = ((1e17, "nanoseconds", 1e9), (1e14, "microseconds", 1e6), (1e11, "milliseconds", 1e3))


@dataclass(frozen=True, slots=True, eq=False)
class ChannelSeries:
    """One channel's points in one chunk. Arrays are read-only copies of the user's input.

    Attributes:
        name: channel name as the user gave it.
        units: units string, or None when the user gave none.
        timestamps_ns: clock-corrected epoch nanoseconds (int64), non-decreasing.
        values: float64 values; NaN/inf allowed (a gap, or a sensor fault).
    """

    name: str
    units: str | None
    timestamps_ns: Int64Array
    values: Float64Array

    @property
    def size(self) -> int:
        return int(self.values.shape[0])

    def timestamps_s(self) -> Float64Array:
        """Clock-corrected epoch seconds as float64, as Atomscale expects them."""
        return ns_to_seconds(self.timestamps_ns)


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """A validated chunk of one stream, ready for every destination.

    Attributes:
        data_id: the stream.
        chunk_index: zero-based index given by the user (Atomscale positions data by it).
        channels: one or more channels; several when pushed with ``push_multi``.
        multi: True when pushed with ``push_multi`` (Atomscale then gets one multi-channel request).
        offset_ns: the clock correction that was added to every timestamp.
        seq: the chunk's place in the streamer's (and the journal's) order of acceptance.
        points: the number of points, all channels together (counted once: every runner, the
            journal and the reports ask for it, several times per chunk).
    """

    data_id: str
    chunk_index: int
    channels: tuple[ChannelSeries, ...]
    multi: bool
    offset_ns: int = 0
    seq: int = 0
    points: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", sum(c.size for c in self.channels))

    def describe(self) -> str:
        names = ",".join(c.name for c in self.channels)
        return f"data_id={self.data_id} chunk_index={self.chunk_index} channels={names}"


def continues(before: Chunk, after: Chunk) -> bool:
    """True when ``after`` picks up where ``before`` ends: same stream, same channels (names, units,
    order), and every channel's points strictly later. Such chunks can travel as one."""
    if after.data_id != before.data_id or len(after.channels) != len(before.channels):
        return False
    return all(
        b.name == a.name and b.units == a.units and a.timestamps_ns[0] > b.timestamps_ns[-1]
        for b, a in zip(before.channels, after.channels, strict=True)
    )


def concatenate(chunks: Sequence[Chunk]) -> Chunk:
    """One chunk holding the points of ``chunks`` (each :func:`continues` the one before).

    It carries the first chunk's index and the last one's seq.
    """
    first = chunks[0]
    if len(chunks) == 1:
        return first
    channels = []
    for i, c in enumerate(first.channels):
        ts = np.concatenate([k.channels[i].timestamps_ns for k in chunks])
        vals = np.concatenate([k.channels[i].values for k in chunks])
        ts.flags.writeable = vals.flags.writeable = False
        channels.append(ChannelSeries(c.name, c.units, ts, vals))
    return Chunk(
        first.data_id, first.chunk_index, tuple(channels), first.multi, first.offset_ns,
        chunks[-1].seq,
    )  # fmt: skip


def where(data_id: str, channel: str | None, chunk_index: object) -> str:
    """The prefix every input error starts with, so the user knows which push was wrong."""
    ch = f" channel={channel!r}" if channel is not None else ""
    return f"data_id={data_id}{ch} chunk_index={chunk_index}"


def check_chunk_index(data_id: str, chunk_index: object) -> int:
    """Return ``chunk_index`` as an int, or raise if it is not a non-negative integer.

    Raises:
        TypeError: not an integer (bools are refused too).
        ValueError: negative.
    """
    if isinstance(chunk_index, bool):
        raise TypeError(
            f"{where(data_id, None, chunk_index)}: chunk_index must be an int, not bool"
        )
    try:
        index = operator.index(chunk_index)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"{where(data_id, None, chunk_index)}: chunk_index must be an int, "
            f"not {type(chunk_index).__name__}"
        ) from exc
    if index < 0:
        raise ValueError(f"{where(data_id, None, index)}: chunk_index must be >= 0")
    if index > MAX_CHUNK_INDEX:
        raise ValueError(
            f"{where(data_id, None, index)}: chunk_index must be at most {MAX_CHUNK_INDEX} "
            "(a signed 64-bit integer)"
        )
    return index


def _as_float_array(obj: object, what: str, ctx: str) -> Float64Array:
    if isinstance(obj, _MASKED):
        return _unmasked(obj, what, ctx)
    try:
        arr = np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{ctx}: {what} must be a sequence of numbers ({exc})") from exc
    if arr.ndim != 1:
        raise TypeError(
            f"{ctx}: {what} must be a one-dimensional sequence of numbers, got shape {arr.shape}"
        )
    # 'U'/'S' (strings) and 'O' (None, mixed objects) are not numbers; numpy would happily parse
    # "1.5" into a float, which hides a bug in the caller's parsing.
    if arr.dtype.kind not in "biuf":
        items = arr.tolist()  # plain Python objects, so the message shows what the caller passed
        bad = next((v for v in items if not _is_number(v)), _NONE)
        if bad is _NONE:
            if arr.dtype.kind == "O":
                # An object array of plain numbers (a pandas object column, say): fine as floats.
                try:
                    return np.array(items, dtype=np.float64)
                except OverflowError as exc:
                    big = next(v for v in items if isinstance(v, int) and abs(v) > 2**1023)
                    raise ValueError(
                        f"{ctx}: {what} contains {str(big)[:20]}..., too large for a float"
                    ) from exc
            bad = items[0] if items else arr.dtype
        raise TypeError(f"{ctx}: {what} must be numbers; found {bad!r} ({type(bad).__name__})")
    if arr.dtype == np.float64 and arr is not obj and arr.base is None:
        return arr  # numpy built it from a list: already our own copy
    return arr.astype(np.float64)  # a copy: the caller may reuse its buffer


def _unmasked(obj: np.ma.MaskedArray[Any, Any], what: str, ctx: str) -> Float64Array:
    """A masked array's points: a masked value is a missing one (NaN, as a NaN pushed is: null
    for Atomscale, a status that is not valid for ATLAS); a masked timestamp is refused, since
    a point must have a time. ``np.asarray`` would drop the mask and send what lies under it."""
    data = np.ma.getdata(obj)
    mask = np.ma.getmaskarray(obj)
    if data.ndim != 1 or not mask.any():
        return _as_float_array(data, what, ctx)
    if what == "timestamps":
        raise ValueError(
            f"{ctx}: timestamps[{int(np.argmax(mask))}] is masked; every point needs a "
            "timestamp (mask the value instead: it is sent as missing)"
        )
    if data.dtype.kind == "O":  # what lies under the mask need not be a number
        data = data.copy()
        data[mask] = 0.0
    floats = _as_float_array(data, what, ctx)  # a copy of its own
    floats[mask] = np.nan
    return floats


def _is_number(item: object) -> bool:
    """What ``float()`` takes, strings aside (Decimal, Fraction and numpy scalars are numbers)."""
    kind = type(item)
    return not isinstance(item, str | bytes) and (
        hasattr(kind, "__float__") or hasattr(kind, "__index__")
    )


def _list_of_floats(obj: object) -> bytes | None:
    """A list or tuple of numbers (what most callers push) as float64 bytes, in one C call.

    None when ``obj`` is anything else, or holds something that is not a number: the numpy path
    then converts it, or names what is wrong. Validating without numpy keeps ``push()`` short;
    numpy's per-call cost is most of a 100-point push, and more so when the caller's loop sleeps
    between pushes and its caches go cold. ``struct`` takes what ``float()`` takes, as
    ``array('d', ...)`` does, for less.
    """
    if type(obj) is list or type(obj) is tuple:
        try:
            return _packer(len(obj))(*obj)
        except struct.error:
            return None
    return None


@lru_cache(maxsize=128)
def _packer(points: int) -> Callable[..., bytes]:
    return struct.Struct(f"={points}d").pack


def _check_text(ctx: str, what: str, text: str) -> None:
    """Refuse text that cannot be sent or stored as UTF-8 (lone surrogates from bad decoding)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{ctx}: {what} {text!r} is not valid Unicode (character {exc.start}); "
            "it cannot be sent or stored"
        ) from exc


def _check_timestamps(ts: Float64Array, ctx: str) -> None:
    # Fast path, one vector op: ordered (a NaN fails every comparison), so the ends are the
    # extremes, and finite ends inside the epoch range mean every timestamp is fine.
    if ts.shape[0] == 1 or bool((ts[1:] >= ts[:-1]).all()):
        lo, hi = float(ts[0]), float(ts[-1])
        if lo >= EARLIEST_S and hi <= LATEST_S:  # False for NaN and +-inf
            return
    _explain_bad_timestamps(ts, ctx)


def _check_timestamp_list(numbers: Sequence[Any], ts: bytes, ctx: str) -> None:
    """:func:`_check_timestamps` for a list's numbers and their float64 bytes ``ts`` (same
    rules): without numpy up to ``_PYTHON_CHECK_MAX`` points, where a comparison per point costs
    less than numpy's calls, and with it above.

    The caller's numbers are compared, not their floats, which would have to be made first. It
    is the same check: rounding to the nearest float keeps order, so numbers in order and inside
    the range give floats in order and inside it. Numbers that fail it (or cannot be compared: a
    Decimal NaN) go to the explanation, which looks at the floats themselves and raises only for
    what is wrong with those.
    """
    if len(numbers) <= _PYTHON_CHECK_MAX:
        # A NaN fails every comparison, so it falls to the explanation, as in numpy.
        try:
            if (
                numbers[0] >= EARLIEST_S
                and numbers[-1] <= LATEST_S
                and all(map(operator.le, numbers, islice(numbers, 1, None)))
            ):
                return
        except (TypeError, ArithmeticError):
            pass
        _explain_bad_timestamps(as_float_array(ts), ctx)
    else:
        _check_timestamps(as_float_array(ts), ctx)


def _explain_bad_timestamps(ts: Float64Array, ctx: str) -> None:
    """Find what is wrong and say it (the slow path: only ever runs to raise)."""
    finite = np.isfinite(ts)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{ctx}: timestamps[{i}] is {float(ts[i])!r}; timestamps must be finite")
    lo, hi = float(ts.min()), float(ts.max())
    if lo < EARLIEST_S or hi > LATEST_S:
        bad = hi if hi > LATEST_S else lo
        for threshold, unit, factor in _UNIT_HINTS:
            if bad >= threshold:
                raise ValueError(
                    f"{ctx}: timestamp {bad!r} looks like {unit}; labstream expects Unix epoch "
                    f"seconds (divide by {factor:.0e})"
                )
        raise ValueError(
            f"{ctx}: timestamp {bad!r} is outside 1990..2100 in Unix epoch seconds; "
            "labstream expects Unix epoch seconds (float)"
        )
    if ts.shape[0] > 1:
        steps = np.diff(ts)
        if (steps < 0).any():
            i = int(np.argmax(steps < 0))
            before, after = float(ts[i]), float(ts[i + 1])
            raise ValueError(
                f"{ctx}: timestamps decrease at index {i + 1} ({before!r} -> {after!r}); "
                "they must be in time order"
            )


# Float64 points, validated or being checked: a numpy array, or a list's floats as bytes, as a
# chunk keeps them until it is built (made into numpy later, off the caller's thread). Bytes are
# not tracked by the garbage collector, and a burst holds thousands of chunks, whose tracked
# objects bring on the collections that stop every thread.
Points: TypeAlias = "Float64Array | bytes"


def _count(points: Points) -> int:
    return len(points) if isinstance(points, np.ndarray) else len(points) // 8


def as_float_array(floats: Points) -> Float64Array:
    """The points as a numpy array without a copy (of a list's floats, a view: to read now)."""
    return floats if isinstance(floats, np.ndarray) else np.frombuffer(floats, dtype=np.float64)


def _frozen(points: Points) -> Float64Array:
    # A view of bytes is read-only, and keeps only the bytes alive.
    return points if isinstance(points, np.ndarray) else np.frombuffer(points, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RawSeries:
    """One channel's input after validation, before the clock correction is applied."""

    name: str
    units: str | None
    timestamps_s: Points
    values: Points
    points: int
    digest: bytes  # identifies the content, to tell an idempotent re-push from a conflicting one

    def corrected(self, offset_ns: int, ts_ns: Int64Array | None = None) -> ChannelSeries:
        """The channel with clock-corrected ns timestamps (``ts_ns``: already converted, shared
        with another channel of the chunk that has the same timestamps)."""
        if ts_ns is None:
            ts_ns = seconds_to_ns(_frozen(self.timestamps_s))
            if offset_ns:
                ts_ns += offset_ns
            ts_ns.flags.writeable = False
        return ChannelSeries(self.name, self.units, ts_ns, _frozen(self.values))


def validate_series(
    data_id: str,
    chunk_index: int,
    channel_name: object,
    timestamps: object,
    values: object,
    units: object,
    *,
    max_points: int,
    checked: dict[int, tuple[Points, int]] | None = None,
) -> RawSeries:
    """Validate one channel of one chunk.

    ``checked`` maps ``id(timestamps)`` to timestamps already validated in this call, so that
    channels of a ``push_multi`` that share one timestamps object are converted and checked once.

    Raises:
        TypeError: channel name or units not strings, timestamps/values not numeric sequences.
        ValueError: empty, mismatched lengths, too many points, non-finite or decreasing
            timestamps, or timestamps that are not epoch seconds.
    """
    if not isinstance(channel_name, str):
        raise TypeError(
            f"{where(data_id, None, chunk_index)}: channel_name must be a str, "
            f"not {type(channel_name).__name__}"
        )
    ctx = where(data_id, channel_name, chunk_index)
    if not channel_name.strip():
        raise ValueError(f"{ctx}: channel_name must not be empty")
    if units is not None and not isinstance(units, str):
        raise TypeError(f"{ctx}: units must be a str or None, not {type(units).__name__}")
    _check_text(ctx, "channel_name", channel_name)
    if units is not None:
        _check_text(ctx, "units", units)
    known = checked.get(id(timestamps)) if checked is not None else None
    if known is None:
        ts = _floats(timestamps, "timestamps", ctx)
        n = _count(ts)
    else:
        kept_ts, n = known
    vals = _floats(values, "values", ctx)
    if n != _count(vals):
        raise ValueError(f"{ctx}: {n} timestamps but {_count(vals)} values; they must match")
    if n == 0:
        raise ValueError(f"{ctx}: empty chunk (no points); Atomscale rejects empty chunks")
    if n > max_points:
        raise ValueError(
            f"{ctx}: {n} points is more than points_per_chunk={max_points}; "
            "Atomscale places chunk N at points N*points_per_chunk.., so a longer chunk would "
            "overwrite the next one. Raise points_per_chunk or split the chunk."
        )
    if known is None:
        if isinstance(ts, np.ndarray):
            _check_timestamps(ts, ctx)
        else:  # bytes: made from a list or a tuple
            _check_timestamp_list(cast("Sequence[Any]", timestamps), ts, ctx)
        kept_ts = _kept(ts)
        if checked is not None:  # channels sharing it share one object, and its ns conversion
            checked[id(timestamps)] = (kept_ts, n)
    kept_values = _kept(vals)
    # The bytes of float64 points, whichever path made them: a list and an array of the same
    # points have the same digest.
    h = hashlib.blake2b(_buffer(kept_ts), digest_size=16)
    h.update(_buffer(kept_values))
    h.update((units or "\0").encode())
    return RawSeries(channel_name, units, kept_ts, kept_values, n, h.digest())


def _kept(points: Points) -> Points:
    """Validated points as a chunk keeps them: read-only numpy, or a list's floats as bytes."""
    if isinstance(points, np.ndarray):
        points.flags.writeable = False
    return points


def _buffer(points: Points) -> memoryview | bytes:
    return points.data if isinstance(points, np.ndarray) else points


def _floats(obj: object, what: str, ctx: str) -> Points:
    fast = _list_of_floats(obj)
    return fast if fast is not None else _as_float_array(obj, what, ctx)


def validate_multi(
    data_id: str, chunk_index: int, channels: object, *, max_points: int
) -> list[RawSeries]:
    """Validate a ``push_multi`` channels mapping; channels with no points are left out.

    Raises:
        TypeError: ``channels`` is not a mapping of name -> {"timestamps", "values", "units"?}.
        ValueError: any channel is invalid (see :func:`validate_series`), or no channel has points.
    """
    ctx = where(data_id, None, chunk_index)
    if not isinstance(channels, Mapping):
        raise TypeError(
            f"{ctx}: channels must be a dict of name -> "
            '{"timestamps": [...], "values": [...], "units": str}, '
            f"not {type(channels).__name__}"
        )
    out: list[RawSeries] = []
    checked: dict[int, tuple[Points, int]] = {}
    for name, spec in channels.items():
        # Checked per channel, so the common case (a plain dict with the expected keys) is
        # decided without building anything.
        if type(spec) is not dict and not isinstance(spec, Mapping):
            raise TypeError(
                f"{where(data_id, str(name), chunk_index)}: each channel must be a dict with "
                f'"timestamps" and "values", not {type(spec).__name__}'
            )
        if "timestamps" not in spec or "values" not in spec:
            missing = [k for k in ("timestamps", "values") if k not in spec]
            raise ValueError(
                f"{where(data_id, str(name), chunk_index)}: channel is missing {missing}"
            )
        if len(spec) > 2 + ("units" in spec):
            unknown = set(spec) - {"timestamps", "values", "units"}
            raise ValueError(
                f"{where(data_id, str(name), chunk_index)}: unknown keys {sorted(unknown)}; "
                'expected "timestamps", "values" and optionally "units"'
            )
        if _is_empty(spec["timestamps"]) and _is_empty(spec["values"]):
            continue  # the official SDK leaves empty channels out of a multi chunk
        out.append(
            validate_series(
                data_id,
                chunk_index,
                name,
                spec["timestamps"],
                spec["values"],
                spec.get("units"),
                max_points=max_points,
                checked=checked,
            )
        )
    if not out:
        raise ValueError(f"{ctx}: empty chunk (no channel has points)")
    return out


def _is_empty(obj: Any) -> bool:
    try:
        return len(obj) == 0
    except TypeError:
        return False


def make_chunk(
    data_id: str,
    chunk_index: int,
    series: Sequence[RawSeries],
    *,
    multi: bool,
    offset_ns: int,
    seq: int = 0,
) -> Chunk:
    """Apply the clock correction and freeze the chunk."""
    converted: dict[int, Int64Array] = {}  # channels sharing timestamps share the conversion
    channels = []
    for s in series:
        ch = s.corrected(offset_ns, converted.get(id(s.timestamps_s)))
        converted[id(s.timestamps_s)] = ch.timestamps_ns
        channels.append(ch)
    return Chunk(
        data_id=data_id,
        chunk_index=chunk_index,
        channels=tuple(channels),
        multi=multi,
        offset_ns=offset_ns,
        seq=seq,
    )
