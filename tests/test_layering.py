"""hashing is a library under iwan: no file of it imports iwan, at the top or inside a function,
by an import statement or by naming an iwan module to importlib or importlib.resources."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HASHING = Path(__file__).resolve().parent.parent / "hashing"
APPLICATION = "iwan"
IMPORTERS = {"import_module", "__import__", "find_spec", "files", "as_file", "open_text", "open_binary",
             "read_text", "read_binary", "path", "contents", "is_resource"}
"""Functions of importlib, importlib.resources and builtins that take a module or package name."""


def _names_application(name: str | None) -> bool:
    return name is not None and (name == APPLICATION or name.startswith(APPLICATION + "."))


def _application_imports(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if _names_application(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _names_application(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in IMPORTERS:
                found += [
                    f"line {node.lineno}: {called}({arg.value!r})"
                    for arg in [*node.args, *(k.value for k in node.keywords)]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _names_application(arg.value)
                ]
    return found


def test_no_file_under_hashing_imports_iwan():
    files = sorted(HASHING.rglob("*.py"))
    assert files, f"no Python files under {HASHING}"
    offences = [
        f"{path.relative_to(HASHING.parent)} {what}"
        for path in files
        for what in _application_imports(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not offences, "hashing must not import iwan (register what it needs from the iwan side):\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "source",
    [
        "import iwan",
        "import numpy, iwan.config as c",
        "from iwan.vision import predictors",
        "def f():\n    from iwan.tv import models\n",
        "class A:\n    def m(self):\n        import iwan.data\n",
        "from importlib.resources import files\nroot = files('iwan.data')",
        "import importlib\nimportlib.import_module('iwan.vision.predictors')",
        "import importlib.resources\ndef f():\n    return importlib.resources.files(package='iwan')",
        "__import__('iwan.config')",
    ],
)
def test_the_check_catches_every_way_of_importing_iwan(source):
    assert _application_imports(source, "<test>")


@pytest.mark.parametrize(
    "source",
    ["import iwanted", "from hashing.net import HashNet", "from . import codes", "x = 'iwan.data'", "files('hashing')"],
)
def test_the_check_leaves_other_imports_alone(source):
    assert not _application_imports(source, "<test>")


def module_cycles() -> list[list[str]]:
    """Import cycles between modules of iwan and hashing (imports under TYPE_CHECKING aside), as
    grimp (import-linter's graph) reads them, function-level imports included."""
    import grimp
    import networkx as nx

    graph = grimp.build_graph("iwan", "hashing", exclude_type_checking_imports=True)
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # A package's __init__ re-exporting its own modules is the registry idiom, not a cycle
            # between files: `import iwan.retrieval.x` runs iwan/retrieval/__init__.py first anyway.
            if not module.startswith(imported + ".") and not imported.startswith(module + "."):
                edges.add_edge(module, imported)
    return [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]


def test_no_import_cycles_between_modules():
    cycles = module_cycles()
    assert not cycles, "modules that import each other (break the cycle: move the shared part down):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """The check can fail: two modules of a package on sys.path that import each other."""
    import grimp
    import networkx as nx

    package = tmp_path / "loop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from loop import b\n")
    (package / "b.py").write_text("def f():\n    from loop import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("loop", cache_dir=None)
    edges = nx.DiGraph((m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m))
    assert [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1] == [["loop.a", "loop.b"]]
