"""Which proxy Atomscale's requests go through: the explicit ``proxy=``, else the environment's.

The official SDK honours ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either
case), and so must a drop-in: many university networks only reach the internet through one.
libcurl reads the environment too, but not the upper-case ``HTTP_PROXY``, so the choice is made
here, once, with the standard library's rules, and handed to the HTTP client explicitly.
"""

from __future__ import annotations

import urllib.parse
import urllib.request

__all__ = ["proxy_for", "redact_proxy"]


def proxy_for(url: str, explicit: str | None = None) -> str:
    """The proxy URL for requests to ``url``; ``""`` for a direct connection.

    ``explicit`` wins when given (``""`` turns the environment's proxy off).
    """
    if explicit is not None:
        return explicit
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.hostname or "", proxies):
        return ""
    return proxies.get(parts.scheme) or proxies.get("all") or ""


def redact_proxy(proxy: str) -> str:
    """``proxy`` without the password it may carry (proxies often take one in the URL)."""
    parts = urllib.parse.urlsplit(proxy)
    if parts.password is None:
        return proxy
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
