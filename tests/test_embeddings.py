"""hashing.embeddings: Barz & Denzler's class embeddings reproduce the hierarchy similarities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hashing.embeddings import class_embeddings, write_embeddings
from hashing.hierarchy import ClassHierarchy, load_hierarchy

DATA = Path(__file__).resolve().parent.parent / "data"


def incremental_embedding(sim: np.ndarray) -> np.ndarray:
    """The paper's construction, step by step: class c gets the dot products sim[c, :c] with the
    classes before it and is completed to unit length along a new axis."""
    n = len(sim)
    emb = np.zeros((n, n))
    emb[0, 0] = 1.0
    for c in range(1, n):
        emb[c, :c] = np.linalg.solve(emb[:c, :c], sim[c, :c])
        emb[c, c] = np.sqrt(1.0 - emb[c, :c] @ emb[c, :c])
    return emb


@pytest.mark.parametrize("dataset, n_classes", [("cifar100", 100), ("cifar10", 10)])
def test_dot_products_equal_similarities(dataset, n_classes):
    h = load_hierarchy(DATA / dataset / "parent-child.txt")
    emb = class_embeddings(h)
    assert emb.shape == (n_classes, n_classes)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb @ emb.T, h.similarity_matrix(), rtol=0, atol=1e-6)
    # Different classes really are apart: no two rows coincide.
    assert (emb @ emb.T - np.eye(n_classes)).max() < 1.0 - 1e-3


def test_same_vectors_as_the_incremental_construction():
    h = load_hierarchy(DATA / "cifar100" / "parent-child.txt")
    np.testing.assert_allclose(class_embeddings(h), incremental_embedding(h.similarity_matrix()), atol=1e-9)


def test_single_level_tree_gives_orthonormal_classes():
    emb = class_embeddings(ClassHierarchy.from_pairs([(3, 0), (3, 1), (3, 2)]))
    np.testing.assert_allclose(emb @ emb.T, np.eye(3), atol=1e-12)


def test_write_embeddings_writes_the_named_file(tmp_path):
    out = tmp_path / "sub" / "cifar10-embeddings.bin"
    written = write_embeddings(DATA / "cifar10" / "parent-child.txt", out)
    assert out.is_file() and not out.with_suffix(".bin.npy").exists()
    np.testing.assert_array_equal(np.load(out), written)


def test_cli_writes_the_matrix_and_a_summary(tmp_path):
    from click.testing import CliRunner

    from iwan.cli.hash import hash_group

    out = tmp_path / "emb.npy"
    hierarchy = DATA / "cifar10" / "parent-child.txt"
    result = CliRunner().invoke(hash_group, ["embeddings", "--hierarchy", str(hierarchy), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["classes"] == 10 and summary["root"] == "whole" and summary["max_error"] < 1e-6
    emb = np.load(out)
    np.testing.assert_allclose(emb @ emb.T, load_hierarchy(hierarchy).similarity_matrix(), atol=1e-6)
    text = CliRunner().invoke(hash_group, ["embeddings", "--hierarchy", str(hierarchy), "--out", str(out)])
    assert "wrote 10 class embeddings of dimension 10" in text.output


def test_cli_reports_a_bad_hierarchy(tmp_path):
    from click.testing import CliRunner

    from iwan.cli.hash import hash_group

    bad = tmp_path / "bad.txt"
    bad.write_text("5 0\n6 0\n")
    result = CliRunner().invoke(hash_group, ["embeddings", "--hierarchy", str(bad), "--out", str(tmp_path / "e.npy")])
    assert result.exit_code != 0 and "bad.txt:2: '6 0' gives 0 a second parent 6" in str(result.exception)
