"""Where the examples stream to: the destinations named on the command line, else local emulators.

Every example must run with one command, with no account, no Docker and no network. So unless
``--atomscale-url`` or ``--atlas`` names a real destination, this starts labstream's Atomscale
emulator and ATLAS Stream API emulator in the example's own process, on free loopback ports, and
the example streams to them exactly as it would to the real services. Afterwards the example can
read back what each emulator stored, which a real destination does not offer.

Name a real destination and the same code streams there instead:

    python examples/mbe_live.py --atomscale-url https://api.atomscale.ai --api-key KEY
    python examples/mbe_live.py --atlas atlas-pc:13579

The API key comes from ``--api-key`` or ``AS_API_KEY``. Give only ``--atlas`` and only ATLAS is
streamed to (unless ``AS_API_KEY`` is set, which labstream then uses for Atomscale too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from labstream import Atlas
from labstream.testing import atlas as atlas_emulator
from labstream.testing import atomscale as atomscale_emulator
from labstream.testing.atlas_checker import SessionReport, check_session

#: The emulator accepts any key; this one is not a secret.
EMULATOR_KEY = "example-key"


@dataclass
class Destinations:
    """The streamer's destination arguments, and the emulators when they were started here."""

    streamer_kwargs: dict[str, Any] = field(default_factory=dict)
    atomscale: atomscale_emulator.AtomscaleEmulator | None = None
    atlas: atlas_emulator.AtlasEmulator | None = None

    @property
    def local(self) -> bool:
        return self.atomscale is not None

    def describe(self) -> str:
        if self.atomscale is not None and self.atlas is not None:
            return (
                f"local emulators: Atomscale at {self.atomscale.url}, "
                f"ATLAS Stream API at {self.atlas.address}"
            )
        parts = []
        if self.streamer_kwargs.get("endpoint"):
            parts.append(f"Atomscale at {self.streamer_kwargs['endpoint']}")
        if self.streamer_kwargs.get("atlas"):
            parts.append(f"ATLAS at {self.streamer_kwargs['atlas']}")
        return ", ".join(parts)

    def atlas_report(self) -> SessionReport | None:
        """The protocol report of the last session the local ATLAS emulator recorded."""
        if self.atlas is None or not self.atlas.sessions:
            return None
        return check_session(list(self.atlas.sessions.values())[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The destination options every example takes."""
    group = parser.add_argument_group("destinations (default: local emulators started here)")
    group.add_argument("--atomscale-url", help="an Atomscale API base URL")
    group.add_argument("--api-key", help="Atomscale API key (default: AS_API_KEY)")
    group.add_argument("--atlas", metavar="HOST:PORT", help="an ATLAS Stream API address")


@contextlib.contextmanager
def destinations(
    args: argparse.Namespace,
    *,
    atomscale_faults: atomscale_emulator.FaultPlan | None = None,
    atlas_faults: atlas_emulator.AtlasFaultPlan | None = None,
) -> Iterator[Destinations]:
    """Yield the destinations to stream to; local emulators are stopped on exit."""
    if args.atomscale_url or args.atlas:
        kwargs: dict[str, Any] = {}
        if args.atomscale_url:
            key = args.api_key or os.environ.get("AS_API_KEY")
            if not key:
                raise SystemExit("--atomscale-url needs --api-key or AS_API_KEY")
            kwargs.update(api_key=key, endpoint=args.atomscale_url)
        if args.atlas:
            kwargs["atlas"] = args.atlas
        yield Destinations(kwargs)
        return
    with (
        _scratch_spool(),
        atomscale_emulator.run_in_thread(faults=atomscale_faults) as atomscale,
        atlas_emulator.run_in_thread(faults=atlas_faults) as atlas,
    ):
        yield Destinations(
            {
                "api_key": EMULATOR_KEY,
                "endpoint": atomscale.url,
                "atlas": Atlas(
                    address=atlas.address, key_generator_address=atlas.key_generator_address
                ),
            },
            atomscale,
            atlas,
        )


@contextlib.contextmanager
def _scratch_spool() -> Iterator[None]:
    """Keep what is journaled for the emulators in a temporary directory.

    labstream journals chunks until each destination confirms them, in the user's cache directory
    by default. The emulators vanish when the example ends, so anything still journaled for them
    (an example that leaves a destination down on purpose) would be clutter for later runs.
    """
    previous = os.environ.get("LABSTREAM_SPOOL_DIR")
    with tempfile.TemporaryDirectory(prefix="labstream-example-") as tmp:
        os.environ["LABSTREAM_SPOOL_DIR"] = tmp
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("LABSTREAM_SPOOL_DIR", None)
            else:
                os.environ["LABSTREAM_SPOOL_DIR"] = previous
