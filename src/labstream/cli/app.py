"""The ``labstream`` command: the top-level parser and :func:`main`.

Each command lives in its own module, which adds its parser through ``add_commands(sub)``:
:mod:`.push`, :mod:`.follow`, :mod:`.check` (with ``config show``), :mod:`.demo`,
:mod:`.atomscale_commands`, :mod:`.atlas_commands` and :mod:`.spool`; what several share is in
:mod:`.common`. A command module is imported whenever the CLI starts, so it imports its heavy
dependencies (emulators, plots) only when it runs. Whatever goes wrong is said in a sentence
with a distinct exit code, never as a traceback (see :mod:`.common`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import atlas_commands, atomscale_commands, check, demo, follow, push, spool
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, library_logging, say

__all__ = ["build_parser", "main"]


def _completion(args: argparse.Namespace) -> int:
    from .completion import bash_script

    print(bash_script(build_parser()), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="labstream",
        description="Stream lab instrument time series to Atomscale (and ATLAS) without loss.",
    )
    parser.add_argument(
        "--version", action="version", version=f"labstream {__version__}", help="show the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    # In the order `labstream --help` lists them.
    push.add_commands(sub)
    follow.add_commands(sub)
    check.add_commands(sub)  # check, config show
    demo.add_commands(sub)
    atomscale_commands.add_commands(sub)  # serve, show
    atlas_commands.add_commands(sub)  # serve, report, verify, sessions

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Print a completion script. bash: add `eval "$(labstream completion '
        'bash)"` to ~/.bashrc. zsh: `autoload -U +X bashcompinit && bashcompinit` first.',
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    completion.set_defaults(func=_completion)

    spool.add_commands(sub)  # status, resume, purge
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import JournalError

    args = build_parser().parse_args(argv)
    try:
        with library_logging(bool(getattr(args, "verbose", False))):
            code: int = args.func(args)
    except UsageError as exc:
        say(f"error: {exc}")
        return exc.code
    except JournalError as exc:  # the spool commands': the message names the path
        say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
