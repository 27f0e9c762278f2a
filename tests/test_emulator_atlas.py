"""Tests for the local ATLAS Stream API emulator, driven by grpc.aio clients on generated stubs.

Everything runs on 127.0.0.1 with free ports; the only waits are short call deadlines.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import any_pb2, wrappers_pb2

from labstream._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from labstream._proto.ma.streaming.key_generator.v1 import key_generator_pb2, key_generator_pb2_grpc
from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from labstream.testing.atlas import (
    MAX_REQUEST_BYTES,
    AtlasEmulator,
    AtlasFaultPlan,
    load_record,
    main,
    run_in_thread,
)
from labstream.testing.atlas_checker import check_session, check_sessions, format_report

pytestmark = pytest.mark.anyio

DS = "Labstream_Test"
STREAM = "Stream1"
T0 = 1_700_000_000_000_000_000
IV = 10_000_000  # 100 Hz
TIMEOUT = 5.0
# After a refused connection gRPC waits 1 s before retrying; the restart tests need not.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


class Client:
    """Stubs of every service on one emulator, plus a packet id counter."""

    def __init__(self, emu: AtlasEmulator) -> None:
        self.channel = grpc.aio.insecure_channel(emu.address, options=FAST_RECONNECT)
        self.key_channel = grpc.aio.insecure_channel(emu.key_generator_address)
        self.sessions = api_pb2_grpc.SessionManagementServiceStub(self.channel)
        self.formats = api_pb2_grpc.DataFormatManagerServiceStub(self.channel)
        self.writer = api_pb2_grpc.PacketWriterServiceStub(self.channel)
        self.connections = api_pb2_grpc.ConnectionManagerServiceStub(self.channel)
        self.reader = api_pb2_grpc.PacketReaderServiceStub(self.channel)
        self.keys = key_generator_pb2_grpc.UniqueKeyGeneratorServiceStub(self.key_channel)
        self.next_id = 1

    async def close(self) -> None:
        await self.channel.close()
        await self.key_channel.close()

    async def create(self, identifier: str = "run-1") -> str:
        resp = await self.sessions.CreateSession(
            api_pb2.CreateSessionRequest(
                data_source=DS, type="Session", version=1, identifier=identifier
            ),
            timeout=TIMEOUT,
        )
        assert resp.success
        return str(resp.session_key)

    def details(
        self, key: str, stream: str, content: Any, essential: bool = False
    ) -> api_pb2.DataPacketDetails:
        packet = od.Packet(
            type=type(content).__name__.removesuffix("Packet"),
            session_key=key,
            is_essential=essential,
            content=content.SerializeToString(),
            id=self.next_id,
        )
        self.next_id += 1
        return api_pb2.DataPacketDetails(
            message=packet, data_source=DS, stream=stream, session_key=key
        )

    async def write(self, key: str, stream: str, content: Any, essential: bool = False) -> None:
        await self.writer.WriteDataPacket(
            api_pb2.WriteDataPacketRequest(detail=self.details(key, stream, content, essential)),
            timeout=TIMEOUT,
        )

    async def string_key(self) -> str:
        resp = await self.keys.GenerateUniqueKey(
            key_generator_pb2.GenerateUniqueKeyRequest(type=key_generator_pb2.KEY_TYPE_STRING),
            timeout=TIMEOUT,
        )
        return str(resp.string_key)

    async def format_id(self, *params: str, data_source: str = DS) -> int:
        resp = await self.formats.GetParameterDataFormatId(
            api_pb2.GetParameterDataFormatIdRequest(data_source=data_source, parameters=params),
            timeout=TIMEOUT,
        )
        return int(resp.data_format_identifier)


@pytest.fixture
async def emu() -> AsyncIterator[AtlasEmulator]:
    async with AtlasEmulator() as emulator:
        yield emulator


@pytest.fixture
async def client(emu: AtlasEmulator) -> AsyncIterator[Client]:
    c = Client(emu)
    yield c
    await c.close()


def periodic(fid: int, start: int, values: list[float]) -> od.PeriodicDataPacket:
    samples = [od.DoubleSample(value=v, status=od.DATA_STATUS_VALID) for v in values]
    return od.PeriodicDataPacket(
        data_format=od.SampleDataFormat(data_format_identifier=fid),
        start_time=start,
        interval=IV,
        columns=[od.SampleColumn(double_samples=od.DoubleSampleList(samples=samples))],
    )


def configuration(config_id: str, *params: str) -> od.ConfigurationPacket:
    return od.ConfigurationPacket(
        config_id=config_id,
        parameter_definitions=[
            od.ParameterDefinition(
                identifier=p,
                name=p,
                application_name="labstream",
                units="K",
                data_type=od.DATA_TYPE_FLOAT64,
                format_string="%.3f",
                min_value=0,
                max_value=100,
                groups=["labstream"],
                frequencies=[100.0],
            )
            for p in params
        ],
        group_definitions=[od.GroupDefinition(identifier="labstream", name="labstream")],
    )


async def five_steps(c: Client, key: str) -> None:
    """A well-behaved writer, as the vendor's guide describes it."""
    for stream in (STREAM, ""):
        await c.write(key, stream, od.NewSessionPacket(data_source=DS))
    config = configuration(await c.string_key(), "Temp:labstream")
    for stream in ("", STREAM):
        await c.write(key, stream, config, essential=True)
    fid = await c.format_id("Temp:labstream")
    await c.write(key, STREAM, periodic(fid, T0, [1.0, 2.0, 3.0]))
    await c.write(key, STREAM, periodic(fid, T0 + 3 * IV, [4.0, 5.0]))
    marker = od.MarkerPacket(timestamp=T0 + IV, label="step 1", type="Step")
    for stream in (STREAM, ""):
        await c.write(key, stream, marker, essential=True)
    for stream in (STREAM, ""):
        await c.write(key, stream, od.EndOfSessionPacket(data_source=DS))
    resp = await c.sessions.EndSession(
        api_pb2.EndSessionRequest(data_source=DS, session_key=key), timeout=TIMEOUT
    )
    assert resp.success


async def eventually(predicate: Callable[[], bool]) -> None:
    """The server side of a cancelled call finishes a moment after the client sees it."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# Sessions


async def test_session_lifecycle(emu: AtlasEmulator, client: Client) -> None:
    key = await client.create("run-1")
    uuid.UUID(key)  # a GUID chosen by the server
    s = client.sessions
    info = await s.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=key))
    assert info.success and info.data_source == DS and info.identifier == "run-1"
    assert info.type == "Session" and info.version == 1 and not info.is_complete
    current = await s.GetCurrentSessions(api_pb2.GetCurrentSessionsRequest(data_source=DS))
    assert current.success and list(current.session_keys) == [key]

    ok = await s.UpdateSessionIdentifier(
        api_pb2.UpdateSessionIdentifierRequest(session_key=key, identifier="run-1b")
    )
    assert ok.success
    ok2 = await s.UpdateSessionDetails(
        api_pb2.UpdateSessionDetailsRequest(session_key=key, details={"Driver": "x"})
    )
    assert ok2.success
    ok3 = await s.AddAssociateSession(
        api_pb2.AddAssociateSessionRequest(session_key=key, associate_session_key="other")
    )
    assert ok3.success
    info = await s.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=key))
    assert info.identifier == "run-1b" and dict(info.details) == {"Driver": "x"}
    assert list(info.associate_session_keys) == ["other"]

    for _ in range(2):  # twice is harmless
        end = await s.EndSession(api_pb2.EndSessionRequest(data_source=DS, session_key=key))
        assert end.success and end.end_session.data_source == DS
    info = await s.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=key))
    assert info.is_complete
    # Ended sessions stay listed, as server 1.3.5 lists them; is_complete tells them apart.
    current = await s.GetCurrentSessions(api_pb2.GetCurrentSessionsRequest(data_source=DS))
    assert list(current.session_keys) == [key]
    recorded = emu.sessions[key]
    assert recorded.identifier == "run-1b" and len(recorded.end_session_seqs) == 2


async def test_unknown_session_key_is_success_false_with_status_ok(client: Client) -> None:
    s, key = client.sessions, "no-such-session"
    replies = [
        await s.EndSession(api_pb2.EndSessionRequest(data_source=DS, session_key=key)),
        await s.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=key)),
        await s.UpdateSessionIdentifier(
            api_pb2.UpdateSessionIdentifierRequest(session_key=key, identifier="x")
        ),
        await s.UpdateSessionDetails(
            api_pb2.UpdateSessionDetailsRequest(session_key=key, details={"a": "b"})
        ),
        await s.AddAssociateSession(
            api_pb2.AddAssociateSessionRequest(session_key=key, associate_session_key="y")
        ),
    ]
    assert [r.success for r in replies] == [False] * 5


async def test_session_start_and_stop_notifications(client: Client) -> None:
    starts = client.sessions.GetSessionStartNotification(
        api_pb2.GetSessionStartNotificationRequest(data_source=DS)
    )
    stops = client.sessions.GetSessionStopNotification(
        api_pb2.GetSessionStopNotificationRequest(data_source=DS)
    )
    await asyncio.wait_for(starts.wait_for_connection(), TIMEOUT)  # subscribed
    await asyncio.wait_for(stops.wait_for_connection(), TIMEOUT)
    key = await client.create()
    await client.sessions.EndSession(api_pb2.EndSessionRequest(data_source=DS, session_key=key))
    first_start = await asyncio.wait_for(starts.read(), TIMEOUT)
    first_stop = await asyncio.wait_for(stops.read(), TIMEOUT)
    assert (first_start.session_key, first_start.data_source) == (key, DS)
    assert first_stop.session_key == key
    starts.cancel()
    stops.cancel()


# --------------------------------------------------------------------------------------------------
# Data formats


async def test_format_ids_are_stable_and_order_sensitive(
    emu: AtlasEmulator, client: Client
) -> None:
    ab = await client.format_id("A", "B")
    assert await client.format_id("A", "B") == ab
    ba = await client.format_id("B", "A")
    assert ba != ab
    assert await client.format_id("A", "B", data_source="Other") != ab
    # stable across emulator instances (a hash), like the real server's persisted ids
    async with AtlasEmulator() as other:
        c2 = Client(other)
        try:
            assert await c2.format_id("A", "B") == ab
        finally:
            await c2.close()
    plist = await client.formats.GetParametersList(
        api_pb2.GetParametersListRequest(data_source=DS, data_format_identifier=ba)
    )
    assert list(plist.parameters) == ["B", "A"]
    unknown = await client.formats.GetParametersList(
        api_pb2.GetParametersListRequest(data_source=DS, data_format_identifier=12345)
    )
    assert list(unknown.parameters) == []
    ev = await client.formats.GetEventDataFormatId(
        api_pb2.GetEventDataFormatIdRequest(data_source=DS, event="Pit:labstream")
    )
    got = await client.formats.GetEvent(
        api_pb2.GetEventRequest(data_source=DS, data_format_identifier=ev.data_format_identifier)
    )
    assert got.event == "Pit:labstream"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.format_id()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------------
# Writing


async def test_unary_writes_are_recorded_as_received(emu: AtlasEmulator, client: Client) -> None:
    key = await client.create()
    fid = await client.format_id("Temp:labstream")
    await client.write(key, STREAM, od.NewSessionPacket(data_source=DS))
    await client.write(key, STREAM, periodic(fid, T0, [1.5, 2.5]))
    bad = client.details(key, STREAM, od.MarkerPacket(label="m"))
    bad.message.type = "PeriodicData"  # a lie the server accepts silently
    bad.message.session_key = "other"
    await client.writer.WriteDataPacket(api_pb2.WriteDataPacketRequest(detail=bad))

    packets = emu.sessions[key].packets
    assert [p.type for p in packets] == ["NewSession", "PeriodicData", "PeriodicData"]
    assert [p.id for p in packets] == [1, 2, 3]
    p = packets[1]
    assert (p.rpc, p.data_source, p.stream, p.details_session_key) == (
        "WriteDataPacket",
        DS,
        STREAM,
        key,
    )
    assert p.session_key == key and not p.is_essential and p.content_error is None
    assert p.content == periodic(fid, T0, [1.5, 2.5])
    assert packets[2].session_key == "other" and packets[2].content_error is not None
    assert emu.packets_on(DS, STREAM) == list(packets)
    assert emu.packets_on(DS, "") == []
    assert emu.sessions[key].by_stream() == {(DS, STREAM): list(packets)}


async def test_write_stream_never_answers_after_half_close(
    emu: AtlasEmulator, client: Client
) -> None:
    key = await client.create()
    batches = [
        api_pb2.WriteDataPacketsRequest(
            details=[client.details(key, STREAM, od.NewSessionPacket(data_source=DS))]
        ),
        api_pb2.WriteDataPacketsRequest(
            details=[
                client.details(key, "", od.NewSessionPacket(data_source=DS)),
                client.details(key, "", od.EndOfSessionPacket(data_source=DS)),
            ]
        ),
    ]

    async def requests() -> AsyncIterator[api_pb2.WriteDataPacketsRequest]:
        for b in batches:
            yield b

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.writer.WriteDataPackets(requests(), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [p.id for p in emu.sessions[key].packets] == [1, 2, 3]
    assert {p.rpc for p in emu.sessions[key].packets} == {"WriteDataPackets"}
    call = next(c for c in emu.calls if c.method == "WriteDataPackets")
    await eventually(lambda: call.code is not None)
    assert (call.batches, call.packets, call.half_closed, call.answered) == (2, 3, True, False)
    assert call.code in ("DEADLINE_EXCEEDED", "CANCELLED")


async def test_write_stream_answers_when_asked() -> None:
    async with AtlasEmulator(answer_write_stream=True) as emu:
        c = Client(emu)
        try:
            key = await c.create()

            async def requests() -> AsyncIterator[api_pb2.WriteDataPacketsRequest]:
                yield api_pb2.WriteDataPacketsRequest(
                    details=[c.details(key, STREAM, od.NewSessionPacket(data_source=DS))]
                )

            await c.writer.WriteDataPackets(requests(), timeout=TIMEOUT)
            call = next(x for x in emu.calls if x.method == "WriteDataPackets")
            assert call.answered and call.code == "OK" and call.half_closed
        finally:
            await c.close()


async def test_request_limit_is_4_mib(emu: AtlasEmulator, client: Client) -> None:
    key = await client.create()

    def request(size: int) -> api_pb2.WriteDataPacketRequest:
        detail = client.details(key, STREAM, od.NewSessionPacket(data_source=DS))
        detail.message.content = b"\0" * size
        return api_pb2.WriteDataPacketRequest(detail=detail)

    await client.writer.WriteDataPacket(request(MAX_REQUEST_BYTES - 1024), timeout=TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.writer.WriteDataPacket(request(MAX_REQUEST_BYTES), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(emu.sessions[key].packets) == 1

    async def batches() -> AsyncIterator[api_pb2.WriteDataPacketsRequest]:
        yield api_pb2.WriteDataPacketsRequest(details=[request(10).detail])
        yield api_pb2.WriteDataPacketsRequest(details=[request(MAX_REQUEST_BYTES).detail])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.writer.WriteDataPackets(batches(), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(emu.sessions[key].packets) == 2  # the first batch was taken


async def test_info_packets_and_connections(emu: AtlasEmulator, client: Client) -> None:
    info = od.Packet(
        type="SystemStatus", content=od.SystemStatusMessage(service="x").SerializeToString()
    )
    await client.writer.WriteInfoPacket(
        api_pb2.WriteInfoPacketRequest(message=info, type=api_pb2.INFO_TYPE_SYSTEM_STATUS)
    )
    assert [p.info_type for p in emu.info_packets] == [api_pb2.INFO_TYPE_SYSTEM_STATUS]
    assert emu.sessions == {}
    conn = await client.connections.NewConnection(
        api_pb2.NewConnectionRequest(details=api_pb2.ConnectionDetails(data_source=DS))
    )
    got = await client.connections.GetConnection(
        api_pb2.GetConnectionRequest(connection=conn.connection)
    )
    assert got.details.data_source == DS
    closed = await client.connections.CloseConnection(
        api_pb2.CloseConnectionRequest(connection=conn.connection)
    )
    assert closed.success
    with pytest.raises(grpc.aio.AioRpcError) as err:
        stream = client.reader.ReadPackets(
            api_pb2.ReadPacketsRequest(connection=conn.connection), timeout=TIMEOUT
        )
        await stream.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # closed


async def test_session_info_lists_named_streams_and_creation_offsets(client: Client) -> None:
    first = await client.create("run-1")
    await five_steps(client, first)
    second = await client.create("run-2")
    info = await client.sessions.GetSessionInfo(api_pb2.GetSessionInfoRequest(session_key=second))
    assert list(info.streams) == [STREAM]  # the data source's named streams; never ""
    # where each topic stood when the session was created: after the first session's packets
    # (Stream1: NewSession, config, 2 data, marker, end; main: the same without data; essentials:
    # both configs and both markers)
    assert dict(info.topic_partition_offsets) == {f"{DS}.{STREAM}:0": 6}
    assert info.main_offset == 4 and info.essentials_offset == 4
    first_info = await client.sessions.GetSessionInfo(
        api_pb2.GetSessionInfoRequest(session_key=first)
    )
    assert first_info.main_offset == 0 and dict(first_info.topic_partition_offsets) == {}


# --------------------------------------------------------------------------------------------------
# Key generator


async def test_key_generator(emu: AtlasEmulator, client: Client) -> None:
    assert emu.key_generator_port != emu.port
    k1, k2 = await client.string_key(), await client.string_key()
    assert k1 != k2
    uuid.UUID(k1)
    req = key_generator_pb2.GenerateUniqueKeyRequest
    u1 = await client.keys.GenerateUniqueKey(req(type=key_generator_pb2.KEY_TYPE_ULONG))
    u2 = await client.keys.GenerateUniqueKey(req(type=key_generator_pb2.KEY_TYPE_ULONG))
    assert u1.WhichOneof("key") == "ulong_key" and u2.ulong_key > u1.ulong_key
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.keys.GenerateUniqueKey(req(type=key_generator_pb2.KEY_TYPE_UNSPECIFIED))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {k1, k2, str(u1.ulong_key)} <= emu.issued_keys
    # the key generator is not served on the Stream API port
    wrong = key_generator_pb2_grpc.UniqueKeyGeneratorServiceStub(client.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await wrong.GenerateUniqueKey(req(type=key_generator_pb2.KEY_TYPE_STRING))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------------------------------
# Faults, restarts


async def test_down_fails_every_rpc_until_lifted(emu: AtlasEmulator, client: Client) -> None:
    emu.faults = AtlasFaultPlan(down=True)
    for call in (client.create(), client.string_key(), client.format_id("A")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    emu.faults = AtlasFaultPlan()
    key = await client.create()
    assert emu.fault_counts == {"down": 3}
    failed = [c for c in emu.calls if c.fault]
    assert [c.code for c in failed] == ["UNAVAILABLE"] * 3
    assert list(emu.sessions) == [key]


async def test_unavailable_every_and_fraction(client: Client, emu: AtlasEmulator) -> None:
    key = await client.create()
    emu.faults = AtlasFaultPlan(unavailable_every=2, methods=("PacketWriterService/*",))
    outcomes = []
    for _ in range(4):
        try:
            await client.write(key, STREAM, od.NewSessionPacket(data_source=DS))
            outcomes.append("ok")
        except grpc.aio.AioRpcError as exc:
            outcomes.append(exc.code().name)
    assert outcomes == ["ok", "UNAVAILABLE", "ok", "UNAVAILABLE"]
    assert [p.id for p in emu.sessions[key].packets] == [1, 3]  # failed writes record nothing
    assert (await client.format_id("A")) > 0  # other services are not affected

    async def pattern() -> list[bool]:
        emu.faults = AtlasFaultPlan(unavailable_fraction=0.5, seed=7)
        result = []
        for _ in range(12):
            try:
                await client.string_key()
                result.append(True)
            except grpc.aio.AioRpcError:
                result.append(False)
        return result

    first = await pattern()
    assert await pattern() == first  # same seed, same fate per call number
    assert True in first and False in first


async def test_latency(emu: AtlasEmulator, client: Client) -> None:
    emu.faults = AtlasFaultPlan(latency_s=0.3, methods=("*/CreateSession",))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.sessions.CreateSession(api_pb2.CreateSessionRequest(), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert emu.fault_counts == {"latency": 1}


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError):
        AtlasFaultPlan(unavailable_fraction=1.5)
    with pytest.raises(ValueError):
        AtlasFaultPlan(unavailable_every=-1)
    with pytest.raises(ValueError):
        AtlasFaultPlan(methods="PacketWriterService/*")  # type: ignore[arg-type]
    assert AtlasFaultPlan(methods=("Packet*",)).applies_to("PacketWriterService/WriteDataPacket")


async def test_down_at_start_then_up_on_a_fixed_port() -> None:
    port, key_port = free_port(), free_port()
    emu = AtlasEmulator(port=port, key_generator_port=key_port)
    assert emu.address == f"127.0.0.1:{port}"
    c = Client(emu)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.create()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with emu:
            key = await c.sessions.CreateSession(
                api_pb2.CreateSessionRequest(data_source=DS), timeout=TIMEOUT, wait_for_ready=True
            )
            assert key.success
            with pytest.raises(OSError):  # the port is taken now
                await AtlasEmulator(port=port).start()
    finally:
        await c.close()


async def test_restart_on_same_port_keeps_sessions(emu: AtlasEmulator, client: Client) -> None:
    key = await client.create()
    await client.write(key, STREAM, od.NewSessionPacket(data_source=DS))
    address = emu.address
    await emu.stop_stream_api()
    assert not emu.running
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.write(key, STREAM, od.EndOfSessionPacket(data_source=DS))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await client.string_key()  # the key generator stayed up
    await emu.start_stream_api()
    assert emu.address == address
    await client.writer.WriteDataPacket(
        api_pb2.WriteDataPacketRequest(
            detail=client.details(key, STREAM, od.EndOfSessionPacket(data_source=DS))
        ),
        timeout=TIMEOUT,
        wait_for_ready=True,
    )
    await emu.restart(key_generator=True)
    end = await client.sessions.EndSession(
        api_pb2.EndSessionRequest(data_source=DS, session_key=key),
        timeout=TIMEOUT,
        wait_for_ready=True,
    )
    assert end.success  # the session survived both restarts
    assert [p.id for p in emu.sessions[key].packets] == [1, 3]


async def test_stop_ends_a_hung_write_stream() -> None:
    async with AtlasEmulator() as emu:
        c = Client(emu)

        async def one() -> AsyncIterator[api_pb2.WriteDataPacketsRequest]:
            yield api_pb2.WriteDataPacketsRequest(
                details=[c.details("k", STREAM, od.NewSessionPacket())]
            )

        call = c.writer.WriteDataPackets(one(), timeout=TIMEOUT)
        await eventually(lambda: any(x.half_closed for x in emu.calls))
        await emu.stop()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await c.close()


# --------------------------------------------------------------------------------------------------
# A whole session, the thread runner and the record file


async def test_well_behaved_client_gets_a_clean_report(emu: AtlasEmulator, client: Client) -> None:
    key = await client.create()
    await five_steps(client, key)
    report = check_session(emu.sessions[key])
    assert report.clean, format_report(report)
    temp = report.parameters["Temp:labstream"]
    assert temp.values == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert temp.timestamps_ns == [T0 + i * IV for i in range(5)]
    assert temp.statuses == [od.DATA_STATUS_VALID] * 5
    assert "CLEAN" in emu.format_reports()


def test_run_in_thread_with_a_sync_client() -> None:
    with run_in_thread() as emu:
        with grpc.insecure_channel(emu.address) as channel:
            stub = api_pb2_grpc.SessionManagementServiceStub(channel)
            resp = stub.CreateSession(api_pb2.CreateSessionRequest(data_source=DS), timeout=TIMEOUT)
            assert resp.success
        assert list(emu.sessions) == [resp.session_key]
        emu.faults = AtlasFaultPlan(down=True)
        assert emu.loop is not None
        with grpc.insecure_channel(emu.address) as channel:
            stub = api_pb2_grpc.SessionManagementServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.CreateSession(api_pb2.CreateSessionRequest(data_source=DS), timeout=TIMEOUT)
    assert not emu.running


async def test_record_file_and_offline_check(tmp_path: Path) -> None:
    record = tmp_path / "atlas.jsonl"
    async with AtlasEmulator(record_path=record) as emu:
        c = Client(emu)
        try:
            key = await c.create()
            await five_steps(c, key)
        finally:
            await c.close()
    lines = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    kinds = {(x["kind"], x.get("method")) for x in lines}
    assert ("rpc", "CreateSession") in kinds and ("rpc", "GenerateUniqueKey") in kinds
    packets = [x for x in lines if x["kind"] == "packet"]
    assert len(packets) == 10
    assert packets[4]["type"] == "PeriodicData" and packets[4]["content"]["start_time"] == str(T0)
    assert packets[4]["content_b64"]

    loaded = load_record(record)
    assert list(loaded) == [key]
    live = check_session(emu.sessions[key])
    offline = check_session(loaded[key])
    assert offline.clean and offline.to_json() == live.to_json()
    assert main(["check", str(record)]) == 0


def test_serve_prints_addresses_and_reports_on_ctrl_c(tmp_path: Path) -> None:
    record = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labstream.testing.atlas",
            "--port",
            "0",
            "--key-generator-port",
            "0",
            "--record",
            str(record),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "ATLAS Stream API emulator on 127.0.0.1:" in first
        address = first.split(" on ")[1].split(",")[0]
        with grpc.insecure_channel(address) as channel:
            stub = api_pb2_grpc.SessionManagementServiceStub(channel)
            key = stub.CreateSession(api_pb2.CreateSessionRequest(data_source=DS)).session_key
            # The vendor sample's metadata: an Any holding a StringValue, which the emulator's
            # process (unlike this one) has no reason to have imported.
            meta = od.MetadataPacket()
            meta.metadata["Driver"].Pack(wrappers_pb2.StringValue(value="Ada"))
            packet = od.Packet(type="Metadata", session_key=key, content=meta.SerializeToString())
            api_pb2_grpc.PacketWriterServiceStub(channel).WriteDataPacket(
                api_pb2.WriteDataPacketRequest(
                    detail=api_pb2.DataPacketDetails(
                        message=packet, data_source=DS, stream=STREAM, session_key=key
                    )
                ),
                timeout=TIMEOUT,
            )
        proc.send_signal(2)  # SIGINT, i.e. Ctrl-C
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"ATLAS session {key}" in out and "NOT CLEAN" in out
    assert check_sessions(load_record(record))[0].session_key == key
    (line,) = [
        x for x in map(orjson.loads, record.read_bytes().splitlines()) if x["kind"] == "packet"
    ]
    assert line["content"]["metadata"]["Driver"]["value"] == "Ada"


async def test_record_keeps_any_well_known_type_and_unknown_ones(tmp_path: Path) -> None:
    record = tmp_path / "atlas.jsonl"
    async with AtlasEmulator(record_path=record) as emu:
        c = Client(emu)
        try:
            key = await c.create()
            meta = od.MetadataPacket()
            meta.metadata["Driver"].Pack(wrappers_pb2.StringValue(value="Ada"))
            meta.metadata["custom"].CopyFrom(
                any_pb2.Any(type_url="type.googleapis.com/acme.Thing", value=b"\x08\x01")
            )
            await c.write(key, STREAM, meta)  # the vendor sample's metadata: answered OK
        finally:
            await c.close()
    (line,) = [
        x for x in map(orjson.loads, record.read_bytes().splitlines()) if x["kind"] == "packet"
    ]
    assert line["type"] == "Metadata" and line["content_b64"]
    assert line["content"] is None  # acme.Thing has no descriptor: only the bytes are kept
    (packet,) = load_record(record)[key].packets
    assert packet.content is not None
    got = wrappers_pb2.StringValue()
    assert packet.content.metadata["Driver"].Unpack(got) and got.value == "Ada"


async def test_read_packets_batches_a_long_topic_in_order_and_ends_with_the_connection(
    emu: AtlasEmulator, client: Client
) -> None:
    other = await client.create("other")
    key = await client.create("long")
    details = [
        client.details(k, STREAM, od.MarkerPacket(timestamp=T0 + i, label=str(i)))
        for i in range(600)
        for k in (key, other)
    ]
    for d in details:
        await client.writer.WriteDataPacket(api_pb2.WriteDataPacketRequest(detail=d))
    conn = (
        await client.connections.NewConnection(
            api_pb2.NewConnectionRequest(
                details=api_pb2.ConnectionDetails(data_source=DS, session_key=key)
            )
        )
    ).connection
    call = client.reader.ReadPackets(api_pb2.ReadPacketsRequest(connection=conn))
    labels: list[str] = []
    batches = 0
    while len(labels) < 600:
        message = await asyncio.wait_for(call.read(), TIMEOUT)
        batches += 1
        labels += [od.MarkerPacket.FromString(r.packet.content).label for r in message.response]
        assert {r.stream for r in message.response} == {STREAM}
    assert labels == [str(i) for i in range(600)] and batches > 1  # the other key's are dropped
    closed = await client.connections.CloseConnection(
        api_pb2.CloseConnectionRequest(connection=conn)
    )
    assert closed.success
    assert await asyncio.wait_for(call.read(), TIMEOUT) == grpc.aio.EOF  # the read ended
    assert await call.code() == grpc.StatusCode.OK


async def test_a_live_read_ends_unavailable_when_the_emulator_stops() -> None:
    async with AtlasEmulator() as emu:
        c = Client(emu)
        try:
            conn = (
                await c.connections.NewConnection(
                    api_pb2.NewConnectionRequest(details=api_pb2.ConnectionDetails(data_source=DS))
                )
            ).connection
            call = c.reader.ReadPackets(api_pb2.ReadPacketsRequest(connection=conn))
            await asyncio.wait_for(call.wait_for_connection(), TIMEOUT)
            key = await c.create()
            await c.write(key, "", od.NewSessionPacket(data_source=DS))
            first = await asyncio.wait_for(call.read(), TIMEOUT)  # live: written after the call
            assert [r.packet.type for r in first.response] == ["NewSession"]
            await emu.stop_stream_api()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await c.close()


async def test_spilled_packets_read_back_the_same_and_stay_readable_after_stop() -> None:
    reports, read = [], []
    for spill in (False, True):
        async with AtlasEmulator(spill=spill) as emu:
            c = Client(emu)
            try:
                key = await c.create()
                await five_steps(c, key)
                conn = (
                    await c.connections.NewConnection(
                        api_pb2.NewConnectionRequest(
                            details=api_pb2.ConnectionDetails(data_source=DS, session_key=key)
                        )
                    )
                ).connection
                call = c.reader.ReadPackets(api_pb2.ReadPacketsRequest(connection=conn))
                message = await asyncio.wait_for(call.read(), TIMEOUT)
                got = [(r.stream, r.packet) for r in message.response]
                assert got == [(p.stream, p.packet) for p in emu.packets]
                read.append([(stream, p.id, p.type) for stream, p in got])
                call.cancel()
            finally:
                await c.close()
        # stopped: what it holds is still there
        (report,) = emu.reports()
        reports.append(report.to_json())
        assert [p.packet for p in emu.packets] == [p.packet for p in emu.sessions[key].packets]
    in_memory, spilled = reports
    assert spilled["clean"] and spilled["parameters"] == in_memory["parameters"]
    assert len(read[1]) == 10 and read[0] == read[1]
