"""Every ```python block of README.md runs as written.

Each block is executed on its own, in a fresh namespace, against a small real environment
(tests/readme_env.py: the embedded PostgreSQL, test norms, a tiny CIFAR-10 registered, predicted
and encoded, the `cifar10` collection, image files in the working folder), as a user would run it
after `bash scripts/main.sh`. A block fails its test when it raises, and when it runs no code of
iwan or hashing (an empty block, or one of imports only, proves nothing). Each test is named
after the README line its block starts on, and tracebacks point at README lines.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
from pathlib import Path

import pytest
import readme_env

import hashing
import iwan

README = Path(__file__).resolve().parent.parent / "README.md"
PACKAGES = tuple(str(Path(package.__file__).parent) + os.sep for package in (iwan, hashing))
LAZY_EXPORTS = str(Path(iwan.__file__))
"""`iwan/__init__.py` only forwards names to their modules: running it is not running iwan."""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of each ```python fence, in order."""
    blocks, fence, start, code = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, start, code = stripped[3:].strip().lower(), number + 1, []
        elif stripped == "```":
            if fence == "python":
                blocks.append((start, "\n".join(code)))
            fence = None
        else:
            code.append(line)
    assert fence is None, f"README.md: the fence opened on line {start - 1} is never closed"
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@contextlib.contextmanager
def iwan_calls():
    """The first function of iwan or hashing called meanwhile (in this thread), as a one-item list."""
    called: list[str] = []

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(PACKAGES) and code.co_name != "<module>" \
                    and code.co_filename != LAZY_EXPORTS:
                called.append(f"{code.co_name} ({code.co_filename}:{code.co_firstlineno})")
                sys.setprofile(None)  # one is enough: the rest runs at full speed

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(previous)


@pytest.fixture
def opened_collections(monkeypatch):
    """Every LiveCollection a block opens, closed after it (their followers hold connections)."""
    from iwan.collections.live import LiveCollection

    opened = []
    original = LiveCollection.open.__func__

    def open_and_keep(cls, *args, **kwargs):
        live = original(cls, *args, **kwargs)
        opened.append(live)
        return live

    monkeypatch.setattr(LiveCollection, "open", classmethod(open_and_keep))
    yield opened
    for live in opened:
        live.close()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 5, f"README.md has {len(BLOCKS)} ```python blocks; its examples went missing"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_block_runs(line, code, engine, tmp_path, monkeypatch, opened_collections, one_torch_thread):
    tree = ast.parse(code, filename=str(README))
    ast.increment_lineno(tree, line - 1)
    statements = [s for s in tree.body if not isinstance(s, ast.Import | ast.ImportFrom)]
    assert statements, f"README.md:{line}: the block holds only imports"
    compiled = compile(tree, str(README), "exec")

    readme_env.prepare(tmp_path, monkeypatch)
    namespace: dict = {"__name__": "__readme__"}
    try:
        with iwan_calls() as called:
            exec(compiled, namespace)
    finally:
        for value in namespace.values():
            if type(value).__name__ == "Engine" and hasattr(value, "dispose"):
                value.dispose()
    assert called, f"README.md:{line}: the block ran no code of iwan or hashing"
