"""LiveCollection: every method warm, images added and removed in place, answers identical to a
fresh build from the database, snapshots that load instead of a rebuild."""

from __future__ import annotations

import numpy as np
import pytest
from livedata import HASH_MODEL, PREDICTOR, png, tiny_collection, tiny_encoder

from hashing.quantized import dequantize, quantize
from iwan.collections import live as live_module
from iwan.collections.live import LiveCollection, snapshot_path
from iwan.network.index import Query
from iwan.network.reference import networkx_search
from iwan.network.saved import class_words
from iwan.retrieval import Batch, Corpus, get_retriever
from iwan.retrieval.exhaustive import CellScanRetriever
from iwan.retrieval.stored import StoreData
from iwan.vision.decode import DecodePolicy, decode_image


@pytest.fixture
def live(engine, tmp_path, monkeypatch):
    tiny_collection(engine, tmp_path, monkeypatch, "live")
    collection = LiveCollection.open(engine, "live", follow=False, encoder=tiny_encoder())
    yield collection
    collection.close()


def fresh_build(engine, live: LiveCollection) -> dict:
    """Each held method built afresh from the store; `exhaustive` as a collection holds it, every
    int8 row of the fresh `hashes` index scored."""
    corpus = Corpus(image_ids=live.image_ids, predictor=PREDICTOR, hash_model=HASH_MODEL)
    built = {m: get_retriever(m, corpus, StoreData(engine, corpus)) for m in ("iwan", "hashes")}
    return built | {"exhaustive": CellScanRetriever(built["hashes"].index)}


def assert_same_answers(live: LiveCollection, reference: dict, queries: Batch, k: int) -> None:
    for method, retriever in reference.items():
        scores, ids = live.search(queries, k, method=method)
        want_scores, want_ids = retriever.search(queries, k)
        np.testing.assert_array_equal(ids, want_ids, err_msg=method)
        np.testing.assert_array_equal(scores, want_scores, err_msg=method)


def test_random_additions_and_removals_answer_as_a_fresh_build(engine, live, monkeypatch):
    rng = np.random.default_rng(7)
    seed = 0
    probes = live.image_queries([decode_image(png(s), "probe", DecodePolicy()).pixels for s in (900, 901)])
    for _ in range(5):
        n = int(rng.integers(3, 9))
        report = live.add_files([(f"{seed + i}.png", png(seed + i)) for i in range(n)], label="pet")
        seed += n
        assert len(report.added) == n
        held = live.image_ids
        gone = rng.choice(held, int(rng.integers(1, 4)), replace=False)
        live.remove(gone)
        assert not np.isin(gone, live.image_ids).any()
        reference = fresh_build(engine, live)
        stored = live.stored_queries(live.image_ids[:3])
        for queries in (stored, probes):
            assert_same_answers(live, reference, queries, k=5)
            assert_same_answers(live, reference, queries, k=live.size + 2)
        # A removed image is never a result.
        for method in live.methods:
            _, ids = live.search(stored, live.size, method=method)
            assert not np.isin(ids, gone).any(), method

    assert len(np.unique(live.stored_queries(live.image_ids).codes)) > 1, "the hash answers must not be trivial"

    # A stored query is what the database holds for the image, its embedding as the hashes index's
    # int8 row stands for it, though the collection keeps no embeddings or codes of its own.
    whole, rows = live.stored_queries(live.image_ids), live_module._load_members(engine, live.collection, live.image_ids)
    assert live._members.embeddings is None and live._members.codes is None
    unit = rows.embeddings / np.linalg.norm(rows.embeddings, axis=1, keepdims=True)
    np.testing.assert_array_equal(whole.embeddings, dequantize(*quantize(unit)))
    assert np.einsum("nd,nd->n", whole.embeddings, unit).min() > 0.9999
    np.testing.assert_array_equal(whole.codes, rows.codes)
    np.testing.assert_array_equal(whole.weights, rows.probabilities.astype(np.float64))
    np.testing.assert_array_equal(whole.word_ids, class_words(live.class_word_ids, rows.class_indices))

    # IWAN also equals the networkx reference over the graph of the images held now.
    graph = live.retrievers["iwan"].index.to_graph()
    reference = graph.to_networkx()
    for r in range(len(stored)):
        hits = networkx_search(reference, graph, Query.from_weights(stored.word_ids[r], stored.weights[r]), 5)
        scores, ids = live.search(stored.rows(slice(r, r + 1)), 5, method="iwan")
        assert ids[0][ids[0] >= 0].tolist() == [h.image_id for h in hits]
        assert scores[0][: len(hits)].tolist() == [-h.distance for h in hits]

    # A stored image queried with itself excluded leaves exactly that image out.
    exclude = live.image_ids[:3]
    _, with_self = live.search(stored, 4, method="hashes")
    _, without = live.search(stored, 4, method="hashes", exclude=exclude)
    assert not (without == exclude[:, None]).any() and with_self.shape == without.shape

    # Closing saves a snapshot with the last change; opening it answers the same, with no rebuild.
    live.close()
    saved = snapshot_path("live", live.settings)
    assert all((saved / method / "meta.json").is_file() for method in ("iwan", "hashes"))
    assert not (saved / "exhaustive").exists(), "exhaustive reads the hashes index: nothing of its own saved"
    built: list[str] = []
    real_get = live_module.get_retriever
    monkeypatch.setattr(live_module, "get_retriever", lambda method, *a, **k: built.append(method) or real_get(method, *a, **k))
    again = LiveCollection.open(engine, "live", follow=False, encoder=live.encoder)
    assert built == ["fused"], "the held methods come from the snapshot, built; exhaustive is a view"
    monkeypatch.undo()
    assert again.seq == live.seq and np.array_equal(again.image_ids, live.image_ids)
    assert again.labels(again.image_ids) == live.labels(live.image_ids) == ["pet"] * live.size
    assert_same_answers(again, fresh_build(engine, live), stored, k=6)
    for method in again.methods:
        np.testing.assert_array_equal(again.search(stored, 6, method=method)[1], live.search(stored, 6, method=method)[1])

    # Opened with its indexes mapped from the snapshot files: changes leave the files alone.
    mapped = LiveCollection.open(engine, "live", follow=False, encoder=live.encoder, mmap=True)
    mapped.add_files([("after.png", png(777))], label="pet")  # changes leave the mapped files alone
    mapped.remove(mapped.image_ids[:2])
    assert_same_answers(mapped, fresh_build(engine, mapped), mapped.stored_queries(mapped.image_ids), k=6)
    mapped.close()


def test_a_snapshot_behind_the_log_catches_up_and_a_foreign_one_is_ignored(engine, live):
    live.add_files([(f"{i}.png", png(i)) for i in range(4)])
    live.save_snapshot()
    first = live.image_ids
    live.add_files([("late.png", png(50))])
    live.remove(first[:1])
    # Not closed: the snapshot on disk is two changes behind the log.
    behind = LiveCollection.open(engine, "live", follow=False, encoder=live.encoder)
    assert np.array_equal(behind.image_ids, live.image_ids) and behind.seq == live.seq

    # An image added and removed while a replica was not looking: its rows are gone when the
    # replica catches up, so the addition brings nothing and the removal finds nothing.
    brief = live.add_files([("brief.png", png(51))]).added[0][0]
    live.remove([brief])
    assert behind.catch_up() == 2 and np.array_equal(behind.image_ids, live.image_ids) and brief not in behind.image_ids

    queries = live.stored_queries(live.image_ids)
    for damage in ("main_slot.npy", "meta.json"):
        (snapshot_path("live", live.settings) / "iwan" / damage).write_bytes(b"garbage")
        rebuilt = LiveCollection.open(engine, "live", follow=False, encoder=live.encoder)
        assert np.array_equal(rebuilt.image_ids, live.image_ids)
        for method in live.methods:
            np.testing.assert_array_equal(rebuilt.search(queries, 3, method=method)[1],
                                          live.search(queries, 3, method=method)[1])


def test_queries_and_explanations(engine, live):
    report = live.add_files([(f"{i}.png", png(i)) for i in range(6)], label="thing")
    ids = [i for i, _ in report.added]
    live.add_files([("plain.png", png(60))])
    assert live.labels([ids[0], live.image_ids[-1], 999999]) == ["thing", None, None]
    assert (live.default_method, live.methods) == ("fused", ("iwan", "exhaustive", "hashes", "fused"))

    word = live.words[int(live.stored_queries(ids[:1]).word_ids[0, 0])]
    text = live.text_queries(f"{word.lower()}:0.5, zzqx")
    assert text.words == [(word, 0.5)] and text.unknown == ["zzqx"]
    scores, found = live.search(text.batch, 3, method="iwan")
    assert found[0, 0] in ids and np.isfinite(scores[0, 0])
    with pytest.raises(ValueError, match="no query word is in the norms' vocabulary: 'zzqx', 'qqqy'"):
        live.text_queries("zzqx, qqqy")
    with pytest.raises(LookupError, match="collection 'live' holds no image 999999"):
        live.stored_queries([ids[0], 999999])
    with pytest.raises(ValueError, match="has no method 'bm25'"):
        live.search(text.batch, 3, method="bm25")

    query = live.stored_queries(ids[:1])
    # An explained search is the same search, each hit with its reason from that search.
    scores, top = live.search(query, 3, method="iwan")
    why = live.explain(query, 3, method="iwan")
    np.testing.assert_array_equal(why.ids, top)
    np.testing.assert_array_equal(why.scores, scores)
    assert all(w["path"][-1] == f"image {i}" for w, i in zip(why.reasons[0], top[0]))
    assert [w["distance"] for w in why.reasons[0]] == pytest.approx((-scores[0]).tolist())
    hashes = live.explain(query, 2, method="hashes")
    assert hashes.ids[0, 0] == ids[0]
    # The image itself, its embedding held as int8 (hashing.quantized): a cosine of 1 within 1e-4.
    assert hashes.reasons[0][0] == {"hamming": 0, "cosine": pytest.approx(1.0, abs=1e-4)}
    assert 0 <= hashes.reasons[0][1]["hamming"] <= 48
    fused = live.explain(query, 3, method="fused")
    np.testing.assert_array_equal(fused.ids, live.search(query, 3, method="fused")[1])
    ranks = [r["ranks"] for r in fused.reasons[0]]
    assert all(set(r) == {"iwan", "hashes"} for r in ranks) and any(r["hashes"] == 1 for r in ranks)
    # The members' own reasons come with the fused hit: the IWAN path, the Hamming distance.
    assert all("cosine" in r or r["ranks"]["hashes"] is None for r in fused.reasons[0])
    assert any(r.get("path", [""])[-1] == f"image {i}" for r, i in zip(fused.reasons[0], fused.ids[0]))


def test_while_the_database_is_away_searches_answer_and_writes_fail(engine, live):
    import sqlalchemy as sa

    from iwan.db.engine import DatabaseError

    live.add_files([(f"{i}.png", png(i)) for i in range(4)])
    queries = live.stored_queries(live.image_ids[:2])
    before = {m: live.search(queries, 3, method=m) for m in live.methods}
    live.engine = sa.create_engine("postgresql+psycopg://iwan@127.0.0.1:1/iwan")  # nothing listens on port 1
    for write in (lambda: live.add_files([("new.png", png(40))]), lambda: live.remove(live.image_ids[:1])):
        with pytest.raises(DatabaseError, match="the database is unavailable while .* try again later"):
            write()
    for method in live.methods:
        np.testing.assert_array_equal(live.search(queries, 3, method=method)[1], before[method][1])
    live.engine = engine
    assert len(live.add_files([("new.png", png(40))]).added) == 1 and live.size == 5


def test_many_changes_save_a_snapshot_on_the_way(engine, live, monkeypatch):
    from iwan.collections.live import collection_details

    monkeypatch.setattr("iwan.collections.live.SNAPSHOT_EVERY", 3)
    live.add_files([(f"{i}.png", png(i)) for i in range(2)])
    assert collection_details(engine, "live")["snapshot_change"] == 0
    live.add_files([(f"{i}.png", png(i)) for i in range(2, 4)])
    assert collection_details(engine, "live")["snapshot_change"] == live.seq == live.snapshot_seq
