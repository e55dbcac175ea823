"""The comparative evaluation on a real database, with predictions and codes whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from usf_files import write_chain

from hashing.codes import pack_bits
from hashing.embeddings import class_embeddings
from hashing.hierarchy import load_hierarchy
from iwan.datasets.hierarchies import shipped_hierarchy
from iwan.datasets.loaders import ImageDataset
from iwan.db import images as image_store
from iwan.db.codes import load_codes, store_codes
from iwan.db.norms import load_norms
from iwan.db.predictions import load_predictions, register_classes, replace_predictions
from iwan.evaluation.runs import EvaluationSpec, run

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_split(split: str, per_class: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 255, size=(len(labels), 8, 8, 3), dtype=np.uint8)
    return ImageDataset("toy10", split, images, labels, None, CLASSES, None, None)


def predictions_for(labels: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Top class = the true one (p 0.7), then three other classes."""
    top = np.stack([np.roll(np.arange(10), -int(label))[:4] for label in labels])
    others = rng.permuted(top[:, 1:], axis=1)
    return np.concatenate([top[:, :1], others], axis=1), np.tile([0.7, 0.15, 0.1, 0.05], (len(labels), 1))


EMBEDDINGS = class_embeddings(load_hierarchy(shipped_hierarchy("cifar10")))
CLASS_CODES = pack_bits(np.random.default_rng(0).integers(0, 2, size=(10, 48)))


def load_class_words(engine, folder) -> None:
    """Norms in which each class word cues the next, in the hierarchy's order: every class word
    is a word of the norms, and the word graph is connected."""
    words = ["AIRPLANE", "SHIP", "AUTOMOBILE", "TRUCK", "BIRD", "FROG", "CAT", "DOG", "DEER", "HORSE"]
    load_norms(engine, [write_chain(folder, words)])


def toy(engine, folder, per_class: dict[str, int], predictions, codes) -> None:
    """Images of `per_class` per split, with `predictions(labels, rng)` and `codes(labels)`
    (embeddings, packed codes) stored as the toy classifier's and the toy hash model's."""
    load_class_words(engine, folder)
    register_classes(engine, "toy-classifier", CLASSES)
    rng = np.random.default_rng(1)
    for split, count in per_class.items():
        dataset = fake_split(split, count, seed=len(split))
        ids = image_store.register(engine, dataset).ids
        replace_predictions(engine, "toy-classifier", ids, *predictions(dataset.fine_labels, rng))
        store_codes(engine, "toy-hash", ids, *codes(dataset.fine_labels))


def true_codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image exactly on its class embedding: cosine = hierarchical similarity."""
    return EMBEDDINGS[labels], CLASS_CODES[labels]


@pytest.fixture
def toy_database(engine, tmp_path):
    toy(engine, tmp_path / "norms", {"train": 6, "test": 2}, predictions_for, true_codes)
    return engine


def spec(**overrides) -> EvaluationSpec:
    base = dict(
        dataset="toy10", corpus_split="train", query_split="test", ks=(1, 5, 6), predictor="toy-classifier",
        hash_model="toy-hash", sweep=False, hierarchy=shipped_hierarchy("cifar10"),
    )
    return EvaluationSpec(**{**base, **overrides})


def only_the_true_class(labels: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each image names its true class with probability 1: the other ranks make no edge."""
    indices = np.stack([np.roll(np.arange(10), -int(label))[:4] for label in labels])
    return indices, np.tile([1.0, 0.0, 0.0, 0.0], (len(labels), 1))


def all_airplanes(labels: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Every image names the same class: every image lies at the same IWAN distance."""
    return np.tile([0, 1, 2, 3], (len(labels), 1)), np.tile([1.0, 0.0, 0.0, 0.0], (len(labels), 1))


def one_code(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image has the same embedding (exactly representable) and code: all score alike."""
    embeddings = np.zeros((len(labels), EMBEDDINGS.shape[1]))
    embeddings[:, 0] = 1.0
    return embeddings, np.repeat(CLASS_CODES[:1], len(labels), axis=0)


# 40 corpus images and cut-offs up to 20: each member is searched 2 x 20 = 40 deep, so a member
# that scores everything alike lists every image and adds the same to each fused score.
@pytest.mark.parametrize(
    "predictions, codes, winner, weight",
    [
        # IWAN finds the 4 images of the query's class first (mAP 1); the hashes tell nothing.
        # Any IWAN weight above 0 gives IWAN's ranking: the first such grid weight is 0.1.
        (only_the_true_class, one_code, "IWAN", 0.1),
        # The reverse: the hashes rank ideally (mHP 1) and IWAN tells nothing; any weight below
        # 1 gives the hashes' ranking, and the first grid weight is 0.0.
        (all_airplanes, true_codes, "hashes (cosine in cells)", 0.0),
    ],
)
def test_fusion_weight_follows_the_informative_retriever(engine, tmp_path, predictions, codes, winner, weight):
    toy(engine, tmp_path / "norms", {"train": 4, "test": 2}, predictions, codes)
    results = run(engine, spec(ks=(1, 5, 20)), tmp_path, progress=False)

    fusion_info = results["metadata"]["fusion"]
    by_weight = fusion_info["validation_mHP@20_by_weight"]
    assert fusion_info["iwan_weight"] == weight
    useless = 0 if winner == "IWAN" else 10
    informative = [v for i, v in enumerate(by_weight) if i != useless]
    assert informative == [informative[0]] * 10 and by_weight[useless] < informative[0] - 0.05
    metrics = results["metrics"]
    assert metrics["fused (weighted)"] == metrics[winner]
    assert metrics[winner]["mAP"][20] == pytest.approx(1.0) and metrics[winner]["P"][1] == 1.0
    if winner != "IWAN":
        assert metrics[winner]["mHP (original mAHP)"][20] == pytest.approx(1.0)
        assert by_weight[0] == pytest.approx(1.0)


def test_codes_round_trip_through_postgres(toy_database):
    ids = image_store.image_ids(toy_database, "toy10", "test")
    embeddings, codes = load_codes(toy_database, "toy-hash", ids[::-1])
    again, again_codes = load_codes(toy_database, "toy-hash", ids)
    np.testing.assert_allclose(embeddings[::-1], again, rtol=1e-6)
    np.testing.assert_array_equal(codes[::-1], again_codes)
    with pytest.raises(LookupError, match="no hash codes of model 'other'"):
        load_codes(toy_database, "other", ids)


def test_standard_protocol_scores_and_report(toy_database, tmp_path):
    results = run(toy_database, spec(), tmp_path, progress=False)
    metrics = results["metrics"]
    assert set(metrics) == {"IWAN", "exhaustive cosine", "hashes (cosine in cells)", "fused (weighted)"}
    # Every image sits exactly on its class embedding: both cosine searches are perfect.
    for method in ("exhaustive cosine", "hashes (cosine in cells)"):
        assert metrics[method]["mAP"][6] == pytest.approx(1.0)
        assert metrics[method]["mHP (original mAHP)"][6] == pytest.approx(1.0)
    # IWAN's first hit shares the query's top word, which is its true class.
    assert metrics["IWAN"]["P"][1] == pytest.approx(1.0)
    # The hashes alone rank every validation query ideally (mHP 1), so the first weight of the
    # grid, 0.0 (hashes alone), is chosen; IWAN alone is worse.
    fusion_info = results["metadata"]["fusion"]
    by_weight = fusion_info["validation_mHP@20_by_weight"]
    assert fusion_info["iwan_weight"] == 0.0
    assert by_weight[0] == pytest.approx(1.0) and by_weight[-1] < 0.99
    assert metrics["fused (weighted)"]["mAP"][6] == pytest.approx(1.0)
    assert results["notes"] == ["Fusion is not compared: the cut-offs do not include k=250."]
    for name in ("report.md", "metrics.csv", "results.json"):
        assert (tmp_path / name).stat().st_size > 100
    assert json.loads((tmp_path / "results.json").read_text())["metadata"]["query_size"] == 20
    assert "hashes (cosine in cells)" in (tmp_path / "report.md").read_text()


def test_original_protocol_leaves_each_query_out(toy_database, tmp_path):
    results = run(toy_database, spec(query_split="train", methods=("exhaustive", "iwan")), tmp_path, progress=False)
    # 6 images per class, one is the query itself: 5 relevant ones remain, all found first.
    assert results["metrics"]["exhaustive cosine"]["P"][5] == pytest.approx(1.0)
    assert results["metrics"]["exhaustive cosine"]["P"][6] < 1.0
    cached = list((tmp_path / "cache").glob("*.npz"))
    ids = np.load(cached[0])["ids"]
    assert not (ids == np.arange(len(ids))[:, None]).any()


def test_rerun_resumes_from_cached_rankings(toy_database, tmp_path):
    first = run(toy_database, spec(methods=("iwan",)), tmp_path, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")}
    second = run(toy_database, spec(methods=("iwan",)), tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")} == stamps
    assert first["metrics"] == second["metrics"]


def test_re_encoding_under_the_same_name_invalidates_cached_rankings(toy_database, tmp_path):
    first = run(toy_database, spec(methods=("exhaustive",)), tmp_path, progress=False)
    # A new network stored under the old name: every test image now embeds as an airplane.
    ids = image_store.image_ids(toy_database, "toy10", "test")
    embeddings, codes = load_codes(toy_database, "toy-hash", ids)
    store_codes(toy_database, "toy-hash", ids, np.repeat(embeddings[:1], len(ids), axis=0), codes)
    second = run(toy_database, spec(methods=("exhaustive",)), tmp_path, progress=False)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert second["metrics"] != first["metrics"]


def test_iwan_sweep_and_bad_specs(toy_database, tmp_path):
    results = run(toy_database, spec(methods=("iwan", "exhaustive"), ks=(1, 20), sweep=True), tmp_path, progress=False)
    assert results["sweep"]["top_iwk"] == list(range(1, 11))
    assert len(results["sweep"]["metrics"]["mAP@20"]) == 10
    # The scatter holds the ten IWAN settings and then each other method at k=20.
    assert results["settings_scatter"]["labels"][10:] == ["exhaustive cosine"]
    assert len(results["settings_scatter"]["mAP"]) == 11
    assert (tmp_path / "report.md").is_file()
    with pytest.raises(ValueError, match="the exhaustive method needs a hash model .* give --hash-model"):
        run(toy_database, spec(hash_model=None, methods=("exhaustive",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown methods \\['nope'\\]: choose from exhaustive, exhaustive-pg, fused"):
        spec(methods=("nope",))
    with pytest.raises(LookupError, match="no toy-classifier predictions|no images of toy10/validation"):
        run(toy_database, spec(query_split="validation"), tmp_path, progress=False)


def test_stored_predictions_read_back_in_index_order(toy_database):
    stored = load_predictions(toy_database, "toy-classifier", "toy10", "test", top=2)
    assert stored.class_indices.shape == (20, 2)
    assert stored.categories == CLASSES
    np.testing.assert_allclose(stored.probabilities[0], [0.7, 0.15])


def test_fusion_findings_say_by_how_much_and_why():
    from iwan.evaluation.runs import fusion_findings

    retrievers = {"iwan": "IWAN", "hashes": "hashes", "fused": "fused"}
    results = {"metrics": {n: {"Barz mAHP": {250: v}} for n, v in (("IWAN", 0.64), ("hashes", 0.877), ("fused", 0.883))}}
    notes = fusion_findings(results, retrievers, {"iwan_weight": 0.0})
    assert notes[0] == (
        "Fusion beats both retrievers it fuses on Barz mAHP@250: fused 88.30 against "
        "IWAN 64.00 (+24.30 points), hashes 87.70 (+0.60 points)."
    )
    assert "fused ranking is hashes'" in notes[1]
    results["metrics"]["fused"]["Barz mAHP"][250] = 0.80
    assert fusion_findings(results, retrievers, {"iwan_weight": 0.4})[0].startswith("Fusion does not beat")
