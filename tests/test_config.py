"""Configuration precedence (default < user file < ./labstream.toml < env < flags), ``config
show`` (sources, masked key), and ``labstream check`` against the emulators, healthy and not."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from labstream import cli
from labstream.cli.config import ENV_VARS, ConfigError, mask_secret, resolve, user_config_dir
from labstream.testing.atlas import run_in_thread as atlas_thread
from labstream.testing.atomscale import run_in_thread as atomscale_thread

SECRET = "sk-live-0123456789abcdefWXYZ"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (*ENV_VARS, "LABSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LABSTREAM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LABSTREAM_SPOOL_DIR", str(tmp_path / "spool"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    saved = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, saved)


def user_file(text: str) -> Path:
    path = user_config_dir() / "labstream.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- precedence -----------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = resolve()
    assert cfg["atomscale.endpoint"] == "https://api.atomscale.ai"
    assert cfg.source("atomscale.endpoint") == "default"
    assert cfg["push.points_per_chunk"] == 100
    assert not cfg.atomscale_configured and not cfg.atlas_configured


def test_file_then_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    user = user_file(
        '[atomscale]\nendpoint = "https://user.example"\n'
        '[atlas]\naddress = "user-pc"\n[push]\npoints_per_chunk = 50\ntags = ["a"]\n'
    )
    Path("labstream.toml").write_text(
        '[atomscale]\nendpoint = "https://project.example"\n', encoding="utf-8"
    )
    cfg = resolve()
    assert cfg["atomscale.endpoint"] == "https://project.example"  # ./labstream.toml beats user
    assert cfg.source("atomscale.endpoint").endswith(str(Path.cwd() / "labstream.toml"))
    assert cfg["atlas.address"] == "user-pc" and cfg.source("atlas.address") == f"file {user}"
    assert cfg["push.points_per_chunk"] == 50 and cfg["push.tags"] == ["a"]

    monkeypatch.setenv("AS_API_ENDPOINT", "https://env.example")
    monkeypatch.setenv("LABSTREAM_ATLAS", "env-pc:1234")
    monkeypatch.setenv("ATOMSCALE_SKIP_CLOCK_SYNC", "1")
    cfg = resolve()
    assert cfg["atomscale.endpoint"] == "https://env.example"
    assert cfg.source("atomscale.endpoint") == "env AS_API_ENDPOINT"
    assert cfg["atlas.address"] == "env-pc:1234"
    assert cfg["atomscale.clock_sync"] is False

    cfg = resolve({"atomscale.endpoint": "https://flag.example", "push.points_per_chunk": 7})
    assert cfg["atomscale.endpoint"] == "https://flag.example"
    assert cfg.source("atomscale.endpoint") == "flag"
    assert cfg["push.points_per_chunk"] == 7
    assert cfg["atlas.address"] == "env-pc:1234"  # no flag: env still wins over the file


def test_api_key_env_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMSCALE_API_KEY", "second")
    assert resolve()["atomscale.api_key"] == "second"
    monkeypatch.setenv("AS_API_KEY", "first")
    cfg = resolve()
    assert (
        cfg["atomscale.api_key"] == "first" and cfg.source("atomscale.api_key") == "env AS_API_KEY"
    )
    assert cfg.atomscale_configured


def test_explicit_config_file_is_read_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_file('[atlas]\naddress = "user-pc"\n')
    other = tmp_path / "other.toml"
    other.write_text('[push]\nproject = "p-1"\n', encoding="utf-8")
    monkeypatch.setenv("LABSTREAM_CONFIG", str(other))
    cfg = resolve()
    assert cfg["push.project"] == "p-1" and cfg["atlas.address"] is None
    with pytest.raises(ConfigError, match="no such config file"):
        resolve(config_file=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[atomscale]\nendpiont = 'x'\n", "unknown key 'endpiont' in [atomscale]"),
        ("[destinations]\n", "unknown section [destinations]"),
        ("[push]\npoints_per_chunk = 'many'\n", "push.points_per_chunk must be an integer"),
        ("[push]\npoints_per_chunk = 0\n", "must be positive"),
        ("[push\n", "not valid TOML"),
    ],
)
def test_bad_config_file(text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path("labstream.toml")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve()
    assert cli.main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert "labstream.toml" in err and "Traceback" not in err


# -- config show ----------------------------------------------------------------------------------


def test_config_show_masks_the_key_and_names_sources(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = user_file(f'[atomscale]\napi_key = "{SECRET}"\n[atlas]\naddress = "atlas-pc"\n')
    path.chmod(0o644)
    monkeypatch.setenv("LABSTREAM_ATLAS_STREAM", "Stream7")
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert mask_secret(SECRET) in out and mask_secret(SECRET).endswith("WXYZ")
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert f"file {path}" in lines["atomscale.api_key"]
    assert "env LABSTREAM_ATLAS_STREAM" in lines["atlas.stream"]
    assert "default" in lines["push.points_per_chunk"]
    assert "destinations: atomscale (https://api.atomscale.ai), atlas (atlas-pc)" in out
    assert "other users can read it" in out


def test_mask_secret() -> None:
    assert mask_secret(None) == "(not set)"
    assert mask_secret("short") == "********"
    assert "abcd" not in mask_secret("0123456789abcdefgh")


# -- check ----------------------------------------------------------------------------------------


def test_check_success(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with atomscale_thread(api_key=SECRET) as atomscale, atlas_thread() as atlas:
        monkeypatch.setenv("AS_API_KEY", SECRET)
        monkeypatch.setenv("AS_API_ENDPOINT", atomscale.url)
        monkeypatch.setenv("LABSTREAM_ATLAS", atlas.address)
        monkeypatch.setenv("LABSTREAM_ATLAS_KEY_GENERATOR", atlas.key_generator_address)
        assert cli.main(["check", "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert "ok   reachable: GET /gateway/time" in out
    assert "ok   API key accepted (env AS_API_KEY)" in out
    assert "ok   Stream API answers" in out and "ok   key generator answers" in out
    assert "all destinations ok" in out
    assert SECRET not in out


def test_check_wrong_key_and_atlas_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    with atomscale_thread(api_key=SECRET) as atomscale:
        monkeypatch.setenv("AS_API_KEY", "wrong-key")
        code = cli.main(
            [
                "check",
                "--atomscale",
                "--endpoint",
                atomscale.url,
                "--atlas",
                f"127.0.0.1:{port}",
                "--atlas-key-generator",
                f"127.0.0.1:{port}",
                "--timeout",
                "2",
            ]
        )
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL the API key (env AS_API_KEY) was refused (403 Forbidden)" in out
    assert f"FAIL cannot reach the Stream API at 127.0.0.1:{port}" in out
    assert "FAIL cannot reach the key generator" in out
    assert "wrong-key" not in out


def test_check_unreachable_atomscale(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = cli.main(
        ["check", "--atomscale", "--endpoint", f"http://127.0.0.1:{port}", "--api-key", "k"]
    )
    assert code == 1
    assert "connection refused" in capsys.readouterr().out


def test_check_not_atomscale(capsys: pytest.CaptureFixture[str]) -> None:
    with atlas_thread() as atlas:  # a gRPC port is not an HTTP API
        code = cli.main(
            ["check", "--atomscale", "--endpoint", f"http://{atlas.address}", "--api-key", "k"]
        )
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_nothing_configured(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check"]) == 2
    assert "no destination configured" in capsys.readouterr().err


def test_atomscale_flag_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--atomscale"]) == 2
    assert "--atomscale needs an API key" in capsys.readouterr().err
