"""The ``labstream`` command: one module per command group, over the public library API."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
