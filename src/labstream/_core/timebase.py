"""Exact conversions between float epoch seconds and integer nanoseconds.

Both destinations must see the same instant for the same point. ATLAS wants integer ns; Atomscale
wants float seconds. Multiplying a float near 1.7e9 by 1e9 loses the last digits, so we split each
timestamp into whole seconds and the fraction (both exact in binary64) and round only the fraction.
Going back, the nearest double of an exact ns count is the original float whenever the float had no
more than ns resolution, so seconds -> ns -> seconds round-trips.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "NS_PER_S",
    "Float64Array",
    "Int64Array",
    "ns_to_seconds",
    "seconds_to_ns",
    "seconds_to_ns_scalar",
]

NS_PER_S = 1_000_000_000

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


def seconds_to_ns(seconds: Float64Array) -> Int64Array:
    """Convert finite float epoch seconds to integer ns, rounding the fraction to the nearest ns."""
    whole = np.floor(seconds)
    # ``seconds - whole`` is exact (Sterbenz); only the fraction's scaling is rounded.
    frac_ns = np.rint((seconds - whole) * NS_PER_S).astype(np.int64)
    return whole.astype(np.int64) * NS_PER_S + frac_ns


def ns_to_seconds(ns: Int64Array) -> Float64Array:
    """Convert integer ns to float epoch seconds (the nearest double, up to one ulp)."""
    whole, frac = np.divmod(ns, NS_PER_S)
    return whole.astype(np.float64) + frac.astype(np.float64) / NS_PER_S


def seconds_to_ns_scalar(seconds: float) -> int:
    """Scalar form of :func:`seconds_to_ns`, for clock offsets and markers."""
    return int(seconds_to_ns(np.asarray([seconds], dtype=np.float64))[0])
