"""Reading a session back from the emulator's PacketReaderService, as ATLAS's reader does.

The reader here is written from the protos alone (generated stubs, nothing of labstream's): it finds
the session (GetCurrentSessions, or a start notification when live), builds its connection from
GetSessionInfo's streams and offsets, reads the streams (ReadPackets) and the essentials
(ReadEssentials), and rebuilds every parameter's samples and every marker, resolving format ids
through GetParametersList. What it rebuilds must be exactly what labstream pushed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from labstream import Atlas, RetryPolicy, TimeseriesStreamer
from labstream._core.timebase import seconds_to_ns
from labstream._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from labstream.testing.atlas import AtlasEmulator, run_in_thread

DS = "Reader_Test"
T0 = 1_760_000_000.0
HZ = 10.0
CHUNKS, POINTS = 3, 100
TIMEOUT = 10.0
QUICK = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, jitter_s=0, cooldown_s=0.05)


# --------------------------------------------------------------------------------------------------
# A reader written from the protos


@dataclass
class Read:
    """What a reader got: packets per stream in order, the essentials, and the rebuilt data."""

    by_stream: dict[str, list[Any]] = field(default_factory=dict)
    essentials: list[Any] = field(default_factory=list)

    def ended(self) -> bool:
        """EndOfSession seen on the main stream and on every named stream seen."""
        return "" in self.by_stream and all(
            any(r.packet.type == "EndOfSession" for r in rs) for rs in self.by_stream.values()
        )


class ProtoReader:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.sessions = api_pb2_grpc.SessionManagementServiceStub(self.channel)
        self.connections = api_pb2_grpc.ConnectionManagerServiceStub(self.channel)
        self.reader = api_pb2_grpc.PacketReaderServiceStub(self.channel)
        self.formats = api_pb2_grpc.DataFormatManagerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def connect(self, key: str) -> tuple[int, Any]:
        info = self.sessions.GetSessionInfo(
            api_pb2.GetSessionInfoRequest(session_key=key), timeout=TIMEOUT
        )
        assert info.success
        streams = list(info.streams)
        offsets = [info.topic_partition_offsets.get(f"{DS}.{s}:0", 0) for s in streams]
        details = api_pb2.ConnectionDetails(
            data_source=info.data_source,
            session_key=key,
            streams=streams,
            stream_offsets=offsets,
            main_offset=info.main_offset,
            essentials_offset=info.essentials_offset,
        )
        conn = self.connections.NewConnection(
            api_pb2.NewConnectionRequest(details=details), timeout=TIMEOUT
        )
        return int(conn.connection.id), info

    def read(self, cid: int) -> Read:
        """Read the streams until every one has ended, and the essentials until they go quiet."""
        got = Read()
        conn = api_pb2.Connection(id=cid)
        essentials = self.reader.ReadEssentials(
            api_pb2.ReadEssentialsRequest(connection=conn), timeout=TIMEOUT
        )
        collector = threading.Thread(target=self._collect, args=(essentials, got.essentials))
        collector.start()
        packets = self.reader.ReadPackets(
            api_pb2.ReadPacketsRequest(connection=conn), timeout=TIMEOUT
        )
        for message in packets:
            for r in message.response:
                got.by_stream.setdefault(r.stream, []).append(r)
            if got.ended():
                packets.cancel()
                break
        # The essentials topic has no end marker: a reader stops once nothing more comes.
        count = -1
        while count != len(got.essentials):
            count = len(got.essentials)
            time.sleep(0.2)
        essentials.cancel()
        collector.join(TIMEOUT)
        closed = self.connections.CloseConnection(
            api_pb2.CloseConnectionRequest(connection=conn), timeout=TIMEOUT
        )
        assert closed.success
        return got

    @staticmethod
    def _collect(call: Any, into: list[Any]) -> None:
        with pytest.raises(grpc.RpcError) as ended:
            for message in call:
                into.extend(message.response)
        assert ended.value.code() == grpc.StatusCode.CANCELLED, ended.value

    def parameters(self, responses: list[Any]) -> dict[str, tuple[list[int], list[float]]]:
        """parameter -> (timestamps ns, values) from PeriodicData packets."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        names: dict[int, list[str]] = {}
        for r in responses:
            if r.packet.type != "PeriodicData":
                continue
            p = od.PeriodicDataPacket.FromString(r.packet.content)
            fid = p.data_format.data_format_identifier
            if fid not in names:
                names[fid] = list(
                    self.formats.GetParametersList(
                        api_pb2.GetParametersListRequest(
                            data_source=DS, data_format_identifier=fid
                        ),
                        timeout=TIMEOUT,
                    ).parameters
                )
            for name, column in zip(names[fid], p.columns, strict=True):
                ts, vs = out.setdefault(name, ([], []))
                samples = column.double_samples.samples
                ts += [p.start_time + i * p.interval for i in range(len(samples))]
                vs += [s.value for s in samples]
        return out


def markers(responses: list[Any]) -> list[tuple[str, int, int, str]]:
    found = []
    for r in responses:
        if r.packet.type == "Marker":
            m = od.MarkerPacket.FromString(r.packet.content)
            found.append((m.label, m.timestamp, m.end_time, m.description))
    return found


def configured(responses: list[Any]) -> set[str]:
    return {
        d.identifier
        for r in responses
        if r.packet.type == "Configuration"
        for d in od.ConfigurationPacket.FromString(r.packet.content).parameter_definitions
    }


# --------------------------------------------------------------------------------------------------
# The session labstream writes, and what the reader must find


def grid(chunk: int) -> list[float]:
    return [T0 + chunk * POINTS / HZ + i / HZ for i in range(POINTS)]


def temperature(chunk: int) -> list[float]:
    return [600.0 + chunk * POINTS + i * 0.25 for i in range(POINTS)]


def pressure(chunk: int) -> list[float]:
    return [1e-9 * (chunk * POINTS + i + 1) for i in range(POINTS)]


MARK = ("Ga shutter open", T0 + 12.0, T0 + 15.0, "first layer")


def write_session(emu: AtlasEmulator, pause: Callable[[], None] = lambda: None) -> str:
    streamer = TimeseriesStreamer(
        atlas=Atlas(
            address=emu.address, key_generator_address=emu.key_generator_address, data_source=DS
        ),
        retry=QUICK,
        handle_sigterm=False,
    )
    try:
        with streamer.stream(stream_name="readback") as s:
            for c in range(CHUNKS):
                ts = grid(c)
                s.push(c, "substrate_temperature", ts, temperature(c), units="C")
                s.push(c, "chamber_pressure", ts, pressure(c), units="mbar")
                if c == 0:
                    label, at, end, description = MARK
                    s.mark(label, timestamp=at, end_time=end, description=description)
                pause()
        assert s.report is not None and s.report.ok, str(s.report)
    finally:
        streamer.close(timeout=5)
    return s.data_id


def assert_everything_read(reader: ProtoReader, got: Read) -> None:
    assert set(got.by_stream) == {"", "Stream1"}
    data = reader.parameters(got.by_stream["Stream1"])
    all_ts = [t for c in range(CHUNKS) for t in grid(c)]
    want_ns = np.asarray(seconds_to_ns(np.asarray(all_ts)), dtype=np.int64)
    for name, values in (
        ("substrate_temperature:labstream", [v for c in range(CHUNKS) for v in temperature(c)]),
        ("chamber_pressure:labstream", [v for c in range(CHUNKS) for v in pressure(c)]),
    ):
        ts, vs = data[name]
        assert vs == values  # every value, bit for bit
        assert len(ts) == len(want_ns)
        assert int(np.abs(np.asarray(ts, dtype=np.int64) - want_ns).max()) <= 500
    label, at, end, description = MARK
    want_marker = (label, int(seconds_to_ns(at)), int(seconds_to_ns(end)), description)
    for stream in ("", "Stream1"):
        assert markers(got.by_stream[stream]) == [want_marker]
        types = [r.packet.type for r in got.by_stream[stream]]
        assert (types[0], types[-1]) == ("NewSession", "EndOfSession")
        assert configured(got.by_stream[stream]) == set(data)
    # essentials: every packet written with is_essential, on both streams, and nothing else
    assert got.essentials and all(r.packet.is_essential for r in got.essentials)
    assert configured(got.essentials) == set(data)
    sent = [r.packet.id for rs in got.by_stream.values() for r in rs if r.packet.is_essential]
    assert sorted(r.packet.id for r in got.essentials) == sorted(sent)


@pytest.fixture
def emu() -> Iterator[AtlasEmulator]:
    with run_in_thread() as emulator:
        yield emulator


@pytest.fixture
def reader(emu: AtlasEmulator) -> Iterator[ProtoReader]:
    r = ProtoReader(emu.address)
    yield r
    r.close()


def test_historical_read_gets_every_sample_and_marker(
    emu: AtlasEmulator, reader: ProtoReader
) -> None:
    data_id = write_session(emu)
    current = reader.sessions.GetCurrentSessions(
        api_pb2.GetCurrentSessionsRequest(data_source=DS), timeout=TIMEOUT
    )
    (key,) = current.session_keys  # ended, and still listed
    cid, info = reader.connect(key)
    assert info.is_complete and info.details["labstream_data_id"] == data_id
    assert list(info.streams) == ["Stream1"]  # named streams only, never the main stream ""
    assert_everything_read(reader, reader.read(cid))


def test_live_read_follows_the_session_as_it_is_written(
    emu: AtlasEmulator, reader: ProtoReader
) -> None:
    starts = reader.sessions.GetSessionStartNotification(
        api_pb2.GetSessionStartNotificationRequest(data_source=DS), timeout=TIMEOUT
    )
    result: dict[str, Any] = {}
    connected = threading.Event()

    def live() -> None:
        key = next(iter(starts)).session_key
        starts.cancel()
        cid, info = reader.connect(key)
        result["info"] = info
        connected.set()
        result["read"] = reader.read(cid)

    thread = threading.Thread(target=live)
    thread.start()

    def pause() -> None:
        # The writer goes on only once the reader is connected and its ReadPackets runs: what
        # comes after (later chunks, the end of the session) reaches it live.
        assert connected.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not any(c.method == "ReadPackets" and c.code is None for c in emu.calls):
            assert time.monotonic() < deadline, "the reader never called ReadPackets"
            time.sleep(0.005)

    write_session(emu, pause)
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert not result["info"].is_complete  # connected while the session ran
    assert_everything_read(reader, result["read"])


def test_offsets_latest_earliest_and_the_session_key_filter(emu: AtlasEmulator) -> None:
    first = write_session(emu)
    second = write_session(emu)
    reader = ProtoReader(emu.address)
    try:
        keys = list(
            reader.sessions.GetCurrentSessions(
                api_pb2.GetCurrentSessionsRequest(data_source=DS), timeout=TIMEOUT
            ).session_keys
        )
        assert len(keys) == 2
        infos = [
            reader.sessions.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=k))
            for k in keys
        ]
        assert [i.details["labstream_data_id"] for i in infos] == [first, second]
        # The second session was created after the first wrote: its offsets start past it.
        assert infos[0].main_offset == 0 and infos[1].main_offset > 0
        assert infos[1].topic_partition_offsets[f"{DS}.Stream1:0"] > 0
        per_session = len(emu.packets_on(DS, "")) // 2
        assert infos[1].main_offset == per_session

        def main_stream(**details: Any) -> list[Any]:
            details = {"data_source": DS, "streams": ["Stream1"], **details}
            cid = reader.connections.NewConnection(
                api_pb2.NewConnectionRequest(details=api_pb2.ConnectionDetails(**details))
            ).connection.id
            call = reader.reader.ReadPackets(
                api_pb2.ReadPacketsRequest(connection=api_pb2.Connection(id=cid)), timeout=0.5
            )
            got: list[Any] = []
            with pytest.raises(grpc.RpcError) as err:
                for message in call:
                    got += message.response
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # live: never ends
            return got

        everything = main_stream()  # offsets 0: earliest, both sessions
        assert {r.packet.session_key for r in everything} == set(keys)
        assert len(everything) == len(emu.packets)
        only_second = main_stream(session_key=keys[1])
        assert {r.packet.session_key for r in only_second} == {keys[1]}
        assert len(only_second) == len(emu.sessions[keys[1]].packets)
        # -1 is "latest": nothing written since, so a live read gets nothing
        assert main_stream(stream_offsets=[-1], main_offset=-1) == []
        # an absolute offset starts there, in the named stream's topic
        skip = len(emu.packets_on(DS, "Stream1")) - 1
        tail = main_stream(stream_offsets=[skip], exclude_main_stream=True)
        assert [r.packet.type for r in tail] == ["EndOfSession"]
    finally:
        reader.close()


def test_read_data_packets_filters_parameters_and_markers(emu: AtlasEmulator) -> None:
    write_session(emu)
    reader = ProtoReader(emu.address)
    try:
        (key,) = reader.sessions.GetCurrentSessions(
            api_pb2.GetCurrentSessionsRequest(data_source=DS)
        ).session_keys
        cid, _ = reader.connect(key)

        def read(**filters: Any) -> list[Any]:
            request = api_pb2.DataPacketRequest(connection=api_pb2.Connection(id=cid), **filters)
            call = reader.reader.ReadDataPackets(
                api_pb2.ReadDataPacketsRequest(request=request), timeout=0.5
            )
            got: list[Any] = []
            with pytest.raises(grpc.RpcError):
                for message in call:
                    got += message.response
            return got

        temp = read(include_parameters=["^substrate_"])
        assert {r.packet.type for r in temp} == {"PeriodicData"}
        assert set(reader.parameters(temp)) == {"substrate_temperature:labstream"}
        rest = read(exclude_parameters=["temperature"], include_markers=True)
        assert set(reader.parameters(rest)) == {"chamber_pressure:labstream"}
        assert len(markers(rest)) == 2  # one per stream
        bad = api_pb2.DataPacketRequest(
            connection=api_pb2.Connection(id=cid), include_parameters=["("]
        )
        with pytest.raises(grpc.RpcError) as err:
            next(iter(reader.reader.ReadDataPackets(api_pb2.ReadDataPacketsRequest(request=bad))))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "include_parameters[0]" in (err.value.details() or "")
    finally:
        reader.close()


def test_reading_an_unknown_or_closed_connection_is_not_found(
    emu: AtlasEmulator, reader: ProtoReader
) -> None:
    cid = reader.connections.NewConnection(
        api_pb2.NewConnectionRequest(details=api_pb2.ConnectionDetails(data_source=DS))
    ).connection.id
    assert reader.connections.CloseConnection(
        api_pb2.CloseConnectionRequest(connection=api_pb2.Connection(id=cid))
    ).success
    for which in (cid, cid + 100):
        call = reader.reader.ReadPackets(
            api_pb2.ReadPacketsRequest(connection=api_pb2.Connection(id=which)), timeout=TIMEOUT
        )
        with pytest.raises(grpc.RpcError) as err:
            next(iter(call))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
