"""The class hierarchies that ship with iwan: data/<dataset>/parent-child.txt (and class_names.txt
beside it), installed as the package `iwan.data`. hashing.hierarchy reads them from the path."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

HIERARCHY_FILE = "parent-child.txt"


def shipped_hierarchy(dataset: str) -> Path:
    """The parent-child file shipped for a data set (a name such as cifar100, not a spec);
    FileNotFoundError naming the shipped ones when there is none."""
    root = files("iwan.data")
    path = Path(str(root / dataset / HIERARCHY_FILE))
    if not path.is_file():
        shipped = sorted(p.name for p in root.iterdir() if (p / HIERARCHY_FILE).is_file())
        raise FileNotFoundError(
            f"no class hierarchy ships for data set {dataset!r} (only for {', '.join(shipped)}): pass --hierarchy PATH "
            "(parent-child id pairs, one per line)"
        )
    return path

