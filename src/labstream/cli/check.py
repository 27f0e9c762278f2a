"""``labstream check`` and ``labstream config show``: what the configuration resolves to, and
whether each destination answers. The probes are the library's; ``push`` runs them briefly
before it starts (:func:`preflight`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    Destinations,
    add_config_arg,
    add_destination_args,
    atlas_settings,
    resolve_config,
    say,
    select_destinations,
)

if TYPE_CHECKING:
    from ..destinations.base import Finding
    from .config import Resolved

__all__ = ["add_commands", "preflight"]

_PREFLIGHT_S = 3.0  # a push's quick look at each destination before it starts

_SHOWN_NAMES = {"atomscale": "Atomscale", "atlas": "ATLAS"}


def _config_show(args: argparse.Namespace) -> int:
    resolved = resolve_config(args)
    if args.json:
        import json

        print(json.dumps(resolved.to_json(), indent=1))
    else:
        print(resolved.format())
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    import json

    import anyio

    cfg = resolve_config(args)
    ok = True
    results: dict[str, Any] = {}
    for name, heading, probe in _probes(cfg, select_destinations(args, cfg), args.timeout):
        if not args.json:
            print(heading, flush=True)
        findings = anyio.run(probe)
        if not args.json:
            for finding in findings:
                print(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.text}", flush=True)
        passed = all(f.ok for f in findings)
        ok &= passed
        results[name] = {
            "ok": passed,
            "checks": [{"ok": f.ok, "message": f.text} for f in findings],
        }
    if args.json:
        print(json.dumps({"ok": ok, "destinations": results}, indent=1))
    else:
        print("all destinations ok" if ok else "some destinations have problems (see above)")
    return EXIT_OK if ok else EXIT_INCOMPLETE


def _probes(
    cfg: Resolved, dests: Destinations, timeout: float
) -> list[tuple[str, str, Callable[[], Awaitable[list[Finding]]]]]:
    """The library's probes for the selected destinations: (name, heading, probe)."""
    from ..destinations.proxy import redact_proxy
    from ..settings import proxy_for

    probes: list[tuple[str, str, Callable[[], Awaitable[list[Finding]]]]] = []
    if dests.atomscale:
        from ..destinations.atomscale.probe import probe as probe_atomscale

        endpoint = str(cfg["atomscale.endpoint"]).rstrip("/")
        key, key_source = str(cfg["atomscale.api_key"]), cfg.source("atomscale.api_key")
        proxy = cfg["atomscale.proxy"]
        used = str(proxy) if proxy is not None else proxy_for(endpoint)
        heading = f"atomscale  {endpoint} (proxy: {redact_proxy(used) if used else 'none'})"
        probes.append(
            (
                "atomscale",
                heading,
                lambda: probe_atomscale(
                    endpoint, key, key_source=key_source, timeout_s=timeout, proxy=used
                ),
            )
        )
    if dests.atlas:
        from ..destinations.atlas.probe import probe as probe_atlas

        settings = atlas_settings(cfg)
        heading = (
            f"atlas      {settings.address} (key generator {settings.key_generator_address}, "
            f"data source {settings.data_source})"
        )
        probes.append(("atlas", heading, lambda: probe_atlas(settings, timeout)))
    return probes


def preflight(cfg: Resolved, dests: Destinations) -> None:
    """Say at once, on stderr, which destination cannot be reached (the checks of `labstream
    check`, a few seconds at most): the push still goes on, and that destination's rows wait in
    the journal, rather than a stall timeout saying so minutes later."""
    import anyio

    for name, _, probe in _probes(cfg, dests, _PREFLIGHT_S):
        problem = next((f.text for f in anyio.run(probe) if not f.ok), None)
        if problem is None:
            continue
        end = "" if problem.endswith(("?", ".")) else "."
        shown = _SHOWN_NAMES[name]
        say(
            f"warning: {shown}: {problem}{end} The push goes on; {shown}'s rows wait in the "
            "journal until it answers (`labstream spool status` shows them).",
            sys.stderr,
        )


def add_commands(sub: Any) -> None:
    """Register ``check`` and ``config show``."""
    check = sub.add_parser(
        "check", help="test connectivity and credentials of the configured destinations"
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="per request (default 5)"
    )
    check.add_argument("--json", action="store_true", help="machine-readable result")
    add_destination_args(check)
    check.set_defaults(func=_check)

    config = sub.add_parser("config", help="the configuration")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser(
        "show", help="the resolved configuration, where each value comes from (key masked)"
    )
    add_config_arg(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_config_show)
