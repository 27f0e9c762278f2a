"""The documentation tells the truth: its Python examples run, its links resolve, api.md is current.

Every fenced block marked ``python`` (or ``py``) in ``docs/*.md`` and in ``README.md`` is executed,
in the order it appears, each in a fresh namespace (so every example is self-contained), with the
working directory set to a temporary directory and no real destination configured. A block can be
excluded only by a comment on the line just before its fence:

* ``<!-- not-run: REASON -->``: illustrative (needs an account, real hardware, ...). Keep these few.
* ``<!-- requires: MODULE -->``: run only when MODULE can be imported (e.g. matplotlib).

A failing block is reported with its file and line. Each file runs in its own process, all files
at once, so one example's threads or signal handlers cannot leak into another's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT_S = 90.0

#: Files whose Python blocks cannot run yet, with the reason (shown as a skip).
NOT_RUNNABLE = {}

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not-run|requires):\s*(.*?)\s*-->\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # line of the first code line (1-based)
    code: str
    skip: str | None  # why it is not run, or None


def extract(path: Path) -> list[Block]:
    """Every ``python`` block of a Markdown file, with its line number and skip marker."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang in ("python", "py"):
            skip = None
            prev = i - 1
            while prev >= 0 and not lines[prev].strip():
                prev -= 1
            marker = _MARKER.match(lines[prev]) if prev >= 0 else None
            if marker and marker.group(1) == "not-run":
                skip = f"not-run: {marker.group(2)}"
            elif marker and importlib.util.find_spec(marker.group(2)) is None:
                skip = f"requires {marker.group(2)}, not installed"
            blocks.append(Block(path, start + 1, "\n".join(lines[start:end]), skip))
        i = end + 1
    return blocks


def doc_files() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


# The child process: run each block in a fresh namespace; code keeps its Markdown line numbers.
_RUNNER = """
import json, sys, traceback
failures = []
for item in json.load(open(sys.argv[1], encoding="utf-8")):
    code = "\\n" * (item["line"] - 1) + item["code"]
    try:
        exec(compile(code, item["path"], "exec"), {"__name__": "__main__"})
    except BaseException:
        failures.append(f"{item['path']}:{item['line']}\\n{traceback.format_exc()}")
with open(sys.argv[2], "w", encoding="utf-8") as out:
    json.dump(failures, out)
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AS_API_", "ATOMSCALE_", "LABSTREAM_"))
    }
    env["LABSTREAM_SPOOL_DIR"] = str(tmp / "spool")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def doc_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Start one process per file with runnable blocks; each test waits for its own."""
    procs: dict[str, subprocess.Popen[str]] = {}
    for path in doc_files():
        runnable = [b for b in extract(path) if b.skip is None]
        if not runnable or path.name in NOT_RUNNABLE:
            continue
        tmp = tmp_path_factory.mktemp(path.stem)
        payload = tmp / "blocks.json"
        payload.write_text(
            json.dumps([{"path": str(b.path), "line": b.line, "code": b.code} for b in runnable]),
            encoding="utf-8",
        )
        procs[path.name] = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(payload), str(tmp / "failures.json")],
            cwd=tmp,
            env=_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", [p.name for p in doc_files()])
def test_python_blocks_run(name: str, doc_runs: dict[str, subprocess.Popen[str]]) -> None:
    if name in NOT_RUNNABLE:
        pytest.skip(NOT_RUNNABLE[name])
    if name not in doc_runs:
        pytest.skip("no runnable python block")
    proc = doc_runs[name]
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{name}: examples did not finish in {TIMEOUT_S:.0f} s\n{out}\n{err}")
    result = Path(proc.args[-1])
    assert result.exists(), f"{name}: the runner died (exit {proc.returncode})\n{out}\n{err}"
    failures = json.loads(result.read_text(encoding="utf-8"))
    assert not failures, "\n\n".join(failures)


def test_markers_are_well_formed_and_few() -> None:
    """Every not-run marker gives a reason; at most a few blocks per file are not run."""
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"<!--\s*not-run:?(.*?)-->", text):
            assert m.group(1).strip(), f"{path.name}: not-run marker without a reason"
        blocks = extract(path)
        skipped = [b for b in blocks if b.skip and b.skip.startswith("not-run")]
        assert len(skipped) <= 3, f"{path.name}: {len(skipped)} blocks marked not-run"


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        base = re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_relative_links_resolve() -> None:
    """Links between docs (and to examples/) point at files and headings that exist."""
    for path in sorted(DOCS.glob("*.md")):
        for target in _LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            file = (path.parent / name).resolve() if name else path
            assert file.exists(), f"{path.name}: broken link to {target}"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file), f"{path.name}: no heading for {target}"


def test_api_reference_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_api_docs
    finally:
        sys.path.pop(0)
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    assert current == gen_api_docs.render(), (
        "docs/api.md is out of date: run python scripts/gen_api_docs.py"
    )
