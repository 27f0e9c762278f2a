"""Bad input is refused on the caller's thread, with the data_id, channel and chunk named, and
nothing reaches the destination."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labstream import StreamStateError, TimeseriesStreamer
from labstream._core.chunk import EARLIEST_S, LATEST_S, validate_series
from labstream.testing.fake import FakeAtomscale

T0 = 1_760_000_000.0
TS = [T0 + i * 0.1 for i in range(10)]
VS = [20.0 + i for i in range(10)]


@pytest.fixture
def streamer(streamer_factory: Callable[..., TimeseriesStreamer]) -> TimeseriesStreamer:
    return streamer_factory(points_per_chunk=10, clock_sync=False)


@pytest.mark.parametrize(
    ("timestamps", "values", "error", "message"),
    [
        (TS[:5], VS, ValueError, "5 timestamps but 10 values"),
        ([], [], ValueError, "empty chunk"),
        ([*TS[:9], math.nan], VS, ValueError, r"timestamps\[9\] is nan"),
        ([*TS[:9], math.inf], VS, ValueError, r"timestamps\[9\] is inf"),
        ([TS[1], TS[0], *TS[2:]], VS, ValueError, "timestamps decrease at index 1"),
        ([t * 1e3 for t in TS], VS, ValueError, "looks like milliseconds"),
        ([t * 1e6 for t in TS], VS, ValueError, "looks like microseconds"),
        ([t * 1e9 for t in TS], VS, ValueError, "looks like nanoseconds"),
        ([100.0 + i for i in range(10)], VS, ValueError, "outside 1990..2100"),
        ([4.2e9 + i for i in range(10)], VS, ValueError, "outside 1990..2100"),
        (TS, ["1.5"] * 10, TypeError, "values must be numbers; found '1.5'"),
        (TS, [1.0, None, *VS[2:]], TypeError, "values must be numbers; found None"),
        (TS, [[1.0, 2.0]] * 10, TypeError, "one-dimensional"),
        (TS, 5.0, TypeError, "one-dimensional"),
        ([T0 + i for i in range(11)], list(range(11)), ValueError, "more than points_per_chunk=10"),
    ],
)
def test_bad_push_is_refused_and_named(
    streamer: TimeseriesStreamer,
    fake: FakeAtomscale,
    timestamps: object,
    values: object,
    error: type[Exception],
    message: str,
) -> None:
    data_id = streamer.initialize(stream_name="bad input")
    with pytest.raises(error, match=message) as info:
        streamer.push(data_id, 3, "substrate_temp", timestamps, values, units="C")
    assert f"data_id={data_id} channel='substrate_temp' chunk_index=3" in str(info.value)
    report = streamer.finalize(data_id)
    assert fake.chunk_requests() == []
    assert report["atomscale"].chunks_accepted == 0


def test_nan_and_inf_values_are_legal_and_sent_as_null(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    values = [1.0, math.nan, math.inf, -math.inf, *VS[4:]]
    streamer.push(data_id, 0, "pressure", TS, values)
    assert streamer.finalize(data_id).ok
    (req,) = fake.chunk_requests()
    assert req.body["values"][:4] == [1.0, None, None, None]


@pytest.mark.parametrize(
    ("chunk_index", "error", "message"),
    [(-1, ValueError, "must be >= 0"), (1.0, TypeError, "not float"), (True, TypeError, "bool")],
)
def test_bad_chunk_index(
    streamer: TimeseriesStreamer, chunk_index: object, error: type[Exception], message: str
) -> None:
    data_id = streamer.initialize()
    with pytest.raises(error, match=message):
        streamer.push(data_id, chunk_index, "t", TS, VS)  # type: ignore[arg-type]


def test_numpy_integer_chunk_index_and_arrays_are_accepted(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    streamer.push(data_id, np.int64(2), "t", np.array(TS), np.array(VS, dtype=np.float32))
    assert streamer.finalize(data_id).ok
    assert fake.chunk_requests()[0].body["chunk_index"] == 2


def test_reusing_a_chunk_index_with_other_data_is_refused(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "t", TS, VS)
    streamer.push(data_id, 0, "t", TS, VS)  # identical re-push: harmless, sent once
    with pytest.raises(ValueError, match="already pushed with different data"):
        streamer.push(data_id, 0, "t", TS, [v + 1 for v in VS])
    streamer.push(data_id, 0, "other_channel", TS, VS)  # same index, other channel: fine
    report = streamer.finalize(data_id)
    assert report["atomscale"].chunks_delivered == 2
    assert len(fake.chunk_requests()) == 2


def test_caller_mutating_its_buffer_after_push_changes_nothing(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    values = np.array(VS)
    streamer.push(data_id, 0, "t", np.array(TS), values)
    values[:] = -1.0
    listed = list(VS)
    streamer.push(data_id, 1, "t", [t + 1 for t in TS], listed)
    listed[:] = [-1.0] * len(listed)
    streamer.finalize(data_id)
    assert [r.body["values"] for r in fake.chunk_requests()] == [VS, VS]


def test_a_list_a_tuple_and_an_array_of_the_same_points_are_the_same_chunk(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    """Lists and tuples take a path of their own (no numpy on the caller's thread); what they
    become must not depend on it: a re-push in another form is recognised, and sent once."""
    data_id = streamer.initialize()
    streamer.push(data_id, 0, "t", TS, VS)
    streamer.push(data_id, 0, "t", tuple(TS), tuple(VS))
    streamer.push(data_id, 0, "t", np.array(TS), np.array(VS))
    with pytest.raises(ValueError, match="already pushed with different data"):
        streamer.push(data_id, 0, "t", np.array(TS), np.array(VS) + 1)
    streamer.push(data_id, 1, "t", np.array(TS) + 1, np.array(VS))
    with pytest.raises(ValueError, match="already pushed with different data"):
        streamer.push(data_id, 1, "t", [t + 1 for t in TS], [v + 1 for v in VS])
    assert streamer.finalize(data_id).ok
    bodies = [r.body for r in fake.chunk_requests()]
    assert [b["timestamps"] for b in bodies] == [TS, [t + 1 for t in TS]]
    assert [b["values"] for b in bodies] == [VS, VS]


def test_numbers_that_are_not_floats_count_as_numbers_in_every_form(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    from decimal import Decimal
    from fractions import Fraction

    data_id = streamer.initialize()
    mixed = [Decimal("1.5"), Fraction(1, 4), np.float32(2.0), 3, True, *VS[5:]]
    streamer.push(data_id, 0, "t", TS, mixed)
    streamer.push(data_id, 1, "t", [t + 1 for t in TS], np.array(mixed, dtype=object))
    assert streamer.finalize(data_id).ok
    expected = [1.5, 0.25, 2.0, 3.0, 1.0, *VS[5:]]
    assert [r.body["values"] for r in fake.chunk_requests()] == [expected, expected]


def test_unknown_data_id_and_push_after_finalize(streamer: TimeseriesStreamer) -> None:
    with pytest.raises(StreamStateError, match="data_id=nope: unknown stream"):
        streamer.push("nope", 0, "t", TS, VS)
    data_id = streamer.initialize()
    streamer.finalize(data_id)
    with pytest.raises(StreamStateError, match="already finalized"):
        streamer.push(data_id, 1, "t", TS, VS)
    with pytest.raises(StreamStateError, match="already finalized"):
        streamer.push_multi(data_id, 1, {"t": {"timestamps": TS, "values": VS}})


@pytest.mark.parametrize(
    ("channels", "error", "message"),
    [
        ([1, 2], TypeError, "channels must be a dict"),
        ({"a": [1]}, TypeError, "each channel must be a dict"),
        ({"a": {"values": VS}}, ValueError, r"channel='a'.*missing \['timestamps'\]"),
        ({"a": {"timestamps": TS, "values": VS, "unit": "C"}}, ValueError, "unknown keys"),
        (
            {"a": {"timestamps": TS, "values": VS, "units": "C", "scale": 2}},
            ValueError,
            r"unknown keys \['scale'\]",
        ),
        ({"a": {"timestamps": [], "values": []}}, ValueError, "no channel has points"),
        (
            {"a": {"timestamps": TS, "values": VS}, "b": {"timestamps": TS, "values": VS[:3]}},
            ValueError,
            "channel='b' chunk_index=0: 10 timestamps but 3 values",
        ),
        ({"a": {"timestamps": TS, "values": VS, "units": 3}}, TypeError, "units must be a str"),
    ],
)
def test_bad_push_multi(
    streamer: TimeseriesStreamer,
    fake: FakeAtomscale,
    channels: object,
    error: type[Exception],
    message: str,
) -> None:
    data_id = streamer.initialize()
    with pytest.raises(error, match=message):
        streamer.push_multi(data_id, 0, channels)
    streamer.finalize(data_id)
    assert fake.chunk_requests() == []


def test_bad_channel_name(streamer: TimeseriesStreamer) -> None:
    data_id = streamer.initialize()
    with pytest.raises(TypeError, match="channel_name must be a str"):
        streamer.push(data_id, 0, 7, TS, VS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_name must not be empty"):
        streamer.push(data_id, 0, "  ", TS, VS)


def test_bad_constructor_and_initialize_arguments(
    streamer_factory: Callable[..., TimeseriesStreamer], streamer: TimeseriesStreamer
) -> None:
    with pytest.raises(ValueError, match="no destination configured"):
        streamer_factory(api_key=None)
    with pytest.raises(ValueError, match="points_per_chunk must be >= 1"):
        streamer_factory(points_per_chunk=0)
    with pytest.raises(TypeError, match="synth_source_id must be an int"):
        streamer.initialize(synth_source_id="42")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tags must be strings"):
        streamer.initialize(tags=["ok", 3])  # type: ignore[list-item]


def test_push_multi_channels_sharing_one_timestamps_object_are_checked_and_converted_once() -> None:
    """The common instrument case (one clock, many gauges) costs one timestamp conversion per
    chunk, not one per channel; channels with their own timestamps keep their own."""
    from labstream._core.chunk import make_chunk, validate_multi
    from labstream._core.timebase import ns_to_seconds, seconds_to_ns
    from labstream.destinations.atomscale.protocol import chunk_body

    ts = [1_760_000_000.0 + i * 0.1 for i in range(5)]
    own = [1_760_000_000.05 + i * 0.1 for i in range(5)]
    channels = {
        "T": {"timestamps": ts, "values": [1.0] * 5, "units": "C"},
        "P": {"timestamps": ts, "values": [2.0] * 5},
        "R": {"timestamps": own, "values": [3.0] * 5},
    }
    chunk = make_chunk("d", 0, validate_multi("d", 0, channels, max_points=5), multi=True,
                       offset_ns=7)  # fmt: skip
    t, p, r = chunk.channels
    assert t.timestamps_ns is p.timestamps_ns and r.timestamps_ns is not t.timestamps_ns
    assert t.timestamps_ns[0] == 1_760_000_000 * 10**9 + 7  # the clock offset applied once
    assert (r.timestamps_ns == seconds_to_ns(np.asarray(own)) + 7).all()
    body = chunk_body(chunk)["channels"]
    assert body["T"]["timestamps"] is body["P"]["timestamps"]  # formatted once
    sent = orjson.loads(orjson.dumps(chunk_body(chunk), option=orjson.OPT_SERIALIZE_NUMPY))
    assert sent["channels"]["T"]["timestamps"] == ns_to_seconds(t.timestamps_ns).tolist()
    assert sent["channels"]["P"]["timestamps"] == sent["channels"]["T"]["timestamps"]
    assert sent["channels"]["R"]["timestamps"] == ns_to_seconds(r.timestamps_ns).tolist()

    bad = [*ts[:4], math.nan]
    shared_bad = {name: {"timestamps": bad, "values": [1.0] * 5} for name in ("T", "P")}
    with pytest.raises(ValueError, match=r"channel='T' chunk_index=3: timestamps\[4\] is nan"):
        validate_multi("d", 3, shared_bad, max_points=5)


@st.composite
def _numbers(draw: st.DrawFn) -> object:
    """A number near a limit of the timestamp range, in one of the forms a caller may push:
    some compare unequal to each other but are the same float (a Decimal a hair above one)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([math.nan, math.inf, Decimal("NaN"), Decimal("-Inf")]))
    x = draw(st.sampled_from([EARLIEST_S, LATEST_S, T0, T0 * 1e3]))
    for _ in range(draw(st.integers(0, 2))):
        x = math.nextafter(x, draw(st.sampled_from([-math.inf, math.inf])))
    form = draw(st.sampled_from(["float", "int", "fraction", "decimal", "hair", "np"]))
    if form == "hair":
        return Decimal(x) + draw(st.sampled_from([Decimal("1e-20"), Decimal("-1e-20")]))
    return {
        "float": x,
        "int": int(x),
        "fraction": Fraction(x),
        "decimal": Decimal(x),
        "np": np.float64(x),
    }[form]


def _outcome(timestamps: object) -> object:
    try:
        return validate_series("d", 0, "T", timestamps, [1.0] * 6, None, max_points=6).digest
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(_numbers(), min_size=1, max_size=6), st.booleans())
def test_a_list_of_numbers_is_checked_as_its_floats_are(
    numbers: list[object], in_order: bool
) -> None:
    """A short list's order and range are checked on the caller's numbers, not on their floats
    (cheaper); the verdict, the error and the stored bytes must be the floats' all the same."""
    if in_order:  # as their floats, so that the range's limits and ties are what decides
        numbers.sort(key=float)  # type: ignore[arg-type]
    timestamps = numbers + [numbers[-1]] * (6 - len(numbers))
    floats = np.array([float(n) for n in timestamps])  # type: ignore[arg-type]
    assert _outcome(timestamps) == _outcome(tuple(timestamps)) == _outcome(floats)


@pytest.mark.parametrize("n", [100, 129, 1000])
def test_long_and_short_lists_are_checked_alike(
    streamer_factory: Callable[..., TimeseriesStreamer], n: int
) -> None:
    """Lists up to 128 points are checked in Python, longer ones with numpy: the same rules."""
    s = streamer_factory(points_per_chunk=1000, clock_sync=False)
    data_id = s.initialize()
    ts = [T0 + i * 0.01 for i in range(n)]
    vs = [1.0] * n
    for bad, message in [
        ([*ts[:50], ts[48], *ts[51:]], "timestamps decrease at index 50"),
        ([*ts[:-1], math.nan], rf"timestamps\[{n - 1}\] is nan"),
        ([t * 1e3 for t in ts], "looks like milliseconds"),
    ]:
        with pytest.raises(ValueError, match=message):
            s.push(data_id, 0, "T", bad, vs)
    s.push(data_id, 0, "T", ts, vs)
    assert s.finalize(data_id)["atomscale"].points_delivered == n


# -- numpy masked arrays: a masked value is a missing value, a masked timestamp is refused -------


def test_masked_values_are_sent_as_missing_not_as_what_lies_under_the_mask(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    values = np.ma.masked_array(VS, mask=[i in (2, 5) for i in range(10)])
    streamer.push(data_id, 0, "pressure", np.array(TS), values)
    ints = np.ma.masked_array(np.arange(10, dtype=np.int16), mask=[i == 0 for i in range(10)])
    streamer.push_multi(data_id, 1, {"count": {"timestamps": TS, "values": ints}})
    assert streamer.finalize(data_id).ok
    first = fake.chunk_requests()[0]
    assert first.body["values"] == [20.0, 21.0, None, 23.0, 24.0, None, 26.0, 27.0, 28.0, 29.0]
    assert fake.chunks[(data_id, "count", 1)][1] == [None, *map(float, range(1, 10))]


def test_run_keeps_the_mask_of_an_item_it_splits(
    streamer_factory: Callable[..., TimeseriesStreamer], fake: FakeAtomscale
) -> None:
    s = streamer_factory(points_per_chunk=4, clock_sync=False)
    data_id = s.initialize()
    values = np.ma.masked_array(VS, mask=[i % 3 == 0 for i in range(10)])
    s.run(data_id, "T", [(np.array(TS), values)])
    assert s.finalize(data_id).ok
    sent = fake.points(data_id, "T")[1]
    assert [math.isnan(v) for v in sent] == [i % 3 == 0 for i in range(10)]
    assert [v for v in sent if not math.isnan(v)] == [VS[i] for i in range(10) if i % 3]


def test_a_masked_timestamp_is_refused_and_named(
    streamer: TimeseriesStreamer, fake: FakeAtomscale
) -> None:
    data_id = streamer.initialize()
    ts = np.ma.masked_array(TS, mask=[i == 4 for i in range(10)])
    with pytest.raises(ValueError, match=r"channel='T' chunk_index=7: timestamps\[4\] is masked"):
        streamer.push(data_id, 7, "T", ts, VS)
    streamer.finalize(data_id)
    assert fake.chunk_requests() == []


_ODD_DTYPES = [
    "float64", "float32", "float16", ">f8", "int8", "int64", "uint64", "bool", "complex128",
    "datetime64[s]", "timedelta64[ms]", "U3", "S2", "object",
]  # fmt: skip


@st.composite
def _arrays(draw: st.DrawFn, n: int = 6) -> np.ndarray:  # type: ignore[type-arg]
    """An array of ``n`` points of any dtype a caller may have, masked or not (all, some,
    none: numpy's ``nomask`` too). Object arrays mix numbers, None and strings."""
    from hypothesis.extra import numpy as hnp

    dtype = draw(st.sampled_from(_ODD_DTYPES))
    if dtype == "object":
        item = st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.none(), st.text(max_size=2))
        data = np.array([*draw(st.lists(item, min_size=n, max_size=n)), None], dtype=object)[:n]
    else:
        data = draw(hnp.arrays(np.dtype(dtype), n))
    if not draw(st.booleans()):
        return data
    mask = draw(st.one_of(st.just(np.ma.nomask), hnp.arrays(np.bool_, n)))
    return np.ma.masked_array(data, mask=mask)


def _pushed(timestamps: object, values: object) -> tuple[type[Exception] | bytes, np.ndarray]:  # type: ignore[type-arg]
    """(the digest, the stored values) of an accepted push; (the error's type, []) of a refused
    one, whose message must name the push."""
    try:
        raw = validate_series("d", 0, "T", timestamps, values, None, max_points=6)
    except (TypeError, ValueError) as exc:
        named = "data_id=d channel='T' chunk_index=0" in str(exc)
        return (type(exc) if named else AssertionError), np.array([])
    stored = raw.values
    return raw.digest, stored if isinstance(stored, np.ndarray) else np.frombuffer(stored)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(_arrays())
def test_masked_values_of_any_dtype_are_missing_values(values: np.ndarray) -> None:  # type: ignore[type-arg]
    """Whatever the dtype, a masked array is pushed as its unmasked points with NaN (missing)
    where it is masked. It is refused only where the same points would be, unmasked: for its
    dtype (strings, dates, complex numbers), or for an unmasked item that is not a number."""
    ts = [T0 + i for i in range(6)]
    mask = np.ma.getmaskarray(values)
    data = np.ma.getdata(values)
    plain = data
    if data.dtype.kind in "biufO" and mask.any():  # what lies under the mask replaced by NaN
        plain = np.array([math.nan if m else v for v, m in zip(data.tolist(), mask, strict=True)])
    (got, stored), (expected, _) = _pushed(ts, values), _pushed(ts, plain)
    assert got is not AssertionError  # a refusal names the push
    assert got == expected  # the same error, or the same float64 bytes
    if isinstance(got, bytes):
        assert np.isnan(stored[mask]).all()


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(_arrays())
def test_masked_timestamps_are_refused_whatever_the_dtype(timestamps: np.ndarray) -> None:  # type: ignore[type-arg]
    """A point needs a time: a masked timestamp is refused, and named; an array with nothing
    masked is checked as its data would be."""
    if np.ma.getmaskarray(timestamps).any():
        with pytest.raises(ValueError, match=r"chunk_index=0: timestamps\[\d\] is masked"):
            validate_series("d", 0, "T", timestamps, [1.0] * 6, None, max_points=6)
    else:
        got = _pushed(timestamps, [1.0] * 6)[0]
        assert got == _pushed(np.ma.getdata(timestamps), [1.0] * 6)[0]
