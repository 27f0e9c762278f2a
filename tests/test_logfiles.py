"""Reading logs: columns, units, time formats, exact batches across block boundaries, and
messages that name the file, line and column."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from labstream.cli import logfiles
from labstream.cli.logfiles import (
    ChannelMap,
    LogFileError,
    ReadOptions,
    open_log,
    parse_channel_map,
    parse_instant,
    split_units,
)

T0 = 1_714_550_400.0


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_header_units_comments_blank_lines_and_gaps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# exported by GrowthMaster 3.1\n\n"
        "Time;Substrate T [C];Pressure (mbar);Note\n"
        f"{T0};600;1e-9;a\n\n{T0 + 1};;NA;b\n{T0 + 2};602;nan;c\n",
    )
    log = open_log(path)
    assert log.delimiter == ";" and log.time_column == "Time" and log.header_line == 3
    assert log.channels == (
        ChannelMap("Substrate T", "Substrate T [C]", "C"),
        ChannelMap("Pressure", "Pressure (mbar)", "mbar"),
    )
    assert log.skipped_columns == ("Note",)
    scan = log.scan()
    assert (scan.rows, scan.first_time, scan.last_time) == (3, T0, T0 + 2)
    (batch,) = log.batches(10)
    assert batch.lines.tolist() == [4, 6, 7]
    assert batch.values["Substrate T"][1] != batch.values["Substrate T"][1]  # NaN
    assert np.isnan(batch.values["Pressure"][1:]).all()


def test_batches_are_exact_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfiles, "_CSV_BLOCK_ROWS", 7)
    rows = 53
    path = write(tmp_path, "time,v\n" + "".join(f"{T0 + i},{i}\n" for i in range(rows)))
    log = open_log(path)
    batches = list(log.batches(10))
    assert [len(b) for b in batches] == [10, 10, 10, 10, 10, 3]
    assert np.concatenate([b.values["v"] for b in batches]).tolist() == list(
        map(float, range(rows))
    )
    assert batches[1].first_line == 12 and batches[-1].last_line == rows + 1


def test_time_formats(tmp_path: Path) -> None:
    iso = open_log(write(tmp_path, "timestamp,v\n2024-05-01T08:00:00Z,1\n"))
    assert iso.time_format == "iso"
    assert next(iso.batches(5)).timestamps.tolist() == [T0]
    naive = open_log(
        write(tmp_path, "time,v\n2024-05-01 10:00:00,1\n"),
        ReadOptions(timezone=ZoneInfo("Europe/Berlin")),
    )
    assert naive.scan().naive_times
    assert next(naive.batches(5)).timestamps.tolist() == [T0]
    start = parse_instant("2024-05-01T08:00:00+00:00", None)
    elapsed = open_log(write(tmp_path, "elapsed,v\n0,1\n2.5,2\n"), ReadOptions(start=start))
    assert elapsed.time_format == "elapsed"
    assert next(elapsed.batches(5)).timestamps.tolist() == [T0, T0 + 2.5]


def test_time_column_option_and_format_override(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n5,1714550400\n6,1714550401\n")
    log = open_log(path, ReadOptions(time_column="b"))
    assert log.channels == (ChannelMap("a", "a", None),)
    with pytest.raises(LogFileError, match="no time column 'c'"):
        open_log(path, ReadOptions(time_column="c"))
    forced = open_log(path, ReadOptions(time_column="a", time_format="elapsed", start=T0))
    assert next(forced.batches(2)).timestamps.tolist() == [T0 + 5, T0 + 6]


@pytest.mark.parametrize(
    ("text", "options", "where"),
    [
        ("time,v\n1714550400,1\n1714550399,2\n", ReadOptions(), "line 3, column 'time'"),
        ("time,v\n1714550400,1\n1714550401,x\n", ReadOptions(), "line 3, column 'v'"),
        ("time,v\n1714550400,1\n,2\n", ReadOptions(), "line 3, column 'time': the time is empty"),
        ("time,v\n1714550400000000,1\n", ReadOptions(), "line 2, column 'time'"),
        ("time,v\n2024-05-01,1\n", ReadOptions(start=T0), "--start is for elapsed"),
        ("time,v,v\n", ReadOptions(), "line 1: duplicate column names: 'v'"),
        ("time\n1714550400\n", ReadOptions(), "no numeric value column"),
        ("", ReadOptions(), "the file is empty"),
    ],
)
def test_errors_name_file_line_column(
    tmp_path: Path, text: str, options: ReadOptions, where: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(LogFileError) as info:
        open_log(path, options).scan()
    message = str(info.value)
    assert message.startswith(str(path)) and where in message, message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("time,T [°C]\n1714550400,1\n".encode("cp1252"))
    with pytest.raises(LogFileError, match="--encoding"):
        open_log(path)
    log = open_log(path, ReadOptions(encoding="cp1252"))
    assert log.channels[0].units == "°C"


def test_file_changed_while_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "time,v\n1714550400,1\n")
    log = open_log(path)
    path.write_text("time,v\n1714550400,1\n1714550401,2\n", encoding="utf-8")
    os.utime(path, ns=(log.mtime_ns + 10**9, log.mtime_ns + 10**9))
    with pytest.raises(LogFileError, match="changed while"):
        list(log.batches(5))


def test_channel_map_specs() -> None:
    columns = ["time", "T sub [C]", "odd:name"]
    assert parse_channel_map("Tsub=T sub [C]", columns) == ChannelMap("Tsub", "T sub [C]", "C")
    assert parse_channel_map("Tsub=T sub [C]:K", columns) == ChannelMap("Tsub", "T sub [C]", "K")
    assert parse_channel_map("odd:name", columns) == ChannelMap("odd:name", "odd:name", None)
    assert parse_channel_map("x=odd:name:V", columns) == ChannelMap("x", "odd:name", "V")
    with pytest.raises(ValueError, match="no column 'nope'"):
        parse_channel_map("a=nope", columns)


def test_split_units_and_instants() -> None:
    assert split_units("pressure (mbar)") == ("pressure", "mbar")
    assert split_units("rate") == ("rate", None)
    assert parse_instant("1714550400", None) == T0
    when = parse_instant("2024-05-01 10:00", ZoneInfo("Europe/Berlin"))
    assert when == T0
    with pytest.raises(ValueError, match="neither epoch seconds"):
        parse_instant("yesterday", None)


def test_parquet_naive_timestamps_and_bad_types(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    wall = [datetime(2024, 5, 1, 10, 0, s) for s in range(3)]
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"time": pa.array(wall, pa.timestamp("ns")), "v": [1.0, 2, 3]}), path)
    log = open_log(path, ReadOptions(timezone=ZoneInfo("Europe/Berlin")))
    assert log.scan().naive_times
    assert next(log.batches(10)).timestamps.tolist() == [T0, T0 + 1, T0 + 2]

    back = tmp_path / "back.parquet"
    times = [datetime(2024, 5, 1, 8, 0, s, tzinfo=UTC) for s in (0, 2, 1)]
    pq.write_table(
        pa.table({"time": pa.array(times, pa.timestamp("us", tz="UTC")), "v": [1.0] * 3}), back
    )
    with pytest.raises(LogFileError, match=r"row 3, column 'time': time goes backwards"):
        open_log(back).scan()

    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"time": [T0, T0 + 1], "v": ["a", "b"]}), text)
    with pytest.raises(LogFileError, match="column 'v': has type string"):
        open_log(text, ReadOptions(channels=("v",)))
    assert math.isclose(open_log(path).scan().rows, 3)


def test_batches_are_read_lazily(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i},{i}\n" for i in range(20_000))
    path = write(tmp_path, "time,v\n" + rows + "1814550400,oops\n")
    log = open_log(path)
    batches = log.batches(100)
    first = next(batches)  # no error yet: the bad last line has not been read
    assert first.values["v"][-1] == 99.0
    with pytest.raises(LogFileError, match=r"line 20002, column 'v'"):
        list(batches)


@pytest.mark.parametrize(("unit", "scale"), [("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_epoch_times_in_other_units(tmp_path: Path, unit: str, scale: int) -> None:
    rows = "".join(f"{(int(T0) + i) * scale + scale // 4},{i}\n" for i in range(3))
    path = write(tmp_path, "time,T\n" + rows)
    with pytest.raises(LogFileError, match=f"give --time-unit {unit}"):
        open_log(path)
    log = open_log(path, ReadOptions(time_unit=unit))  # type: ignore[arg-type]
    (batch,) = log.batches(10)
    expected = [T0 + 0.25, T0 + 1.25, T0 + 2.25]
    assert batch.timestamps.tolist() == pytest.approx(expected, abs=1e-6, rel=0)


def test_a_wrong_time_unit_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, f"time,T\n{T0},1\n")
    with pytest.raises(LogFileError, match="is --time-unit right"):
        open_log(path, ReadOptions(time_unit="ms"))


def test_decimal_commas_get_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, f"time;T;p\n{T0};600,5;1.5\n")
    with pytest.raises(LogFileError, match=r"line 2, column 'T'.*looks like a decimal comma"):
        open_log(path).scan()
    # Chosen as a channel, the column fails the same way when its rows are read.
    with pytest.raises(LogFileError, match=r"line 2, column 'T'.*looks like a decimal comma"):
        open_log(path, ReadOptions(channels=("T",))).scan()
