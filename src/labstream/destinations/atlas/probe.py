"""Look at an ATLAS Stream API and its key generator before streaming to them: does each answer,
and is it what it should be. ``labstream check`` and ``labstream push``'s pre-flight print these
findings; the calls go through the sink's channel settings and error translation (:mod:`.rpc`).
"""

from __future__ import annotations

from ..._proto.ma.streaming.api.v1 import api_pb2, api_pb2_grpc
from ..._proto.ma.streaming.key_generator.v1 import key_generator_pb2, key_generator_pb2_grpc
from ...errors import DestinationError
from ..base import Finding
from . import rpc
from .config import Atlas

__all__ = ["probe"]


async def probe(settings: Atlas, timeout_s: float) -> list[Finding]:
    """The Stream API (``GetCurrentSessions``) and the key generator (``GenerateUniqueKey``)."""
    findings: list[Finding] = []
    async with rpc.open_channel(settings, settings.address) as api:
        stub = api_pb2_grpc.SessionManagementServiceStub(api)
        request = api_pb2.GetCurrentSessionsRequest(data_source=settings.data_source)
        try:
            reply = await rpc.call(
                lambda t: stub.GetCurrentSessions(request, timeout=t),
                "GetCurrentSessions",
                timeout_s,
                None,
            )
        except DestinationError as exc:
            findings.append(
                Finding(False, _problem("Stream API", settings.address, exc, timeout_s))
            )
        else:
            if reply.success:
                findings.append(
                    Finding(
                        True,
                        f"Stream API answers: {len(reply.session_keys)} current session(s) in "
                        f"data source {settings.data_source!r}",
                    )
                )
            else:
                findings.append(
                    Finding(False, "the Stream API answered GetCurrentSessions with success=false")
                )
    address = settings.key_generator_address
    assert address is not None  # Atlas fills it in when made
    async with rpc.open_channel(settings, address) as keys:
        key_stub = key_generator_pb2_grpc.UniqueKeyGeneratorServiceStub(keys)
        key_request = key_generator_pb2.GenerateUniqueKeyRequest(
            type=key_generator_pb2.KEY_TYPE_STRING
        )
        try:
            key_reply = await rpc.call(
                lambda t: key_stub.GenerateUniqueKey(key_request, timeout=t),
                "GenerateUniqueKey",
                timeout_s,
                None,
            )
        except DestinationError as exc:
            findings.append(Finding(False, _problem("key generator", address, exc, timeout_s)))
        else:
            if key_reply.string_key:
                findings.append(Finding(True, "key generator answers"))
            else:
                findings.append(Finding(False, "the key generator answered without a key"))
    return findings


def _problem(what: str, address: str, exc: DestinationError, timeout_s: float) -> str:
    details = exc.detail or ""
    if exc.status == "UNAVAILABLE":
        return (
            f"cannot reach the {what} at {address} ({details}): is it running, and are host "
            "and port right?"
        )
    if exc.status == "DEADLINE_EXCEEDED":
        return (
            f"no answer from the {what} at {address} within {timeout_s:g} s "
            "(a firewall, a wrong port, or a stalled server?)"
        )
    if exc.status == "UNIMPLEMENTED":
        return f"{address} speaks gRPC but is not an ATLAS {what} (UNIMPLEMENTED): wrong port?"
    return f"the {what} at {address} answered {exc.status}: {details}"
