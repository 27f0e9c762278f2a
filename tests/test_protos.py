"""The ATLAS Stream API protocol definitions (protos/) and their generated code (labstream._proto).

* the committed generated code matches protos/ (scripts/gen_protos.py --check; descriptors);
* the compiled descriptors match the published wire facts (tests/data holds a copy of
  shared/specs/atlas-wire-facts.json so that a plain clone runs them; it must equal the spec when
  ../shared is there):
  every message, field number, name, type, label, oneof, map, enum value, service and RPC;
* the generated gRPC stubs use the right method paths and call kinds;
* messages round-trip, and encode to the bytes the wire facts imply;
* the code lives under labstream's namespace and does not pin a newer protobuf/grpcio runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
FACTS_PATH = Path(__file__).resolve().parent / "data" / "atlas-wire-facts.json"
SPEC_FACTS_PATH = REPO.parent / "shared" / "specs" / "atlas-wire-facts.json"
GEN_SCRIPT = REPO / "scripts" / "gen_protos.py"
PROTO_OUT = REPO / "src" / "labstream" / "_proto"

PKG = "labstream._proto.ma.streaming"
# proto file -> generated module (without the _pb2 / _pb2_grpc suffix)
MODULES = {
    "ma/streaming/open_data/v1/open_data.proto": f"{PKG}.open_data.v1.open_data",
    "ma/streaming/api/v1/api.proto": f"{PKG}.api.v1.api",
    "ma/streaming/key_generator/v1/key_generator.proto": f"{PKG}.key_generator.v1.key_generator",
}
# imports each file must declare (atlas-wire.md, "Rules that follow from these facts")
DEPENDENCIES = {
    "ma/streaming/open_data/v1/open_data.proto": {
        "google/protobuf/any.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/timestamp.proto",
    },
    "ma/streaming/api/v1/api.proto": {
        "ma/streaming/open_data/v1/open_data.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/timestamp.proto",
    },
    "ma/streaming/key_generator/v1/key_generator.proto": set(),
}

FDP = descriptor_pb2.FieldDescriptorProto


def _pb2(proto: str) -> ModuleType:
    return importlib.import_module(MODULES[proto] + "_pb2")


def _pb2_grpc(proto: str) -> ModuleType:
    return importlib.import_module(MODULES[proto] + "_pb2_grpc")


def _compiled() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """FileDescriptorProto of every generated module, as loaded into the descriptor pool."""
    out = {}
    for proto in MODULES:
        fdp = descriptor_pb2.FileDescriptorProto()
        _pb2(proto).DESCRIPTOR.CopyToProto(fdp)
        out[proto] = fdp
    return out


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FACTS_PATH.read_text(encoding="utf-8"))
    return data


def test_the_facts_copy_is_the_spec(facts: dict[str, Any]) -> None:
    if not SPEC_FACTS_PATH.is_file():
        pytest.skip(f"no spec at {SPEC_FACTS_PATH} to compare the copy with (plain clone)")
    spec = json.loads(SPEC_FACTS_PATH.read_text(encoding="utf-8"))
    assert facts == spec, f"{FACTS_PATH} is stale: copy {SPEC_FACTS_PATH} over it"


def _load_gen_script() -> ModuleType:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (test extra) is needed to run protoc")
    pytest.importorskip("mypy_protobuf", reason="mypy-protobuf (test extra) is needed for stubs")
    spec = importlib.util.spec_from_file_location("_labstream_gen_protos", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- (a) generated code is in sync with protos/ ----------------------------------------------


def test_generated_code_matches_protos_byte_for_byte() -> None:
    gen = _load_gen_script()
    from labstream._proto import GENERATED_WITH

    installed = gen.tool_versions()
    if installed != GENERATED_WITH:
        pytest.skip(
            f"generator versions differ from those that wrote src/labstream/_proto "
            f"(installed {installed}, committed {GENERATED_WITH}): byte comparison is "
            f"meaningless; test_committed_descriptors_match_protos still checks the content"
        )
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        "generated code drifted from protos/ (run: python scripts/gen_protos.py)\n"
        + result.stdout
        + result.stderr
    )


def test_committed_descriptors_match_protos(tmp_path: Path) -> None:
    """Independent of generator versions: protoc's view of protos/ == what the modules load."""
    gen = _load_gen_script()
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={gen.PROTO_ROOT}",
            f"--proto_path={gen._wkt_include()}",
            f"--descriptor_set_out={out}",
            *gen.proto_files(),
        ],
        cwd=gen.PROTO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    assert set(fresh) == set(MODULES), "protos/ holds other files than the three ATLAS ones"
    for fdp in fresh.values():
        _clear_json_names(fdp.message_type)  # protoc fills json_name here, not in Python gencode
    for name in MODULES:
        committed = descriptor_pb2.FileDescriptorProto.FromString(
            _pb2(name).DESCRIPTOR.serialized_pb
        )
        assert fresh[name] == committed, (
            f"{name}: committed generated code is stale (run: python scripts/gen_protos.py)"
        )


def _clear_json_names(messages: Any) -> None:
    for msg in messages:
        for field in msg.field:
            field.ClearField("json_name")
        _clear_json_names(msg.nested_type)


def test_generated_files_are_the_expected_set() -> None:
    found = sorted(
        p.relative_to(PROTO_OUT).as_posix()
        for p in PROTO_OUT.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    expected = {"__init__.py"}
    for proto in MODULES:
        rel = proto.removesuffix(".proto")
        expected |= {f"{rel}_pb2.py", f"{rel}_pb2.pyi", f"{rel}_pb2_grpc.py", f"{rel}_pb2_grpc.pyi"}
        parts = rel.split("/")[:-1]
        expected |= {"/".join([*parts[:i], "__init__.py"]) for i in range(1, len(parts) + 1)}
    assert found == sorted(expected)
    for rel in found:
        if rel.endswith("__init__.py"):
            text = (PROTO_OUT / rel).read_text(encoding="utf-8")
            assert text.startswith("# Generated by scripts/gen_protos.py"), rel


# --- (b) descriptors == wire facts --------------------------------------------------------------


def _render_type(field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, Any]) -> str:
    if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
        name = field.type_name.lstrip(".")
        if name in maps:
            key, value = maps[name]
            return f"map<{_render_type(key, maps)}, {_render_type(value, maps)}>"
        return name
    return FDP.Type.Name(field.type).removeprefix("TYPE_").lower()


def _render_label(field: descriptor_pb2.FieldDescriptorProto, msg: Any, is_map: bool) -> str:
    if field.proto3_optional:
        return "optional"
    if field.HasField("oneof_index"):
        return f"oneof {msg.oneof_decl[field.oneof_index].name}"
    if field.label == FDP.LABEL_REPEATED:
        return "" if is_map else "repeated"
    assert field.label == FDP.LABEL_OPTIONAL, f"{msg.name}.{field.name}: proto2-style label"
    return ""


def _as_facts(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> dict[str, Any]:
    """Render compiled descriptors in the shape of atlas-wire-facts.json."""
    messages: dict[str, list[dict[str, Any]]] = {}
    enums: dict[str, dict[str, int]] = {}
    services: dict[str, list[dict[str, str]]] = {}

    def walk(prefix: str, msgs: Any, enum_types: Any) -> None:
        for enum in enum_types:
            enums[f"{prefix}.{enum.name}"] = {v.name: v.number for v in enum.value}
        for msg in msgs:
            full = f"{prefix}.{msg.name}"
            maps = {
                f"{full}.{n.name}": (n.field[0], n.field[1])
                for n in msg.nested_type
                if n.options.map_entry
            }
            # map entries must be the standard key = 1, value = 2
            for n in msg.nested_type:
                if n.options.map_entry:
                    assert [(f.name, f.number) for f in n.field] == [("key", 1), ("value", 2)]
            messages[full] = [
                {
                    "label": _render_label(f, msg, f.type_name.lstrip(".") in maps),
                    "name": f.name,
                    "number": f.number,
                    "type": _render_type(f, maps),
                }
                for f in sorted(msg.field, key=lambda f: f.number)
            ]
            walk(full, [n for n in msg.nested_type if not n.options.map_entry], msg.enum_type)

    for fdp in files.values():
        walk(fdp.package, fdp.message_type, fdp.enum_type)
        for svc in fdp.service:
            kinds = {
                (False, False): "unary",
                (True, False): "client-streaming",
                (False, True): "server-streaming",
                (True, True): "bidi-streaming",
            }
            services[f"{fdp.package}.{svc.name}"] = [
                {
                    "input": m.input_type.lstrip("."),
                    "kind": kinds[(m.client_streaming, m.server_streaming)],
                    "name": m.name,
                    "output": m.output_type.lstrip("."),
                }
                for m in svc.method
            ]
    files_out = [{"name": f.name, "package": f.package} for f in files.values()]
    return {"enums": enums, "files": files_out, "messages": messages, "services": services}


def _diff(kind: str, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    problems = [f"{kind} missing: {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"{kind} not in the facts: {k}" for k in sorted(got.keys() - want.keys())]
    for key in sorted(want.keys() & got.keys()):
        if want[key] != got[key]:
            problems.append(f"{kind} {key}:\n  facts:    {want[key]}\n  compiled: {got[key]}")
    return problems


def test_files_and_packages_match_facts(facts: dict[str, Any]) -> None:
    compiled = _compiled()
    rendered = _as_facts(compiled)
    key = lambda f: f["name"]  # noqa: E731
    assert sorted(rendered["files"], key=key) == sorted(facts["files"], key=key)
    for name, fdp in compiled.items():
        assert fdp.syntax == "proto3", name
        assert set(fdp.dependency) == DEPENDENCIES[name], name


def test_messages_match_facts(facts: dict[str, Any]) -> None:
    got = _as_facts(_compiled())["messages"]
    want = {
        name: sorted(fields, key=lambda f: f["number"])
        for name, fields in facts["messages"].items()
    }
    problems = _diff("message", want, got)
    assert not problems, "\n".join(problems)


def test_enums_match_facts(facts: dict[str, Any]) -> None:
    problems = _diff("enum", facts["enums"], _as_facts(_compiled())["enums"])
    assert not problems, "\n".join(problems)


def test_services_match_facts(facts: dict[str, Any]) -> None:
    got = {
        svc: sorted(rpcs, key=lambda r: r["name"])
        for svc, rpcs in _as_facts(_compiled())["services"].items()
    }
    want = {svc: sorted(rpcs, key=lambda r: r["name"]) for svc, rpcs in facts["services"].items()}
    problems = _diff("service", want, got)
    assert not problems, "\n".join(problems)


def test_runtime_descriptors_match_facts(facts: dict[str, Any]) -> None:
    """The live descriptors in the default pool (what serialisation uses) agree with the facts."""
    from google.protobuf import descriptor_pool

    for proto in MODULES:
        _pb2(proto)
    pool = descriptor_pool.Default()
    for full, fields in facts["messages"].items():
        desc = pool.FindMessageTypeByName(full)
        assert desc.full_name == full
        assert {f.number: f.name for f in desc.fields} == {f["number"]: f["name"] for f in fields}
        for f in fields:
            if f["label"].startswith("oneof "):
                oneof = desc.fields_by_name[f["name"]].containing_oneof
                assert oneof is not None and oneof.name == f["label"].split()[1], (full, f)
    for full, values in facts["enums"].items():
        desc = pool.FindEnumTypeByName(full)
        assert {v.name: v.number for v in desc.values} == values
    for full, rpcs in facts["services"].items():
        svc = pool.FindServiceByName(full)
        for rpc in rpcs:
            method = svc.methods_by_name[rpc["name"]]
            assert method.full_name == f"{full}.{rpc['name']}"
            assert method.input_type.full_name == rpc["input"]
            assert method.output_type.full_name == rpc["output"]


# --- gRPC stubs: method paths and call kinds -----------------------------------------------------


class _RecordingChannel:
    def __init__(self) -> None:
        self.calls: dict[str, tuple[str, Any, Any]] = {}

    def _record(self, kind: str) -> Any:
        def make(
            path: str, request_serializer: Any = None, response_deserializer: Any = None, **_: Any
        ) -> str:
            self.calls[path] = (kind, request_serializer, response_deserializer)
            return path

        return make

    def __getattr__(self, name: str) -> Any:
        if name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(name)
        raise AttributeError(name)


class _RecordingServer:
    def __init__(self) -> None:
        self.services: dict[str, set[str]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            name = handler.service_name()
            self.services.setdefault(name, set())

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services.setdefault(service, set()).update(handlers)


_CHANNEL_KIND = {
    "unary": "unary_unary",
    "client-streaming": "stream_unary",
    "server-streaming": "unary_stream",
    "bidi-streaming": "stream_stream",
}


def test_grpc_stub_method_paths(facts: dict[str, Any]) -> None:
    expected_paths = set()
    for full, rpcs in facts["services"].items():
        package, service = full.rsplit(".", 1)
        proto = next(p for p, m in MODULES.items() if m.startswith(f"labstream._proto.{package}."))
        grpc_mod, pb2 = _pb2_grpc(proto), _pb2(proto)
        channel = _RecordingChannel()
        stub = getattr(grpc_mod, f"{service}Stub")(channel)
        for rpc in rpcs:
            path = f"/{full}/{rpc['name']}"
            expected_paths.add(path)
            assert getattr(stub, rpc["name"]) == path
            kind, serializer, deserializer = channel.calls[path]
            assert kind == _CHANNEL_KIND[rpc["kind"]], path
            out_cls = getattr(pb2, rpc["output"].rsplit(".", 1)[1])
            in_cls = getattr(pb2, rpc["input"].rsplit(".", 1)[1])
            assert deserializer.__self__ is out_cls, path
            assert isinstance(serializer(in_cls()), bytes), path
        assert len(channel.calls) == len(rpcs), f"{full}: stub has RPCs the facts do not"
        # service descriptor full names give the same paths
        svc_desc = pb2.DESCRIPTOR.services_by_name[service]
        assert {f"/{svc_desc.full_name}/{m.name}" for m in svc_desc.methods} == {
            f"/{full}/{r['name']}" for r in rpcs
        }
        # the server-side registration helper registers the same service name and methods
        server = _RecordingServer()
        servicer = getattr(grpc_mod, f"{service}Servicer")()
        getattr(grpc_mod, f"add_{service}Servicer_to_server")(servicer, server)
        assert server.services == {full: {r["name"] for r in rpcs}}
    assert "/ma.streaming.api.v1.PacketWriterService/WriteDataPackets" in expected_paths
    assert "/ma.streaming.key_generator.v1.UniqueKeyGeneratorService/GenerateUniqueKey" in (
        expected_paths
    )


# --- (c) round trips and wire bytes --------------------------------------------------------------


def test_packet_wrapping_periodic_data_round_trips() -> None:
    from labstream._proto.ma.streaming.api.v1 import api_pb2 as api
    from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od

    inner = od.PeriodicDataPacket(
        data_format=od.SampleDataFormat(data_format_identifier=0xDEADBEEF12345678),
        start_time=1_767_225_600_123_456_789,
        interval=10_000_000,
        columns=[
            od.SampleColumn(
                double_samples=od.DoubleSampleList(
                    samples=[
                        od.DoubleSample(value=v, status=od.DATA_STATUS_VALID)
                        for v in (1.5, -2.25, float("inf"))
                    ]
                    + [od.DoubleSample(value=0.0, status=od.DATA_STATUS_MISSING)]
                )
            ),
            od.SampleColumn(
                int32_samples=od.Int32SampleList(
                    samples=[
                        od.Int32Sample(value=v, status=od.DATA_STATUS_VALID)
                        for v in (1, -1, 2**31 - 1, 0)
                    ]
                )
            ),
        ],
    )
    packet = od.Packet(
        type="PeriodicData",
        session_key="0b4f6c1e-session",
        is_essential=False,
        content=inner.SerializeToString(),
        id=2**64 - 1,
    )
    request = api.WriteDataPacketsRequest(
        details=[
            api.DataPacketDetails(
                message=packet,
                data_source="Lab_1",
                stream="Stream1",
                session_key=packet.session_key,
            )
        ]
    )
    wire = request.SerializeToString()
    parsed = api.WriteDataPacketsRequest.FromString(wire)
    assert parsed == request
    got_packet = parsed.details[0].message
    assert got_packet.type == "PeriodicData"
    assert got_packet.id == 2**64 - 1
    got_inner = od.PeriodicDataPacket.FromString(got_packet.content)
    assert got_inner == inner
    assert got_inner.data_format.WhichOneof("format") == "data_format_identifier"
    assert [c.WhichOneof("list") for c in got_inner.columns] == ["double_samples", "int32_samples"]
    assert [s.value for s in got_inner.columns[0].double_samples.samples][:3] == [
        1.5,
        -2.25,
        float("inf"),
    ]
    # two separate serialisations: the inner bytes are carried verbatim
    assert packet.content in wire
    # pickling needs message classes importable under their __module__
    assert pickle.loads(pickle.dumps(request)) == request


def test_wire_encoding_matches_field_numbers_and_types() -> None:
    """Hand-computed bytes for the field numbers/types in the facts (independent of descriptors)."""
    from labstream._proto.ma.streaming.api.v1 import api_pb2 as api
    from labstream._proto.ma.streaming.key_generator.v1 import key_generator_pb2 as kg
    from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2 as od

    # Packet: 1 string, 2 string, 3 bool, 4 bytes, 5 uint64
    assert (
        od.Packet(
            type="RowData", session_key="k", is_essential=True, content=b"\x01", id=300
        ).SerializeToString()
        == b"\x0a\x07RowData" + b"\x12\x01k" + b"\x18\x01" + b"\x22\x01\x01" + b"\x28\xac\x02"
    )
    # PeriodicDataPacket: start_time fixed64 (field 2, wire type 1), interval uint32 (field 3)
    assert od.PeriodicDataPacket(start_time=1, interval=4_294_967_295).SerializeToString() == (
        b"\x11" + struct.pack("<Q", 1) + b"\x18\xff\xff\xff\xff\x0f"
    )
    # samples are repeated messages (value + status), not a packed array
    sample = b"\x09" + struct.pack("<d", 1.0) + b"\x10\x01"
    column = od.SampleColumn(
        double_samples=od.DoubleSampleList(
            samples=[od.DoubleSample(value=1.0, status=od.DATA_STATUS_VALID)]
        )
    )
    assert column.SerializeToString() == b"\x0a\x0d" + b"\x0a\x0b" + sample
    # RowDataPacket.timestamps: repeated fixed64, packed (proto3)
    assert od.RowDataPacket(timestamps=[1, 2]).SerializeToString() == (
        b"\x12\x10" + struct.pack("<QQ", 1, 2)
    )
    # map<string, string> details = 7: entries with key = 1, value = 2
    assert (
        api.CreateSessionRequest(details={"a": "b"}).SerializeToString()
        == b"\x3a\x06\x0a\x01a\x12\x01b"
    )
    # EndSessionResponse has fields 2 and 3 only
    assert (
        api.EndSessionResponse(
            end_session=od.EndOfSessionPacket(), success=True
        ).SerializeToString()
        == b"\x12\x00\x18\x01"
    )
    # proto3 optional message field keeps presence
    assert not od.NewSessionPacket().HasField("session_info")
    assert (
        od.NewSessionPacket(session_info=od.SessionInfoPacket()).SerializeToString() == b"\x22\x00"
    )
    # oneof key: string_key = 1, ulong_key = 2
    assert kg.GenerateUniqueKeyResponse(ulong_key=7).SerializeToString() == b"\x10\x07"
    assert kg.GenerateUniqueKeyRequest(type=kg.KEY_TYPE_STRING).SerializeToString() == b"\x08\x02"


# --- namespace and runtime-version hygiene -------------------------------------------------------


def test_generated_code_lives_under_labstream_namespace() -> None:
    for proto in MODULES:
        for mod in (_pb2(proto), _pb2_grpc(proto)):
            assert mod.__name__.startswith("labstream._proto.ma.streaming.")
        for cls_name in _pb2(proto).DESCRIPTOR.message_types_by_name:
            cls = getattr(_pb2(proto), cls_name)
            assert cls.__module__ == MODULES[proto] + "_pb2", cls
    for path in PROTO_OUT.rglob("*.py*"):
        if "__pycache__" in path.parts:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("from ma.", "import ma.", "from ma ", "import ma ")), (
                f"{path}: {line}"
            )


def test_does_not_clash_with_a_users_own_ma_package(tmp_path: Path) -> None:
    """A user's top-level `ma` package (here one that refuses to import) is never touched."""
    user_ma = tmp_path / "ma"
    user_ma.mkdir()
    (user_ma / "__init__.py").write_text("raise ImportError('user ma package imported')\n")
    code = textwrap.dedent(
        """
        import sys
        from labstream._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
        from labstream._proto.ma.streaming.key_generator.v1 import key_generator_pb2_grpc
        from labstream._proto.ma.streaming.open_data.v1 import open_data_pb2
        p = open_data_pb2.Packet(type="NewSession")
        assert open_data_pb2.Packet.FromString(p.SerializeToString()) == p
        assert "ma" not in sys.modules
        print("ok")
        """
    )
    # the user's directory first, then whatever makes labstream importable here
    pythonpath = [str(tmp_path), str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)},
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_generated_code_does_not_pin_newer_runtimes() -> None:
    """grpcio-tools 1.85 gencode gates on protobuf>=7.35.1 and grpcio>=1.85.1: removed."""
    for path in PROTO_OUT.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "ValidateProtobufRuntimeVersion" not in text, path
        assert "GRPC_GENERATED_VERSION" not in text, path
