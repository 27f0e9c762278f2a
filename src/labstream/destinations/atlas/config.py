"""``Atlas``: where and how a streamer talks to ATLAS's Stream API.

A user passes ``atlas="host:port"`` or ``atlas=Atlas(...)`` to a streamer; everything about the
connection (addresses, TLS, deadlines) and about how channels become ATLAS parameters lives here.
The environment fills what the caller leaves out (:mod:`labstream.settings`), so a lab can
configure ATLAS once for every acquisition script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .options import AtlasOptions, ChannelOptions

__all__ = ["Atlas"]

STREAM_API_PORT = 13579
KEY_GENERATOR_PORT = 15379


_TOPIC_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def _split_address(address: str, default_port: int) -> tuple[str, int]:
    text = address.strip()
    if not text:
        raise ValueError("ATLAS address must not be empty")
    if text.startswith("["):  # [::1]:13579
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"ATLAS address {address!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Atlas:
    """ATLAS destination settings.

    Attributes:
        address: Stream API ``host[:port]`` (default port 13579).
        key_generator_address: key generator ``host[:port]``; default the Stream API's host, 15379.
        data_source: ATLAS data source (``[A-Za-z0-9_-]``; it becomes part of Kafka topic names).
        stream: the data stream packets go to (default "Stream1"); sessions are also announced on
            the main stream "".
        application_name: parameters' application name and identifier suffix (``Name:App``).
        session_details: extra session details shown in ATLAS, next to the ones labstream adds
            (data_id, physical sample, project, tags).
        channels: per-channel overrides of the parameter definition (identifier, units, range...).
        tls: use TLS (the Stream API is cleartext by default).
        root_certificates: PEM bytes to trust, with ``tls``; None uses the system roots.
        rpc_timeout_s: deadline of each RPC.
        first_format_timeout_s: deadline of the first data-format call, which can stall seconds
            while a new data source loads on the server.
        read_back: after a crash, read the session back through the server's reader service
            (where it has one) so nothing written after the last journaled state is written
            twice. Without a reader, or off, each batch is journaled before it is written (a
            burst goes slower) and after a crash that batch is sent again, counted as maybe
            duplicated.
        read_back_idle_s: reading back stops once nothing more came for this long.
    """

    address: str = f"localhost:{STREAM_API_PORT}"
    key_generator_address: str | None = None
    data_source: str = "Default"
    stream: str = "Stream1"
    application_name: str = "labstream"
    session_details: Mapping[str, str] = field(default_factory=dict)
    channels: Mapping[str, ChannelOptions] = field(default_factory=dict)
    tls: bool = False
    root_certificates: bytes | None = None
    rpc_timeout_s: float = 10.0
    first_format_timeout_s: float = 30.0
    read_back: bool = True
    read_back_idle_s: float = 1.0

    def __post_init__(self) -> None:
        host, port = _split_address(self.address, STREAM_API_PORT)
        object.__setattr__(self, "address", _join(host, port))
        kg_host, kg_port = _split_address(self.key_generator_address or host, KEY_GENERATOR_PORT)
        object.__setattr__(self, "key_generator_address", _join(kg_host, kg_port))
        for what, value in (("data_source", self.data_source), ("stream", self.stream)):
            if not _TOPIC_SAFE.fullmatch(value):
                raise ValueError(
                    f"Atlas {what}={value!r} must match [A-Za-z0-9_-]+ "
                    "(it becomes part of Kafka topic names)"
                )
        if (
            self.rpc_timeout_s <= 0
            or self.first_format_timeout_s <= 0
            or self.read_back_idle_s <= 0
        ):
            raise ValueError("Atlas deadlines must be positive")
        for key, value in self.session_details.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("Atlas session_details must map str to str")

    @property
    def protocol_options(self) -> AtlasOptions:
        return AtlasOptions(application_name=self.application_name, channels=self.channels)
