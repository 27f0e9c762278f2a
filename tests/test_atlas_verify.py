"""``labstream atlas verify`` / ``sessions``: a session read back through the Stream API's reader
service and judged by the protocol checker, on what the server holds."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from labstream import cli
from labstream._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from labstream._proto.ma.streaming.key_generator.v1 import key_generator_pb2, key_generator_pb2_grpc
from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od
from labstream.cli.atlas_verify import NOT_FROM_SERVER, verify
from labstream.testing.atlas import AtlasEmulator, run_in_thread

from .test_atlas_reader import DS, write_session

T0 = 1_700_000_000_000_000_000
IV = 10_000_000


@pytest.fixture
def emu() -> Iterator[AtlasEmulator]:
    with run_in_thread() as emulator:
        yield emulator


def faulty_session(emu: AtlasEmulator) -> str:
    """A writer that configures its parameter on the main stream only, then writes its data and a
    marker to Stream1: ATLAS ignores both, and every RPC still answers OK."""
    with (
        grpc.insecure_channel(emu.address) as channel,
        grpc.insecure_channel(emu.key_generator_address) as keys,
    ):
        sessions = api_pb2_grpc.SessionManagementServiceStub(channel)
        writer = api_pb2_grpc.PacketWriterServiceStub(channel)
        formats = api_pb2_grpc.DataFormatManagerServiceStub(channel)
        key = sessions.CreateSession(
            api_pb2.CreateSessionRequest(
                data_source=DS, type="Session", version=1, identifier="bad"
            )
        ).session_key
        ids = iter(range(1, 100))

        def write(stream: str, content: object, essential: bool = False) -> None:
            packet = od.Packet(
                type=type(content).__name__.removesuffix("Packet"),
                session_key=key,
                is_essential=essential,
                content=content.SerializeToString(),  # type: ignore[attr-defined]
                id=next(ids),
            )
            writer.WriteDataPacket(
                api_pb2.WriteDataPacketRequest(
                    detail=api_pb2.DataPacketDetails(
                        message=packet, data_source=DS, stream=stream, session_key=key
                    )
                )
            )

        for stream in ("Stream1", ""):
            write(stream, od.NewSessionPacket(data_source=DS))
        config_id = (
            key_generator_pb2_grpc.UniqueKeyGeneratorServiceStub(keys)
            .GenerateUniqueKey(
                key_generator_pb2.GenerateUniqueKeyRequest(type=key_generator_pb2.KEY_TYPE_STRING)
            )
            .string_key
        )
        config = od.ConfigurationPacket(
            config_id=config_id,
            parameter_definitions=[
                od.ParameterDefinition(
                    identifier="Temp:lab",
                    name="Temp",
                    application_name="lab",
                    data_type=od.DATA_TYPE_FLOAT64,
                    groups=["lab"],
                    frequencies=[100.0],
                )
            ],
            group_definitions=[od.GroupDefinition(identifier="lab", name="lab")],
        )
        write("", config, essential=True)  # the fault: not on Stream1
        fid = formats.GetParameterDataFormatId(
            api_pb2.GetParameterDataFormatIdRequest(data_source=DS, parameters=["Temp:lab"])
        ).data_format_identifier
        samples = [od.DoubleSample(value=v, status=od.DATA_STATUS_VALID) for v in (1.0, 2.0, 3.0)]
        write(
            "Stream1",
            od.PeriodicDataPacket(
                data_format=od.SampleDataFormat(data_format_identifier=fid),
                start_time=T0,
                interval=IV,
                columns=[od.SampleColumn(double_samples=od.DoubleSampleList(samples=samples))],
            ),
        )
        for stream in ("Stream1", ""):
            write(stream, od.MarkerPacket(timestamp=T0 + IV, label="step"), essential=True)
        for stream in ("Stream1", ""):
            write(stream, od.EndOfSessionPacket(data_source=DS))
        sessions.EndSession(api_pb2.EndSessionRequest(data_source=DS, session_key=key))
    return str(key)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_labstream_session_is_clean(
    emu: AtlasEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    data_id = write_session(emu)
    code, out, _ = run(
        capsys, "atlas", "verify", data_id, "--server", emu.address, "--data-source", DS
    )
    assert code == 0, out
    assert "CLEAN: all" in out and "NOT CLEAN" not in out
    assert "substrate_temperature:labstream: 300 samples" in out
    assert "marker 'Ga shutter open'" in out
    assert "not judged from the server" in out
    # what the server holds, and the emulator's own report, agree on the data
    (recorded,) = emu.reports()
    result = verify(emu.address, data_id, data_source=DS, idle_s=0.5)
    assert result.packets == len(emu.packets)
    assert result.report.parameters.keys() == recorded.parameters.keys()
    for name, p in recorded.parameters.items():
        assert result.report.parameters[name].values == p.values
        assert result.report.parameters[name].timestamps_ns == p.timestamps_ns
    assert {c.name for c in result.report.checks} == {c.name for c in recorded.checks} - set(
        NOT_FROM_SERVER
    )


def test_config_on_one_stream_only_is_a_finding(
    emu: AtlasEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    key = faulty_session(emu)
    code, out, _ = run(capsys, "atlas", "verify", key, "--server", emu.address, "--data-source", DS)
    assert code == 1
    assert "NOT CLEAN" in out
    assert "FAIL  configuration_on_every_stream" in out
    assert "was sent on '' but not on 'Stream1'" in out
    assert "(configured on '' but not on 'Stream1')" in out  # its data is useless to ATLAS
    code, out, _ = run(
        capsys, "atlas", "verify", key, "--server", emu.address, "--data-source", DS, "--json"
    )
    answer = json.loads(out)
    assert code == 1 and answer["session_key"] == key and not answer["report"]["clean"]
    failed = {c["name"] for c in answer["report"]["checks"] if not c["passed"]}
    assert "configuration_on_every_stream" in failed


def test_newest_session_by_default_and_sessions_lists_them_all(
    emu: AtlasEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    data_id = write_session(emu)
    bad = faulty_session(emu)
    code, out, _ = run(capsys, "atlas", "sessions", "--server", emu.address, "--data-source", DS)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and data_id in lines[0] and lines[1].startswith(bad)
    assert all("ended" in line for line in lines)
    code, out, _ = run(capsys, "atlas", "verify", "--server", emu.address, "--data-source", DS)
    assert code == 1 and f"session {bad}" in out  # the newest one


def test_unknown_session_and_unreachable_server_are_said(
    emu: AtlasEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "atlas", "verify", "nope", "--server", emu.address, "--data-source", DS
    )
    assert code == 1
    assert f"does not know session 'nope' of data source '{DS}'" in err
    code, _, err = run(capsys, "atlas", "sessions", "--server", "127.0.0.1:1", "--timeout", "0.5")
    assert code == 1 and "GetCurrentSessions at 127.0.0.1:1 failed: UNAVAILABLE" in err
