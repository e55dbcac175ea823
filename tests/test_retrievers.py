"""Every registered method through the registry, on a real database: the protocol's shapes,
padding, ties, exclusion, additions and removals; the PostgreSQL methods equal the in-memory ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa
from test_evaluate import CLASSES, fake_split, load_class_words, predictions_for

from hashing.codes import pack_bits
from hashing.embeddings import class_embeddings
from hashing.hierarchy import load_hierarchy
from hashing.search import HammingCosineIndex
from iwan.datasets.hierarchies import shipped_hierarchy
from iwan.db import images as image_store
from iwan.db.codes import store_codes
from iwan.db.predictions import register_classes, replace_predictions
from iwan.retrieval import Batch, Corpus, Retriever, get_retriever, retriever_names
from iwan.retrieval.stored import StoreData

METHODS = ("iwan", "exhaustive", "hashes", "fused", "hashes-pg", "exhaustive-pg")


@pytest.fixture(scope="module")
def toy(module_database_url, tmp_path_factory):
    """60 train and 20 test images of 10 classes: predictions whose top class is the true one,
    embeddings and codes of their class (exact ties among a class)."""
    engine = sa.create_engine(module_database_url)
    load_class_words(engine, tmp_path_factory.mktemp("norms"))
    embeddings = class_embeddings(load_hierarchy(shipped_hierarchy("cifar10")))
    class_codes = pack_bits(np.random.default_rng(0).integers(0, 2, size=(10, 48)))
    register_classes(engine, "toy-classifier", CLASSES)
    rng = np.random.default_rng(1)
    ids = {}
    for split, per_class in (("train", 6), ("test", 2)):
        dataset = fake_split(split, per_class, seed=len(split))
        ids[split] = image_store.register(engine, dataset).ids
        indices, probabilities = predictions_for(dataset.fine_labels, rng)
        replace_predictions(engine, "toy-classifier", ids[split], indices, probabilities)
        store_codes(engine, "toy-hash", ids[split], embeddings[dataset.fine_labels], class_codes[dataset.fine_labels])
    # Copies of a few random prototypes: exact ties, and distinct cosines far apart, which float32
    # (numpy) and float64 (pgvector) arithmetic then order alike; codes with many Hamming ties.
    every = np.concatenate([ids["train"], ids["test"]])
    prototypes = rng.normal(size=(7, 6)).astype(np.float32)
    code_values = rng.integers(0, 2**48, 5, dtype=np.uint64)
    store_codes(engine, "toy-prototypes", every, prototypes[rng.integers(0, 7, len(every))],
                code_values[rng.integers(0, 5, len(every))])
    yield engine, ids
    engine.dispose()


def corpus_of(image_ids) -> Corpus:
    return Corpus(image_ids=np.sort(np.asarray(image_ids)), predictor="toy-classifier", hash_model="toy-hash")


def test_every_method_is_registered_and_unknown_ones_are_named(toy):
    engine, ids = toy
    assert set(METHODS) <= set(retriever_names())
    with pytest.raises(ValueError, match="unknown retrieval method 'nope': choose from exhaustive, exhaustive-pg, fused"):
        get_retriever("nope", corpus_of(ids["train"]), StoreData(engine, corpus_of(ids["train"])))


@pytest.mark.parametrize("method", METHODS)
def test_protocol_shapes_padding_ties_and_exclusion(toy, method):
    engine, ids = toy
    corpus = corpus_of(ids["train"])
    retriever = get_retriever(method, corpus, StoreData(engine, corpus))
    assert isinstance(retriever, Retriever) and retriever.name == method and retriever.ntotal == 60
    queries = StoreData(engine, corpus).images(ids["test"])
    scores, found = retriever.search(queries, 7)
    assert scores.shape == found.shape == (20, 7) and found.dtype == np.int64
    assert np.isin(found, corpus.image_ids).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    tied = np.diff(scores, axis=1) == 0
    assert (np.diff(found, axis=1)[tied] > 0).all()  # ties to the lower id
    assert tied.any() or method == "fused"  # reciprocal ranks of distinct positions rarely tie
    # More than the corpus holds: every image once, then padding.
    scores, found = retriever.search(queries.rows(slice(0, 3)), 70)
    listed = found[:, :60] if method != "iwan" else found[found >= 0].reshape(3, -1)
    assert all(len(set(row.tolist())) == len(row) for row in listed)
    assert (found[:, 60:] == -1).all() and np.isneginf(scores[:, 60:]).all()
    # The corpus queried by itself, each image left out of its own results.
    own = StoreData(engine, corpus).images(ids["train"][:10])
    _, with_self = retriever.search(own, 6)
    _, without = retriever.search(own, 6, exclude=ids["train"][:10])
    assert not (without == ids["train"][:10, None]).any()
    if method != "iwan":  # cosine 1 (and Hamming 0): each image ties with the 5 others of its class
        assert (with_self == ids["train"][:10, None]).any(axis=1).all()
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        retriever.search(queries, 0)


@pytest.mark.parametrize("method", METHODS)
def test_added_and_removed_images_answer_as_a_fresh_build(toy, method):
    engine, ids = toy
    train = np.sort(ids["train"])
    first, later = train[:35], train[35:]
    live = get_retriever(method, corpus_of(first), StoreData(engine, corpus_of(first)))
    assert live.ntotal == 35
    added = StoreData(engine, corpus_of(later)).images(later)
    live.add(later[:10], added.rows(slice(0, 10)))
    live.add(later[10:], added.rows(slice(10, None)))
    gone = train[::4]
    live.remove(gone)
    kept = np.setdiff1d(train, gone)
    fresh = get_retriever(method, corpus_of(kept), StoreData(engine, corpus_of(kept)))
    assert live.ntotal == fresh.ntotal == len(kept)
    queries = StoreData(engine, corpus_of(kept)).images(np.concatenate([ids["test"], train[:5]]))
    exclude = np.concatenate([np.full(20, -1), train[:5]])
    for k in (1, 9, 80):
        live_scores, live_ids = live.search(queries, k, exclude=exclude)
        fresh_scores, fresh_ids = fresh.search(queries, k, exclude=exclude)
        np.testing.assert_array_equal(live_ids, fresh_ids)
        np.testing.assert_array_equal(live_scores, fresh_scores)
        assert not np.isin(live_ids, gone).any()
    with pytest.raises(ValueError, match=str(int(gone[0]))):
        live.remove(gone[:1])
    if method.endswith("-pg"):
        with pytest.raises(LookupError, match="first image id 10000"):
            live.add(np.array([10_000]), Batch(image_ids=np.array([10_000])))


class FixedShortlist:
    """hashes-pg's retrieval in memory: hashing.search's fixed Hamming shortlist, re-ranked by cosine
    (the in-memory `hashes` method searches cells instead: hashing.cells)."""

    def __init__(self, corpus: Corpus, data: StoreData) -> None:
        self.index = HammingCosineIndex()
        self.index.add(corpus.image_ids, *data.images(corpus.image_ids, ("embeddings", "codes")).need(
            "embeddings", "codes", method="hashes"))

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings, codes = queries.need("embeddings", "codes", method="hashes")
        return self.index.search(embeddings, k, query_codes=codes, exclude=exclude)


@pytest.mark.parametrize("pg, memory", [("hashes-pg", FixedShortlist), ("exhaustive-pg", "exhaustive")])
def test_postgres_methods_equal_the_in_memory_ones(toy, pg, memory):
    engine, ids = toy
    # A corpus that is not every stored row of the hash model. (The class embeddings have cosines
    # that are equal in exact arithmetic and round apart differently in float32 and float64.)
    corpus = replace(corpus_of(ids["train"][::2]), hash_model="toy-prototypes")
    in_db = get_retriever(pg, corpus, StoreData(engine, corpus))
    data = StoreData(engine, corpus)
    in_memory = get_retriever(memory, corpus, data) if isinstance(memory, str) else memory(corpus, data)
    queries = StoreData(engine, corpus).images(np.concatenate([ids["test"], ids["train"][:6]]))
    exclude = np.concatenate([np.full(20, -1), ids["train"][:6]])
    for k in (3, 12, 40):
        db_scores, db_ids = in_db.search(queries, k, exclude=exclude)
        mem_scores, mem_ids = in_memory.search(queries, k, exclude=exclude)
        np.testing.assert_array_equal(db_ids, mem_ids)
        np.testing.assert_allclose(db_scores, mem_scores, atol=1e-5)
        assert np.isin(db_ids[db_ids >= 0], corpus.image_ids).all()


def test_a_method_says_what_its_queries_lack(toy):
    engine, ids = toy
    corpus = corpus_of(ids["train"])
    words_only = StoreData(engine, corpus).images(ids["test"], fields=("word_ids", "weights"))
    assert words_only.embeddings is None and words_only.word_ids.shape == (20, 4)
    with pytest.raises(ValueError, match="the hashes method needs embeddings and codes in its queries"):
        get_retriever("hashes", corpus, StoreData(engine, corpus)).search(words_only, 3)
    with pytest.raises(ValueError, match="the iwan method needs word_ids and weights"):
        get_retriever("iwan", corpus, StoreData(engine, corpus)).search(Batch(embeddings=np.ones((1, 4))), 3)
    with pytest.raises(ValueError, match="needs a hash model .* give --hash-model"):
        get_retriever("hashes", Corpus(image_ids=corpus.image_ids, predictor="toy-classifier"), StoreData(engine, Corpus(image_ids=corpus.image_ids, predictor="toy-classifier")))
    with pytest.raises(LookupError, match=r"no toy-classifier predictions \(first: image id 10000\)"):
        StoreData(engine, corpus).images(np.array([ids["test"][0], 10_000]))
    with pytest.raises(LookupError, match=r"no hash codes of model 'toy-hash' \(first image id 10000\)"):
        StoreData(engine, corpus).images(np.array([10_000]), fields=("codes",))


def test_corpus_options_reach_the_builder_of_their_method(toy):
    engine, ids = toy
    corpus = replace(corpus_of(ids["train"]), options={"hashes": {"shortlist_factor": 5}, "fused": {"fusion": "weighted"}})
    assert get_retriever("hashes", corpus, StoreData(engine, corpus)).index.shortlist_factor == 5
    assert get_retriever("hashes", corpus, StoreData(engine, corpus), shortlist_factor=3).index.shortlist_factor == 3
    assert get_retriever("hashes", corpus, StoreData(engine, corpus), patience=21).index.patience == 21
    assert get_retriever("fused", corpus, StoreData(engine, corpus)).rule == "weighted"


def test_fused_ranks_by_its_members(toy):
    engine, ids = toy
    corpus = corpus_of(ids["train"])
    iwan, hashes = get_retriever("iwan", corpus, StoreData(engine, corpus)), get_retriever("hashes", corpus, StoreData(engine, corpus))
    queries = StoreData(engine, corpus).images(ids["test"])
    only_hashes = get_retriever("fused", corpus, StoreData(engine, corpus), members=[iwan, hashes], fusion="weighted", weights=(0.0, 1.0))
    assert only_hashes.reads == ("word_ids", "weights", "embeddings", "codes")
    _, fused = only_hashes.search(queries, 6)
    _, alone = hashes.search(queries, 6)
    np.testing.assert_array_equal(fused, alone)  # weight 0 for IWAN: the hashes' order (a class's 6 ties)
    _, rrf = get_retriever("fused", corpus, StoreData(engine, corpus), fusion="rrf").search(queries, 6)
    assert rrf.shape == (20, 6) and (rrf >= 0).all()
