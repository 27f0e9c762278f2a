"""``push_frame``: a pandas or polars DataFrame as one multi-channel chunk.

Why: acquisition code that already holds its readings in a DataFrame should not loop over rows
to push them. Each column becomes one numpy array (no Python per row) and the result is the
``push_multi`` mapping, so a frame is validated exactly as ``push_multi`` validates: the errors
name the channel (the column) and the chunk.

pandas and polars stay optional (``labstream[pandas]``, ``labstream[polars]``): neither is
imported here. A frame is recognised by the module of its type, which is loaded already when the
caller holds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .chunk import where

__all__ = ["frame_channels"]

_NS = 1_000_000_000


def frame_channels(
    data_id: str,
    chunk_index: int,
    frame: object,
    time_column: str | None,
    units: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``push_multi`` channels of a frame: every column but the time column is a channel.

    The time column holds Unix epoch seconds (numbers) or datetimes; naive datetimes are taken
    as UTC. ``time_column=None`` takes a pandas frame's index instead.

    Raises:
        TypeError: ``frame`` is not a pandas or polars DataFrame, or ``units`` is not a mapping.
        ValueError: the time column is missing, or ``units`` names a column that is not a
            channel.
    """
    ctx = where(data_id, None, chunk_index)
    kind = type(frame).__module__.partition(".")[0]
    if kind not in ("pandas", "polars") or type(frame).__name__ != "DataFrame":
        raise TypeError(
            f"{ctx}: push_frame takes a pandas or polars DataFrame (pip install "
            f"'labstream[pandas]' or 'labstream[polars]'), not {type(frame).__name__}"
        )
    if units is not None and not isinstance(units, Mapping):
        raise TypeError(
            f"{ctx}: units must be a dict of column -> units, not {type(units).__name__}"
        )
    # pandas labels may be other than str (0, 1, ...): channels are named by their text
    labels = {str(c): c for c in frame.columns}  # type: ignore[attr-defined]
    if len(labels) != len(frame.columns):  # type: ignore[attr-defined]
        seen = [str(c) for c in frame.columns]  # type: ignore[attr-defined]
        twice = sorted({c for c in seen if seen.count(c) > 1})
        raise ValueError(f"{ctx}: columns {twice} appear more than once; channels need one each")
    if time_column is None:
        if kind == "polars":
            raise ValueError(f"{ctx}: a polars DataFrame has no index; give time_column=")
        timestamps = _seconds(frame.index, ctx, "the index")  # type: ignore[attr-defined]
    else:
        if time_column not in labels:
            raise ValueError(
                f"{ctx}: no column {time_column!r} for the time; the columns are {list(labels)}"
            )
        timestamps = _seconds(frame[labels[time_column]], ctx, repr(time_column))  # type: ignore[index]
    names = [c for c in labels if c != time_column]
    for name in units or {}:
        if name not in names:
            raise ValueError(f"{ctx}: units given for {name!r}, which is not a channel column")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = _values(frame[labels[name]])  # type: ignore[index]
        spec: dict[str, Any] = {"timestamps": timestamps, "values": values}
        if units and name in units:
            spec["units"] = units[name]
        out[name] = spec
    return out


def _values(column: Any) -> Any:
    """A column as numpy: numbers as float64 with missing values as NaN (a gap); anything else
    as it is, for the validation to name."""
    dtype = column.dtype
    if type(column).__module__.startswith("polars"):
        if dtype.is_numeric() or str(dtype) == "Boolean":
            return column.cast(float).to_numpy()  # a null is NaN
    elif getattr(dtype, "kind", None) in ("b", "i", "u", "f"):  # numpy or nullable pandas
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    return column.to_numpy()


def _seconds(column: Any, ctx: str, what: str) -> Any:
    """Timestamps as float64 epoch seconds: numbers as they are, datetimes converted from ns
    in two parts (whole seconds, then the fraction) so only one rounding happens.

    Raises:
        ValueError: a missing time.
    """
    dtype = column.dtype
    if type(column).__module__.startswith("polars"):
        if not str(dtype).startswith("Date"):  # Date and Datetime; numbers go as they are
            return column.to_numpy()
        if getattr(dtype, "time_zone", None):
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    elif getattr(dtype, "tz", None) is not None:  # pandas, aware: in UTC, then naive
        if hasattr(column, "dt"):  # a Series (an index has the methods itself)
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        else:
            column = column.tz_convert("UTC").tz_localize(None)
    elif getattr(dtype, "kind", None) != "M":
        return column.to_numpy()
    ns = np.asarray(column.to_numpy(), dtype="datetime64[ns]")
    if np.isnat(ns).any():
        raise ValueError(
            f"{ctx}: {what} has a missing time (NaT) in row {int(np.isnat(ns).argmax())}"
        )
    whole, frac = np.divmod(ns.view(np.int64), _NS)
    return whole.astype(np.float64) + frac / _NS
