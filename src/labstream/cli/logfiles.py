"""Reading instrument logs (CSV, Parquet) as time-ordered batches of rows, with bounded memory.

Why it exists: ``labstream push`` uploads historical logs that may be larger than RAM, written by
instruments and acquisition software we do not control. So a log is never loaded whole: CSV is
read row by row with the csv module, Parquet batch by batch with pyarrow, and rows come out in
fixed-size batches that become chunks. And a bad log must fail with a sentence a lab operator can
act on -- file, line (CSV) or row (Parquet), column, and what is wrong -- never a traceback, so
every problem is a :class:`LogFileError`.

What a log looks like: one time column and value columns. The time column is found by name
(``time``, ``timestamp``, ``datetime``...) unless given, and holds Unix epoch seconds, ISO-8601
datetimes (a datetime without timezone is local time, or the ``timezone`` given), or elapsed
seconds from a ``start`` instant. Every numeric value column becomes a channel, unless channels are
mapped explicitly. A header such as ``substrate_temperature [C]`` or ``pressure (mbar)`` gives the
channel ``substrate_temperature`` with units ``C``. Empty cells and ``nan``/``NA``/``null`` are
gaps (NaN), which Atomscale stores as null.
"""

from __future__ import annotations

import csv
import importlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import LogFileError

__all__ = [
    "TIME_FORMATS",
    "TIME_UNITS",
    "ChannelMap",
    "CsvRows",
    "LogFile",
    "LogFileError",
    "ReadOptions",
    "RowBatch",
    "ScanResult",
    "open_log",
    "parse_channel_map",
    "parse_instant",
]

FloatArray = npt.NDArray[np.float64]
TimeFormat = Literal["auto", "epoch", "iso", "elapsed"]
TIME_FORMATS: tuple[TimeFormat, ...] = ("auto", "epoch", "iso", "elapsed")
TimeUnit = Literal["s", "ms", "us", "ns"]
#: ``--time-unit``: what one unit of an epoch time column is, in seconds.
TIME_UNITS: dict[TimeUnit, float] = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

# The epoch-seconds range labstream accepts (the core rejects anything else): 1990 to 2100.
EARLIEST_S = 631_152_000.0
LATEST_S = 4_102_444_800.0
_UNIT_HINTS = (
    (1e17, "nanoseconds", "ns"),
    (1e14, "microseconds", "us"),
    (1e11, "milliseconds", "ms"),
)

_TIME_NAMES = (
    "time",
    "timestamp",
    "datetime",
    "date_time",
    "epoch",
    "unix_time",
    "time_s",
    "elapsed",
    "elapsed_s",
    "elapsed_time",
    "seconds",
    "date",
)
# Only when no other column looks like time: "T" is as often a temperature.
_SHORT_TIME_NAMES = ("t", "ts")
_MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "-", "--"})
_UNITS_SUFFIX = re.compile(r"^(?P<name>.*?\S)\s*(?:\[(?P<b>[^\]]*)\]|\((?P<p>[^)]*)\))\s*$")
_SAMPLE_ROWS = 1000  # rows read up front to decide which columns are numeric
_CSV_BLOCK_ROWS = 4096  # rows parsed into one block of arrays
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ChannelMap:
    """One channel to stream: its name, the column it comes from, and its units."""

    name: str
    column: str
    units: str | None = None


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """How to read a log. ``timezone`` None means local time for datetimes without one."""

    time_column: str | None = None
    time_format: TimeFormat = "auto"
    time_unit: TimeUnit = "s"  # of epoch numbers (not of elapsed seconds)
    timezone: tzinfo | None = None
    start: float | None = None
    channels: tuple[str, ...] = ()  # --channel specs, NAME=COLUMN[:UNITS] or COLUMN
    delimiter: str | None = None
    encoding: str = "utf-8-sig"


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Consecutive rows: shared timestamps (epoch s), one value array per channel, and each
    row's line (CSV, blank lines skipped) or row number (Parquet), for messages."""

    lines: npt.NDArray[np.int64]
    timestamps: FloatArray
    values: dict[str, FloatArray]

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def first_line(self) -> int:
        return int(self.lines[0])

    @property
    def last_line(self) -> int:
        return int(self.lines[-1])

    def slice(self, start: int, stop: int) -> RowBatch:
        return RowBatch(
            self.lines[start:stop],
            self.timestamps[start:stop],
            {k: v[start:stop] for k, v in self.values.items()},
        )


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a full validation pass found."""

    rows: int
    first_time: float | None
    last_time: float | None
    naive_times: bool


def parse_instant(text: str, tz: tzinfo | None) -> float:
    """``--start``: epoch seconds or an ISO-8601 datetime (naive: ``tz``, else local time).

    Raises:
        ValueError: neither.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            return _iso_seconds(value, tz)[0]
        except ValueError as exc:
            raise ValueError(
                f"{text!r} is neither epoch seconds nor an ISO-8601 datetime "
                "(e.g. 2024-05-01T09:30:00+02:00)"
            ) from exc
    if not EARLIEST_S <= seconds <= LATEST_S:
        raise ValueError(f"{text!r} is not Unix epoch seconds between 1990 and 2100")
    return seconds


def parse_channel_map(spec: str, columns: Sequence[str]) -> ChannelMap:
    """One ``--channel`` spec, ``NAME=COLUMN[:UNITS]`` or ``COLUMN[:UNITS]``, against a header.

    A column whose name itself contains ``:`` is matched whole before ``:UNITS`` is split off.

    Raises:
        ValueError: the column is not in the header, or the spec is malformed.
    """
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "", spec
    name = name.strip()
    units: str | None = None
    column = rest.strip()
    if column not in columns and ":" in column:
        column, _, unit_text = column.rpartition(":")
        column = column.strip()
        units = unit_text.strip() or None
    if not column:
        raise ValueError(f"--channel {spec!r}: expected NAME=COLUMN[:UNITS]")
    if column not in columns:
        raise ValueError(
            f"--channel {spec!r}: no column {column!r}; the columns are "
            + ", ".join(repr(c) for c in columns)
        )
    header_name, header_units = split_units(column)
    return ChannelMap(name or header_name, column, units or header_units)


def split_units(header: str) -> tuple[str, str | None]:
    """``"temp [C]"`` -> ``("temp", "C")``; a header without units is returned as is."""
    match = _UNITS_SUFFIX.match(header)
    if match is None:
        return header.strip(), None
    units = (match.group("b") if match.group("b") is not None else match.group("p")) or ""
    return match.group("name").strip(), units.strip() or None


def _normal(header: str) -> str:
    return split_units(header)[0].strip().lower().replace(" ", "_").replace("-", "_")


def _iso_seconds(text: str, tz: tzinfo | None) -> tuple[float, bool]:
    """Epoch seconds of an ISO-8601 datetime, and whether it had no timezone."""
    value = text.strip()
    if len(value) < 8 or not value[:4].isdigit():  # fromisoformat also takes "20240501" forms
        raise ValueError(value)
    dt = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "zZ" else value)
    if dt.tzinfo is not None:
        return dt.timestamp(), False
    if tz is not None:
        return dt.replace(tzinfo=tz).timestamp(), True
    return dt.timestamp(), True  # naive: local time (mktime)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _number(text: str) -> float:
    """A cell as a float; gaps as NaN. Raises ValueError for anything else."""
    value = text.strip()
    if value.lower() in _MISSING:
        return math.nan
    return float(value)


def _epoch_problem(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return f"time {seconds!r} is not a finite number"
    if EARLIEST_S <= seconds <= LATEST_S:
        return None
    for threshold, unit, flag in _UNIT_HINTS:
        if abs(seconds) >= threshold:
            return (
                f"time {seconds!r} looks like {unit} since 1970; labstream reads epoch times "
                f"in seconds unless told otherwise: give --time-unit {flag}"
            )
    return f"time {seconds!r} is not Unix epoch seconds between 1990 and 2100"


# --------------------------------------------------------------------------------------------------
# The time column: choosing it, deciding its format, converting cells


@dataclass(slots=True)
class _TimeParser:
    """Turns one time cell into epoch seconds; remembers whether naive datetimes were seen."""

    path: str
    column: str
    fmt: TimeFormat
    tz: tzinfo | None
    start: float | None
    row_word: str = "line"
    unit: TimeUnit = "s"
    naive_seen: bool = False
    previous: float = -math.inf
    previous_line: int = 0

    def error(self, line: int, message: str) -> LogFileError:
        return LogFileError(
            self.path, message, line=line, column=self.column, row_word=self.row_word
        )

    def in_order(self, seconds: float, line: int) -> None:
        """Check that time does not go backwards from the previous row.

        Raises:
            LogFileError: it does.
        """
        if seconds < self.previous:
            raise self.error(
                line,
                f"time goes backwards: {_show_time(seconds)} comes after "
                f"{_show_time(self.previous)} ({self.row_word} {self.previous_line}); rows must "
                "be in time order",
            )
        self.previous = seconds
        self.previous_line = line

    def __call__(self, text: str, line: int) -> float:
        if self.fmt == "iso":
            try:
                seconds, naive = _iso_seconds(text, self.tz)
            except (ValueError, OverflowError) as exc:
                raise self.error(
                    line, f"cannot read {text.strip()!r} as an ISO-8601 datetime"
                ) from exc
            self.naive_seen = self.naive_seen or naive
            problem = _epoch_problem(seconds)
            if problem:
                raise self.error(line, problem)
            return seconds
        try:
            number = float(text.strip())
        except ValueError as exc:
            kind = "epoch seconds" if self.fmt == "epoch" else "elapsed seconds"
            if not text.strip():
                raise self.error(line, "the time is empty") from exc
            raise self.error(line, f"cannot read {text.strip()!r} as {kind}") from exc
        return self.number(number, line)

    def number(self, number: float, line: int) -> float:
        if self.fmt == "elapsed":
            if not math.isfinite(number):
                raise self.error(line, f"elapsed time {number!r} is not a finite number")
            assert self.start is not None
            seconds = self.start + number
        elif self.unit != "s":
            seconds = number / TIME_UNITS[self.unit]
            if math.isfinite(seconds) and not EARLIEST_S <= seconds <= LATEST_S:
                raise self.error(
                    line,
                    f"time {number!r} {self.unit} is {seconds!r} s since 1970, not between "
                    "1990 and 2100: is --time-unit right?",
                )
        else:
            seconds = number
        problem = _epoch_problem(seconds)
        if problem:
            raise self.error(line, problem)
        return seconds


def _choose_time_column(
    path: str, columns: Sequence[str], options: ReadOptions, line: int | None
) -> str:
    if options.time_column is not None:
        if options.time_column not in columns:
            raise LogFileError(
                path,
                f"no time column {options.time_column!r}; the columns are "
                + ", ".join(repr(c) for c in columns),
                line=line,
            )
        return options.time_column
    normal = {c: _normal(c) for c in columns}
    for wanted in _TIME_NAMES:
        for column in columns:
            if normal[column] == wanted:
                return column
    for column in columns:
        if "time" in normal[column]:
            return column
    for wanted in _SHORT_TIME_NAMES:
        for column in columns:
            if normal[column] == wanted:
                return column
    raise LogFileError(
        path,
        "no time column found (looked for a column named time, timestamp, datetime, epoch, "
        "elapsed...); name it with --time-column. The columns are "
        + ", ".join(repr(c) for c in columns),
        line=line,
    )


def _decide_time_format(
    path: str, column: str, first: str | None, options: ReadOptions, line: int, row_word: str
) -> TimeFormat:
    """The format of the time column, from the options or its first value."""
    fmt = options.time_format
    err = LogFileError
    if fmt == "elapsed" and options.start is None:
        raise err(path, "elapsed times need --start (the instant elapsed time 0 stands for)")
    if fmt != "auto":
        return fmt
    if first is None:
        return "epoch"  # no data rows: nothing to convert
    text = first.strip()
    number = _as_float(text)
    if number is not None and options.time_unit != "s":
        number /= TIME_UNITS[options.time_unit]
        if not EARLIEST_S <= number <= LATEST_S:
            raise err(
                path,
                f"time {text} {options.time_unit} is not a date between 1990 and 2100: "
                "is --time-unit right?",
                line=line,
                column=column,
                row_word=row_word,
            )
    if number is None:
        try:
            _iso_seconds(text, options.timezone)
        except (ValueError, OverflowError) as exc:
            raise err(
                path,
                f"cannot read {text!r} as a time: expected epoch seconds, an ISO-8601 datetime, "
                "or elapsed seconds with --start",
                line=line,
                column=column,
                row_word=row_word,
            ) from exc
        if options.start is not None:
            raise err(path, "--start is for elapsed seconds, but the times are datetimes")
        return "iso"
    if EARLIEST_S <= number <= LATEST_S:
        if options.start is not None:
            raise err(
                path,
                f"--start given, but the first time {text} already is epoch seconds; "
                "use --time-format elapsed to read it as elapsed seconds anyway",
                line=line,
                column=column,
                row_word=row_word,
            )
        return "epoch"
    if options.start is not None:
        return "elapsed"
    problem = _epoch_problem(number)
    if math.isfinite(number) and abs(number) < EARLIEST_S:
        problem = (
            f"time {text} looks like elapsed seconds, not a date; give --start "
            "(e.g. --start 2024-05-01T09:30:00) to say when elapsed time 0 was"
        )
    raise err(path, problem or text, line=line, column=column, row_word=row_word)


# --------------------------------------------------------------------------------------------------
# The log


@dataclass(eq=False)
class LogFile:
    """An opened log: its columns, time column and format, and channels. Iterate with
    :meth:`batches`; :meth:`scan` validates the whole file first (and counts its rows)."""

    path: Path
    kind: Literal["csv", "parquet"]
    columns: tuple[str, ...]
    time_column: str
    time_format: TimeFormat
    channels: tuple[ChannelMap, ...]
    skipped_columns: tuple[str, ...]
    options: ReadOptions
    size: int
    mtime_ns: int
    delimiter: str = ","
    header_line: int = 1
    naive_times: bool = False
    _rows_hint: int | None = field(default=None, repr=False)

    @property
    def row_word(self) -> str:
        return "line" if self.kind == "csv" else "row"

    def _time_parser(self) -> _TimeParser:
        return _TimeParser(
            str(self.path),
            self.time_column,
            self.time_format,
            self.options.timezone,
            self.options.start,
            row_word=self.row_word,
            unit=self.options.time_unit,
        )

    def scan(self) -> ScanResult:
        """Read and check every row (bounded memory); count them.

        Raises:
            LogFileError: the first problem found.
        """
        rows = 0
        first: float | None = None
        last: float | None = None
        parser = self._time_parser()
        for block in self._blocks(parser):
            if len(block):
                if first is None:
                    first = float(block.timestamps[0])
                last = float(block.timestamps[-1])
            rows += len(block)
        self.naive_times = parser.naive_seen
        self._rows_hint = rows
        return ScanResult(rows, first, last, parser.naive_seen)

    def batches(self, size: int) -> Iterator[RowBatch]:
        """Rows in batches of exactly ``size`` (the last one may be shorter).

        Raises:
            LogFileError: a bad row, or the file changed since it was opened.
        """
        if size < 1:
            raise ValueError("batch size must be >= 1")
        parser = self._time_parser()
        pending: list[RowBatch] = []
        held = 0
        for block in self._blocks(parser):
            if not len(block):
                continue
            pending.append(block)
            held += len(block)
            while held >= size:
                batch, pending = _take(pending, size)
                held -= size
                yield batch
        if held:
            yield _take(pending, held)[0]

    def _check_unchanged(self) -> None:
        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise LogFileError(
                self.path,
                "the file changed while labstream was reading it (to stream a log that is still "
                "being written, use labstream follow)",
            )

    def _blocks(self, parser: _TimeParser) -> Iterator[RowBatch]:
        self._check_unchanged()
        if self.kind == "csv":
            yield from self._csv_blocks(parser)
        else:
            yield from self._parquet_blocks(parser)

    # -- CSV -----------------------------------------------------------------------------------

    def csv_rows(self) -> CsvRows:
        """A converter of this CSV log's rows, checking time order from its first row on."""
        return CsvRows(self, self._time_parser())

    def _csv_blocks(self, parser: _TimeParser) -> Iterator[RowBatch]:
        path = str(self.path)
        rows = CsvRows(self, parser)
        with _open_text(self.path, self.options.encoding) as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            # Skip up to and including the header.
            for row in reader:
                if reader.line_num >= self.header_line:
                    break
                _ = row
            try:
                for row in reader:
                    rows.add(row, reader.line_num)
                    if len(rows) >= _CSV_BLOCK_ROWS:
                        # Rows read after a change (a row appended meanwhile) are never sent.
                        self._check_unchanged()
                        yield rows.take()
            except csv.Error as exc:
                raise LogFileError(path, f"malformed CSV: {exc}", line=reader.line_num) from exc
            except UnicodeDecodeError as exc:
                raise _decode_error(path, self.options.encoding, exc, reader.line_num) from exc
            if len(rows):
                self._check_unchanged()
                yield rows.take()

    # -- Parquet -------------------------------------------------------------------------------

    def _parquet_blocks(self, parser: _TimeParser) -> Iterator[RowBatch]:
        path = str(self.path)
        pa, pq = _pyarrow(path)
        columns = [self.time_column, *dict.fromkeys(c.column for c in self.channels)]
        try:
            source = pq.ParquetFile(path)
            batches = source.iter_batches(batch_size=_CSV_BLOCK_ROWS, columns=columns)
        except Exception as exc:  # pyarrow raises many types for damaged files
            raise LogFileError(path, f"cannot read Parquet: {exc}") from exc
        row = 1
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                raise LogFileError(
                    path, f"cannot read Parquet: {exc}", line=row, row_word="row"
                ) from exc
            n = batch.num_rows
            if n == 0:
                continue
            ts = _arrow_times(pa, batch.column(self.time_column), parser, row)
            values: dict[str, FloatArray] = {}
            for channel in self.channels:
                array = batch.column(channel.column)
                values[channel.name] = np.asarray(
                    array.to_numpy(zero_copy_only=False), dtype=np.float64
                )
            lines = np.arange(row, row + n, dtype=np.int64)
            back = np.flatnonzero(np.diff(ts) < 0)
            if len(ts):
                parser.in_order(float(ts[0]), row)
            if back.size:
                i = int(back[0])
                parser.previous, parser.previous_line = float(ts[i]), row + i
                parser.in_order(float(ts[i + 1]), row + i + 1)
            parser.previous, parser.previous_line = float(ts[-1]), row + n - 1
            yield RowBatch(lines, ts, values)
            row += n


class CsvRows:
    """Turns CSV rows of a log into a :class:`RowBatch`, one row at a time, each checked.

    Shared by :meth:`LogFile.batches` (a whole file) and ``labstream follow`` (a growing one): a
    row that :meth:`add` refuses leaves nothing behind, so a caller may report it and go on.
    """

    def __init__(self, log: LogFile, parser: _TimeParser) -> None:
        self.path = str(log.path)
        self.parser = parser
        self.time_index = log.columns.index(log.time_column)
        self.wanted = [(c.name, log.columns.index(c.column), c.column) for c in log.channels]
        self.width = len(log.columns)
        self.times: list[float] = []
        self.lines: list[int] = []
        self.cells: dict[str, list[float]] = {name: [] for name, _, _ in self.wanted}

    def __len__(self) -> int:
        return len(self.times)

    def add(self, row: list[str], line: int) -> bool:
        """Take one row (False for a blank one, which is skipped).

        Raises:
            LogFileError: the row cannot be read (its line and column named); nothing was taken.
        """
        if not row or (len(row) == 1 and not row[0].strip()):
            return False
        width = self.width
        if len(row) != width:
            if len(row) > width and not any(cell.strip() for cell in row[width:]):
                row = row[:width]  # trailing delimiters
            else:
                raise LogFileError(
                    self.path, f"{len(row)} fields, but the header has {width}", line=line
                )
        seconds = self.parser(row[self.time_index], line)
        values = []
        for _name, index, column in self.wanted:
            try:
                values.append(_number(row[index]))
            except ValueError as exc:
                raise LogFileError(
                    self.path,
                    f"cannot read {row[index].strip()!r} as a number{_comma_hint(row[index])} "
                    "(to leave this column out, choose channels with --channel)",
                    line=line,
                    column=column,
                ) from exc
        self.parser.in_order(seconds, line)
        self.times.append(seconds)
        self.lines.append(line)
        for (name, _, _), value in zip(self.wanted, values, strict=True):
            self.cells[name].append(value)
        return True

    def take(self) -> RowBatch:
        """The rows taken so far, as a batch; the converter starts empty again."""
        batch = _block(self.lines, self.times, self.cells)
        self.times, self.lines = [], []
        self.cells = {name: [] for name, _, _ in self.wanted}
        return batch


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")


def _comma_hint(cell: str) -> str:
    """A hint for ``12,5``: a decimal comma, which the file's delimiter cannot also be."""
    if _DECIMAL_COMMA.match(cell):
        return (
            "; it looks like a decimal comma: labstream reads a decimal point, so write the "
            "file with '.' decimals (and ';' or tab between columns)"
        )
    return ""


def _block(lines: list[int], times: list[float], cells: dict[str, list[float]]) -> RowBatch:
    values = {name: np.asarray(v, dtype=np.float64) for name, v in cells.items()}
    return RowBatch(np.asarray(lines, dtype=np.int64), np.asarray(times, dtype=np.float64), values)


def _take(pending: list[RowBatch], size: int) -> tuple[RowBatch, list[RowBatch]]:
    """The first ``size`` rows of the pending blocks, and what remains."""
    parts: list[RowBatch] = []
    need = size
    rest = list(pending)
    while need:
        block = rest[0]
        if len(block) <= need:
            parts.append(block)
            need -= len(block)
            rest.pop(0)
        else:
            parts.append(block.slice(0, need))
            rest[0] = block.slice(need, len(block))
            need = 0
    if len(parts) == 1:
        return parts[0], rest
    batch = RowBatch(
        np.concatenate([p.lines for p in parts]),
        np.concatenate([p.timestamps for p in parts]),
        {name: np.concatenate([p.values[name] for p in parts]) for name in parts[0].values},
    )
    return batch, rest


def _show_time(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(float(seconds)).astimezone().isoformat(timespec="auto")
    except (ValueError, OverflowError, OSError):
        return repr(float(seconds))


def _open_text(path: Path, encoding: str) -> Any:
    return path.open("r", encoding=encoding, newline="")


def _decode_error(path: str, encoding: str, exc: UnicodeDecodeError, line: int) -> LogFileError:
    return LogFileError(
        path,
        f"not {encoding.removesuffix('-sig')} text ({exc.reason}); give --encoding, "
        "e.g. --encoding cp1252",
        line=line + 1,
    )


def _pyarrow(path: str) -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, loaded on demand (untyped, so held as Any).

    Raises:
        LogFileError: pyarrow is not installed.
    """
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise LogFileError(
            path, "reading Parquet needs pyarrow: pip install 'labstream[parquet]'"
        ) from exc


def _arrow_times(pa: Any, array: Any, parser: _TimeParser, first_row: int) -> FloatArray:
    """Epoch seconds from an Arrow time column (timestamp, number or ISO strings)."""
    kind = array.type
    nulls = array.null_count
    if nulls:
        i = next(k for k, v in enumerate(array.is_null().to_pylist()) if v)
        raise parser.error(first_row + i, "the time is empty")
    if pa.types.is_timestamp(kind):
        unit = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]
        if kind.tz is None:
            # Naive timestamps are wall-clock times, like a datetime without timezone: local
            # time (DST included, so per value) or the timezone given. Microsecond precision.
            parser.naive_seen = True
            out = np.empty(len(array), dtype=np.float64)
            micro = array.cast(pa.timestamp("us"), safe=False) if unit > 10**6 else array
            for k, value in enumerate(micro.to_pylist()):
                dt: datetime = value
                if parser.tz is not None:
                    dt = dt.replace(tzinfo=parser.tz)
                out[k] = dt.timestamp()
        else:
            raw = np.asarray(array.cast(pa.int64()).to_numpy(), dtype=np.int64)
            out = (raw // unit).astype(np.float64) + (raw % unit).astype(np.float64) / unit
        for k, seconds in enumerate(out):
            problem = _epoch_problem(float(seconds))
            if problem:
                raise parser.error(first_row + k, problem)
        return out
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        numbers = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.asarray(
            [parser.number(float(v), first_row + k) for k, v in enumerate(numbers)],
            dtype=np.float64,
        )
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(
            [parser(str(v), first_row + k) for k, v in enumerate(array.to_pylist())],
            dtype=np.float64,
        )
    raise parser.error(first_row, f"a time column of type {kind} is not supported")


# --------------------------------------------------------------------------------------------------
# Opening


def open_log(path: str | os.PathLike[str], options: ReadOptions | None = None) -> LogFile:
    """Open a CSV or Parquet log: find its header, time column and format, and channels.

    Reads only the header and the first rows; call :meth:`LogFile.scan` to check every row.

    Raises:
        LogFileError: not found, unreadable, no time column, no channel, a bad mapping...
    """
    opts = options or ReadOptions()
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise LogFileError(p, "no such file") from exc
    except OSError as exc:
        raise LogFileError(p, f"cannot read: {exc.strerror or exc}") from exc
    if not p.is_file():
        raise LogFileError(p, "not a file")
    if _is_parquet(p):
        return _open_parquet(p, opts, st.st_size, st.st_mtime_ns)
    return _open_csv(p, opts, st.st_size, st.st_mtime_ns)


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False


def _open_csv(path: Path, opts: ReadOptions, size: int, mtime_ns: int) -> LogFile:
    name = str(path)
    try:
        with _open_text(path, opts.encoding) as handle:
            head = handle.read(_SNIFF_BYTES)
            delimiter = opts.delimiter or _sniff_delimiter(head)
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header: list[str] | None = None
            header_line = 0
            sample: list[tuple[int, list[str]]] = []
            for row in reader:
                if header is None:
                    if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                        continue  # blank lines and # comments before the header
                    header = [c.strip() for c in row]
                    header_line = reader.line_num
                    continue
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                sample.append((reader.line_num, row))
                if len(sample) >= _SAMPLE_ROWS:
                    break
    except UnicodeDecodeError as exc:
        raise _decode_error(name, opts.encoding, exc, 0) from exc
    except csv.Error as exc:
        raise LogFileError(name, f"malformed CSV: {exc}") from exc
    except OSError as exc:
        raise LogFileError(name, f"cannot read: {exc.strerror or exc}") from exc
    if header is None:
        raise LogFileError(name, "the file is empty (no header line)")
    while header and not header[-1]:
        header.pop()  # trailing delimiter on the header
    for k, column in enumerate(header):
        if not column:
            raise LogFileError(name, f"column {k + 1} of the header has no name", line=header_line)
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise LogFileError(
            name, "duplicate column names: " + ", ".join(map(repr, dupes)), line=header_line
        )
    time_column = _choose_time_column(name, header, opts, header_line)
    t_index = header.index(time_column)
    first_line, first_time = (
        (sample[0][0], sample[0][1][t_index])
        if sample and len(sample[0][1]) > t_index
        else (0, None)
    )
    fmt = _decide_time_format(name, time_column, first_time, opts, first_line, "line")
    numeric = {
        c: _column_is_numeric([row[k] for _, row in sample if k < len(row)])
        for k, c in enumerate(header)
    }
    if not opts.channels:
        for k, column in enumerate(header):
            first = next((row[k] for _, row in sample if k < len(row) and row[k].strip()), "")
            if not numeric[column] and _comma_hint(first):
                line = next(n for n, row in sample if k < len(row) and row[k].strip())
                raise LogFileError(
                    name,
                    f"cannot read {first.strip()!r} as a number{_comma_hint(first)}",
                    line=line,
                    column=column,
                )
    channels, skipped = _channels(name, header, time_column, numeric, opts, header_line)
    return LogFile(
        path=path,
        kind="csv",
        columns=tuple(header),
        time_column=time_column,
        time_format=fmt,
        channels=channels,
        skipped_columns=skipped,
        options=opts,
        size=size,
        mtime_ns=mtime_ns,
        delimiter=delimiter,
        header_line=header_line,
    )


def _sniff_delimiter(head: str) -> str:
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return ","
    sample = "\n".join(lines[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _column_is_numeric(cells: list[str]) -> bool:
    """A column is numeric when its first non-empty cell is a number (later cells that are not
    numbers are then errors, reported with their line, rather than silently skipping the column)."""
    for cell in cells:
        if cell.strip().lower() in _MISSING:
            continue
        return _as_float(cell.strip()) is not None
    return False


def _channels(
    path: str,
    columns: Sequence[str],
    time_column: str,
    numeric: dict[str, bool],
    opts: ReadOptions,
    header_line: int | None,
) -> tuple[tuple[ChannelMap, ...], tuple[str, ...]]:
    if opts.channels:
        chosen: list[ChannelMap] = []
        for spec in opts.channels:
            try:
                chosen.append(parse_channel_map(spec, columns))
            except ValueError as exc:
                raise LogFileError(path, str(exc), line=header_line) from exc
        for channel in chosen:
            if channel.column == time_column:
                raise LogFileError(
                    path, f"--channel {channel.name!r}: {time_column!r} is the time column"
                )
        skipped = tuple(
            c for c in columns if c != time_column and c not in {m.column for m in chosen}
        )
    else:
        chosen = [_auto_channel(c) for c in columns if c != time_column and numeric.get(c)]
        skipped = tuple(c for c in columns if c != time_column and not numeric.get(c))
    names = [c.name for c in chosen]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LogFileError(path, "two columns give the same channel name: " + ", ".join(dupes))
    if not chosen:
        raise LogFileError(
            path,
            "no numeric value column to stream (besides the time column "
            f"{time_column!r}); map one with --channel NAME=COLUMN",
        )
    return tuple(chosen), skipped


def _auto_channel(column: str) -> ChannelMap:
    name, units = split_units(column)
    return ChannelMap(name, column, units)


def _open_parquet(path: Path, opts: ReadOptions, size: int, mtime_ns: int) -> LogFile:
    name = str(path)
    pa, pq = _pyarrow(name)
    try:
        source = pq.ParquetFile(name)
        schema = source.schema_arrow
        rows = int(source.metadata.num_rows)
    except Exception as exc:  # pyarrow raises many types for damaged files
        raise LogFileError(name, f"cannot read Parquet: {exc}") from exc
    header = [str(n) for n in schema.names]
    time_column = _choose_time_column(name, header, opts, None)
    kind = schema.field(time_column).type
    numeric = {
        str(f.name): bool(pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
        for f in schema
    }
    first: str | None = None
    if rows and not pa.types.is_timestamp(kind):
        try:
            head = next(source.iter_batches(batch_size=1, columns=[time_column]))
            value = head.column(0)[0].as_py()
        except Exception as exc:
            raise LogFileError(name, f"cannot read Parquet: {exc}") from exc
        first = None if value is None else str(value)
    if pa.types.is_timestamp(kind):
        if opts.start is not None:
            raise LogFileError(name, "--start is for elapsed seconds, but the times are timestamps")
        fmt: TimeFormat = "iso"
    else:
        fmt = _decide_time_format(name, time_column, first, opts, 1, "row")
    channels, skipped = _channels(name, header, time_column, numeric, opts, None)
    for channel in channels:
        if not numeric.get(channel.column):
            raise LogFileError(
                name,
                f"has type {schema.field(channel.column).type}, not numbers",
                column=channel.column,
            )
    return LogFile(
        path=path,
        kind="parquet",
        columns=tuple(header),
        time_column=time_column,
        time_format=fmt,
        channels=channels,
        skipped_columns=skipped,
        options=opts,
        size=size,
        mtime_ns=mtime_ns,
        _rows_hint=rows,
    )
