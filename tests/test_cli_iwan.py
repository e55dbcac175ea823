"""IWAN through the CLI: a CIFAR-100 written in the official format indexed with EfficientNet-Lite0's
genuine ImageNet predictions, queried by words, by an image file and by a registered image; and
once on the real data (the CIFAR-100 sample, the USF norms, a CIFAR-10 JPEG)."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import cifar_files
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from test_cli_norms import iwan
from usf_files import write_chain

from iwan.db import images as image_store
from iwan.db.codes import store_codes
from iwan.tv import models

N_IMAGES = 24


@dataclass(frozen=True)
class Sample:
    spec: str
    run: Callable[..., subprocess.CompletedProcess]


def vocabulary() -> list[str]:
    """Every ImageNet class name as a word, and APPLE and TREE: each prediction names a word."""
    names = {name.upper() for name in models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]}
    return sorted(names | {"APPLE", "TREE"})


@pytest.fixture(scope="module")
def sample(module_database_url, tmp_path_factory) -> Sample:
    """Norms, a small CIFAR-100 and an image, written for the module, then predicted with
    EfficientNet-Lite0 and indexed once, in the module's own database and IWAN_HOME."""
    data = tmp_path_factory.mktemp("data")
    write_chain(data / "usf-appendix-a", vocabulary())
    cifar_files.write_cifar100(data, cifar_files.images(N_IMAGES), list(range(N_IMAGES)))
    env = {
        "IWAN_HOME": str(tmp_path_factory.mktemp("iwan-home")),
        "IWAN_DATABASE_URL": module_database_url,
        "IWAN_DATA_DIR": str(data),
    }
    run = functools.partial(iwan, env=env)
    spec = f"cifar100:{data}"
    assert run("norms", "load", "--json").returncode == 0
    predicted = run("predict", "--dataset", spec, "--split", "train", "--limit", str(N_IMAGES),
                    "--predictor", "efficientnet-lite0", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == {
        "predictor": "efficientnet-lite0", "dataset": "cifar100", "split": "train",
        "images": N_IMAGES, "predicted": N_IMAGES, "skipped": 0,
    }
    built = run("index", "build", "--dataset", "cifar100", "--split", "train", "--predictor", "efficientnet-lite0", "--json")
    assert built.returncode == 0, built.stderr
    meta = json.loads(built.stdout)
    assert meta["n_images"] == N_IMAGES and meta["top_iwk"] == 4 and meta["n_words"] == len(vocabulary())
    return Sample(spec, run)


def test_rerun_of_predict_skips_done_images(sample):
    again = sample.run("predict", "--dataset", sample.spec, "--split", "train", "--limit", str(N_IMAGES),
                       "--model", "efficientnet-lite0", "--json")
    assert json.loads(again.stdout)["skipped"] == N_IMAGES
    # The old spelling of --predictor still works, with one deprecation line.
    assert again.stderr.strip() == "iwan: warning: --model is deprecated; use --predictor"


def test_words_query(sample):
    result = sample.run("search", "--words", "apple:0.8,tree:0.2", "--k", "5", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [w["word"] for w in found["query_words"]] == ["APPLE", "TREE"]
    hits = found["hits"]
    assert len(hits) == 5
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert all(h["path"][0] in ("APPLE", "TREE") and h["path"][-1].startswith("image ") for h in hits)
    assert all(h["dataset"] == "cifar100" and 0 <= h["position"] < N_IMAGES for h in hits)
    assert found["method"] == "iwan" and found["index_name"] == "cifar100-train"


def test_image_file_query(sample, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(cifar_files.images(1, seed=7)[0]).save(photo)
    result = sample.run("search", "--image", str(photo), "--k", "3", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert 1 <= len(found["query_words"]) <= 4 and len(found["hits"]) == 3


def test_registered_image_query_leaves_itself_out(sample):
    result = sample.run("search", "--dataset", sample.spec, "--split", "train", "--position", "2", "--k", "30", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert 0 < len(hits) <= N_IMAGES - 1
    assert 2 not in [h["position"] for h in hits]
    # The old spelling still works, with one deprecation line.
    old = sample.run("search", "--dataset", sample.spec, "--split", "train", "--index", "2", "--k", "30", "--json",
                     "--corpus", "cifar100-train")
    assert old.returncode == 0 and json.loads(old.stdout)["hits"] == hits
    assert "--index is deprecated; use --position" in old.stderr and "--corpus is deprecated" in old.stderr


def test_hash_methods_search_the_index_images_by_a_registered_image(sample, module_database_url):
    engine = sa.create_engine(module_database_url)
    ids = image_store.image_ids(engine, "cifar100", "train")
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(3, 8)).astype(np.float32)
    classes = np.arange(len(ids)) % 3  # image 2 shares its embedding with images 5, 8, ...
    store_codes(engine, "toy-hash", ids, prototypes[classes], rng.integers(0, 2**48, 3, dtype=np.uint64)[classes])
    engine.dispose()
    for method in ("hashes", "exhaustive", "hashes-pg", "fused"):
        result = sample.run("search", "--dataset", sample.spec, "--split", "train", "--position", "2", "--k", "4",
                            "--method", method, "--hash-model", "toy-hash", "--json")
        assert result.returncode == 0, (method, result.stderr)
        hits = json.loads(result.stdout)["hits"]
        assert len(hits) == 4 and 2 not in [h["position"] for h in hits]
        if method != "fused":
            # hashes holds its embeddings as int8 (hashing.quantized): the same vector scores 1 within 1e-4.
            one = pytest.approx(1.0, abs=1e-4 if method == "hashes" else 1e-6)
            assert [h["position"] for h in hits] == [5, 8, 11, 14] and hits[0]["score"] == one
    words = sample.run("search", "--words", "apple", "--method", "hashes", "--hash-model", "toy-hash")
    assert words.returncode == 2 and "query it by a registered image" in words.stderr
    unknown = sample.run("search", "--words", "apple", "--method", "nope")
    assert unknown.returncode == 1 and "unknown retrieval method 'nope'" in unknown.stderr


def test_bad_queries_are_one_line_errors(sample, tmp_path):
    unknown = sample.run("search", "--words", "qwertyuiop:1", "--k", "3")
    assert unknown.returncode == 1 and "no query word is in the norms' vocabulary" in unknown.stderr
    missing = sample.run("search", "--image", str(tmp_path / "absent.jpg"))
    assert missing.returncode == 1 and "absent.jpg" in missing.stderr
    two = sample.run("search", "--words", "cat", "--image", "x.jpg")
    assert two.returncode == 2 and "exactly one query" in two.stderr
    outside = sample.run("search", "--dataset", sample.spec, "--split", "train", "--position", "9999")
    assert outside.returncode == 1 and "outside cifar100/train" in outside.stderr


def test_missing_dataset_is_a_clear_error(database_url, tmp_path):
    result = iwan("predict", "--dataset", f"imagefolder:{tmp_path / 'nothing'}", "--split", "train")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "nothing" in result.stderr


@pytest.mark.real_data("usf", "cifar100-sample", "cifar10-jpg")
def test_real_data_end_to_end(database_url, shared_data, tmp_path):
    run = functools.partial(iwan, env={"IWAN_HOME": str(tmp_path / "home"), "IWAN_DATA_DIR": str(shared_data)})
    spec = f"cifar100:{shared_data / 'cifar100-train-sample'}"
    assert run("norms", "load", "--json").returncode == 0
    predicted = run("predict", "--dataset", spec, "--split", "train", "--limit", str(N_IMAGES),
                    "--predictor", "efficientnet-lite0", "--json")
    assert predicted.returncode == 0, predicted.stderr
    built = run("index", "build", "--dataset", "cifar100", "--split", "train", "--predictor", "efficientnet-lite0", "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["n_words"] == 10_617
    jpeg = shared_data / "cifar10-jpg" / "test" / "cat" / "0000.jpg"
    found = json.loads(run("search", "--image", str(jpeg), "--k", "3", "--json").stdout)
    assert 1 <= len(found["query_words"]) <= 4 and len(found["hits"]) == 3
    words = json.loads(run("search", "--words", "apple:0.8,tree:0.2", "--k", "5", "--json").stdout)
    assert [w["word"] for w in words["query_words"]] == ["APPLE", "TREE"] and len(words["hits"]) == 5


def test_an_index_saved_before_database_ids_asks_for_a_rebuild(tmp_path):
    from iwan.network.saved import META_FILE, OLD_IDS_FILE, BuiltIndex, IndexMeta

    meta = IndexMeta("old", "efficientnet-lite0", "cifar10", "train", 4, 4, "forward", "usf", 3, 5, 2, 10, [], 0.1)
    (tmp_path / META_FILE).write_text(json.dumps(meta.__dict__))
    np.save(tmp_path / OLD_IDS_FILE, np.array([7, 3, 5]))
    with pytest.raises(ValueError, match="saved by an older iwan .*`iwan index build --dataset cifar10 --split train --name old"):
        BuiltIndex.load(tmp_path)
