"""``atlas=`` settings: addresses, defaults, environment fallbacks, name checks."""

from __future__ import annotations

import pytest

from labstream import Atlas, TimeseriesStreamer
from labstream.settings import resolve


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "LABSTREAM_ATLAS",
        "LABSTREAM_ATLAS_KEY_GENERATOR",
        "LABSTREAM_ATLAS_DATA_SOURCE",
        "LABSTREAM_ATLAS_STREAM",
        "AS_API_KEY",
        "ATOMSCALE_API_KEY",
    ):
        monkeypatch.delenv(var, raising=False)


def test_defaults_and_ports() -> None:
    a = Atlas(address="atlas-pc")
    assert (a.address, a.key_generator_address) == ("atlas-pc:13579", "atlas-pc:15379")
    assert (a.data_source, a.stream) == ("Default", "Stream1")
    b = Atlas(address="10.0.0.5:2000", key_generator_address="keys:1234")
    assert (b.address, b.key_generator_address) == ("10.0.0.5:2000", "keys:1234")
    assert Atlas(address="[::1]").address == "[::1]:13579"
    assert resolve(atlas="h:1", environ={}).atlas == Atlas(address="h:1")
    assert resolve(environ={}).atlas is None
    assert resolve(atlas=None, environ={"LABSTREAM_ATLAS": "h:1"}).atlas is None  # said: none


def test_environment_fills_what_the_caller_left_out() -> None:
    environ = {
        "LABSTREAM_ATLAS": "atlas-pc:13580",
        "LABSTREAM_ATLAS_DATA_SOURCE": "MBE1",
        "LABSTREAM_ATLAS_STREAM": "Chamber",
        "LABSTREAM_ATLAS_KEY_GENERATOR": "keys:15000",
    }
    a = resolve(environ=environ).atlas
    assert a is not None
    assert (a.address, a.key_generator_address, a.data_source, a.stream) == (
        "atlas-pc:13580",
        "keys:15000",
        "MBE1",
        "Chamber",
    )
    explicit = resolve(atlas=Atlas(address="x", data_source="Mine"), environ=environ).atlas
    assert explicit == Atlas(address="x", data_source="Mine")  # taken as given: "Stream1" stays
    address = resolve(atlas="other-pc", environ=environ).atlas
    assert address is not None
    assert (address.address, address.data_source) == ("other-pc:13579", "MBE1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_source": "my.source"}, r"data_source='my.source' must match \[A-Za-z0-9_-\]"),
        ({"stream": ""}, "stream='' must match"),
        ({"address": "host:99999"}, "port must be a number from 1 to 65535"),
        ({"address": ""}, "must not be empty"),
        ({"rpc_timeout_s": 0}, "deadlines must be positive"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Atlas(**kwargs)  # type: ignore[arg-type]


def test_atlas_alone_needs_no_key() -> None:
    with TimeseriesStreamer(atlas="127.0.0.1:1", handle_sigterm=False) as s:
        assert s.destinations == ("atlas",)
        assert "api_key" not in repr(s)
    with pytest.raises(TypeError, match='atlas= takes "host:port" or Atlas'):
        TimeseriesStreamer(atlas=13579, handle_sigterm=False)  # type: ignore[arg-type]
