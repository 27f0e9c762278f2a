"""The CLI's configuration: ``labstream.toml`` files, environment variables and flags, resolved.

Why it exists: a lab sets its destinations once (the Atomscale endpoint, the ATLAS PC) and its
usual defaults (project, tags, chunk size), and every ``labstream`` command uses them, while a
single run can still override anything. The precedence is fixed and shown: built-in default <
user config file < ``./labstream.toml`` < environment variable < command-line flag, and every
resolved value remembers where it came from, so ``labstream config show`` can explain a setting
instead of leaving the user to guess. The API key is a secret: it is never printed whole.

No new dependency: ``tomllib`` is in the standard library, and the user directories follow the
usual conventions (XDG on Linux, ``~/Library/Application Support`` on macOS, ``%APPDATA%`` and
``%LOCALAPPDATA%`` on Windows) in a few lines.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError

__all__ = [
    "CONFIG_NAME",
    "ENV_VARS",
    "KEYS",
    "ConfigError",
    "Key",
    "Resolved",
    "config_files",
    "mask_secret",
    "resolve",
    "user_config_dir",
    "user_state_dir",
]

CONFIG_NAME: Final = "labstream.toml"
ENV_CONFIG: Final = "LABSTREAM_CONFIG"
ENV_STATE_DIR: Final = "LABSTREAM_STATE_DIR"
DEFAULT_ENDPOINT: Final = "https://api.atomscale.ai"


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: ``section.name``, its type, default, environment variables and meaning."""

    name: str
    kind: type
    default: object = None
    env: tuple[str, ...] = ()
    help: str = ""
    secret: bool = False
    inverted_env: bool = False  # the env var turns the setting off (ATOMSCALE_SKIP_CLOCK_SYNC)

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.name.split(".", 1)[1]


KEYS: Final[tuple[Key, ...]] = (
    Key(
        "atomscale.api_key",
        str,
        env=("AS_API_KEY", "ATOMSCALE_API_KEY"),
        help="Atomscale API key (prefer the environment variable to a file)",
        secret=True,
    ),
    Key(
        "atomscale.endpoint",
        str,
        DEFAULT_ENDPOINT,
        env=("AS_API_ENDPOINT",),
        help="Atomscale API base URL",
    ),
    Key(
        "atomscale.enabled",
        bool,
        True,
        help="stream to Atomscale when an API key is configured",
    ),
    Key(
        "atomscale.clock_sync",
        bool,
        True,
        env=("ATOMSCALE_SKIP_CLOCK_SYNC",),
        inverted_env=True,
        help="correct timestamps by the Atomscale gateway clock",
    ),
    Key(
        "atomscale.proxy",
        str,
        help="proxy URL for Atomscale (default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY; '' for none)",
    ),
    Key(
        "atlas.address",
        str,
        env=("LABSTREAM_ATLAS",),
        help="ATLAS Stream API host[:port] (port 13579 by default)",
    ),
    Key(
        "atlas.key_generator",
        str,
        env=("LABSTREAM_ATLAS_KEY_GENERATOR",),
        help="ATLAS key generator host[:port] (default: the Stream API host, port 15379)",
    ),
    Key(
        "atlas.data_source",
        str,
        "Default",
        env=("LABSTREAM_ATLAS_DATA_SOURCE",),
        help="ATLAS data source",
    ),
    Key("atlas.stream", str, "Stream1", env=("LABSTREAM_ATLAS_STREAM",), help="ATLAS data stream"),
    Key("atlas.application_name", str, "labstream", help="ATLAS parameters' application name"),
    Key("atlas.enabled", bool, True, help="stream to ATLAS when an address is configured"),
    Key("push.points_per_chunk", int, 100, help="rows per chunk"),
    Key("push.project", str, help="Atomscale project id to attach streams to"),
    Key("push.physical_sample", str, help="physical sample (name or id) of the streams"),
    Key("push.tags", list, [], help="tags of the streams"),
    Key("push.timezone", str, help="timezone of datetimes without one (default: local time)"),
    Key(
        "push.finalize_timeout", float, 60.0, help="seconds to wait for pending uploads at the end"
    ),
    Key(
        "push.max_pending_chunks",
        int,
        1024,
        help="reading pauses while a destination holds this many unconfirmed chunks",
    ),
    Key(
        "push.stall_timeout",
        float,
        120.0,
        help="give up when a destination confirms nothing for this many seconds",
    ),
)
_BY_NAME: Final = {k.name: k for k in KEYS}
ENV_VARS: Final[tuple[str, ...]] = tuple(dict.fromkeys(v for k in KEYS for v in k.env))
_FALSE_WORDS = ("", "0", "false", "no")  # as labstream.settings reads ATOMSCALE_SKIP_CLOCK_SYNC


def mask_secret(secret: str | None) -> str:
    """A secret as shown to people: never whole; the last 4 characters of a long one."""
    if not secret:
        return "(not set)"
    if len(secret) >= 16:
        return "*" * 8 + secret[-4:]
    return "*" * 8


def user_config_dir() -> Path:
    """Where the user's ``labstream.toml`` lives (XDG, macOS or Windows convention)."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "labstream"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "labstream"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "labstream"


def user_state_dir() -> Path:
    """Where labstream keeps what it must remember between runs (``LABSTREAM_STATE_DIR``)."""
    override = os.environ.get(ENV_STATE_DIR)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "labstream" / "state"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "labstream" / "state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "labstream"


def config_files(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files to read, lowest precedence first.

    An explicit file (``--config`` or ``LABSTREAM_CONFIG``) is read alone. Otherwise the user
    file, then ``./labstream.toml``, each when it exists.
    """
    chosen = explicit or os.environ.get(ENV_CONFIG) or None
    if chosen is not None:
        return [Path(chosen)]
    return [user_config_dir() / CONFIG_NAME, Path.cwd() / CONFIG_NAME]


@dataclass(frozen=True, slots=True)
class Resolved:
    """Every setting's value and where it came from (``default``, a file, ``env X``, a flag)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    files: tuple[tuple[Path, bool], ...] = ()  # every file considered, lowest first; read?
    warnings: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def source(self, name: str) -> str:
        return self.sources[name]

    @property
    def atomscale_configured(self) -> bool:
        return bool(self.values["atomscale.api_key"]) and bool(self.values["atomscale.enabled"])

    @property
    def atlas_configured(self) -> bool:
        return bool(self.values["atlas.address"]) and bool(self.values["atlas.enabled"])

    def format(self) -> str:
        """The resolved configuration, API key masked, with the source of each value."""
        lines = ["configuration files (later ones win):"]
        for path, was_read in self.files:
            lines.append(f"  {path}  ({'read' if was_read else 'not found'})")
        lines.append("precedence: default < user file < ./labstream.toml < environment < flags")
        lines.append("")
        width = max(len(k.name) for k in KEYS)
        for key in KEYS:
            value = self.values[key.name]
            shown_value = mask_secret(value) if key.secret else _show(value)
            lines.append(f"{key.name:<{width}}  {shown_value:<32}  {self.sources[key.name]}")
        lines.append("")
        destinations = []
        if self.atomscale_configured:
            destinations.append(f"atomscale ({self.values['atomscale.endpoint']})")
        if self.atlas_configured:
            destinations.append(f"atlas ({self.values['atlas.address']})")
        lines.append("destinations: " + (", ".join(destinations) or "none configured"))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """What :meth:`format` says, for programs: the API key masked just the same."""
        return {
            "files": [{"path": str(path), "read": was_read} for path, was_read in self.files],
            "settings": {
                key.name: {
                    "value": mask_secret(self.values[key.name])
                    if key.secret
                    else self.values[key.name],
                    "source": self.sources[key.name],
                }
                for key in KEYS
            },
            "destinations": {
                "atomscale": self.values["atomscale.endpoint"]
                if self.atomscale_configured
                else None,
                "atlas": self.values["atlas.address"] if self.atlas_configured else None,
            },
            "warnings": list(self.warnings),
        }


def _show(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) for v in value) + "]" if value else "[]"
    return str(value)


def _coerce(key: Key, value: object, where: str) -> object:
    """A file or flag value as the key's type.

    Raises:
        ConfigError: the wrong type.
    """
    kind = key.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key.name} must be a list of strings")
        return list(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where}: {key.name} must be an integer")
    if not isinstance(value, kind):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise ConfigError(f"{where}: {key.name} must be {names.get(kind, kind.__name__)}")
    if kind in (int, float) and value < (1 if kind is int else 0):  # type: ignore[operator]
        raise ConfigError(f"{where}: {key.name} must be positive")
    return value


def read_file(path: Path) -> dict[str, object]:
    """A config file's settings as ``{"section.name": value}``, checked against the known keys.

    Raises:
        ConfigError: unreadable, not TOML, an unknown section or key, or a wrongly typed value.
    """
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    out: dict[str, object] = {}
    sections = sorted({k.section for k in KEYS})
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(
                f"{path}: unknown section [{section}]; known: "
                + ", ".join(f"[{s}]" for s in sections)
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        for name, value in table.items():
            key = _BY_NAME.get(f"{section}.{name}")
            if key is None:
                known = ", ".join(k.field for k in KEYS if k.section == section)
                raise ConfigError(f"{path}: unknown key {name!r} in [{section}]; known: {known}")
            out[key.name] = _coerce(key, value, str(path))
    return out


def _env_value(key: Key, environ: Mapping[str, str]) -> tuple[object, str] | None:
    for var in key.env:
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        if key.inverted_env:
            return raw.strip().lower() in _FALSE_WORDS, f"env {var}"
        return raw.strip(), f"env {var}"
    return None


def resolve(
    flags: Mapping[str, object] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Resolve every setting: default < user file < ./labstream.toml < env < flags.

    ``flags`` maps key names to values given on the command line (None: not given); their
    source reads ``flag``.

    Raises:
        ConfigError: a bad file (an explicit one must exist), or a bad flag value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {k.name: k.default for k in KEYS}
    sources: dict[str, str] = {k.name: "default" for k in KEYS}
    explicit = config_file or env.get(ENV_CONFIG) or None
    files: list[tuple[Path, bool]] = []
    warnings: list[str] = []
    for path in config_files(explicit):
        if not path.is_file():
            if explicit is not None:
                raise ConfigError(f"{path}: no such config file")
            files.append((path, False))
            continue
        settings = read_file(path)
        files.append((path, True))
        for name, value in settings.items():
            values[name] = value
            sources[name] = f"file {path}"
        if "atomscale.api_key" in settings and _readable_by_others(path):
            warnings.append(f"{path} holds an API key and other users can read it (chmod 600)")
    for key in KEYS:
        found = _env_value(key, env)
        if found is not None:
            values[key.name], sources[key.name] = found
    for name, value in (flags or {}).items():
        if value is None:
            continue
        key = _BY_NAME[name]
        values[name] = _coerce(key, value, "command line")
        sources[name] = "flag"
    if not values["atomscale.api_key"]:
        values["atomscale.api_key"] = None
    return Resolved(values, sources, tuple(files), tuple(warnings))


def _readable_by_others(path: Path) -> bool:
    if sys.platform == "win32":
        return False
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))
