"""`iwan hash train` as a user runs it: a small image folder with its own hierarchy, the small CNN's
recipe end to end (whitening, auxiliary classifier, lookahead, mirror-averaged test figures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_cli_norms import iwan

from hashing.codes import pack_activations
from hashing.inference import embed
from hashing.net import load_checkpoint
from iwan.datasets.loaders import load_dataset
from iwan.db import images as image_store
from iwan.db.codes import load_codes

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 6)):
        for name, colour in COLOURS.items():
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "images" / split / name / f"{i}.png")
    # Class ids follow the sorted folder names: blue 0, green 1, red 2; green and red share a parent.
    (tmp_path / "hierarchy.txt").write_text("4 0\n4 3\n3 1\n3 2\n")
    return tmp_path


def test_hash_train_small_cnn_on_an_image_folder_then_encode_into_postgres(folder, database_url, engine):
    env = {"IWAN_HOME": str(folder / "home"), "IWAN_DATABASE_URL": database_url}
    args = ("hash", "train", "--dataset", f"imagefolder:{folder / 'images'}", "--backbone", "small-cnn",
            "--hierarchy", str(folder / "hierarchy.txt"), "--epochs", "5", "--batch-size", "16", "--lr", "0.3",
            "--out", str(folder / "run"), "--json")
    trained = iwan(*args, env=env)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["mirror_test"] is True and summary["flipped_features"] is False
    recipe = summary["train_config"]
    assert (recipe["epochs"], recipe["batch_size"], recipe["optimizer"], recipe["schedule"]) == (5, 16, "sgd", "triangle")
    assert recipe["lookahead"] and recipe["auxiliary_weight"] == 1.0 and recipe["translate"] == 2
    # Chance is 1/3; the colours tell the classes apart within a few steps.
    assert summary["test_accuracy"] >= 0.8 and 1 <= summary["best_epoch"] <= 5
    assert (folder / "run" / "best.pt").is_file() and json.loads((folder / "run" / "summary.json").read_text()) == summary
    assert "epoch 5/5" in trained.stderr

    again = iwan(*args, env=env)
    assert again.returncode != 0 and "pass --resume to continue it" in again.stderr

    spec = f"imagefolder:{folder / 'images'}"
    encoded = iwan("hash", "encode", "--dataset", spec, "--split", "test", "--checkpoint", str(folder / "run" / "best.pt"),
                   "--name", "colours", "--json", env=env)
    assert encoded.returncode == 0, encoded.stderr
    assert json.loads(encoded.stdout) | {"distinct_codes": 0} == {
        "model": "colours", "dataset": f"imagefolder:{(folder / 'images').resolve()}", "split": "test", "images": 18, "embedding_dim": 3,
        "distinct_codes": 0, "predictions_stored": True,
    }
    # What PostgreSQL holds is the mirror-averaged encoding of each image, in registration order.
    dataset = load_dataset(spec, "test")
    ids = image_store.register(engine, dataset).ids
    net = load_checkpoint(folder / "run" / "best.pt").net
    embeddings, activations = embed(net, dataset.images, mirror=True)
    stored_embeddings, stored_codes = load_codes(engine, "colours", ids)
    np.testing.assert_array_equal(stored_codes, pack_activations(activations))
    np.testing.assert_allclose(stored_embeddings, embeddings, atol=1e-5)


def test_hash_train_rejects_a_hierarchy_of_another_size(folder):
    (folder / "hierarchy.txt").write_text("5 0\n5 1\n5 2\n5 3\n")
    failed = iwan("hash", "train", "--dataset", f"imagefolder:{folder / 'images'}", "--backbone", "small-cnn",
                  "--hierarchy", str(folder / "hierarchy.txt"), "--out", str(folder / "run"),
                  env={"IWAN_HOME": str(folder / "home")})
    assert failed.returncode != 0 and "has 4 classes (leaves)" in failed.stderr and "has 3" in failed.stderr
