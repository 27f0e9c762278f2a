"""``push_frame``: a pandas or a polars DataFrame reaches Atomscale as the chunk it describes,
and a bad frame is refused with push_multi's errors, naming the column and the chunk."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from labstream import AsyncTimeseriesStreamer, TimeseriesStreamer
from labstream._core.frames import frame_channels
from labstream.testing.atomscale import AtomscaleEmulator
from labstream.testing.atomscale import run_in_thread as atomscale_thread

pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
TIMES = [T0, T0 + 0.25, T0 + 0.5, T0 + 0.75]


@pytest.fixture(scope="module")
def atomscale() -> Iterator[AtomscaleEmulator]:
    with atomscale_thread() as emu:
        yield emu


@pytest.fixture
def streamer(atomscale: AtomscaleEmulator) -> Iterator[TimeseriesStreamer]:
    s = TimeseriesStreamer(
        "test-key-not-secret",
        atomscale.url,
        points_per_chunk=4,
        clock_sync=False,
        spool=False,
        handle_sigterm=False,
    )
    yield s
    s.close(timeout=10)


def pandas_frame() -> Any:
    # Aware datetimes in Berlin (UTC+2 in May), a float column with a NaN, a nullable integer
    # column with a missing value.
    return pd.DataFrame(
        {
            "time": pd.to_datetime(TIMES, unit="s", utc=True).tz_convert("Europe/Berlin"),
            "temp": [600.0, math.nan, 601.5, 602.0],
            "shutter": pd.array([0, 1, None, 1], dtype="Int64"),
        }
    )


def polars_frame() -> Any:
    return pl.DataFrame(
        {
            "time": pl.Series([int(t * 1e6) for t in TIMES]).cast(pl.Datetime("us", "UTC")),
            "temp": [600.0, None, 601.5, 602.0],
            "shutter": pl.Series([0, 1, None, 1], dtype=pl.Int64),
        }
    ).with_columns(pl.col("time").dt.convert_time_zone("Asia/Tokyo"))


FRAMES: dict[str, Callable[[], Any]] = {"pandas": pandas_frame, "polars": polars_frame}


def nan_list(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


@pytest.mark.parametrize("kind", FRAMES)
def test_a_frame_is_stored_as_its_columns(
    kind: str, streamer: TimeseriesStreamer, atomscale: AtomscaleEmulator
) -> None:
    data_id = streamer.initialize("frame")
    streamer.push_frame(
        data_id, 0, FRAMES[kind](), time_column="time", units={"temp": "C"}
    )  # fmt: skip
    report = streamer.finalize(data_id, timeout=10)
    assert report.ok, report
    times, temps = atomscale.points(data_id, "temp")
    assert times == pytest.approx(TIMES, abs=1e-6)  # the same instants, whatever the zone
    assert nan_list(temps) == [600.0, None, 601.5, 602.0]  # the missing value is a gap
    assert nan_list(atomscale.points(data_id, "shutter")[1]) == [0.0, 1.0, None, 1.0]
    stored = atomscale.streams[data_id]
    assert stored.channels() == ["shutter", "temp"]
    assert stored.chunks["temp", 0].units == "C" and stored.chunks["shutter", 0].units is None


def test_a_pandas_index_is_the_time(
    streamer: TimeseriesStreamer, atomscale: AtomscaleEmulator
) -> None:
    frame = pd.DataFrame(
        {"pressure": [1e-7, 2e-7]}, index=pd.to_datetime(TIMES[:2], unit="s")
    )  # naive: UTC
    with streamer.stream("indexed") as s:
        s.push_frame(0, frame, time_column=None)
    assert atomscale.points(s.data_id, "pressure") == ([T0, T0 + 0.25], [1e-7, 2e-7])


@pytest.mark.anyio
async def test_the_async_streamer_takes_frames(atomscale: AtomscaleEmulator) -> None:
    frame = pl.DataFrame({"t": TIMES, "temp": [1.0, 2.0, 3.0, 4.0]})  # epoch seconds
    async with (
        AsyncTimeseriesStreamer(
            "test-key-not-secret", atomscale.url, points_per_chunk=4, clock_sync=False, spool=False
        ) as streamer,
        streamer.stream("async") as s,
    ):
        await s.push_frame(3, frame, time_column="t")
    assert atomscale.points(s.data_id, "temp") == (TIMES, [1.0, 2.0, 3.0, 4.0])
    assert atomscale.streams[s.data_id].chunk_indexes()["temp"] == [[3, 3]]


@pytest.mark.parametrize("kind", FRAMES)
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda f, k: f.drop(columns="time") if k == "pandas" else f.drop("time"),
            ValueError,
            "chunk_index=7: no column 'time' for the time; the columns are ['temp', 'shutter']",
        ),
        (
            lambda f, k: (
                f.assign(temp=["hot"] * 4)
                if k == "pandas"
                else f.with_columns(pl.lit("hot").alias("temp"))
            ),
            TypeError,
            "channel='temp' chunk_index=7: values",
        ),
        (
            lambda f, k: (
                f.assign(time=[t * 1000 for t in TIMES])
                if k == "pandas"
                else f.with_columns(pl.Series("time", [t * 1000 for t in TIMES]))
            ),
            ValueError,
            "channel='temp' chunk_index=7: timestamp 1714550400750.0 looks like milliseconds",
        ),
        (
            lambda f, k: pd.concat([f, f]) if k == "pandas" else pl.concat([f, f]),
            ValueError,
            "chunk_index=7: 8 points is more than points_per_chunk=4",
        ),
    ],
    ids=["no-time-column", "text-column", "milliseconds", "too-long"],
)
def test_a_bad_frame_is_refused_naming_column_and_chunk(
    kind: str,
    change: Callable[[Any, str], Any],
    error: type[Exception],
    message: str,
    streamer: TimeseriesStreamer,
    atomscale: AtomscaleEmulator,
) -> None:
    data_id = streamer.initialize("bad frame")
    with pytest.raises(error) as caught:
        streamer.push_frame(data_id, 7, change(FRAMES[kind](), kind), time_column="time")
    assert message in str(caught.value)
    report = streamer.finalize(data_id, timeout=10)
    assert report.destinations["atomscale"].chunks_accepted == 0  # nothing stored or sent
    assert not atomscale.points(data_id, "temp")[0]


def test_a_column_twice_is_refused(streamer: TimeseriesStreamer) -> None:
    frame = pd.DataFrame([[T0, 1.0, 2.0]], columns=["time", "temp", "temp"])
    with streamer.stream("twice") as s, pytest.raises(ValueError, match=r"columns \['temp'\]"):
        s.push_frame(0, frame, time_column="time")


def test_columns_labelled_by_numbers_are_channels_named_by_them(
    streamer: TimeseriesStreamer, atomscale: AtomscaleEmulator
) -> None:
    frame = pd.DataFrame({"time": TIMES[:2], 0: [1.0, 2.0], 1: [3.0, 4.0]})
    with streamer.stream("numbered") as s:
        s.push_frame(0, frame, time_column="time")
    assert atomscale.points(s.data_id, "1") == (TIMES[:2], [3.0, 4.0])


def test_units_for_a_column_that_is_not_a_channel_are_refused(
    streamer: TimeseriesStreamer,
) -> None:
    with streamer.stream("units") as s, pytest.raises(ValueError, match="'tmp', which is not"):
        s.push_frame(0, pandas_frame(), time_column="time", units={"tmp": "C"})


def test_something_else_than_a_frame_names_the_extras(streamer: TimeseriesStreamer) -> None:
    with streamer.stream("dict") as s, pytest.raises(TypeError) as caught:
        s.push_frame(0, {"time": TIMES, "temp": [1, 2, 3, 4]}, time_column="time")
    assert "pandas or polars DataFrame (pip install 'labstream[pandas]'" in str(caught.value)


@pytest.mark.parametrize("kind", FRAMES)
def test_columns_become_float_arrays_whole(kind: str) -> None:
    """No Python object per row: each column is one float64 array, the time column shared."""
    channels = frame_channels("d", 0, FRAMES[kind](), "time")
    temp, shutter = channels["temp"], channels["shutter"]
    assert temp["timestamps"] is shutter["timestamps"]
    for spec in (temp, shutter):
        assert isinstance(spec["values"], np.ndarray) and spec["values"].dtype == np.float64
        assert isinstance(spec["timestamps"], np.ndarray)
