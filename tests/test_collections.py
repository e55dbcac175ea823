"""Collections in PostgreSQL: creating, listing, dropping; images added in one transaction per batch
(decoded, predicted, encoded, their bytes stored by content hash) and removed; the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import sqlalchemy as sa
from livedata import (
    HASH_MODEL,
    PREDICTOR,
    load_norms,
    png,
    save_hash_model,
    tiny_encoder,
)
from test_cli_norms import iwan

from iwan.collections import ingest as uploads
from iwan.collections.live import (
    collection_details,
    create_collection,
    drop_collection,
    image_file,
    image_record,
    list_collections,
)
from iwan.config import settings
from iwan.db import collections as store
from iwan.db.codes import load_codes
from iwan.db.predictions import predictions_of
from iwan.vision.decode import DecodePolicy, ImageRefused, decode_image


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    save_hash_model(tmp_path / "home")
    return tmp_path / "home"


@pytest.fixture
def normed(engine, tmp_path):
    load_norms(engine, tmp_path)
    return engine


def table_counts(engine) -> dict:
    tables = ("images", "image_files", "collection_images", "predictions", "hash_codes", "collection_changes")
    with engine.connect() as conn:
        return {t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in tables}


def test_an_empty_collection_takes_images_with_predictions_codes_and_files(normed, home):
    info = create_collection(normed, "pets", PREDICTOR, hash_model=HASH_MODEL)
    assert (info.size, info.methods, info.dataset) == (0, ("iwan", "exhaustive", "hashes", "fused"), None)
    encoder = tiny_encoder()
    files = [("a.png", png(1)), ("notes.txt", b"not an image at all"), ("b.png", png(2)), ("a-again.png", png(1)),
             ("broken.png", png(3)[:60])]
    report = uploads.add_files(normed, "pets", files, encoder, label="cat", settings=settings())
    assert [f for _, f in report.added] == ["a.png", "b.png"]
    ids = np.array([i for i, _ in report.added])
    assert ids[1] > ids[0]
    reasons = dict(report.skipped)
    assert reasons["notes.txt"] == "not an image Pillow can read"
    assert reasons["a-again.png"] == "the same bytes as a.png, added once"
    assert reasons["broken.png"].startswith("a damaged or unreadable image")

    # What PostgreSQL holds is what the models give for the decoded pixels.
    pixels = [decode_image(png(s), 'x.png', DecodePolicy()).pixels for s in (1, 2)]
    expected = encoder.encode(pixels)
    stored = predictions_of(normed, PREDICTOR, ids, 10)
    np.testing.assert_array_equal(stored.class_indices, expected.class_indices)
    np.testing.assert_allclose(stored.probabilities, expected.probabilities, rtol=1e-6)
    embeddings, codes = load_codes(normed, HASH_MODEL, ids)
    np.testing.assert_array_equal(codes, expected.codes)
    np.testing.assert_allclose(embeddings, expected.embeddings, atol=1e-6)

    # The bytes are under IWAN_HOME by content hash, never by the uploaded name.
    sha = hashlib.sha256(png(1)).hexdigest()
    assert (home / "images" / sha[:2] / sha).read_bytes() == png(1)
    assert image_file(normed, int(ids[0])) == (png(1), "image/png")
    record = image_record(normed, int(ids[0]))
    assert record["collections"] == ["pets"] and record["label"] == "cat"
    assert len(record["words"]) == 10 and record["words"][0]["probability"] == pytest.approx(expected.probabilities[0, 0])
    assert int(record["hash_code"], 16) == int(expected.codes[0])

    again = uploads.add_files(normed, "pets", [("copy.png", png(2))], encoder, settings=settings())
    assert again.added == [] and again.skipped == [("copy.png", f"the same bytes are already image {ids[1]} of 'pets'")]
    with normed.connect() as conn:
        changes = store.changes_after(conn, store.get(conn, "pets").id, 0)
    assert [(c.op, c.image_ids.tolist()) for c in changes] == [("add", ids.tolist())]

    uploads.remove(normed, "pets", [int(ids[0])], image_dir=home / "images")
    assert not (home / "images" / sha[:2] / sha).exists()
    with pytest.raises(LookupError, match=f"unknown image id {ids[0]}"):
        image_record(normed, int(ids[0]))
    with pytest.raises(LookupError, match="collection 'pets' holds no image 999999: nothing was removed"):
        uploads.remove(normed, "pets", [int(ids[1]), 999999], image_dir=home / "images")
    assert [c.size for c in list_collections(normed)] == [1]
    details = collection_details(normed, "pets")
    assert details["last_change"] == changes[0].seq + 1 and details["snapshot_change"] == 0

    drop_collection(normed, "pets")
    assert list_collections(normed) == [] and table_counts(normed) == dict.fromkeys(table_counts(normed), 0)
    assert not list((home / "images").rglob("*.png")) and not list((home / "images").rglob("*/*"))


def test_the_same_bytes_in_two_collections_are_two_images_and_one_file(normed, home):
    for name in ("one", "two"):
        create_collection(normed, name, PREDICTOR)
    encoder = tiny_encoder(hash_model=None)
    first = uploads.add_files(normed, "one", [("x.png", png(5))], encoder, settings=settings()).added[0][0]
    second = uploads.add_files(normed, "two", [("x.png", png(5))], encoder, settings=settings()).added[0][0]
    assert first != second
    sha = hashlib.sha256(png(5)).hexdigest()
    uploads.remove(normed, "one", [first], image_dir=home / "images")
    assert (home / "images" / sha[:2] / sha).is_file(), "still used by collection two"
    assert image_file(normed, second)[0] == png(5)


def test_bad_collections(normed, home):
    with pytest.raises(ValueError, match="collection name '../x' is not allowed"):
        create_collection(normed, "../x", PREDICTOR)
    with pytest.raises(ValueError, match="predictor 'vgg' is unknown"):
        create_collection(normed, "x", "vgg")
    with pytest.raises(LookupError, match="no images of cifar10/train are registered"):
        create_collection(normed, "x", PREDICTOR, dataset="cifar10", split="train")
    assert list_collections(normed) == []
    create_collection(normed, "x", PREDICTOR)
    with pytest.raises(ValueError, match="collection 'x' already exists"):
        create_collection(normed, "x", PREDICTOR)
    with pytest.raises(LookupError, match="unknown collection 'nope'"):
        uploads.add_files(normed, "nope", [("a.png", png(1))], tiny_encoder(), settings=settings())


def test_a_collection_from_a_split_holds_its_images_and_takes_another_split_by_id(normed, home, tmp_path):
    from iwan.collections.encode import encode_split
    from iwan.collections.live import LiveCollection
    from iwan.datasets.loaders import load_dataset
    from iwan.db.predictions import predict_split

    for split, count in (("train", 3), ("test", 2)):
        for label in ("red", "blue"):
            (tmp_path / "folder" / split / label).mkdir(parents=True)
            for i in range(count):
                (tmp_path / "folder" / split / label / f"{i}.png").write_bytes(png(100 * len(label) + 10 * count + i))
    spec = f"imagefolder:{tmp_path / 'folder'}"
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    predictor = tiny_encoder().predictor
    for dataset in (train, test):
        predict_split(normed, predictor, dataset, batch_size=8, progress=False, cache_dir=settings().cache_dir)
    with pytest.raises(LookupError, match="6 of the 6 images of imagefolder:/.*/folder/train have no codes of hash model"):
        create_collection(normed, "split", PREDICTOR, dataset=train.name, split="train", hash_model=HASH_MODEL)
    for dataset in (train, test):
        encode_split(normed, home / "models" / HASH_MODEL / "best.pt", dataset, HASH_MODEL, backend="torch", progress=False,
                     settings=settings())
    info = create_collection(normed, "split", PREDICTOR, dataset=train.name, split="train", hash_model=HASH_MODEL)
    assert info.size == 6 and (info.dataset, info.split) == (train.name, "train")
    with normed.connect() as conn:
        members = store.member_ids(conn, store.get(conn, "split").id)
    assert image_record(normed, int(members[0]))["label"] == "blue"
    assert image_file(normed, int(members[0]))[0] == (tmp_path / "folder" / "train" / "blue" / "0.png").read_bytes()

    from iwan.db.images import image_ids

    test_ids = np.sort(image_ids(normed, train.name, "test"))
    with LiveCollection.open(normed, "split", follow=False, encoder=tiny_encoder()) as live:
        assert live.labels(members[:1]) == ["blue"]
        live.add_images(test_ids[:2])
        assert live.size == 8 and live.labels(test_ids[:2]) == ["blue", "blue"]
        with pytest.raises(ValueError, match=f"image {members[-1]} is not above {test_ids[1]}, the highest image id"):
            live.add_images([members[-1]])
        live.remove(test_ids[1:2])
        with pytest.raises(ValueError, match="is not above"):
            live.add_images(test_ids[1:2])  # once held, always below the index's next id
        with pytest.raises(LookupError, match="unknown image id 999999"):
            live.add_images([999999])
        live.add_images(test_ids[2:])
        assert live.size == 9
    assert collection_details(normed, "split")["size"] == 9


def test_cli(normed, home, database_url, tmp_path):
    env = {"IWAN_HOME": str(home)}
    created = iwan("collection", "create", "snaps", "--predictor", PREDICTOR, "--hash-model", HASH_MODEL, "--json", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) | {"created_at": None} == {
        "name": "snaps", "size": 0, "predictor": PREDICTOR, "hash_model": HASH_MODEL, "dataset": None, "split": None,
        "methods": ["iwan", "exhaustive", "hashes", "fused"], "created_at": None,
    }
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.png").write_bytes(png(1))
    (folder / "sub" / "two.png").write_bytes(png(2))
    (folder / "sub" / "readme.txt").write_text("hello")
    (tmp_path / "one-copy.png").write_bytes(png(1))
    added = iwan("images", "add", "snaps", str(folder), str(tmp_path / "one-copy.png"), "--label", "dog", "--json", env=env)
    assert added.returncode == 0, added.stderr
    report = json.loads(added.stdout)
    assert [a["file"] for a in report["added"]] == [str(folder / "one.png"), str(folder / "sub" / "two.png")]
    assert {s["file"]: s["reason"][:18] for s in report["skipped"]} == {
        str(folder / "sub" / "readme.txt"): "not an image Pillo", str(tmp_path / "one-copy.png"): "the same bytes as "}
    shown = json.loads(iwan("collection", "show", "snaps", "--json", env=env).stdout)
    assert shown["size"] == 2 and shown["last_change"] >= 1
    listed = json.loads(iwan("collection", "list", "--json", env=env).stdout)
    assert [(c["name"], c["size"]) for c in listed] == [("snaps", 2)]
    plain = iwan("images", "add", "snaps", str(tmp_path / "one-copy.png"), env=env)
    assert plain.returncode == 0 and "added 0 images to snaps; skipped 1" in plain.stdout and "the same bytes" in plain.stderr

    for args, message in [
        (("images", "add", "nope", str(folder)), "iwan: error: unknown collection 'nope'"),
        (("images", "remove", "snaps", "424242"), "iwan: error: collection 'snaps' holds no image 424242"),
        (("images", "add", "snaps", str(tmp_path / "missing.png")), "iwan: error: " + str(tmp_path / "missing.png")),
        (("collection", "show", "nope"), "iwan: error: unknown collection 'nope'"),
        (("collection", "drop", "nope"), "iwan: error: unknown collection 'nope'"),
        (("collection", "create", "snaps"), "iwan: error: collection 'snaps' already exists"),
    ]:
        failed = iwan(*args, env=env)
        assert failed.returncode == 1 and failed.stderr.startswith(message) and failed.stderr.count("\n") == 1, (args, failed.stderr)

    removed = iwan("images", "remove", "snaps", str(report["added"][0]["image_id"]), "--json", env=env)
    assert removed.returncode == 0 and json.loads(removed.stdout)["removed"] == [report["added"][0]["image_id"]]
    dropped = iwan("collection", "drop", "snaps", env=env)
    assert dropped.returncode == 0 and dropped.stdout == "collection snaps dropped\n"
    assert json.loads(iwan("collection", "list", "--json", env=env).stdout) == []


def test_an_image_over_the_pixel_limit_is_refused():
    with pytest.raises(ImageRefused, match=r"32x32 is 1,024 pixels \(0.0 megapixels\), over the limit of 1,000 \(IWAN_MAX_IMAGE_PIXELS\)") as refused:
        decode_image(png(1), "x.png", DecodePolicy(max_pixels=1000, formats=None))
    assert refused.value.status == 413
    assert decode_image(png(1), "x.png", DecodePolicy(max_pixels=1024, formats=None)).pixels.shape == (32, 32, 3)


def test_a_removal_keeps_a_file_that_an_add_in_progress_is_storing(normed, home):
    import threading

    for name in ("one", "two"):
        create_collection(normed, name, PREDICTOR)
    first = uploads.add_files(normed, "one", [("x.png", png(5))], tiny_encoder(hash_model=None),
                              settings=settings()).added[0][0]
    sha = hashlib.sha256(png(5)).hexdigest()
    # What an add of the same bytes to "two" holds between writing the file and committing its rows.
    adding = normed.connect()
    transaction = adding.begin()
    store.lock_files(adding, [sha], shared=True)
    removal = threading.Thread(target=uploads.remove, args=(normed, "one", [first]), kwargs={"image_dir": home / "images"})
    removal.start()
    removal.join(2)
    assert removal.is_alive(), "the removal waits for the add before deciding the file is unused"
    store.insert_uploads(adding, store.get(adding, "two").id, [
        {"sha256": sha, "media_type": "image/png", "size": len(png(5)), "file_name": "x.png", "label": None}])
    transaction.commit()
    adding.close()
    removal.join(30)
    assert (home / "images" / sha[:2] / sha).read_bytes() == png(5)
    assert [c.size for c in list_collections(normed)] == [0, 1]


def test_a_hash_model_on_the_predictors_features_encodes_uploads_from_them():
    import torch

    from hashing.codes import pack_activations
    from hashing.inference import embed
    from hashing.net import HashConfig, HashNet
    from iwan.vision.encoder import Encoder

    torch.manual_seed(0)
    net = HashNet(HashConfig(backbone="precomputed", n_classes=4, embedding_dim=4, feature_dim=1280,
                                 features=PREDICTOR, hidden=(16,))).eval()
    predictor = tiny_encoder().predictor
    pixels = [decode_image(png(s), 'x.png', DecodePolicy()).pixels for s in range(3)]
    encoded = Encoder(PREDICTOR, "transfer", loaded_predictor=predictor, net=net).encode(pixels)
    embeddings, activations = embed(net, predictor.predict(np.stack(pixels), features=True).features)
    np.testing.assert_array_equal(encoded.codes, pack_activations(activations))
    np.testing.assert_allclose(encoded.embeddings, embeddings, atol=1e-6)
    other = Encoder("resnet50", "transfer", loaded_predictor=predictor, net=net)
    with pytest.raises(ValueError, match="reads efficientnet-lite0 features, but the collection's predictor is resnet50"):
        other.encode(pixels)
