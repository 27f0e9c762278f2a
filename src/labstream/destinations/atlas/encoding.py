"""Protobuf wire bytes for ATLAS packets, written by hand with numpy.

Why by hand: a ``DoubleSampleList`` is a repeated *message* (value + status per sample), not a
packed array, so building it from generated protobuf objects costs one Python object per sample
(~0.45M samples/s). Every sample has the same 13-byte layout, though::

    0A 0B | 09 <8-byte little-endian double> | 10 <status>
    tag+len of the DoubleSample | value (field 1, fixed64) | status (field 2, varint, 1..3)

so a packet is a template of tags, lengths and VALID statuses, fixed by its sample and column
counts, with the values written in through one strided view per column (a ``RowDataPacket`` row,
one value per parameter, is likewise a fixed-size record). The rarely sent
messages (NewSession, Configuration, Marker, EndOfSession, the Packet envelope) are also written
here, with a tiny field writer, so the session state machine never imports generated code.

Field numbers follow the ATLAS wire facts (``ma.streaming.open_data.v1``). Scalar fields at their
proto3 default are left out, as the generated serialiser does, so those messages come out
byte-equal to ``SerializeToString()``; sample values and statuses are always written (parsers
accept explicit defaults, and a fixed layout is what makes the vectorised path possible).

This module also owns the timing arithmetic shared by the session: deciding whether a chunk's
timestamps are evenly spaced (periodic) and how much float-seconds noise to tolerate.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..._core.timebase import NS_PER_S, Float64Array, Int64Array

__all__ = [
    "DEFAULT_MAX_CONTENT_BYTES",
    "MAX_REQUEST_BYTES",
    "SAMPLE_BYTES",
    "UINT32_MAX",
    "DataStatus",
    "EncodedPacket",
    "GroupSpec",
    "ParameterSpec",
    "Spacing",
    "detect_spacing",
    "encode_configuration",
    "encode_data_packet_details",
    "encode_end_of_session",
    "encode_marker",
    "encode_new_session",
    "encode_packet",
    "encode_periodic",
    "encode_periodic_packets",
    "encode_row_packets",
    "encode_rows",
    "encode_write_data_packet_request",
    "encode_write_data_packets_request",
    "encode_write_request",
    "fits_grid",
    "grid_slack_ns",
    "max_periodic_samples",
    "max_rows",
    "noise_tolerance_ns",
    "sample_statuses",
]

UINT32_MAX = 4_294_967_295
"""Largest ``PeriodicDataPacket.interval`` (uint32 ns): 4.294967295 s."""

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""The Stream API's per-request message limit (ASP.NET gRPC default)."""

# The envelope around a packet's content (WriteDataPacketRequest > DataPacketDetails > Packet) holds
# the type, the session key twice, the data source, the stream and a few tags: a few hundred bytes
# with sane names. 64 KiB leaves room for that many times over, and for batching a small packet
# beside a big one never being the reason a request crosses the limit.
_ENVELOPE_HEADROOM = 64 * 1024
DEFAULT_MAX_CONTENT_BYTES = MAX_REQUEST_BYTES - _ENVELOPE_HEADROOM
"""Default byte budget for one packet's content, so the whole request stays under 4 MiB."""

SAMPLE_BYTES = 13
"""Bytes one double sample takes on the wire inside a DoubleSampleList."""


class DataStatus(IntEnum):
    """``ma.streaming.open_data.v1.DataStatus``."""

    UNSPECIFIED = 0
    VALID = 1
    MISSING = 2  # NaN: no reading (the Atomscale side sends null for it)
    ERROR = 3  # +-inf: the instrument reported an out-of-range / overflow reading


# ---------------------------------------------------------------------------------------------
# Scalar field writer (low-volume messages)

_WT_VARINT, _WT_I64, _WT_LEN = 0, 1, 2


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0:  # int64/int32 negatives: two's complement, always 10 bytes
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes((b,)) for b in range(0x80)]


@functools.cache  # a few dozen (field, wire type) pairs exist
def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


class _Writer:
    """Appends proto3 fields in field-number order, skipping defaults like the generated code."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def varint(self, number: int, value: int) -> None:
        if value:
            self.buf += _key(number, _WT_VARINT) + _varint(value)

    def boolean(self, number: int, value: bool) -> None:
        self.varint(number, 1 if value else 0)

    def fixed64(self, number: int, value: int) -> None:
        if value:
            self.buf += _key(number, _WT_I64) + struct.pack("<Q", value)

    def double(self, number: int, value: float) -> None:
        raw = struct.pack("<d", value)
        if raw != b"\0" * 8:  # -0.0 is not the default: its bits are not all zero
            self.buf += _key(number, _WT_I64) + raw

    def string(self, number: int, value: str) -> None:
        if value:
            self.raw_bytes(number, value.encode("utf-8"))

    def raw_bytes(self, number: int, value: bytes) -> None:
        if value:
            self.message(number, value)

    def message(self, number: int, body: bytes) -> None:
        """A length-delimited field written even when empty (message presence)."""
        self.buf += _key(number, _WT_LEN) + _varint(len(body)) + body

    def packed_doubles(self, number: int, values: Sequence[float]) -> None:
        if values:
            self.message(number, np.asarray(values, dtype="<f8").tobytes())

    def done(self) -> bytes:
        return bytes(self.buf)


def _timestamp(ns: int) -> bytes:
    """google.protobuf.Timestamp: seconds + non-negative nanos."""
    seconds, nanos = divmod(ns, NS_PER_S)
    w = _Writer()
    w.varint(1, seconds)
    w.varint(2, nanos)
    return w.done()


def _duration(ns: int) -> bytes:
    """google.protobuf.Duration: seconds and nanos carry the same sign."""
    seconds = abs(ns) // NS_PER_S * (1 if ns >= 0 else -1)
    nanos = ns - seconds * NS_PER_S
    w = _Writer()
    w.varint(1, seconds)
    w.varint(2, nanos)
    return w.done()


# ---------------------------------------------------------------------------------------------
# Low-volume packets


def encode_new_session(data_source: str, creation_time_ns: int, utc_offset_ns: int = 0) -> bytes:
    """``NewSessionPacket`` content."""
    w = _Writer()
    w.string(1, data_source)
    if utc_offset_ns:
        w.message(3, _duration(utc_offset_ns))
    w.message(5, _timestamp(creation_time_ns))
    return w.done()


def encode_end_of_session(data_source: str, termination_time_ns: int) -> bytes:
    """``EndOfSessionPacket`` content."""
    w = _Writer()
    w.string(1, data_source)
    w.message(3, _timestamp(termination_time_ns))
    return w.done()


def encode_marker(
    *,
    timestamp_ns: int,
    end_time_ns: int,
    label: str,
    marker_type: str = "",
    description: str = "",
    source: str = "",
) -> bytes:
    """``MarkerPacket`` content."""
    w = _Writer()
    w.fixed64(1, timestamp_ns)
    w.fixed64(2, end_time_ns)
    w.string(3, label)
    w.string(4, marker_type)
    w.string(5, description)
    w.string(6, source)
    return w.done()


DATA_TYPE_FLOAT64 = 1


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """One ``ParameterDefinition`` (float64 parameters only: labstream values are float64)."""

    identifier: str
    name: str
    application_name: str
    units: str = ""
    description: str = ""
    groups: tuple[str, ...] = ()
    format_string: str = ""
    min_value: float = 0.0
    max_value: float = 0.0
    warning_min_value: float = 0.0
    warning_max_value: float = 0.0
    frequencies: tuple[float, ...] = ()
    includes_row_data: bool = False


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """The one ``GroupDefinition`` a configuration carries."""

    identifier: str
    name: str
    application_name: str
    description: str = ""


def _parameter(p: ParameterSpec) -> bytes:
    w = _Writer()
    w.string(1, p.identifier)
    w.string(2, p.name)
    w.string(3, p.application_name)
    w.string(4, p.description)
    for g in p.groups:  # repeated string: every element written, even empty
        w.message(5, g.encode("utf-8"))
    w.string(6, p.units)
    w.varint(7, DATA_TYPE_FLOAT64)
    w.string(8, p.format_string)
    w.double(9, p.min_value)
    w.double(10, p.max_value)
    w.double(11, p.warning_min_value)
    w.double(12, p.warning_max_value)
    w.packed_doubles(13, p.frequencies)
    w.boolean(14, p.includes_row_data)
    return w.done()


def _group(g: GroupSpec) -> bytes:
    w = _Writer()
    w.string(1, g.identifier)
    w.string(2, g.name)
    w.string(3, g.application_name)
    w.string(4, g.description)
    return w.done()


def encode_configuration(
    config_id: str, parameters: Sequence[ParameterSpec], group: GroupSpec
) -> bytes:
    """``ConfigurationPacket`` content with exactly one ``GroupDefinition`` (more breaks ATLAS)."""
    w = _Writer()
    w.string(1, config_id)
    for p in parameters:
        w.message(2, _parameter(p))
    w.message(4, _group(group))
    return w.done()


# ---------------------------------------------------------------------------------------------
# Envelope


@functools.lru_cache(maxsize=64)
def _packet_head(packet_type: str, session_key: str, is_essential: bool) -> bytes:
    """``Packet`` fields 1-3, the same for every packet of a type in a session."""
    w = _Writer()
    w.string(1, packet_type)
    w.string(2, session_key)
    w.boolean(3, is_essential)
    return w.done()


@functools.lru_cache(maxsize=64)
def _details_tail(data_source: str, stream: str, session_key: str) -> bytes:
    """``DataPacketDetails`` fields 2-4, after the packet: the same for a whole session."""
    w = _Writer()
    w.string(2, data_source)
    w.string(3, stream)
    w.string(4, session_key)
    return w.done()


_FIRST_FIELD = _key(1, _WT_LEN)  # WriteDataPacketRequest.detail and DataPacketDetails.message
_CONTENT_KEY = _key(4, _WT_LEN)
_PACKET_ID_KEY = _key(5, _WT_VARINT)


def _packet_parts(
    packet_type: str, session_key: str, is_essential: bool, content: bytes, packet_id: int
) -> tuple[bytes, bytes, bytes, bytes]:
    """A ``Packet``'s bytes in four parts, the content uncopied (empty fields left out)."""
    content_head = _CONTENT_KEY + _varint(len(content)) if content else b""
    packet_id_field = _PACKET_ID_KEY + _varint(packet_id) if packet_id else b""
    head = _packet_head(packet_type, session_key, is_essential)
    return head, content_head, content, packet_id_field


def encode_packet(
    packet_type: str, session_key: str, is_essential: bool, content: bytes, packet_id: int
) -> bytes:
    """``Packet`` bytes (the envelope around a serialised content message)."""
    return b"".join(_packet_parts(packet_type, session_key, is_essential, content, packet_id))


def encode_data_packet_details(
    packet: bytes, data_source: str, stream: str, session_key: str
) -> bytes:
    """``DataPacketDetails`` bytes around an encoded ``Packet`` (see :func:`encode_packet`)."""
    tail = _details_tail(data_source, stream, session_key)
    return b"".join((_FIRST_FIELD, _varint(len(packet)), packet, tail))


def encode_write_data_packet_request(details: bytes) -> bytes:
    """``WriteDataPacketRequest`` bytes (unary write) around one encoded ``DataPacketDetails``."""
    return _FIRST_FIELD + _varint(len(details)) + details


def encode_write_request(
    packet_type: str,
    session_key: str,
    is_essential: bool,
    content: bytes,
    packet_id: int,
    data_source: str,
    stream: str,
) -> bytes:
    """The unary ``WriteDataPacketRequest`` for one packet, in one join.

    The same bytes as :func:`encode_write_data_packet_request` of
    :func:`encode_data_packet_details` of :func:`encode_packet`, with the content copied once
    instead of three times, which matters for large packets (docs/performance.md).
    """
    parts = _packet_parts(packet_type, session_key, is_essential, content, packet_id)
    packet_len = sum(map(len, parts))
    packet_head = _FIRST_FIELD + _varint(packet_len)
    tail = _details_tail(data_source, stream, session_key)
    details_len = len(packet_head) + packet_len + len(tail)
    return b"".join((_FIRST_FIELD, _varint(details_len), packet_head, *parts, tail))


def encode_write_data_packets_request(details: Sequence[bytes]) -> bytes:
    """``WriteDataPacketsRequest`` bytes (one message of the client stream) for a batch."""
    w = _Writer()
    for d in details:
        w.message(1, d)
    return w.done()


# ---------------------------------------------------------------------------------------------
# Samples (high volume, vectorised)

# One DoubleSample inside a DoubleSampleList; the status byte defaults to VALID and is patched.
_SAMPLE_TEMPLATE = np.array(
    [0x0A, 0x0B, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, DataStatus.VALID], dtype=np.uint8
)
_VALUE_AT = 3  # in a sample: after its tag and length and the value's tag
_STATUS_AFTER_VALUE = 9  # the 8 value bytes, then the status's tag


def sample_statuses(values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """The DataStatus written for each value: VALID, MISSING for NaN, ERROR for +-inf."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, DataStatus.VALID, dtype=np.uint8)
    out[np.isnan(v)] = DataStatus.MISSING
    out[np.isinf(v)] = DataStatus.ERROR
    return out


# A packet's bytes are a template (every tag, length and VALID status, which depend only on the
# number of samples and columns) with the values written in. Templates of small packets are
# kept: a chunk that arrives alone is a small packet, and building its template was most of its
# cost (a dozen numpy calls and varints for 100 samples). Large ones are built each time; there
# the values dominate.
_KEPT_TEMPLATE_BYTES = 64 * 1024


# build(n, k, lead) -> (packet buffer with ``lead`` bytes left free at the front, where its
# samples' area starts, and a step within it)
_Layout = Callable[[int, int, int], tuple[npt.NDArray[np.uint8], int, int]]
# What a packet is written into: a bytearray for a small packet, a numpy buffer for a large one.
_Buffer = bytearray | npt.NDArray[np.uint8]


def _packet_buffer(build: _Layout, n: int, k: int, head: bytes) -> tuple[_Buffer, int, int]:
    """``build``'s template behind ``head``, writable, with its offset counted from ``head``'s
    start and its step. A small packet is a copy of a kept template: two copies of ~1 KiB,
    cheaper than any numpy call."""
    lead = len(head)
    if SAMPLE_BYTES * n * k <= _KEPT_TEMPLATE_BYTES:
        template, a, b = _kept(build, n, k)
        small = bytearray(head)
        small += template
        return small, lead + a, b
    buf, a, b = build(n, k, lead)
    buf[:lead] = np.frombuffer(head, dtype=np.uint8)
    return buf, a, b


@functools.lru_cache(maxsize=256)
def _kept(build: _Layout, n: int, k: int) -> tuple[bytes, int, int]:
    template, a, b = build(n, k, 0)
    return template.tobytes(), a, b


def _write_columns(
    buf: _Buffer,
    first: int,
    column_step: int,
    sample_step: int,
    columns: Sequence[Float64Array],
) -> None:
    """Write column ``j``'s sample ``i`` at ``buf[first + j * column_step + i * sample_step]``
    (the sample's first byte) and mark its NaN and +-inf values MISSING and ERROR."""
    shape, steps = (len(columns), columns[0].shape[0]), (column_step, sample_step)
    # Unaligned strided views of the buffer: values go in little-endian, as the wire wants.
    values = np.ndarray(shape, "<f8", buf, first + _VALUE_AT, steps)
    for j, col in enumerate(columns):
        values[j] = col
    # A lone column's own array is contiguous: checked in half the time of the strided view.
    if not np.isfinite(columns[0] if len(columns) == 1 else values).all():
        # Rare: patch only the non-finite samples.
        status = np.ndarray(shape, np.uint8, buf, first + _VALUE_AT + _STATUS_AFTER_VALUE, steps)
        status[np.isnan(values)] = DataStatus.MISSING
        status[np.isinf(values)] = DataStatus.ERROR


@functools.lru_cache(maxsize=256)
def _data_format(format_id: int) -> bytes:
    """``data_format`` (field 1) holding ``SampleDataFormat{data_format_identifier}``."""
    # The identifier is a oneof member, so it is written even when 0 (it has presence).
    body = _key(1, _WT_VARINT) + _varint(format_id)
    return _key(1, _WT_LEN) + _varint(len(body)) + body


def _columns(columns: Sequence[npt.ArrayLike]) -> list[Float64Array]:
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    if not cols:
        raise ValueError("a data packet needs at least one column (one per parameter)")
    n = cols[0].shape[0]
    for c in cols:
        if c.ndim != 1 or c.shape[0] != n:
            raise ValueError(
                f"all columns must be one-dimensional and the same length; got shapes "
                f"{[x.shape for x in cols]}"
            )
    if n == 0:
        raise ValueError("a data packet needs at least one sample")
    return cols


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < 2**64:
        raise ValueError(f"{name}={value} does not fit an unsigned 64-bit field")


def _periodic_columns(n: int, k: int, lead: int) -> tuple[npt.NDArray[np.uint8], int, int]:
    """``k`` ``SampleColumn`` fields of ``n`` samples after ``lead`` bytes; where column 0's
    first sample starts, and the size of a column."""
    # SampleColumn { double_samples (1): DoubleSampleList { samples (1): n x 13 bytes } }
    list_len = SAMPLE_BYTES * n
    column_body_head = _key(1, _WT_LEN) + _varint(list_len)
    column_head = _key(4, _WT_LEN) + _varint(len(column_body_head) + list_len) + column_body_head
    column = len(column_head) + list_len
    buf = np.empty(lead + k * column, dtype=np.uint8)
    area = buf[lead:].reshape(k, column)
    area[:, : len(column_head)] = np.frombuffer(column_head, dtype=np.uint8)
    area[:, len(column_head) :].reshape(k, n, SAMPLE_BYTES)[...] = _SAMPLE_TEMPLATE
    return buf, lead + len(column_head), column


_START_KEY = _key(2, _WT_I64)


@functools.lru_cache(maxsize=256)
def _interval(interval_ns: int) -> bytes:
    return _key(3, _WT_VARINT) + _varint(interval_ns)


def encode_periodic(
    format_id: int, start_ns: int, interval_ns: int, columns: Sequence[npt.ArrayLike]
) -> bytes:
    """``PeriodicDataPacket`` content: one ``SampleColumn`` of doubles per parameter.

    Raises:
        ValueError: no columns, ragged or empty columns, or out-of-range times.
    """
    return _periodic(format_id, start_ns, interval_ns, _columns(columns))


def _periodic(format_id: int, start_ns: int, interval_ns: int, cols: list[Float64Array]) -> bytes:
    _check_u64("format_id", format_id)
    _check_u64("start_ns", start_ns)
    if not 0 < interval_ns <= UINT32_MAX:
        raise ValueError(f"interval_ns={interval_ns} must be in 1..{UINT32_MAX} (uint32 ns)")
    head = _data_format(format_id)
    if start_ns:
        head += _START_KEY + struct.pack("<Q", start_ns)
    head += _interval(interval_ns)
    buf, first, column = _packet_buffer(_periodic_columns, cols[0].shape[0], len(cols), head)
    _write_columns(buf, first, column, SAMPLE_BYTES, cols)
    return bytes(buf)


def _row_layout(n_columns: int) -> bytes:
    """The constant bytes that open every row: ``rows`` tag+len, ``double_samples`` tag+len."""
    list_len = SAMPLE_BYTES * n_columns
    row_body_head = _key(1, _WT_LEN) + _varint(list_len)
    return _key(3, _WT_LEN) + _varint(len(row_body_head) + list_len) + row_body_head


def _rows(n: int, k: int, lead: int) -> tuple[npt.NDArray[np.uint8], int, int]:
    """The packed timestamps (their bytes left unset) and ``n`` rows of ``k`` samples, after
    ``lead`` bytes; where the timestamps start, and the size of a row (whose samples end it)."""
    row_head = _row_layout(k)
    row_size = len(row_head) + SAMPLE_BYTES * k
    ts_head = _key(2, _WT_LEN) + _varint(8 * n)  # packed fixed64
    ts_at = lead + len(ts_head)
    buf = np.empty(ts_at + 8 * n + row_size * n, dtype=np.uint8)
    buf[lead:ts_at] = np.frombuffer(ts_head, dtype=np.uint8)
    rows = buf[ts_at + 8 * n :].reshape(n, row_size)
    rows[:, : len(row_head)] = np.frombuffer(row_head, dtype=np.uint8)
    rows[:, len(row_head) :].reshape(n, k, SAMPLE_BYTES)[...] = _SAMPLE_TEMPLATE
    return buf, ts_at, row_size


def encode_rows(
    format_id: int, timestamps_ns: npt.ArrayLike, columns: Sequence[npt.ArrayLike]
) -> bytes:
    """``RowDataPacket`` content: exact timestamps, one ``SampleRow`` of doubles per timestamp.

    ``columns[j][i]`` is parameter ``j`` at ``timestamps_ns[i]``.

    Raises:
        ValueError: no columns, ragged or empty columns, timestamp count mismatch, negative
            timestamps.
    """
    return _row_data(format_id, np.asarray(timestamps_ns, dtype=np.int64), _columns(columns))


def _row_data(format_id: int, ts: Int64Array, cols: list[Float64Array]) -> bytes:
    _check_u64("format_id", format_id)
    n, k = cols[0].shape[0], len(cols)
    if ts.shape != (n,):
        raise ValueError(f"{ts.shape[0] if ts.ndim == 1 else ts.shape} timestamps for {n} rows")
    if np.minimum.reduce(ts) < 0:  # ts.min() costs half as much again
        raise ValueError("timestamps must be non-negative epoch nanoseconds (fixed64)")
    buf, ts_at, row_size = _packet_buffer(_rows, n, k, _data_format(format_id))
    np.ndarray((n,), "<i8", buf, ts_at)[...] = ts  # little-endian fixed64, unaligned
    first = ts_at + 8 * n + row_size - SAMPLE_BYTES * k  # row 0's first sample
    _write_columns(buf, first, SAMPLE_BYTES, row_size, cols)
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# Splitting under a byte budget

# Worst-case fixed bytes: data_format (tag+len+tag+10-byte varint) = 13, start_time = 9,
# interval = 6; per column two tags and two lengths (< 2^28 bytes: 4-byte varints) = 10.
_PERIODIC_FIXED = 13 + 9 + 6
_PERIODIC_PER_COLUMN = 10
# data_format 13 + timestamps tag + 4-byte length.
_ROWS_FIXED = 13 + 5


def max_periodic_samples(n_columns: int, max_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> int:
    """Most samples per column a ``PeriodicDataPacket`` of ``n_columns`` can hold in the budget.

    Raises:
        ValueError: the budget cannot hold even one sample per column.
    """
    room = max_bytes - _PERIODIC_FIXED - _PERIODIC_PER_COLUMN * n_columns
    count = room // (SAMPLE_BYTES * n_columns)
    if count < 1:
        raise ValueError(f"max_bytes={max_bytes} cannot hold one sample of {n_columns} columns")
    return count


@functools.lru_cache(maxsize=64)  # asked for every packet, and the same few layouts repeat
def max_rows(n_columns: int, max_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> int:
    """Most rows a ``RowDataPacket`` of ``n_columns`` can hold in the budget.

    Raises:
        ValueError: the budget cannot hold even one row.
    """
    per_row = 8 + len(_row_layout(n_columns)) + SAMPLE_BYTES * n_columns
    count = (max_bytes - _ROWS_FIXED) // per_row
    if count < 1:
        raise ValueError(f"max_bytes={max_bytes} cannot hold one row of {n_columns} columns")
    return count


@dataclass(slots=True)  # not frozen: a frozen one took a fifth of a small packet's time to make
class EncodedPacket:
    """One data packet's content and what it covers.

    Attributes:
        packet_type: ``Packet.type``: "PeriodicData" or "RowData".
        content: the serialised content message.
        first_ns: time of the first sample as the packet states it.
        last_ns: time of the last sample as the packet states it.
        count: samples per parameter (columns' length, or rows).
        offset: index of the first sample within the chunk it came from.
    """

    packet_type: Literal["PeriodicData", "RowData"]
    content: bytes
    first_ns: int
    last_ns: int
    count: int
    offset: int


def encode_periodic_packets(
    format_id: int,
    start_ns: int,
    interval_ns: int,
    columns: Sequence[npt.ArrayLike],
    max_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
) -> list[EncodedPacket]:
    """Encode columns as consecutive ``PeriodicDataPacket``s, none larger than ``max_bytes``.

    Piece ``j`` starts at ``start_ns + offset_j * interval_ns`` exactly, so the pieces continue one
    arithmetic timeline.

    Raises:
        ValueError: see :func:`encode_periodic` and :func:`max_periodic_samples`.
    """
    cols = _columns(columns)
    n = cols[0].shape[0]
    step = max_periodic_samples(len(cols), max_bytes)
    out: list[EncodedPacket] = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        first = start_ns + lo * interval_ns
        piece = cols if hi - lo == n else [c[lo:hi] for c in cols]
        content = _periodic(format_id, first, interval_ns, piece)
        last = first + (hi - lo - 1) * interval_ns
        out.append(EncodedPacket("PeriodicData", content, first, last, hi - lo, lo))
    return out


def encode_row_packets(
    format_id: int,
    timestamps_ns: npt.ArrayLike,
    columns: Sequence[npt.ArrayLike],
    max_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
) -> list[EncodedPacket]:
    """Encode rows as consecutive ``RowDataPacket``s, none larger than ``max_bytes``.

    Raises:
        ValueError: see :func:`encode_rows` and :func:`max_rows`.
    """
    cols = _columns(columns)
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    n = cols[0].shape[0]
    step = max_rows(len(cols), max_bytes)
    out: list[EncodedPacket] = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        whole = hi - lo == n
        piece = cols if whole else [c[lo:hi] for c in cols]
        content = _row_data(format_id, ts if whole else ts[lo:hi], piece)
        out.append(EncodedPacket("RowData", content, int(ts[lo]), int(ts[hi - 1]), hi - lo, lo))
    return out


# ---------------------------------------------------------------------------------------------
# Timing: periodic detection


def noise_tolerance_ns(timestamps_ns: Int64Array) -> int:
    """How far (ns) a timestamp may sit from its ideal instant through float-seconds noise alone.

    A user's timestamp went through a float64 of epoch seconds (half an ulp of error, ~119 ns near
    1.7e9 s where the ulp is 2**-22 s = 238.4 ns) and then the exact split conversion to ns (half a
    ns more). Two such points differ from their ideal distance by up to one ulp + 1 ns. We return
    ``ceil(ulp) + 2`` ns at the largest timestamp (241 ns near 1.7e9 s; 479 ns after 2038, when the
    seconds pass 2**31): tight enough that real acquisition jitter (µs to ms) never passes as
    periodic, loose enough that an exact grid written as floats always does.
    """
    t_max = float(np.max(np.abs(timestamps_ns))) / NS_PER_S
    ulp_ns = float(np.spacing(max(t_max, 1.0))) * NS_PER_S
    return math.ceil(ulp_ns) + 2


def grid_slack_ns(count: int, tolerance_ns: int) -> int:
    """Allowed distance between ``count`` samples and an integer-ns arithmetic grid.

    Besides timestamp noise, an integer interval can be off the true period by up to 0.5 ns (60 Hz
    is 16 666 666.67 ns), which adds up along a packet: 0.5 ns per sample.
    """
    return tolerance_ns + count // 2  # ceil((count - 1) / 2)


@dataclass(frozen=True, slots=True)
class Spacing:
    """Whether a chunk's timestamps are evenly spaced, and at what interval.

    Attributes:
        periodic: evenly spaced (within noise) at an interval that fits a uint32 of ns.
        interval_ns: the rounded mean step when periodic, else 0.
        mean_step_ns: the exact mean step (0.0 for a single point).
        tolerance_ns: the noise tolerance used (see :func:`noise_tolerance_ns`).
        reason: why not periodic, for logs and tests ("" when periodic).
    """

    periodic: bool
    interval_ns: int
    mean_step_ns: float
    tolerance_ns: int
    reason: str = field(default="")


def detect_spacing(timestamps_ns: Int64Array) -> Spacing:
    """Decide whether ``timestamps_ns`` (sorted int64 ns) can go as one ``PeriodicDataPacket``.

    Periodic when there are at least two points, every step is within ``2 * tol`` of the mean step
    (each step has two noisy ends), every point is within ``tol`` of the straight line from the
    first point at the mean step (so a slow drift cannot hide under the per-step bound), and the
    rounded mean step is 1..4 294 967 295 ns. ``tol`` is :func:`noise_tolerance_ns`.
    """
    t = np.asarray(timestamps_ns, dtype=np.int64)
    n = int(t.shape[0])
    if n == 0:
        raise ValueError("no timestamps")
    tol = noise_tolerance_ns(t)
    if n == 1:
        return Spacing(False, 0, 0.0, tol, "single point")
    span = int(t[-1]) - int(t[0])
    mean = span / (n - 1)
    if round(mean) < 1:
        return Spacing(False, 0, mean, tol, "repeated timestamps")
    interval = round(mean)
    if interval > UINT32_MAX:
        return Spacing(False, 0, mean, tol, f"interval {interval} ns exceeds uint32 ns")
    steps = np.diff(t).astype(np.float64)
    if float(np.max(np.abs(steps - mean))) > 2 * tol:
        return Spacing(False, 0, mean, tol, "uneven steps")
    rel = (t - t[0]).astype(np.float64)  # exact below 2**53 ns (104 days)
    if float(np.max(np.abs(rel - np.arange(n) * mean))) > tol:
        return Spacing(False, 0, mean, tol, "drifting steps")
    return Spacing(True, interval, mean, tol)


def fits_grid(
    timestamps_ns: Int64Array, start_ns: int, interval_ns: int, tolerance_ns: int
) -> bool:
    """True when every timestamp is within :func:`grid_slack_ns` of ``start + i * interval``."""
    t = np.asarray(timestamps_ns, dtype=np.int64)
    n = int(t.shape[0])
    grid = np.int64(start_ns) + np.arange(n, dtype=np.int64) * np.int64(interval_ns)
    return bool(int(np.max(np.abs(t - grid))) <= grid_slack_ns(n, tolerance_ns))
