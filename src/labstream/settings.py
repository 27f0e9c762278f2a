"""Where a streamer's settings come from: the caller's arguments, else the environment, read once.

The public constructors call :func:`resolve` and hand typed values down; nothing below them reads
the environment. A program that chooses the destinations itself (the ``labstream`` command)
passes ``environ=without_destinations(os.environ)``, so the environment adds none it did not
choose.

``NOT_GIVEN`` tells "use the default" from an explicit ``None`` (httpx's ``USE_CLIENT_DEFAULT``
idea): ``atlas=None`` means "no ATLAS", while leaving ``atlas`` out reads ``LABSTREAM_ATLAS``.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from .destinations.atlas.config import Atlas
from .destinations.atomscale.protocol import DEFAULT_ENDPOINT

__all__ = [
    "API_KEY_ENV",
    "ATLAS_ENV",
    "ENDPOINT_ENV",
    "NOT_GIVEN",
    "SKIP_CLOCK_SYNC_ENV",
    "SPOOL_DIR_ENV",
    "NotGiven",
    "Settings",
    "default_spool_dir",
    "proxy_for",
    "resolve",
    "without_destinations",
]

API_KEY_ENV: Final = ("AS_API_KEY", "ATOMSCALE_API_KEY")
ENDPOINT_ENV: Final = "AS_API_ENDPOINT"
SKIP_CLOCK_SYNC_ENV: Final = "ATOMSCALE_SKIP_CLOCK_SYNC"
SPOOL_DIR_ENV: Final = "LABSTREAM_SPOOL_DIR"
ATLAS_ENV: Final = "LABSTREAM_ATLAS"
_ATLAS_FIELD_ENV: Final = {
    "key_generator_address": "LABSTREAM_ATLAS_KEY_GENERATOR",
    "data_source": "LABSTREAM_ATLAS_DATA_SOURCE",
    "stream": "LABSTREAM_ATLAS_STREAM",
}
_FALSE_WORDS: Final = ("", "0", "false", "no")


class NotGiven:
    """The type of :data:`NOT_GIVEN`: an argument the caller left out."""

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven()


@dataclass(frozen=True, slots=True)
class Settings:
    """A streamer's destinations and spool as resolved, once. ``api_key`` never shows in a repr.

    Attributes:
        api_key: Atomscale's key; None: no Atomscale.
        endpoint: Atomscale's base URL.
        proxy: the proxy for Atomscale's requests, ``""`` for a direct connection.
        clock_sync: correct timestamps by Atomscale's clock.
        atlas: ATLAS settings; None: no ATLAS.
        spool_dir: the journal's directory.
    """

    api_key: str | None
    endpoint: str
    proxy: str
    clock_sync: bool
    atlas: Atlas | None
    spool_dir: Path

    def __repr__(self) -> str:
        key = "***" if self.api_key else None
        return (
            f"Settings(api_key={key}, endpoint={self.endpoint!r}, proxy={self.proxy!r}, "
            f"clock_sync={self.clock_sync}, atlas={self.atlas!r}, spool_dir={self.spool_dir!r})"
        )


def resolve(
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    proxy: str | None = None,
    clock_sync: bool | NotGiven = NOT_GIVEN,
    atlas: str | Atlas | NotGiven | None = NOT_GIVEN,
    spool_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Arguments first, then ``environ`` (default: the process's environment).

    ``api_key``, ``endpoint``, ``proxy`` and ``spool_dir`` keep their meaning of None: "from the
    environment".

    Raises:
        TypeError, ValueError: a malformed ``atlas``.
    """
    env = os.environ if environ is None else environ
    key = api_key or next((env[n] for n in API_KEY_ENV if env.get(n)), None)
    url = (endpoint or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    skip = env.get(SKIP_CLOCK_SYNC_ENV, "").strip().lower() not in _FALSE_WORDS
    return Settings(
        api_key=key,
        endpoint=url,
        proxy=proxy_for(url, env) if proxy is None else proxy,
        clock_sync=key is not None and not skip and clock_sync is not False,
        atlas=_atlas(atlas, env),
        spool_dir=(
            Path(spool_dir).expanduser() if spool_dir is not None else default_spool_dir(env)
        ),
    )


def without_destinations(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables that choose destinations (the API keys and
    ``LABSTREAM_ATLAS``): for a program that chose them itself, the rest still applies."""
    chosen = {*API_KEY_ENV, ATLAS_ENV}
    return {name: value for name, value in environ.items() if name not in chosen}


def _atlas(value: str | Atlas | NotGiven | None, env: Mapping[str, str]) -> Atlas | None:
    """An ``atlas=`` argument as settings. An ``Atlas`` is taken as given; an address (the
    argument's or ``LABSTREAM_ATLAS``) gets the other ``LABSTREAM_ATLAS_*`` variables."""
    if isinstance(value, NotGiven):
        value = env.get(ATLAS_ENV) or None
    if value is None or isinstance(value, Atlas):
        return value
    if not isinstance(value, str):
        raise TypeError(f'atlas= takes "host:port" or Atlas(...), not {type(value).__name__}')
    settings = Atlas(address=value)
    changes: dict[str, Any] = {n: env[v] for n, v in _ATLAS_FIELD_ENV.items() if env.get(v)}
    return replace(settings, **changes) if changes else settings


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``LABSTREAM_SPOOL_DIR``, else the per-user cache directory."""
    env = os.environ if environ is None else environ
    chosen = env.get(SPOOL_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    if sys.platform == "win32":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "labstream" / "spool"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "labstream" / "spool"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labstream" / "spool"


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The proxy the environment names for ``url``; ``""`` for a direct connection.

    The official SDK honours ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either
    case), and so must a drop-in: many university networks only reach the internet through one.
    libcurl reads the environment too, but not the upper-case ``HTTP_PROXY``, so the choice is
    made here with the standard library's rules and handed to the HTTP client explicitly.
    """
    env = os.environ if environ is None else environ
    # The standard library's two passes (urllib.request.getproxies_environment), on ``env``:
    # any case, then names written with a lower-case suffix win, and an empty one unsets.
    proxies: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:  # a CGI script: HTTP_PROXY may come from a request header
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    parts = urllib.parse.urlsplit(url)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.hostname or "", proxies):
        return ""
    return proxies.get(parts.scheme) or proxies.get("all") or ""
