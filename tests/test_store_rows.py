"""The store for 100M images (issue 18, item 4): one predictions row per image, binary COPY both
ways, 64-bit image ids, and migration 0006 carrying existing rows over and back."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from iwan.config import HASH_BITS
from iwan.db import binary, migrate
from iwan.db.codes import iter_member_codes, load_codes, store_codes
from iwan.db.predictions import (
    iter_member_predictions,
    merge_predictions,
    predictions_digest,
    predictions_of,
    register_classes,
    replace_predictions,
)

BIG = 2**40  # an image id no 32-bit column holds


def _images(conn, ids) -> None:
    conn.execute(
        sa.text("INSERT INTO images (id, dataset, split, position, fine_label) "
                "SELECT id, 'toy', 'train', id, 0 FROM unnest(CAST(:ids AS bigint[])) AS t(id)"),
        {"ids": [int(i) for i in ids]},
    )


def _collection(conn, ids) -> int:
    collection_id = conn.scalar(sa.text(
        "INSERT INTO collections (name, predictor, top_iwk, top_wwk, strength, source) "
        "VALUES ('rows', 'toy', 4, 4, 'forward', 'usf') RETURNING id"
    ))
    conn.execute(sa.text("INSERT INTO collection_images (collection_id, image_id) SELECT :c, unnest(CAST(:ids AS bigint[]))"),
                 {"c": collection_id, "ids": [int(i) for i in ids]})
    return collection_id


def test_predictions_round_trip_through_binary_copy_with_64_bit_ids(engine):
    rng = np.random.default_rng(0)
    ids = np.array([3, BIG, BIG + 7, 11], dtype=np.int64)
    indices = rng.integers(0, 1000, size=(4, 10))
    probabilities = rng.random((4, 10), dtype=np.float32)
    with engine.begin() as conn:
        _images(conn, ids)
    register_classes(engine, "toy", [f"class{i}" for i in range(1000)])
    replace_predictions(engine, "toy", ids, indices, probabilities)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM predictions")) == 4  # one row per image, not per rank
    stored = predictions_of(engine, "toy", ids[::-1], 10)
    np.testing.assert_array_equal(stored.class_indices, indices[::-1])
    np.testing.assert_array_equal(stored.probabilities, probabilities[::-1])
    # Fewer ranks than stored, and more than stored: padded with -1 and 0.
    np.testing.assert_array_equal(predictions_of(engine, "toy", ids, 3).class_indices, indices[:, :3])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE predictions SET class_indices = class_indices[1:2], "
                             "probabilities = probabilities[1:2] WHERE image_id = :i"), {"i": BIG})
    wide = predictions_of(engine, "toy", np.array([BIG]), 4)
    assert wide.class_indices.tolist() == [[*indices[1, :2].tolist(), -1, -1]]
    assert wide.probabilities[0, 2:].tolist() == [0.0, 0.0]


def test_a_batch_written_twice_keeps_the_first_rows_and_counts_images(engine):
    ids = np.array([1, 2, 3], dtype=np.int64)
    with engine.begin() as conn:
        _images(conn, ids)
    first = np.ones((3, 10), dtype=np.float32)
    with engine.begin() as conn:
        assert merge_predictions(conn, "toy", ids[:2], np.zeros((2, 10), np.int64), first[:2]) == 2
    with engine.begin() as conn:
        assert merge_predictions(conn, "toy", ids, np.ones((3, 10), np.int64), first * 2) == 1
    stored = predictions_of(engine, "toy", ids, 10)
    assert stored.class_indices[:, 0].tolist() == [0, 0, 1]
    assert stored.probabilities[:, 0].tolist() == [1.0, 1.0, 2.0]


def test_a_collection_streams_in_chunks_in_id_order_with_missing_images_marked(engine):
    ids = np.arange(1, 1001, dtype=np.int64) * 3 + BIG
    rng = np.random.default_rng(1)
    indices, probabilities = rng.integers(0, 500, (1000, 10)), rng.random((1000, 10), dtype=np.float32)
    embeddings = rng.normal(size=(1000, 7)).astype(np.float32)
    codes = rng.integers(0, 2**HASH_BITS, 1000, dtype=np.uint64)
    with engine.begin() as conn:
        _images(conn, ids[::-1])
        collection_id = _collection(conn, ids)
    replace_predictions(engine, "toy", ids[:-1], indices[:-1], probabilities[:-1])  # the last one has none
    store_codes(engine, "h", ids, embeddings, codes)
    with engine.connect() as conn:
        chunks = list(iter_member_predictions(conn, "toy", 4, collection_id, page_rows=128))
        code_chunks = list(iter_member_codes(conn, "h", collection_id, page_rows=300))
    assert [len(c.ids) for c in chunks] == [128] * 7 + [104]
    got = np.concatenate([c.class_indices for c in chunks])
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), ids)
    np.testing.assert_array_equal(got[:-1], indices[:-1, :4])
    assert got[-1].tolist() == [-1] * 4
    np.testing.assert_array_equal(np.concatenate([c.probabilities for c in chunks])[:-1], probabilities[:-1, :4])
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in code_chunks]), embeddings)
    np.testing.assert_array_equal(np.concatenate([c.codes for c in code_chunks]), codes)
    back_embeddings, back_codes = load_codes(engine, "h", ids[[5, 0, 999]])
    np.testing.assert_array_equal(back_codes, codes[[5, 0, 999]])
    np.testing.assert_array_equal(back_embeddings, embeddings[[5, 0, 999]])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM hash_codes WHERE image_id = :i"), {"i": int(ids[3])})
    with engine.connect() as conn, pytest.raises(LookupError, match=f"1 images of the collection have no hash codes of "
                                                                   f"model 'h' \\(first image id {ids[3]}\\)"):
        list(iter_member_codes(conn, "h", collection_id, page_rows=300))
    with pytest.raises(LookupError, match=f"first image id {ids[3]}"):
        load_codes(engine, "h", ids[:5])


def test_binary_arrays_with_nulls_or_other_widths_are_refused_not_misread(engine):
    with engine.connect() as conn:
        def sent(sql: str) -> bytes:
            return conn.scalar(sa.text(f"SELECT array_send({sql})"))

        assert binary.parse_array(sent("ARRAY[[1, 2], [3, 4]]::int2[]"), "int2").tolist() == [[1, 2], [3, 4]]
        assert binary.parse_array(sent("ARRAY['[1, 2.5]'::vector]"), "vector", 2).tolist() == [[1.0, 2.5]]
        codes = binary.parse_array(sent("ARRAY[B'1' || repeat('0', 46)::bit(46) || B'1']::bit(48)[]"), "bit", 48)
        assert binary.bytes_to_bits(codes, 48).tolist() == [2**47 + 1]
        with pytest.raises(ValueError, match="NULL"):
            binary.parse_array(sent("ARRAY[1, NULL]::int8[]"), "int8")
        with pytest.raises(ValueError, match="another width"):
            binary.parse_array(sent("ARRAY[1, 2]::int4[]"), "int8")
        with pytest.raises(ValueError, match="another width"):
            binary.parse_array(sent("ARRAY['[1, 2, 3]'::vector]"), "vector", 2)


def test_migration_0006_carries_rank_rows_over_and_back(engine):
    migrate.downgrade(engine, "0005")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO images (id, dataset, split, position, fine_label) VALUES "
                             "(1, 'toy', 'train', 0, 0), (2, 'toy', 'train', 1, 1)"))
        conn.execute(sa.text(
            "INSERT INTO predictions (model, image_id, rank, class_index, probability) VALUES "
            "('toy', 1, 1, 7, 0.25), ('toy', 1, 0, 3, 0.5), ('toy', 1, 2, 9, 0.125), ('toy', 2, 0, 4, 1.0), "
            "('other', 1, 0, 5, 0.75)"
        ))
        conn.execute(sa.text("INSERT INTO collections (name, predictor, top_iwk, top_wwk, strength, source) "
                             "VALUES ('c', 'toy', 4, 4, 'forward', 'usf')"))
        conn.execute(sa.text("INSERT INTO collection_changes (collection_id, op, image_ids) "
                             "SELECT id, 'add', ARRAY[1, 2] FROM collections"))
        before = conn.execute(sa.text("SELECT * FROM predictions ORDER BY model, image_id, rank")).all()
        digest = predictions_digest_of_rank_rows(conn, "toy")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT model, image_id, class_indices, probabilities FROM predictions "
                                    "ORDER BY model, image_id")).all()
        assert [tuple(r) for r in rows] == [("other", 1, [5], [0.75]), ("toy", 1, [3, 7, 9], [0.5, 0.25, 0.125]),
                                            ("toy", 2, [4], [1.0])]
        assert conn.scalar(sa.text("SELECT data_type FROM information_schema.columns "
                                   "WHERE table_name = 'images' AND column_name = 'id'")) == "bigint"
    assert predictions_digest(engine, "toy") == digest  # evaluation caches keyed by it stay valid
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT setval('images_id_seq', :v)"), {"v": BIG})
        assert conn.scalar(sa.text(
            "INSERT INTO images (dataset, split, position, fine_label) VALUES ('toy', 'big', 1, 0) RETURNING id"
        )) == BIG + 1
        conn.execute(sa.text("DELETE FROM images WHERE split = 'big'"))
        conn.execute(sa.text("SELECT setval('images_id_seq', 2)"))
    migrate.downgrade(engine, "0005")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM predictions ORDER BY model, image_id, rank")).all() == before
    migrate.upgrade(engine)


def predictions_digest_of_rank_rows(conn, model: str) -> str:
    """The digest `predictions_digest` gave before migration 0006 (one row per rank)."""
    return conn.scalar(sa.text(
        "SELECT md5(string_agg(concat_ws(':', image_id, rank, class_index, probability), ',' ORDER BY image_id, rank)) "
        "FROM predictions WHERE model = :m"
    ), {"m": model})
