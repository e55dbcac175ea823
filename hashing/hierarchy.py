"""A class hierarchy (a tree over class ids) and the semantic similarity it defines.

Format (Barz & Denzler's `*.parent-child.txt`): one "parent child" pair of integer ids per line.
Class ids are 0..n_classes-1 and must be the leaves; inner nodes take any other id. An optional
names file holds "id name" lines. Blank lines and lines starting with '#' are ignored.

The similarity of two classes is Barz & Denzler's (WACV 2019):

    sim(a, b) = 1 - height(lcs(a, b)) / height(root)

where height is the longest path down to a leaf (leaves 0) and lcs the lowest common subsumer.
`ClassHierarchy.similarity_matrix()` is the one implementation of it in the project: the class
embeddings and the hierarchical precision metric both use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ClassHierarchy:
    """A validated tree: a single root, one parent per node, class ids 0..n_classes-1 as leaves."""

    parent: dict[int, int]
    """Each node's parent; the root has none."""
    children: dict[int, tuple[int, ...]]
    """Each inner node's children, in file order."""
    root: int
    n_classes: int
    names: dict[int, str] = field(default_factory=dict)
    heights: dict[int, int] = field(init=False, repr=False)
    depths: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        depths = {self.root: 0}
        order = [self.root]  # parents before children
        for node in order:
            for child in self.children.get(node, ()):
                depths[child] = depths[node] + 1
                order.append(child)
        heights: dict[int, int] = {}
        for node in reversed(order):
            kids = self.children.get(node, ())
            heights[node] = 1 + max(heights[c] for c in kids) if kids else 0
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "heights", heights)

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[tuple[int, int]],
        n_classes: int | None = None,
        names: dict[int, str] | None = None,
        source: str = "<pairs>",
    ) -> ClassHierarchy:
        """Build and validate from (parent, child) pairs; `source` names them in errors."""
        return _build([(p, c, i) for i, (p, c) in enumerate(pairs, 1)], n_classes, names, source)

    @property
    def nodes(self) -> list[int]:
        return sorted(self.heights)

    @property
    def max_height(self) -> int:
        """The root's height, the normaliser of the similarity."""
        return self.heights[self.root]

    def name(self, node: int) -> str:
        return self.names.get(node, str(node))

    def ancestors(self, node: int) -> list[int]:
        """`node` itself, then its parent, ..., up to the root."""
        self._check_node(node)
        path = [node]
        while path[-1] in self.parent:
            path.append(self.parent[path[-1]])
        return path

    def leaves_under(self, node: int) -> list[int]:
        self._check_node(node)
        stack, leaves = [node], []
        while stack:
            n = stack.pop()
            kids = self.children.get(n, ())
            if kids:
                stack.extend(kids)
            else:
                leaves.append(n)
        return sorted(leaves)

    def lcs(self, a: int, b: int) -> int:
        """The lowest common subsumer (in a tree: the deepest common ancestor) of two nodes."""
        above_a = set(self.ancestors(a))
        return next(n for n in self.ancestors(b) if n in above_a)

    def similarity(self, a: int, b: int) -> float:
        return 1.0 - self.heights[self.lcs(a, b)] / self.max_height

    def similarity_matrix(self) -> np.ndarray:
        """(n_classes, n_classes) float64: 1 - height(lcs(a, b)) / height(root), symmetric, ones on
        the diagonal. Row/column i is class id i."""
        lcs_height = np.zeros((self.n_classes, self.n_classes), dtype=np.float64)
        # Visiting nodes root-first, each inner node overwrites the block of its leaf pairs, so a
        # pair ends up holding the height of the deepest node above both: their lcs.
        for node in sorted(self.children, key=self.depths.__getitem__):
            under = np.asarray(self.leaves_under(node))
            lcs_height[np.ix_(under, under)] = self.heights[node]
        np.fill_diagonal(lcs_height, 0.0)
        return 1.0 - lcs_height / self.max_height

    def _check_node(self, node: int) -> None:
        if node not in self.heights:
            raise ValueError(f"node {node} is not in the hierarchy (root {self.root}); use one of its ids")


NAMES_FILE = "class_names.txt"
"""The names file looked for beside a parent-child file when none is given (the data/ layout)."""


def load_hierarchy(
    path: str | Path, names_path: str | Path | None = None, n_classes: int | None = None
) -> ClassHierarchy:
    """Read a parent-child file (and a names file: `names_path`, else NAMES_FILE beside `path` if
    there is one) and validate it.

    `n_classes` defaults to the number of leaves. Raises ValueError "path:line: what is wrong" for a
    malformed line, a node with two parents, a cycle, several roots, or a class id that is not a leaf.
    """
    path = Path(path)
    edges = []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdecimal() for p in parts):
            raise ValueError(
                f"{path}:{lineno}: expected 'parent child' (two non-negative integer ids), got {line!r}"
            )
        edges.append((int(parts[0]), int(parts[1]), lineno))
    hierarchy = _build(edges, n_classes, None, str(path))
    if names_path is None:
        names_path = path.with_name(NAMES_FILE)
        if not names_path.is_file():
            return hierarchy
    names, name_lines = _read_names(Path(names_path))
    for node, lineno in name_lines.items():
        if node not in hierarchy.heights:
            raise ValueError(f"{names_path}:{lineno}: id {node} is not a node of {path}; remove the line")
    return replace(hierarchy, names=names)


def load_names(path: str | Path) -> dict[int, str]:
    """Read "id name" lines (the name may contain spaces)."""
    return _read_names(Path(path))[0]


def _read_names(path: Path) -> tuple[dict[int, str], dict[int, int]]:
    names: dict[int, str] = {}
    name_lines: dict[int, int] = {}
    for lineno, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdecimal():
            raise ValueError(f"{path}:{lineno}: expected 'id name' (a non-negative integer, a name), got {line!r}")
        node = int(parts[0])
        if node in names:
            raise ValueError(f"{path}:{lineno}: id {node} is named twice (first at line {name_lines[node]})")
        names[node], name_lines[node] = parts[1].strip(), lineno
    return names, name_lines


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield lineno, line


def _build(
    edges: list[tuple[int, int, int]],
    n_classes: int | None,
    names: dict[int, str] | None,
    source: str,
) -> ClassHierarchy:
    if not edges:
        raise ValueError(f"{source}: no 'parent child' pairs; a hierarchy needs at least one")
    parent: dict[int, int] = {}
    parent_line: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    first_as_parent: dict[int, int] = {}
    for p, c, lineno in edges:
        if c in parent:
            what = "is repeated" if parent[c] == p else f"gives {c} a second parent {p} (a tree allows one)"
            raise ValueError(
                f"{source}:{lineno}: '{p} {c}' {what}; {c} already has parent {parent[c]} "
                f"from line {parent_line[c]}"
            )
        parent[c], parent_line[c] = p, lineno
        children.setdefault(p, []).append(c)
        first_as_parent.setdefault(p, lineno)

    nodes = set(parent) | set(children)
    roots = sorted(n for n in nodes if n not in parent)
    reachable = _reachable(roots, children)
    if len(reachable) < len(nodes):
        raise ValueError(_cycle_message(min(nodes - reachable), parent, parent_line, source))
    if len(roots) > 1:
        where = ", ".join(f"{r} (line {first_as_parent[r]})" for r in roots[:10])
        raise ValueError(
            f"{source}: {len(roots)} roots: {where}; a hierarchy needs a single root: "
            "add a common parent for them"
        )

    leaves = sorted(n for n in nodes if n not in children)
    if n_classes is None:
        n_classes = len(leaves)
    for node in range(n_classes):
        if node in children:
            raise ValueError(
                f"{source}:{first_as_parent[node]}: class id {node} has children; class ids "
                f"0..{n_classes - 1} must be leaves: give the inner node an id >= {n_classes}"
            )
        if node not in nodes:
            raise ValueError(
                f"{source}: class id {node} does not occur in the hierarchy; every class id "
                f"0..{n_classes - 1} must be a leaf of it"
            )
    extra = [leaf for leaf in leaves if leaf >= n_classes]
    if extra:
        raise ValueError(
            f"{source}:{parent_line[extra[0]]}: leaf {extra[0]} is not a class id 0..{n_classes - 1}; "
            "every leaf must be a class (remove it or renumber the classes)"
        )

    unknown = sorted(set(names or {}) - nodes)
    if unknown:
        raise ValueError(f"{source}: ids {unknown[:10]} are named but are not nodes; remove their names")
    return ClassHierarchy(
        parent=parent,
        children={p: tuple(cs) for p, cs in children.items()},
        root=roots[0],
        n_classes=n_classes,
        names=dict(names or {}),
    )


def _reachable(roots: list[int], children: dict[int, list[int]]) -> set[int]:
    seen, stack = set(roots), list(roots)
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def _cycle_message(start: int, parent: dict[int, int], parent_line: dict[int, int], source: str) -> str:
    # A node no root reaches has a parent chain that never ends: follow it until it repeats.
    seen: list[int] = []
    node = start
    while node not in seen:
        seen.append(node)
        node = parent[node]
    cycle = seen[seen.index(node) :]
    chain = " -> ".join(str(n) for n in [*reversed(cycle), cycle[-1]])
    last = max(cycle, key=parent_line.__getitem__)  # the edge read last completes the cycle
    return (
        f"{source}:{parent_line[last]}: '{parent[last]} {last}' closes a cycle "
        f"(parent -> child: {chain}); a hierarchy must be a tree"
    )
