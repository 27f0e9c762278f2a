#!/usr/bin/env python3
"""Generate ``docs/api.md``, the API reference, from labstream's docstrings.

Why a script and not a documentation tool: the reference must build offline, on any machine that
runs the tests, with nothing beyond the standard library; and it must not drift from the code. So
this imports the public modules, reads ``__all__``, signatures and docstrings with ``inspect``, and
writes Markdown. ``tests/test_docs.py`` fails when the committed file differs from what this
produces, the same way ``scripts/gen_protos.py --check`` guards the generated protobuf code.

Docstrings follow one convention (Google style, with reST inline roles): ``Args:``, ``Returns:``,
``Raises:``, ``Attributes:`` sections become lists; ``:class:`X``` and ````code```` become Markdown
code spans; a paragraph ending in ``::`` introduces a code block.

Usage::

    python scripts/gen_api_docs.py           # (re)write docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is out of date
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "api.md"

#: (module, heading, intro, names); names None means the module's ``__all__``.
SECTIONS: list[tuple[str, str, str, list[str] | None]] = [
    (
        "labstream",
        "labstream",
        "Everything a script needs: `from labstream import TimeseriesStreamer`.",
        None,
    ),
    (
        "labstream.cli.plot",
        "labstream.cli.plot",
        "Receipts plots (needs matplotlib: `pip install 'labstream[plot]'`).",
        None,
    ),
    (
        "labstream.cli.atlas_verify",
        "labstream.cli.atlas_verify",
        "Read a session back from a Stream API and check what the server holds.",
        ["verify", "list_sessions", "read_session", "Verified", "ServerSession", "VerifyError"],
    ),
    (
        "labstream.testing.fake",
        "labstream.testing.fake",
        "An in-memory Atomscale for your own tests: no socket, no emulator process.",
        None,
    ),
    (
        "labstream.testing.atomscale",
        "labstream.testing.atomscale",
        "A local Atomscale API for tests, demos and the examples.",
        ["run_in_thread", "FaultPlan", "AtomscaleEmulator", "StoredStream"],
    ),
    (
        "labstream.testing.atlas",
        "labstream.testing.atlas",
        "A local ATLAS Stream API and key generator that record every packet.",
        ["run_in_thread", "AtlasFaultPlan", "AtlasEmulator", "load_record"],
    ),
    (
        "labstream.testing.atlas_checker",
        "labstream.testing.atlas_checker",
        "The ATLAS protocol rules as named checks over what the emulator recorded.",
        ["check_session", "check_sessions", "format_report", "SessionReport", "ParameterData"],
    ),
]

_SECTION_RE = re.compile(
    r"^(Args|Arguments|Attributes|Returns|Yields|Raises|Example|Examples|Note|Notes):\s*$"
)
_ITEM_SECTIONS = {"Args", "Arguments", "Attributes", "Raises"}
_ROLE_RE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`(~?)([^`]+)`")
_LITERAL_RE = re.compile(r"``(.+?)``")
_ITEM_RE = re.compile(r"^([\w.*, ]+?)(?: \(([^)]*)\))?:\s*(.*)$")
_MAX_SIG = 92


# --------------------------------------------------------------------------------------------------
# Docstrings to Markdown


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _inline(text: str) -> str:
    """reST inline markup to Markdown: roles and double-backtick literals become code spans."""
    return _LITERAL_RE.sub(lambda m: f"`{m.group(1)}`", _ROLE_RE.sub(_role, text))


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def docstring_to_markdown(doc: str) -> str:
    """Convert one cleaned docstring (``inspect.getdoc``) to Markdown."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    section: str | None = None
    while i < len(lines):
        line = lines[i]
        match = _SECTION_RE.match(line)
        if match:
            section = match.group(1)
            out += ["", f"**{section}:**", ""]
            i += 1
            continue
        if section is not None and line and _indent_of(line) == 0:
            section = None
            out.append("")
        if section in _ITEM_SECTIONS and line.strip():
            base = _indent_of(line)
            item = line.strip()
            i += 1
            while i < len(lines) and lines[i].strip() and _indent_of(lines[i]) > base:
                item += " " + lines[i].strip()
                i += 1
            m = _ITEM_RE.match(item)
            if m:
                names = ", ".join(f"`{n.strip()}`" for n in m.group(1).split(","))
                kind = f" ({m.group(2)})" if m.group(2) else ""
                out.append(f"- {names}{kind}: {_inline(m.group(3))}")
            else:
                out.append(f"- {_inline(item)}")
            continue
        if section is not None and line.strip():
            out.append(_inline(line.strip()))
            i += 1
            continue
        if line.rstrip().endswith("::"):
            # A literal block follows: keep it verbatim in a fence.
            intro = line.strip()[:-1]  # "Use::" -> "Use:"; a bare "::" -> ":"
            if intro != ":":
                out.append(_inline(intro))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > 0):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            depth = min((_indent_of(b) for b in block if b.strip()), default=0)
            out += ["", "```text", *(b[depth:] for b in block), "```", ""]
            continue
        out.append(_inline(line.strip()) if _indent_of(line) < 4 else line)
        i += 1
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


# --------------------------------------------------------------------------------------------------
# Signatures


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def _default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return "<factory>" if text.startswith("<factory>") else text


def format_signature(name: str, obj: Callable[..., Any], *, skip_self: bool = False) -> str:
    """``name(params) -> return``, one parameter per line when long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params: list[str] = []
    seen_kw_only = False
    items = list(sig.parameters.values())
    if skip_self and items and items[0].name in ("self", "cls"):
        items = items[1:]
    for k, p in enumerate(items):
        if p.kind is p.KEYWORD_ONLY and not seen_kw_only:
            params.append("*")
            seen_kw_only = True
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, seen_kw_only = f"*{p.name}", True
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        ann = _annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {_default(p.default)}" if ann else f"={_default(p.default)}"
        params.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            k + 1 == len(items) or items[k + 1].kind is not p.POSITIONAL_ONLY
        ):
            params.append("/")
    ret = _annotation(sig.return_annotation)
    tail = f" -> {ret}" if ret and ret != "None" else ""
    one_line = f"{name}({', '.join(params)}){tail}"
    if len(one_line) <= _MAX_SIG:
        return one_line
    body = "".join(f"    {p},\n" for p in params)
    return f"{name}(\n{body}){tail}"


# --------------------------------------------------------------------------------------------------
# Objects


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    return docstring_to_markdown(doc) if doc else "*(no docstring)*\n"


class _Anchors:
    """Heading anchors as GitHub makes them: a repeated heading gets ``-1``, ``-2``, ..."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        base = re.sub(r"[^a-z0-9 _-]", "", text.lower()).replace(" ", "-")
        n = self._seen.get(base, 0)
        self._seen[base] = n + 1
        return base if n == 0 else f"{base}-{n}"


def _own_members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined by the class itself, in source order."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
            yield name, value


def _fence(text: str) -> list[str]:
    return ["```text", text, "```", ""]


def document_class(qual: str, cls: type) -> list[str]:
    out = [f"### {qual}", ""]
    if issubclass(cls, BaseException):
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        out += _fence(f"class {cls.__name__}({bases})")
    elif dataclasses.is_dataclass(cls) or "__init__" in vars(cls):
        out += _fence("class " + format_signature(cls.__name__, cls))
    else:
        out += _fence(f"class {cls.__name__}")
    out += [_doc(cls)]
    for name, member in _own_members(cls):
        if isinstance(member, property):
            out += [f"#### {cls.__name__}.{name}", "", "*property*", ""]
            doc = inspect.getdoc(member)
            if doc:
                out.append(docstring_to_markdown(doc))
            continue
        func = member.__func__ if isinstance(member, staticmethod | classmethod) else member
        prefix = "async " if inspect.iscoroutinefunction(func) else ""
        prefix = "classmethod " + prefix if isinstance(member, classmethod) else prefix
        sig = format_signature(f"{cls.__name__}.{name}", func, skip_self=True)
        out += [f"#### {cls.__name__}.{name}", "", *_fence(prefix + sig)]
        doc = inspect.getdoc(func)
        if doc:
            out.append(docstring_to_markdown(doc))
    return out


def document_function(qual: str, func: Any) -> list[str]:
    target = getattr(func, "__wrapped__", func)
    prefix = "async " if inspect.iscoroutinefunction(target) else ""
    return [f"### {qual}", "", *_fence(prefix + format_signature(qual, target)), _doc(target)]


def render() -> str:
    """The whole of docs/api.md."""
    head = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the docstrings. Do not edit by hand:",
        "     change the docstring, then run `python scripts/gen_api_docs.py`. -->",
        "",
        "Generated from the docstrings of labstream "
        f"{importlib.import_module('labstream').__version__}. The guides are in "
        "[index.md](index.md).",
        "",
    ]
    toc: list[str] = []
    body: list[str] = []
    anchor = _Anchors()
    for module_name, heading, intro, names in SECTIONS:
        module = importlib.import_module(module_name)
        chosen = names if names is not None else [n for n in module.__all__ if n[0] != "_"]
        toc.append(f"- [{heading}](#{anchor(heading)})")
        body += [f"## {heading}", "", intro, ""]
        entries: list[tuple[str, Any]] = [(n, getattr(module, n)) for n in chosen]
        # Classes and functions in a stable order: the streamers first, then alphabetical.
        first = ["TimeseriesStreamer", "AsyncTimeseriesStreamer", "StreamHandle"]
        entries.sort(key=lambda e: (first.index(e[0]) if e[0] in first else 99, e[0].lower()))
        for name, obj in entries:
            toc.append(f"  - [{name}](#{anchor(name)})")
            if inspect.isclass(obj):
                body += document_class(name, obj)
            elif callable(obj):
                body += document_function(name, obj)
    text = "\n".join([*head, *toc, "", *body])
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/api.md from the docstrings.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
