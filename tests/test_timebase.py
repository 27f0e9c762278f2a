"""Seconds -> nanoseconds is exact, and the same instant comes back out for Atomscale."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from labstream._core.timebase import ns_to_seconds, seconds_to_ns, seconds_to_ns_scalar

epoch_seconds = st.floats(min_value=631_152_000.0, max_value=4_102_444_800.0)


@given(st.lists(epoch_seconds, min_size=1, max_size=50))
def test_conversion_is_the_exactly_rounded_ns(seconds: list[float]) -> None:
    ns = seconds_to_ns(np.asarray(seconds))
    for s, n in zip(seconds, ns.tolist(), strict=True):
        exact = Decimal(s) * 10**9  # the float's exact value, in ns
        assert abs(Decimal(n) - exact) <= Decimal("0.5")


@given(st.lists(epoch_seconds, min_size=1, max_size=50))
def test_seconds_round_trip_unchanged(seconds: list[float]) -> None:
    back = ns_to_seconds(seconds_to_ns(np.asarray(seconds)))
    assert back.tolist() == seconds


def test_naive_multiplication_would_be_wrong() -> None:
    t = 1_700_000_000.123456789
    exact = seconds_to_ns_scalar(t)
    assert abs(Decimal(exact) - Decimal(t) * 10**9) <= Decimal("0.5")
    assert int(t * 1e9) != exact  # why the split into whole and fraction exists


def test_negative_offsets() -> None:
    assert seconds_to_ns_scalar(-0.25) == -250_000_000
    assert seconds_to_ns_scalar(-3.0) == -3_000_000_000
