"""hashing.hierarchy: loading, validation, heights, lcs and the similarity matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashing.hierarchy import ClassHierarchy, load_hierarchy, load_names

DATA = Path(__file__).resolve().parent.parent / "data"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def reference_similarity(pairs: list[tuple[int, int]], n_classes: int) -> np.ndarray:
    """Barz & Denzler's definition, computed naively pair by pair from the raw edges."""
    parent = {c: p for p, c in pairs}
    children: dict[int, list[int]] = {}
    for p, c in pairs:
        children.setdefault(p, []).append(c)

    def height(node: int) -> int:
        return 1 + max(height(c) for c in children[node]) if node in children else 0

    def path_up(node: int) -> list[int]:
        return [node] + (path_up(parent[node]) if node in parent else [])

    root = path_up(0)[-1]
    sim = np.empty((n_classes, n_classes))
    for a in range(n_classes):
        for b in range(n_classes):
            lcs = next(n for n in path_up(a) if n in path_up(b))
            sim[a, b] = 1 - height(lcs) / height(root)
    return sim


def read_pairs(path: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]


def write(tmp_path: Path, text: str, name: str = "h.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.real_data("barz")
def test_cifar100_copy_is_barz_original(shared_data):
    original = shared_data / "barz-cifar100"
    assert (DATA / "cifar100" / "parent-child.txt").read_bytes() == (original / "cifar.parent-child.txt").read_bytes()
    for name in ("class_names.txt", "hierarchy.txt", "LICENSE"):
        assert (DATA / "cifar100" / name).read_bytes() == (original / name).read_bytes()


def test_cifar100_structure_and_similarity():
    path = DATA / "cifar100" / "parent-child.txt"
    h = load_hierarchy(path)
    assert (h.n_classes, h.root, h.name(h.root), h.max_height) == (100, 108, "entity", 8)
    assert h.name(3) == "bear" and h.name(h.lcs(3, 97)) == "carnivore"  # bear, wolf
    assert h.heights[h.lcs(3, 97)] == 2 and h.similarity(3, 97) == 0.75
    assert h.ancestors(3) == [3, 147, 144, 141, 130, 110, 108]
    sim = h.similarity_matrix()
    assert sim.dtype == np.float64 and sim.shape == (100, 100)
    np.testing.assert_array_equal(sim, reference_similarity(read_pairs(path), 100))


def test_cifar10_hierarchy_follows_torchvision_order():
    path = DATA / "cifar10" / "parent-child.txt"
    h = load_hierarchy(path)
    assert [h.names[i] for i in range(10)] == CIFAR10_CLASSES
    assert h.name(h.root) == "whole" and h.max_height == 4
    sim = h.similarity_matrix()
    np.testing.assert_array_equal(sim, reference_similarity(read_pairs(path), 10))
    cat, dog, deer, bird, airplane, ship, truck = 3, 5, 4, 2, 0, 8, 9
    assert sim[cat, dog] == 0.75 and sim[cat, deer] == 0.5 and sim[cat, bird] == 0.25
    assert sim[airplane, ship] == 0.75 and sim[airplane, truck] == 0.5 and sim[airplane, cat] == 0.0


def test_heights_are_longest_paths_down():
    h = ClassHierarchy.from_pairs([(10, 0), (10, 11), (11, 1), (11, 12), (12, 2)])
    assert h.heights == {0: 0, 1: 0, 2: 0, 12: 1, 11: 2, 10: 3}
    assert h.lcs(1, 2) == 11 and h.lcs(0, 2) == 10 and h.lcs(2, 2) == 2
    assert h.similarity(1, 2) == pytest.approx(1 - 2 / 3)
    assert h.leaves_under(11) == [1, 2]


def test_names_file_beside_the_hierarchy_is_used(tmp_path):
    path = write(tmp_path, "2 0\n2 1\n")
    assert load_hierarchy(path).names == {}
    write(tmp_path, "0 a cat\n1 dog\n2 animal\n", "class_names.txt")
    assert load_hierarchy(path).names == {0: "a cat", 1: "dog", 2: "animal"}
    other = write(tmp_path, "0 x\n", "other.txt")
    assert load_hierarchy(path, names_path=other).names == {0: "x"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("5 0\n5 1\n6 5\n5 6\n", "h.txt:4: '5 6' closes a cycle"),
        ("5 5\n", "h.txt:1: '5 5' closes a cycle"),
        ("5 0\n5 1\n6 1\n", "h.txt:3: '6 1' gives 1 a second parent 6"),
        ("5 0\n5 1\n5 1\n", "h.txt:3: '5 1' is repeated"),
        ("5 0\n6 1\n", "2 roots: 5 (line 1), 6 (line 2)"),
        ("5 0\n5 1\n1 2\n", "h.txt:3: class id 1 has children"),
        ("5 0\n\n5 x\n", "h.txt:3: expected 'parent child'"),
        ("5 0 1\n", "h.txt:1: expected 'parent child'"),
        ("5 -1\n", "h.txt:1: expected 'parent child'"),
        ("", "no 'parent child' pairs"),
    ],
)
def test_bad_hierarchies_say_where(tmp_path, text, message):
    with pytest.raises(ValueError) as err:
        load_hierarchy(write(tmp_path, text))
    assert message in str(err.value)
    assert str(tmp_path / "h.txt") in str(err.value)


def test_unknown_class_and_leaf_that_is_no_class(tmp_path):
    path = write(tmp_path, "# a comment\n5 0\n5 1\n5 2\n")
    with pytest.raises(ValueError, match="class id 3 does not occur in the hierarchy"):
        load_hierarchy(path, n_classes=4)
    with pytest.raises(ValueError, match=r"h.txt:4: leaf 2 is not a class id 0..1"):
        load_hierarchy(path, n_classes=2)
    assert load_hierarchy(path).n_classes == 3


def test_bad_names_files(tmp_path):
    path = write(tmp_path, "5 0\n5 1\n")
    with pytest.raises(ValueError, match=r"n.txt:2: id 7 is not a node"):
        load_hierarchy(path, names_path=write(tmp_path, "0 a\n7 b\n", "n.txt"))
    with pytest.raises(ValueError, match=r"n.txt:2: id 0 is named twice \(first at line 1\)"):
        load_names(write(tmp_path, "0 a\n0 b\n", "n.txt"))
    with pytest.raises(ValueError, match=r"n.txt:1: expected 'id name'"):
        load_names(write(tmp_path, "zero a\n", "n.txt"))


def test_unknown_node_queries_fail():
    h = ClassHierarchy.from_pairs([(2, 0), (2, 1)])
    with pytest.raises(ValueError, match="node 9 is not in the hierarchy"):
        h.lcs(0, 9)
