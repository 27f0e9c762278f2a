"""The shape of the package: the public surface and which layer may import which.

The README's "Layout" draws these layers; this test keeps the drawing true. A new import that
crosses a layer the wrong way (the library reaching into the CLI, the emulators into the library)
fails here, not in a user's install without the CLI's extras.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import labstream

SRC = Path(labstream.__file__).parent

# What `from labstream import *` gives a user: the SDK's names and what they return or raise.
PUBLIC = {
    "AsyncStreamHandle",
    "AsyncTimeseriesStreamer",
    "Atlas",
    "ChannelOptions",
    "ClockStatus",
    "DeliveryError",
    "DeliveryTimeoutError",
    "DestinationError",
    "DestinationReport",
    "JournalError",
    "LabstreamError",
    "MalformedAnswerError",
    "MissingExtraError",
    "RejectedError",
    "Rejection",
    "RetryPolicy",
    "StreamHandle",
    "StreamReport",
    "StreamStateError",
    "TimeseriesStreamer",
    "TransientDestinationError",
    "__version__",
}


def test_the_public_surface_is_exactly_what_is_documented() -> None:
    assert set(labstream.__all__) == PUBLIC
    for name in labstream.__all__:
        value = getattr(labstream, name)
        if isinstance(value, type):
            assert value.__module__.startswith("labstream."), name


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every labstream module `path` imports, resolved to absolute names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("labstream"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("labstream"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _layer_imports(layer: str) -> dict[str, set[str]]:
    root = SRC.joinpath(*layer.split(".")[1:])
    files = [root.with_suffix(".py")] if root.with_suffix(".py").exists() else root.rglob("*.py")
    return {_module_name(f): _imports(f) for f in files}


_ABOVE_THE_FOUNDATION = [
    "labstream._core",
    "labstream.destinations",
    "labstream.settings",
    "labstream.streamer",
    "labstream.sync",
    "labstream.cli",
    "labstream.testing",
]

# (layer, prefixes it must never import)
RULES = [
    ("labstream.errors", _ABOVE_THE_FOUNDATION),
    ("labstream.report", _ABOVE_THE_FOUNDATION),
    ("labstream.retry", _ABOVE_THE_FOUNDATION),
    # the emulators stand on the wire format alone, so they judge the library from outside
    (
        "labstream.testing",
        [
            "labstream._core",
            "labstream.destinations",
            "labstream.cli",
            "labstream.settings",
            "labstream.streamer",
            "labstream.sync",
        ],
    ),
    (
        "labstream._core",
        [
            "labstream.cli",
            "labstream.testing",
            "labstream.streamer",
            "labstream.sync",
            "labstream.settings",
            "labstream.destinations.atomscale",
            "labstream.destinations.atlas",
        ],
    ),
    (
        "labstream.destinations",
        [
            "labstream.cli",
            "labstream.testing",
            "labstream.streamer",
            "labstream.sync",
            "labstream.settings",
        ],
    ),
    ("labstream.streamer", ["labstream.cli", "labstream.testing"]),
    ("labstream.sync", ["labstream.cli", "labstream.testing"]),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_no_layer_imports_a_layer_above_it(layer: str, forbidden: list[str]) -> None:
    crossings = [
        f"{module} imports {name}"
        for module, names in _layer_imports(layer).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert not crossings, "\n".join(crossings)


def test_the_sync_streamer_takes_exactly_the_async_streamers_typed_options() -> None:
    import inspect

    def options(cls: type) -> dict[str, tuple[object, str]]:
        params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
        return {
            name: (p.default, str(p.annotation))
            for name, p in params.items()
            if name not in ("self", "handle_sigterm")
        }

    sync_params = inspect.signature(labstream.TimeseriesStreamer.__init__).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in sync_params.values())  # no **options
    assert options(labstream.TimeseriesStreamer) == options(labstream.AsyncTimeseriesStreamer)


def test_only_the_settings_module_and_the_command_read_the_environment() -> None:
    readers = []
    for path in SRC.rglob("*.py"):
        module = _module_name(path)
        if module == "labstream.settings" or module.startswith(
            ("labstream.cli", "labstream.testing", "labstream._proto")
        ):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in (
                "environ",
                "getenv",
                "getproxies_environment",
            ):
                readers.append(f"{module}:{node.lineno} {ast.unparse(node)}")
    assert not readers, "\n".join(readers)
