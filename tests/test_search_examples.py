"""Queries of several examples, for and against; cut-offs, label filters and near-duplicates, in
every method and through every interface (issue 17).

`toy` is a collection over a registered split whose predictions, embeddings and codes are
chosen: ten classes, each image's top word its class's, its embedding and code its class's with
noise, and one image stored twice (a near-duplicate). `pics` holds uploaded images (the tiny
models) for the interfaces that upload."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from livedata import imagenet_words, load_norms, png
from PIL import Image
from serving import make_collection
from test_evaluate import CLASS_CODES, CLASSES, EMBEDDINGS, fake_split, predictions_for

import iwan
from iwan.collections.pipeline import Example, SearchRequest, search
from iwan.config import MAX_EXAMPLES, settings
from iwan.serve import create_app

METHODS = ("iwan", "exhaustive", "hashes", "fused")
PER_CLASS = 6


@pytest.fixture
def toy(engine, database_url, tmp_path, monkeypatch):
    from hashing.codes import pack_bits
    from iwan.collections.live import LiveCollection, create_collection
    from iwan.db import images as image_store
    from iwan.db.codes import store_codes
    from iwan.db.predictions import register_classes, replace_predictions
    from iwan.tv import models

    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IWAN_DATABASE_URL", database_url)
    load_norms(engine, tmp_path)
    categories = list(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    register_classes(engine, "efficientnet-lite0", categories)
    words = set(imagenet_words())
    imagenet_of = np.array([i for i, c in enumerate(categories) if c.upper() in words][:10])
    dataset = fake_split("train", PER_CLASS, seed=5)
    labels = dataset.fine_labels.copy()
    ids = image_store.register(engine, dataset).ids
    rng = np.random.default_rng(2)
    indices, probabilities = predictions_for(labels, rng)
    indices[-1], probabilities[-1] = indices[0], probabilities[0]
    replace_predictions(engine, "efficientnet-lite0", ids, imagenet_of[indices], probabilities)
    embeddings = (EMBEDDINGS[labels] + rng.normal(0, 0.15, (len(labels), EMBEDDINGS.shape[1]))).astype(np.float32)
    flips = np.zeros((len(labels), 48), dtype=np.uint8)
    for row in flips:
        row[rng.choice(48, 4, replace=False)] = 1
    codes = CLASS_CODES[labels] ^ pack_bits(flips)
    # The last image: the first one again, in every respect but its label (a near-duplicate).
    embeddings[-1], codes[-1] = embeddings[0], codes[0]
    labels[-1] = labels[0]
    store_codes(engine, "toy-hash", ids, embeddings, codes)
    create_collection(engine, "toy", "efficientnet-lite0", dataset="toy10", split="train", hash_model="toy-hash")
    live = LiveCollection.open(engine, "toy", follow=False)
    live.class_of = dict(zip(ids.tolist(), (CLASSES[c] for c in dataset.fine_labels.tolist())))
    yield live
    live.close()


def by_class(live, name: str) -> list[int]:
    return [i for i, c in live.class_of.items() if c == name]


def run(live, k: int = 10, **request):
    return search(live, SearchRequest(k=k, **request))


def stored(*image_ids: int) -> list[Example]:
    return [Example(image_id=int(i)) for i in image_ids]


@pytest.mark.parametrize("method", METHODS)
def test_one_example_answers_as_the_single_query_did(toy, method):
    query = by_class(toy, "cat")[0]
    found = run(toy, method=method, positive=stored(query))
    old = toy.explain(toy.stored_queries([query]), 10, method=method, exclude=[query])
    assert [h.image_id for h in found.hits] == old.ids[0].tolist()
    assert [h.score for h in found.hits] == pytest.approx(old.scores[0].tolist())
    assert all(h.explanation == {**why, "example": 0} for h, why in zip(found.hits, old.reasons[0]))
    assert run(toy, method=method, image_id=query).as_dict()["results"] == found.as_dict()["results"]


@pytest.mark.parametrize("method", METHODS)
def test_several_positives_change_the_results_and_name_the_example_that_led_to_each(toy, method):
    cat, dog = by_class(toy, "cat")[0], by_class(toy, "dog")[0]
    alone = run(toy, method=method, positive=stored(cat))
    both = run(toy, method=method, positive=stored(cat, dog))
    assert [h.image_id for h in both.hits] != [h.image_id for h in alone.hits]
    classes = [toy.class_of[h.image_id] for h in both.hits]
    if method != "hashes":  # a Hamming shortlist is the first positive's where the codes disagree
        assert "cat" in classes and "dog" in classes
    examples = toy.stored_queries([cat, dog])
    for hit in both.hits:
        led = hit.explanation["example"]
        assert led in (0, 1)
        if method == "iwan":  # the example giving the path's first word the larger weight
            word = toy.words.index(hit.explanation["path"][0])
            weights = [float(w[ids == word].max(initial=0)) for ids, w in zip(examples.word_ids, examples.weights)]
            assert weights[led] == max(weights)
        elif method in ("hashes", "exhaustive"):  # the example whose embedding is nearest the hit's
            own = toy.stored_queries([hit.image_id]).embeddings[0]
            cosines = [float(own @ e / np.linalg.norm(own) / np.linalg.norm(e)) for e in examples.embeddings]
            assert cosines[led] == max(cosines)
    if method != "hashes":
        assert {h.explanation["example"] for h in both.hits} == {0, 1}


@pytest.mark.parametrize("method", METHODS)
def test_a_negative_example_pushes_its_class_down(toy, method):
    cat = by_class(toy, "cat")
    plain = run(toy, method=method, k=12, positive=stored(*cat[:2]))
    confused = most_confused(toy, plain, "cat")
    against = run(toy, method=method, k=12, positive=stored(*cat[:2]), negative=stored(by_class(toy, confused)[0]))
    counts = [sum(toy.class_of[h.image_id] == confused for h in r.hits) for r in (plain, against)]
    assert counts[1] < counts[0], (confused, counts)
    assert by_class(toy, confused)[0] not in [h.image_id for h in against.hits]


def most_confused(live, found, own: str) -> str:
    """The class other than `own` with the most results."""
    classes = [live.class_of[h.image_id] for h in found.hits if live.class_of[h.image_id] != own]
    return max(classes, key=classes.count)


def test_iwan_pushes_an_image_down_by_how_much_nearer_the_negatives_it_is(toy):
    cat = by_class(toy, "cat")
    plain = run(toy, method="iwan", k=toy.size, positive=stored(cat[0]))
    distance = {h.image_id: h.explanation["distance"] for h in plain.hits}
    against = run(toy, method="iwan", k=40, positive=stored(cat[0]),
                  negative=stored(by_class(toy, most_confused(toy, run(toy, method="iwan", k=12, positive=stored(cat[0])), "cat"))[0]))
    pushed = [h for h in against.hits if "negative" in h.explanation]
    assert pushed
    for hit in against.hits:
        why = hit.explanation
        near = distance[hit.image_id]  # from the positives, as the plain search found it
        far = why["negative"]["distance"] if "negative" in why else near
        assert why["distance"] == pytest.approx(near + max(0.0, near - far)) == pytest.approx(-hit.score)
        if "negative" in why:
            assert why["negative"]["example"] == 0 and why["negative"]["path"][-1] == f"image {hit.image_id}"
    assert [h.score for h in against.hits] == sorted((h.score for h in against.hits), reverse=True)


@pytest.mark.parametrize("method", METHODS)
def test_a_label_filter_applies_before_the_top_k(toy, method):
    ships = by_class(toy, "ship")
    found = run(toy, method=method, k=PER_CLASS, positive=stored(by_class(toy, "cat")[0]), labels=["ship"])
    assert sorted(h.image_id for h in found.hits) == sorted(ships)  # the k nearest ships: every ship
    more = run(toy, method=method, k=PER_CLASS + 4, positive=stored(by_class(toy, "cat")[0]), labels=["ship", "truck"])
    assert len(more.hits) == PER_CLASS + 4 and {h.label for h in more.hits} <= {"ship", "truck"}
    left = run(toy, method=method, k=30, positive=stored(by_class(toy, "cat")[0]), exclude_labels=["cat", "dog"])
    assert len(left.hits) == 30 and not {h.label for h in left.hits} & {"cat", "dog"}


def test_images_filtered_out_still_bridge_words_in_iwan():
    from iwan.network.graph import IwanGraph
    from iwan.network.index import IwanIndex

    # Image 1 has the words A and B, image 2 only B: from A, image 2 is reached through image 1.
    graph = IwanGraph(["A", "B"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                      np.array([[0, 1], [1, -1]]), np.array([[1.0, 1.0], [1.0, 0.0]]), 1, "fsg", np.array([1, 2]))
    index = IwanIndex(graph)
    scores, ids, paths = index.search(np.array([[0]]), np.array([[1.0]]), 2, among=np.array([2]), paths=True)
    assert ids[0].tolist() == [2, -1] and scores[0, 0] == -4.0
    assert index.path_labels(paths[0][0]) == ["A", "image 1", "B", "image 2"]


def words_batch(*rows: dict[int, float]):
    """A Batch of examples, each {word id: weight}."""
    from iwan.retrieval.protocol import Batch

    width = max(len(r) for r in rows)
    word_ids = np.full((len(rows), width), -1, np.int64)
    weights = np.zeros((len(rows), width))
    for e, row in enumerate(rows):
        word_ids[e, :len(row)], weights[e, :len(row)] = list(row), list(row.values())
    return Batch(word_ids=word_ids, weights=weights)


def test_the_examples_start_weighs_each_word_by_its_mean_times_the_share_holding_it():
    from iwan.retrieval.iwan import combined_start

    words, weights, leader = combined_start(words_batch({0: 0.6, 1: 0.2}, {0: 0.2, 2: 0.4}))
    # A: both hold it, mean 0.4; B and C: one of two, mean 0.1 and 0.2, halved.
    assert words.tolist() == [0, 1, 2] and weights.tolist() == pytest.approx([0.4, 0.05, 0.1])
    assert leader.tolist() == [0, 0, 1]
    one = words_batch({3: 0.7, 1: 0.1})
    assert combined_start(one)[1].tolist() == [0.1, 0.7]  # one example: its weights, bit for bit


def test_the_examples_start_is_the_plain_python_rule_bit_for_bit():
    """combined_start (numpy) against the rule written out example by example, word by word, on
    random batches with repeated words, padding, zero, negative, NaN and infinite weights."""
    import math

    from iwan.retrieval.iwan import combined_start
    from iwan.retrieval.protocol import Batch

    def reference(word_ids, weights):
        best = []
        for row_words, row_weights in zip(word_ids.tolist(), weights.tolist()):
            own: dict[int, float] = {}
            for w, p in zip(row_words, row_weights):
                if w >= 0 and p > 0 and math.isfinite(p):
                    own[w] = max(own.get(w, 0.0), p)
            best.append(own)
        words = sorted({w for own in best for w in own})
        total = [0.0] * len(words)
        for own in best:  # summed example by example, in their order
            total = [t + own.get(w, 0.0) for t, w in zip(total, words)]
        leader = [max(range(len(best)), key=lambda e: (best[e].get(w, 0.0), -e)) for w in words]
        if len(best) > 1:
            total = [t / len(best) * (sum(w in own for own in best) / len(best)) for t, w in zip(total, words)]
        return words, total, leader

    rng = np.random.default_rng(17)
    for _ in range(500):
        n, m = int(rng.integers(1, 17)), int(rng.integers(1, 8))
        word_ids = rng.integers(-1, 12, size=(n, m))
        weights = rng.choice([0.0, -1.0, np.nan, np.inf, *rng.uniform(0, 1, 5)], size=(n, m))
        weights = weights.astype(np.float32 if rng.random() < 0.5 else np.float64)
        words, total, leader = combined_start(Batch(word_ids=word_ids, weights=weights))
        expected = reference(word_ids, weights)
        assert words.tolist() == expected[0]
        assert total.tobytes() == np.array(expected[1], np.float64).tobytes()
        assert leader.tolist() == expected[2]


def parallel_toy():
    """Words A, B, C, D; no word-word edges. Image 1 holds A surely, image 2 A and B both at 0.4,
    image 3 B and C, image 4 D only (reached by no start below)."""
    from iwan.network.graph import IwanGraph
    from iwan.network.index import IwanIndex
    from iwan.retrieval.iwan import IwanRetriever

    probabilities = np.array([[0.9, 0.0], [0.4, 0.4], [0.3, 0.5], [0.9, 0.0]])
    words = np.array([[0, -1], [0, 1], [1, 2], [3, -1]])
    graph = IwanGraph(["A", "B", "C", "D"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                      words, np.where(words >= 0, 1 / np.where(words >= 0, probabilities, 1), np.inf), 1, "fsg",
                      np.array([1, 2, 3, 4]))
    return IwanRetriever(IwanIndex(graph))


def test_several_examples_rank_an_image_by_all_its_word_paths_together():
    from iwan.retrieval.protocol import Examples

    retriever = parallel_toy()
    examples = Examples(words_batch({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.4}))  # start A 0.5, B 0.45
    found = retriever.explain_examples(examples, 3)
    # Shortest paths alone rank image 1 first (2 + 1/0.9 = 3.11 against 2 + 2.5 = 4.5 for image
    # 2); image 2 holds both words: its two paths, 4.5 and 1/0.45 + 2.5, in parallel are 2.37.
    a, b = 2 + 2.5, 1 / 0.45 + 2.5
    assert found.ids[0].tolist() == [2, 1, 3]
    assert -found.scores[0, 0] == pytest.approx(1 / (1 / a + 1 / b))
    assert -found.scores[0, 1] == 2 + 1 / 0.9  # one path alone: its length, as a single search sums it
    why = found.reasons[0][0]
    assert why["path"] == ["A", "image 2"] and why["paths"] == [["A", "image 2"], ["B", "image 2"]]
    assert why["example"] == 0 and why["distance"] == pytest.approx(-found.scores[0, 0])
    assert "paths" not in found.reasons[0][1]
    # One example alone is the single search: image 1 first, by its shortest path.
    single = retriever.explain_examples(Examples(words_batch({0: 0.5, 1: 0.5})), 3)
    plain = retriever.explain(words_batch({0: 0.5, 1: 0.5}), 3)
    assert single.ids[0].tolist() == plain.ids[0].tolist() == [1, 2, 3]
    assert single.scores[0].tolist() == plain.scores[0].tolist()


def test_parallel_distances_follow_additions_removals_exclusions_and_filters():
    from iwan.retrieval.iwan import parallel_nearest
    from iwan.retrieval.protocol import Examples

    retriever = parallel_toy()
    index = retriever.index
    index.add(np.array([5, 6]), np.array([[0, 1], [1, 2]]), np.array([[0.5, 0.5], [0.2, 0.2]]))
    index.remove(np.array([2]))
    words, weights = np.array([0, 1]), np.array([0.5, 0.45])
    index.add(np.array([7]), np.array([[0, 1]]), np.array([[0.3, 0.1]]))
    distances, ids, paths = parallel_nearest(index, words, weights, 10)
    image_5 = 1 / (1 / (2 + 2) + 1 / (1 / 0.45 + 2))  # in the delta: reached as the main block's images are
    # Only images holding both words (2 removed: neither hit nor path); the others are the graph's.
    assert ids.tolist() == [5, 7] and distances[0] == pytest.approx(image_5)
    assert [index.path_labels(p) for p in paths[0]] == [["A", "image 5"], ["B", "image 5"]]
    assert parallel_nearest(index, words, weights, 10, exclude=np.array([5, -1]))[1].tolist() == [7]
    assert parallel_nearest(index, words, weights, 1, among=np.array([7, 3]))[1].tolist() == [7]
    examples = Examples(words_batch({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.4}))
    assert retriever.explain_examples(examples, 6).ids[0].tolist() == [5, 1, 7, 3, 6, -1]
    assert retriever.explain_examples(examples, 2, among=np.array([6, 3]), exclude=np.array([3])).ids[0].tolist() == [6, -1]


@pytest.mark.parametrize("method", METHODS)
def test_min_score_cuts_the_tail_and_says_how_many_passed(toy, method):
    query = stored(by_class(toy, "cat")[0])
    full = run(toy, method=method, positive=query)
    cut = full.hits[3].score
    found = run(toy, method=method, positive=query, min_score=cut)
    assert 4 <= len(found.hits) < 10 and found.passed == len(found.hits)
    assert all(h.score >= cut for h in found.hits) and found.hits == full.hits[:len(found.hits)]
    assert run(toy, method=method, positive=query, min_score=1e9).as_dict()["passed"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_collapsing_shows_a_near_duplicate_once_with_its_group(toy, method):
    first, copy = min(toy.class_of), max(toy.class_of)
    query = stored(by_class(toy, toy.class_of[first])[1])
    plain = run(toy, method=method, k=20, positive=query)
    assert {first, copy} <= {h.image_id for h in plain.hits}
    found = run(toy, method=method, k=20, positive=query, collapse_duplicates=True)
    shown = [h.image_id for h in found.hits]
    assert len(found.hits) == 20 and (first in shown) != (copy in shown)
    group = next(h for h in found.hits if h.image_id in (first, copy))
    assert group.explanation["group_size"] == 2 and group.explanation["duplicates"] == [copy if group.image_id == first else first]
    assert all(h.explanation["group_size"] == 1 for h in found.hits if h is not group)


# --- every interface ----------------------------------------------------------------------------


@pytest.fixture
def pics(engine, database_url, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("IWAN_HOME", str(home))
    monkeypatch.setenv("IWAN_DATABASE_URL", database_url)
    collection = make_collection(engine, home, "pics", [(f"warm{i}.png", png(i)) for i in range(8)], label="warm")
    collection.add_files([(f"cool{i}.png", png(100 + i)) for i in range(8)], label="cool")
    yield collection
    collection.close()


@pytest.fixture
def cli(monkeypatch):
    import livedata

    tiny = livedata.tiny_predictor()
    monkeypatch.setattr("iwan.vision.predictors.load_predictor", lambda *args, **kwargs: tiny)

    def run_cli(*args: str, ok: bool = True):
        from iwan.cli import cli as group

        result = CliRunner().invoke(group, ["search", *args], catch_exceptions=False)
        if not ok:
            return result
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    return run_cli


def without_timing(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != "timing_ms"}


def test_http_cli_and_python_answer_a_query_of_examples_alike(toy, cli):
    cats, dog = by_class(toy, "cat"), by_class(toy, "dog")[0]
    body = {"positive": [{"image_id": cats[0]}, {"image_id": cats[1]}], "negative": [{"image_id": dog}],
            "labels": ["cat", "dog", "deer"], "exclude_labels": ["deer"], "min_score": -1e6, "k": 7,
            "method": "fused", "collapse_duplicates": True}
    with TestClient(create_app(toy.engine, [toy], settings=settings())) as client:
        answer = client.post("/v1/collections/toy/search", json=body)
    assert answer.status_code == 200, answer.text
    http = without_timing(answer.json())
    api = without_timing(iwan.search(toy, iwan.SearchRequest(
        positive=stored(*cats[:2]), negative=stored(dog), labels=["cat", "dog", "deer"], exclude_labels=["deer"],
        min_score=-1e6, k=7, method="fused", collapse_duplicates=True)).as_dict())
    assert http == api
    by_cli = cli("--collection", "toy", "--like", str(cats[0]), "--like", str(cats[1]), "--unlike", str(dog),
                 "--only-label", "cat", "--only-label", "dog", "--only-label", "deer", "--exclude-label", "deer",
                 "--min-score", "-1e6", "--k", "7", "--method", "fused", "--collapse-duplicates", "--json")
    assert without_timing(by_cli) == http
    assert http["passed"] == len(http["results"]) == 7
    assert {r["label"] for r in http["results"]} <= {"cat", "dog"}
    assert {r["explanation"]["example"] for r in http["results"]} <= {0, 1}


def test_uploaded_examples_answer_alike_by_http_cli_and_python(pics, cli, tmp_path):
    files = {name: png(seed) for name, seed in (("a.png", 500), ("b.png", 501), ("c.png", 502))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    stored_id = int(pics.image_ids[2])
    parts = [("positive", ("a.png", files["a.png"], "image/png")), ("positive", (None, json.dumps({"image_id": stored_id}))),
             ("positive", ("b.png", files["b.png"], "image/png")), ("negative", ("c.png", files["c.png"], "image/png")),
             ("labels", (None, "cool")), ("k", (None, "5")), ("method", (None, "hashes"))]
    with TestClient(create_app(pics.engine, [pics], settings=settings())) as client:
        answer = client.post("/v1/collections/pics/search", files=parts)
    assert answer.status_code == 200, answer.text
    http = without_timing(answer.json())
    api = without_timing(iwan.search(pics, iwan.SearchRequest(
        positive=[Example(image=files["a.png"]), Example(image_id=stored_id), Example(image=files["b.png"])],
        negative=[Example(image=files["c.png"])], labels=["cool"], k=5, method="hashes")).as_dict())
    assert http == api
    by_cli = cli("--collection", "pics", "--like", str(tmp_path / "a.png"), "--like", str(stored_id),
                 "--like", str(tmp_path / "b.png"), "--unlike", str(tmp_path / "c.png"), "--only-label", "cool",
                 "--k", "5", "--method", "hashes", "--json")
    assert without_timing(by_cli) == http
    assert len(http["results"]) == 5 and {r["label"] for r in http["results"]} == {"cool"}
    assert stored_id not in [r["image_id"] for r in http["results"]]


def test_an_image_added_again_nearly_unchanged_is_reported_as_a_near_duplicate(pics, tmp_path, monkeypatch):
    pixels = np.array(Image.open(io.BytesIO(png(3))))
    pixels[0, 0] ^= 1  # one bit of one pixel: other bytes, the same picture
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    report = pics.add_files([("again.png", out.getvalue())], label="warm")
    assert report.near_duplicates and report.near_duplicates[0][:2] == ("again.png", report.added[0][0])
    assert report.as_dict()["near_duplicates"][0]["of"] in pics.image_ids[:8].tolist()

    import livedata

    from iwan.cli import cli as group

    tiny = livedata.tiny_predictor()
    monkeypatch.setattr("iwan.vision.predictors.load_predictor", lambda *args, **kwargs: tiny)
    pixels[0, 1] ^= 1
    Image.fromarray(pixels).save(tmp_path / "again2.png", format="PNG")
    added = CliRunner().invoke(group, ["images", "add", "pics", str(tmp_path / "again2.png")], catch_exceptions=False)
    assert added.exit_code == 0 and "near-duplicate" in added.output and "nearly the same as image" in added.output


def test_the_http_add_answer_names_near_duplicates_and_the_labels_endpoint_counts_them(pics):
    import dataclasses

    pixels = np.array(Image.open(io.BytesIO(png(3))))
    pixels[0, 0] ^= 1  # one bit of one pixel: other bytes, the same picture
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    key = {"Authorization": "Bearer k"}
    configured = dataclasses.replace(settings(), api_key="k")
    with TestClient(create_app(pics.engine, [pics], settings=configured)) as client:
        before = client.get("/v1/collections/pics/labels").json()
        answer = client.post("/v1/collections/pics/images", headers=key, data={"label": "warm"},
                             files=[("images", ("again.png", out.getvalue(), "image/png")),
                                    ("images", ("other.png", png(900), "image/png"))])
        assert answer.status_code == 201, answer.text
        added = {a["file"]: a["image_id"] for a in answer.json()["added"]}
        [near] = answer.json()["near_duplicates"]
        assert near["file"] == "again.png" and near["image_id"] == added["again.png"]
        assert near["of"] in pics.image_ids[:8].tolist()
        after = client.get("/v1/collections/pics/labels").json()
        first = client.get("/v1/collections/pics/labels", params={"limit": 1}).json()
        assert client.get("/v1/collections/nope/labels").status_code == 404
        assert client.get("/v1/collections/pics/labels", params={"limit": 0}).status_code == 422
    assert before == {"labels": [{"label": "cool", "count": 8}, {"label": "warm", "count": 8}], "distinct": 2}
    assert after == {"labels": [{"label": "warm", "count": 10}, {"label": "cool", "count": 8}], "distinct": 2}
    assert first == {"labels": [{"label": "warm", "count": 10}], "distinct": 2}


def test_hostile_queries_of_examples_are_refused_clearly(toy, cli, tmp_path):
    cat = by_class(toy, "cat")[0]
    too_many = [{"image_id": cat}] * (MAX_EXAMPLES + 1)
    cases = [
        ({"positive": too_many}, 422, "at most 16"),
        ({"positive": [{"image_id": cat}], "negative": too_many}, 422, "at most 16"),
        ({"positive": []}, 422, "at least 1"),
        ({"positive": [{"image_id": 999_999}]}, 404, "holds no image 999999"),
        ({"positive": [{"image_id": cat, "text": "cat"}]}, 422, "exactly one of"),
        ({"positive": [{"text": "cat\u0000"}]}, 422, "control characters"),
        ({"positive": [{"text": "cat"}], "method": "hashes"}, 422, "needs an image query"),
        ({"image_id": cat, "positive": [{"image_id": cat}]}, 422, "exactly one of"),
        ({"image_id": cat, "labels": []}, 422, "at least 1"),
        ({"image_id": cat, "labels": ["x" * 201]}, 422, "at most 200"),
        ({"image_id": cat, "min_score": "nan"}, 422, "finite"),
        ({"image_id": cat, "collapse_duplicates": "maybe"}, 422, "bool"),
    ]
    with TestClient(create_app(toy.engine, [toy], settings=settings())) as client:
        for body, status, says in cases:
            answer = client.post("/v1/collections/toy/search", json=body)
            assert answer.status_code == status and says in answer.text, (body, answer.text)
        huge = client.post("/v1/collections/toy/search", content=f'{{"image_id": {cat}, "min_score": 1e999}}',
                           headers={"content-type": "application/json"})
        assert huge.status_code == 422, huge.text
        bad_part = client.post("/v1/collections/toy/search", files=[("positive", (None, "{not json"))])
        assert bad_part.status_code == 422, bad_part.text
        nothing = client.post("/v1/collections/toy/search", files=[("labels", (None, "cat"))])
        assert nothing.status_code == 422 and "'positive'" in nothing.text
    refused = cli("--collection", "toy", "--like", str(tmp_path / "nope.png"), ok=False)
    assert refused.exit_code == 2 and "is neither an existing file nor an image id" in refused.output
    with pytest.raises(ValueError, match="at most 16"):
        SearchRequest(positive=stored(*[cat] * 17))
    with pytest.raises(ValueError, match="no hash model"):
        search(_words_only(toy), SearchRequest(image_id=cat, collapse_duplicates=True))


def _words_only(live):
    """The collection as one without a hash model sees a search."""
    from dataclasses import replace

    class WordsOnly:
        def __getattr__(self, name):
            return getattr(live, name)

        hash_model = None
        collection = replace(live.collection, hash_model=None)

    return WordsOnly()
