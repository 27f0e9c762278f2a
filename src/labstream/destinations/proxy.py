"""A proxy URL as shown to people: the password it may carry left out.

Which proxy is used is settled once, with the other settings (:func:`labstream.settings.proxy_for`),
and handed to the HTTP client explicitly.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_proxy"]


def redact_proxy(proxy: str) -> str:
    """``proxy`` without the password it may carry (proxies often take one in the URL)."""
    parts = urllib.parse.urlsplit(proxy)
    if parts.password is None:
        return proxy
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
