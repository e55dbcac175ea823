"""A collection held warm in memory: every retrieval method built, changing as images come and go.

`LiveCollection.open(engine, name)` loads the collection's saved snapshot (the arrays its
retrievers are built from, and the change-log sequence number they include), builds every method
through the retriever registry, then applies the changes logged after the snapshot. With
`follow=True` a background thread LISTENs for other processes' changes and applies them
(iwan.db.changes). PostgreSQL stays the one source of truth: a snapshot that does not match the
collection is ignored and rebuilt from the database.

`LiveCollection.open` and the catalogue functions are entry points: each takes `settings`
(where snapshots, uploaded files and models live, the largest image) and reads them from the
environment only when given none; a LiveCollection hands its settings to everything below it.

    live = LiveCollection.open(engine, "cifar10")
    scores, ids = live.search(live.text_queries("cat:0.8,dog:0.2").batch, k=10, method="iwan")
    explained = live.explain(live.stored_queries([ids[0, 0]]), k=10, method="fused")  # with reasons
    report = live.add_files([("cat.jpg", data)], label="cat")
    live.remove([report.added[0][0]])
    live.close()
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

import numpy as np
from sqlalchemy.engine import Engine

from hashing.arrays import read_arrays, remove_folder, replacing_folder, write_arrays
from hashing.search import check_k
from iwan import config
from iwan.collections import ingest as uploads
from iwan.config import FUSED_MEMBERS, METHODS, WORD_METHODS, Settings
from iwan.db import collections as store
from iwan.db.changes import Follower
from iwan.retrieval.protocol import FIELDS, Batch, ExampleRetriever, Examples, Explained, Retriever
from iwan.retrieval.registry import Corpus, get_retriever
from iwan.vision.decode import DecodePolicy, MemoryBudget
from iwan.vision.encoder import Encoder

if TYPE_CHECKING:
    from iwan.retrieval.hashes import HashesRetriever
    from iwan.retrieval.iwan import IwanRetriever

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "iwan-collection-snapshot/6"
"""Format 6: a folder of .npy files with the built index of every method that holds one (5 held
the hashes index's int8 rows without their shifts along the centroids; 4 held them whole, not as
offsets from their cells' centres; 3 held the exhaustive method's float32 rows too; 2: one .npz
of the members' arrays, rebuilt on open; an older snapshot is simply rebuilt from the database)."""
VIEWS = ("exhaustive", "fused")
"""Methods that read the indexes of the others and hold nothing of their own: `exhaustive` scores
every int8 row of the `hashes` index (iwan.retrieval.exhaustive.CellScanRetriever), `fused` fuses
FUSED_MEMBERS. They take no changes and a snapshot saves nothing of them."""
SNAPSHOT_EVERY = 5000
"""Images added or removed since the last snapshot after which a catch-up saves a new one, so that
a restart replays little of the log."""


class SavedRetriever(Protocol):
    """A held method's retriever as snapshots save it (iwan, exhaustive, hashes)."""

    index: Any

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]: ...


@dataclass(frozen=True)
class TextQuery:
    batch: Batch
    words: list[tuple[str, float]]
    """(vocabulary word, weight) of each query word found."""
    unknown: list[str]
    """Query words as given that are not in the vocabulary (left out)."""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    size: int
    predictor: str
    hash_model: str | None
    methods: tuple[str, ...]
    dataset: str | None
    split: str | None
    created_at: str

    def as_dict(self) -> dict:
        return {**self.__dict__, "methods": list(self.methods)}


def methods_of(hash_model: str | None) -> tuple[str, ...]:
    """The methods a collection serves: IWAN always; the hash methods and fusion with a hash model."""
    return METHODS if hash_model else WORD_METHODS


@dataclass
class _Members:
    """What the retrievers are built from, one row per image, ids ascending.

    As loaded from the database (and for queries) every field is what the store gives. As the
    collection holds them (`held`), only what no retriever keeps: ids, class indices (int16),
    probabilities (float32) and labels as int32 codes into the collection's table of distinct
    labels. A stored query reads its embedding and code from the `hashes` index: the unit vector
    its int8 row stands for (hashing.quantized), which is what every held row's score is of."""

    ids: np.ndarray
    class_indices: np.ndarray
    probabilities: np.ndarray
    embeddings: np.ndarray | None
    codes: np.ndarray | None
    labels: np.ndarray | None = None
    """Object array of str or None (None for queries, which have no labels, and held members)."""
    label_codes: np.ndarray | None = None
    """Held members: int32 position of each label in the collection's label table, -1 none."""

    def rows(self, keep) -> _Members:
        # Any: None only ever stands for an optional field
        return _Members(*(cast(Any, None if a is None else a[keep]) for a in self._arrays()))

    def _arrays(self):
        return (self.ids, self.class_indices, self.probabilities, self.embeddings, self.codes, self.labels,
                self.label_codes)

    def held(self, table: list[str], positions: dict[str, int]) -> _Members:
        """These members as a collection holds them (the class doc); labels not in `table` are
        appended to it (and to `positions`, label -> position)."""
        codes = self.label_codes
        if codes is None:
            codes = np.empty(len(self.ids), dtype=np.int32)
            for row, label in enumerate(cast(np.ndarray, self.labels).tolist()):
                if label is None:
                    codes[row] = -1
                    continue
                if label not in positions:
                    positions[label] = len(table)
                    table.append(label)
                codes[row] = positions[label]
        return _Members(self.ids, self.class_indices.astype(np.int16, copy=False),
                        self.probabilities.astype(np.float32, copy=False), None, None, None, codes)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays() if a is not None and a.dtype != object)

    def extend(self, other: _Members) -> _Members:
        if not len(self.ids):
            return other
        return _Members(*(cast(Any, None if a is None else np.concatenate([a, b]))
                          for a, b in zip(self._arrays(), other._arrays())))


def _load_members(engine: Engine, collection: store.Collection, ids: np.ndarray) -> _Members:
    from iwan.db.codes import load_codes
    from iwan.db.predictions import predictions_of

    predicted = predictions_of(engine, collection.predictor, ids, collection.top_iwk)
    with engine.connect() as conn:
        labels = np.array(store.labels_of(conn, ids) if len(ids) else [], dtype=object)
    embeddings = codes = None
    if collection.hash_model and len(ids):
        embeddings, codes = load_codes(engine, collection.hash_model, ids)
    elif collection.hash_model:  # the width comes with the first image
        embeddings, codes = np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.uint64)
    return _Members(ids, predicted.class_indices, predicted.probabilities, embeddings, codes, labels)


def _stream_members(engine: Engine, collection: store.Collection,
                    progress: bool = False) -> tuple[_Members, int, list[str]]:
    """Every member's data (labels as codes into the label table), the last change it includes and
    the label table, read in one database snapshot
    (REPEATABLE READ) by binary COPY in chunks into arrays allocated once: a collection of 10M
    images costs its arrays, no Python object per image (iwan.db.binary)."""
    from tqdm import tqdm

    from iwan.db.codes import iter_member_codes
    from iwan.db.predictions import iter_member_predictions

    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        seq = store.last_seq(conn, collection.id)
        ids, label_codes, names = store.member_labels(conn, collection.id)
        n = len(ids)
        passes = 2 if collection.hash_model else 1
        with tqdm(total=n * passes, desc=f"collection {collection.name}", unit="img", disable=not progress) as bar:
            class_indices = np.empty((n, collection.top_iwk), dtype=np.int16)
            probabilities = np.empty((n, collection.top_iwk), dtype=np.float32)
            at = 0
            for chunk in iter_member_predictions(conn, collection.predictor, collection.top_iwk, collection.id):
                class_indices[at : at + len(chunk.ids)] = chunk.class_indices
                probabilities[at : at + len(chunk.ids)] = chunk.probabilities
                at += len(chunk.ids)
                bar.update(len(chunk.ids))
            unpredicted = np.flatnonzero(class_indices[:, 0] < 0) if n else np.zeros(0, np.int64)
            if len(unpredicted):
                raise LookupError(
                    f"{len(unpredicted)} images have no {collection.predictor} predictions (first: image id "
                    f"{ids[unpredicted[0]]}): run `iwan predict --predictor {collection.predictor}` for their split"
                )
            embeddings = codes = None
            if collection.hash_model:
                codes = np.empty(n, dtype=np.uint64)
                at = 0
                for coded in iter_member_codes(conn, collection.hash_model, collection.id):
                    if embeddings is None:
                        embeddings = np.empty((n, coded.embeddings.shape[1]), dtype=np.float32)
                    embeddings[at : at + len(coded.ids)] = coded.embeddings
                    codes[at : at + len(coded.ids)] = coded.codes
                    at += len(coded.ids)
                    bar.update(len(coded.ids))
                if embeddings is None:  # the width comes with the first image
                    embeddings = np.zeros((0, 0), dtype=np.float32)
    return _Members(ids, class_indices, probabilities, embeddings, codes, None, label_codes), seq, names


def _vocabulary(engine: Engine, collection: store.Collection) -> tuple[list[str], np.ndarray]:
    """The norms' words and the predictor's class -> word id mapping, as `iwan index build` makes them."""
    from iwan.db.norms import association_arrays
    from iwan.db.predictions import predictions_of
    from iwan.vision.imagenet_words import with_hypernyms
    from iwan.vision.words import WordMatcher

    words = association_arrays(engine, collection.source).words
    categories = predictions_of(engine, collection.predictor, np.zeros(0, dtype=np.int64), 1).categories
    if not categories:  # nothing predicted yet: the ImageNet classes every predictor shares
        from iwan.tv import models

        categories = list(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    mapping = with_hypernyms(WordMatcher(words).map(categories), words)
    return words, np.asarray(mapping.word_ids, dtype=np.int64)


def snapshot_path(name: str, settings: Settings) -> Path:
    """Where collection `name`'s snapshot is kept: a folder in the settings' `collection_dir`."""
    return settings.collection_dir / f"{store.check_name(name)}.snapshot"


def _legacy_snapshot_path(name: str, settings: Settings) -> Path:
    """Where format 2 and earlier kept it (one .npz of the members): removed by a newer save."""
    return settings.collection_dir / f"{store.check_name(name)}.npz"


class _HeldData:
    """The collection's own arrays as the data its methods are built from (a retrieval
    `CorpusData`); the norms' word associations come from the store."""

    def __init__(self, live: LiveCollection):
        self.live = live

    def images(self, image_ids: np.ndarray, fields=None) -> Batch:
        members, image_ids = self.live._members, np.asarray(image_ids, dtype=np.int64)
        rows = np.minimum(np.searchsorted(members.ids, image_ids), max(len(members.ids) - 1, 0))
        if len(image_ids) and not (len(members.ids) and (members.ids[rows] == image_ids).all()):
            raise LookupError(f"collection {self.live.name!r} does not hold every image asked for")
        batch = self.live._batch(members.rows(rows))
        wanted = set(FIELDS if fields is None else fields)
        return Batch(**{f: getattr(batch, f) if f in wanted else None for f in FIELDS})

    def associations(self):
        from iwan.db.norms import association_arrays

        return association_arrays(self.live.engine, self.live.collection.source)

    @property
    def unmapped_classes(self) -> list[str]:
        return []


class LiveCollection:
    def __init__(self, engine: Engine, collection: store.Collection, members: _Members, words: list[str],
                 class_word_ids: np.ndarray, seq: int, encoder: Encoder | None = None, *, settings: Settings,
                 label_table: list[str] | None = None, retrievers: dict[str, Retriever] | None = None):
        """`retrievers`: the held methods' retrievers as a snapshot saved them (built from
        `members` when None); `label_table`: the labels `members.label_codes` point into."""
        self.engine = engine
        self.settings = settings
        """Where its snapshot, uploaded files and models live, and the largest upload (open's)."""
        self.collection = collection
        self.name = collection.name
        self.predictor = collection.predictor
        self.hash_model = collection.hash_model
        self.words = words
        self.class_word_ids = class_word_ids
        self.seq = seq
        """The last change applied."""
        self.snapshot_seq = -1
        """The change the saved snapshot includes (-1: none saved by this process)."""
        if encoder is None:
            encoder = Encoder(self.predictor, self.hash_model, settings=settings)
        self.encoder = encoder
        self._label_table: list[str] = list(label_table or [])
        """The distinct labels; held members point into it (append-only)."""
        self._label_positions = {label: i for i, label in enumerate(self._label_table)}
        self._members = members
        self._lock = threading.RLock()
        """Held while the arrays and retrievers change, and by searches."""
        self._catching = threading.Lock()
        """One catch-up at a time (the follower's and this process's own)."""
        self._unsaved = 0
        """Images changed since the last snapshot."""
        self._follower: Follower | None = None
        self._label_index: tuple[_Members, dict[str | None, np.ndarray]] | None = None
        """The image ids of each label, for the members it was made from."""
        self.retrievers: dict[str, Retriever] = {}
        corpus = Corpus(
            image_ids=members.ids, predictor=collection.predictor, hash_model=collection.hash_model,
            top_iwk=collection.top_iwk, top_wwk=collection.top_wwk, strength=collection.strength, source=collection.source,
        )
        data = _HeldData(self)
        built: dict[str, Retriever] = {}
        for method in self.methods:
            if method not in VIEWS:
                built[method] = retrievers[method] if retrievers is not None else get_retriever(method, corpus, data)
        if self.hash_model:
            from iwan.retrieval.exhaustive import CellScanRetriever

            # The views read the collection's own retrievers' indexes, shared, not copies.
            built["exhaustive"] = CellScanRetriever(cast("HashesRetriever", built["hashes"]).index)
            built["fused"] = get_retriever("fused", corpus, data, members=[built[m] for m in FUSED_MEMBERS])
        self.retrievers = {method: built[method] for method in self.methods}
        self._members = members.held(self._label_table, self._label_positions)
        self._share_arrays()

    def _share_arrays(self) -> None:
        """One copy of the ids the members and the held indexes all hold, equal."""
        ids = self._members.ids
        cast("IwanRetriever", self.retrievers["iwan"]).index.share_ids(ids)
        if self.hash_model:
            cast("HashesRetriever", self.retrievers["hashes"]).index.share(ids)

    # --- opening and closing -----------------------------------------------------------------------

    @classmethod
    def open(cls, engine: Engine, name: str, *, settings: Settings | None = None, follow: bool = True,
             encoder: Encoder | None = None, mmap: bool = True) -> LiveCollection:
        """The collection warm: snapshot (or the database), then the changes after it; LookupError if unknown.

        `settings`: where its snapshot, uploaded files and models live and the largest upload,
        kept by the collection for everything it does; read from the environment when not given.
        `mmap`: the indexes' arrays map the snapshot's files (read from disk as searches use them,
        so that opening a large collection reads little; the first searches then wait for the disk)."""
        settings = settings or config.settings()
        collection = store.get(engine, name)
        loaded = _read_snapshot(snapshot_path(name, settings), collection, mmap=mmap)
        if loaded is None:
            members, seq, label_table = _stream_members(engine, collection)
            words, class_word_ids = _vocabulary(engine, collection)
            loaded = _Snapshot(members, words, class_word_ids, seq, label_table, None)
        live = cls(engine, collection, loaded.members, loaded.words, loaded.class_word_ids, loaded.seq, encoder,
                   settings=settings, label_table=loaded.label_table, retrievers=loaded.retrievers)
        if loaded.retrievers is None:  # built here: saved, so that the next open loads them
            live.save_snapshot()
        else:
            live.snapshot_seq = loaded.seq
        live.catch_up()
        if follow:
            live._follower = Follower(engine, collection.id, live.catch_up)
            live._follower.start()
        return live

    def close(self) -> None:
        """Stop following; save a snapshot if changes were applied since the last one."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self.seq != self.snapshot_seq:
            self.save_snapshot()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def following(self) -> bool:
        """True while the follower is connected and listening."""
        return self._follower is not None and self._follower.connected.is_set()

    @property
    def reconnects(self) -> int:
        """How often the follower lost its connection and came back."""
        return 0 if self._follower is None else self._follower.reconnects

    def wait_following(self, timeout: float = 10.0) -> bool:
        return self._follower is not None and self._follower.connected.wait(timeout)

    # --- what it holds ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._members.ids)

    @property
    def methods(self) -> tuple[str, ...]:
        return methods_of(self.hash_model)

    @property
    def default_method(self) -> str:
        return "fused" if self.hash_model else "iwan"

    @property
    def image_ids(self) -> np.ndarray:
        return self._members.ids.copy()

    # --- queries ----------------------------------------------------------------------------------------

    def image_queries(self, images: list[np.ndarray], budget: MemoryBudget | None = None) -> Batch:
        """Queries from uint8 (H, W, 3) RGB pixels (iwan.vision.decode): the predictor's words (and
        the hash model's embeddings and codes); the model passes hold their memory in `budget`."""
        encoded = self.encoder.encode(images, budget)
        top = self.collection.top_iwk
        no_ids = cast(np.ndarray, None)  # a query has none; _batch reads ids only with_ids
        return self._batch(_Members(no_ids, encoded.class_indices[:, :top], encoded.probabilities[:, :top],
                                    encoded.embeddings, encoded.codes))

    def text_queries(self, text: str) -> TextQuery:
        """A query from "cat:0.8,dog:0.2" or plain words; ValueError naming the words if none is known."""
        from iwan.network.index import parse_text_query

        terms = parse_text_query(text)
        iwan = cast("IwanRetriever", self.retrievers["iwan"])  # what the registry builds for "iwan"
        mapping = iwan.index.word_mapping([w for w, _ in terms])
        word_ids = np.asarray(mapping.word_ids, dtype=np.int64)
        found = word_ids >= 0
        weights = np.array([p for _, p in terms], dtype=np.float64)
        return TextQuery(
            batch=Batch(word_ids=word_ids[None, :], weights=np.where(found, weights, 0.0)[None, :]),
            words=[(self.words[w], float(p)) for w, p in zip(word_ids[found], weights[found])],
            unknown=[name for name, ok in zip(mapping.names, found) if not ok],
        )

    def labels(self, image_ids) -> list[str | None]:
        """Labels of held images from memory (None for an image not held or without a label)."""
        image_ids = np.atleast_1d(np.asarray(image_ids, dtype=np.int64))
        with self._lock:
            members = self._members
            if not len(members.ids):
                return [None] * len(image_ids)
            rows = np.minimum(np.searchsorted(members.ids, image_ids), len(members.ids) - 1)
            held = members.ids[rows] == image_ids
            codes, table = cast(np.ndarray, members.label_codes), self._label_table  # held members have codes
            return [table[c] if ok and c >= 0 else None for c, ok in zip(codes[rows].tolist(), held.tolist())]

    def stored_queries(self, image_ids) -> Batch:
        """Queries from images the collection holds; LookupError naming an id it does not hold."""
        image_ids = np.atleast_1d(np.asarray(image_ids, dtype=np.int64))
        with self._lock:
            members = self._members
            rows = np.searchsorted(members.ids, image_ids)
            held = (rows < len(members.ids)) & (members.ids[np.minimum(rows, len(members.ids) - 1)] == image_ids) \
                if len(members.ids) else np.zeros(len(image_ids), dtype=bool)
            if not held.all():
                raise LookupError(f"collection {self.name!r} holds no image {int(image_ids[~held][0])}")
            return self._batch(members.rows(rows), with_ids=True)

    def eligible(self, labels=None, exclude_labels=None) -> np.ndarray | None:
        """Ascending ids of the images labelled one of `labels` (None: any) and none of
        `exclude_labels`; None when neither filter is given (every image)."""
        if labels is None and exclude_labels is None:
            return None
        members, by_label = self._by_label()
        empty = np.zeros(0, dtype=np.int64)
        kept = members.ids if labels is None else np.unique(np.concatenate([empty, *(by_label.get(x, empty) for x in labels)]))
        if exclude_labels:
            kept = np.setdiff1d(kept, np.concatenate([empty, *(by_label.get(x, empty) for x in exclude_labels)]))
        return kept

    def label_counts(self) -> list[tuple[str, int]]:
        """(label, how many images carry it) of every label the collection's images have, the most
        frequent first (then by label); images without a label are not counted."""
        _, by_label = self._by_label()
        counts = [(label, len(ids)) for label, ids in by_label.items() if label is not None]
        return sorted(counts, key=lambda item: (-item[1], item[0]))

    def _by_label(self) -> tuple[_Members, dict[str | None, np.ndarray]]:
        """The members and each label's ascending image ids, built once per change of the members."""
        with self._lock:
            members = self._members
            index = self._label_index
            if index is None or index[0] is not members:
                codes = cast(np.ndarray, members.label_codes)  # held members have codes
                order = np.argsort(codes, kind="stable")  # ids ascend within each label
                present, starts = np.unique(codes[order], return_index=True)
                groups = np.split(members.ids[order], starts[1:])
                index = (members, {None if c < 0 else self._label_table[c]: ids
                                   for c, ids in zip(present.tolist(), groups)})
                self._label_index = index
            return index

    def explain_examples(self, examples: Examples, k: int, *, method: str | None = None, among=None,
                         exclude=None) -> Explained:
        """One query of several examples, for and against (ExampleRetriever.explain_examples)."""
        retriever = self._retriever(method)
        if not isinstance(retriever, ExampleRetriever):
            raise ValueError(f"method {retriever.name!r} answers one example per query")
        k = check_k(k)
        with self._lock:
            return retriever.explain_examples(examples, k, among=among, exclude=exclude)

    def search(self, queries: Batch, k: int, *, method: str | None = None, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k), best first; `exclude` (q,) image ids to leave out (-1: none)."""
        retriever = self._retriever(method)
        k = check_k(k)
        with self._lock:
            return retriever.search(queries, k, exclude=None if exclude is None else np.asarray(exclude, dtype=np.int64))

    def explain(self, queries: Batch, k: int, *, method: str | None = None, exclude=None) -> Explained:
        """The same search as `search`, with each hit's reason (Retriever.explain)."""
        retriever = self._retriever(method)
        k = check_k(k)
        with self._lock:
            return retriever.explain(queries, k, exclude=None if exclude is None else np.asarray(exclude, dtype=np.int64))

    def _retriever(self, method: str | None) -> Retriever:
        method = method or self.default_method
        if method not in self.retrievers:
            raise ValueError(f"collection {self.name!r} has no method {method!r}: choose from {', '.join(self.methods)}")
        return self.retrievers[method]

    def _held(self) -> list[Retriever]:
        """The retrievers that hold images themselves (not the VIEWS)."""
        return [r for m, r in self.retrievers.items() if m not in VIEWS]

    def _batch(self, members: _Members, with_ids: bool = False) -> Batch:
        from iwan.network.saved import class_words

        embeddings, codes = members.embeddings, members.codes
        if embeddings is None and members.label_codes is not None and self.hash_model:  # held: the indexes keep them
            hashes = cast("HashesRetriever", self.retrievers["hashes"]).index
            embeddings, codes = hashes.embeddings_of(members.ids), hashes.codes_of(members.ids)
        return Batch(
            word_ids=class_words(self.class_word_ids, members.class_indices),
            weights=members.probabilities.astype(np.float64),
            embeddings=embeddings,
            codes=codes,
            image_ids=members.ids if with_ids else None,
        )

    # --- changes -----------------------------------------------------------------------------------

    def add_files(self, files: list[tuple[str, bytes]], label: str | None = None,
                  policy: DecodePolicy | None = None, budget: MemoryBudget | None = None) -> uploads.AddReport:
        """Store image files (name, bytes) in the collection; they are searchable here on return.
        `policy`: what the decoder accepts (default: any format Pillow reads, the settings' pixel limit);
        `budget`: what the decodes and model passes may hold (the service's)."""
        report = uploads.add_files(self.engine, self.name, files, self.encoder, label, policy=policy,
                                   budget=budget, settings=self.settings)
        self.catch_up()
        return report

    def add_images(self, image_ids) -> None:
        """Add registered images (with stored predictions and codes, ids above any held) by id."""
        uploads.add_registered(self.engine, self.name, image_ids)
        self.catch_up()

    def remove(self, image_ids) -> None:
        """Take images out of the collection; gone from this process's results on return."""
        uploads.remove(self.engine, self.name, image_ids, image_dir=self.settings.image_dir)
        self.catch_up()

    def catch_up(self) -> int:
        """Apply the logged changes after the last one applied; how many were applied.

        The data of added images is read from the database before the lock searches share is
        taken, so searches wait only while the arrays change."""
        with self._catching:
            with self.engine.connect() as conn:
                changes = store.changes_after(conn, self.collection.id, self.seq)
            for change in changes:
                held = self._members.ids
                if change.op == "add":
                    added = self._current(np.sort(change.image_ids[~np.isin(change.image_ids, held)]))
                    gone = None
                else:
                    added, gone = None, change.image_ids[np.isin(change.image_ids, held)]
                with self._lock:
                    self._apply(added, gone)
                    self.seq = change.seq
                self._unsaved += len(change.image_ids)
            if self._unsaved >= SNAPSHOT_EVERY:
                self.save_snapshot()
            return len(changes)

    def _current(self, image_ids: np.ndarray) -> _Members | None:
        """The data of those of `image_ids` still in the collection: an image removed by a change
        not applied yet may have lost its rows already, and is left out (its removal then finds
        nothing to remove)."""
        for _ in range(3):
            if not len(image_ids):
                return None
            with self.engine.connect() as conn:
                image_ids = image_ids[np.isin(image_ids, store.member_ids(conn, self.collection.id, among=image_ids))]
            try:
                return _load_members(self.engine, self.collection, image_ids)
            except LookupError:
                continue  # removed between the two reads: look again
        return _load_members(self.engine, self.collection, image_ids)

    def _apply(self, added: _Members | None, gone: np.ndarray | None) -> None:
        if added is not None and len(added.ids):
            batch = self._batch(added)
            for retriever in self._held():
                retriever.add(added.ids, batch)
            self._members = self._members.extend(added.held(self._label_table, self._label_positions))
        if gone is not None and len(gone):
            for retriever in self._held():
                retriever.remove(gone)
            self._members = self._members.rows(~np.isin(self._members.ids, gone))

    # --- snapshots -------------------------------------------------------------------------------------

    def save_snapshot(self) -> Path:
        """Write the members, every held method's built structures and the sequence number they
        include (atomically: a temporary folder renamed into place)."""
        with self._lock:
            # The arrays captured here are never rewritten by later changes (to_arrays copies
            # what would be), so they are written without holding up searches and changes.
            members, seq, table = self._members, self.seq, list(self._label_table)
            built = {m: cast(SavedRetriever, r).to_arrays() for m, r in self.retrievers.items() if m not in VIEWS}
        path = _write_snapshot(snapshot_path(self.name, self.settings), self.collection, members, self.words,
                               self.class_word_ids, seq, label_table=table, built=built)
        _legacy_snapshot_path(self.name, self.settings).unlink(missing_ok=True)
        self.snapshot_seq, self._unsaved = seq, 0
        return path

    def nbytes(self) -> dict[str, int]:
        """Bytes held in memory per part: "members" (with the label table) and each method's index
        (an ids array the indexes share with the members counts in each part; a view's 0)."""
        with self._lock:
            parts = {"members": self._members.nbytes + sum(len(x.encode()) + 49 for x in self._label_table)}
            for method, retriever in self.retrievers.items():
                if method != "fused":
                    parts[method] = int(cast(SavedRetriever, retriever).index.nbytes)
        return parts


@dataclass
class _Snapshot:
    members: _Members
    words: list[str]
    class_word_ids: np.ndarray
    seq: int
    label_table: list[str]
    retrievers: dict[str, Retriever] | None
    """The held methods' retrievers as saved (None: the snapshot holds the members only)."""


_MEMBER_ARRAYS = {  # name -> (dtype, ndim) of the members' files in a snapshot
    "ids": ("int64", 1), "class_indices": ("int16", 2), "probabilities": ("float32", 2),
    "embeddings": ("float32", 2), "codes": ("uint64", 1), "label_codes": ("int32", 1),
    "labels": ("U", 1), "words": ("U", 1), "class_word_ids": ("int64", 1),
}


def _write_snapshot(path: Path, collection: store.Collection, members: _Members, words: list[str],
                    class_word_ids: np.ndarray, seq: int, *, label_table: list[str] | None = None,
                    built: dict[str, tuple[dict, dict]] | None = None) -> Path:
    """A folder (hashing.arrays) of the members' arrays and, per held method in `built`, a
    subfolder of its index's arrays (`to_arrays`), written atomically. Without `built`, the
    members keep what the methods are built from (their codes too), and opening builds them."""
    table = list(label_table or [])
    held = members.held(table, {label: i for i, label in enumerate(table)})
    arrays = {"ids": held.ids, "class_indices": held.class_indices, "probabilities": held.probabilities,
              "label_codes": cast(np.ndarray, held.label_codes), "labels": np.array(table, dtype=str),
              "words": np.array(words, dtype=str), "class_word_ids": np.asarray(class_word_ids, dtype=np.int64)}
    if not built and members.embeddings is not None and members.codes is not None:
        arrays["embeddings"], arrays["codes"] = members.embeddings, members.codes
    meta = {"format": SNAPSHOT_FORMAT, "collection_id": collection.id, "created_at": collection.created_at.isoformat(),
            "seq": seq, "methods": sorted(built or {})}
    with replacing_folder(path) as folder:
        write_arrays(folder, arrays, meta)
        for method, (index_arrays, index_meta) in (built or {}).items():
            write_arrays(folder / method, index_arrays, index_meta)
    return path


def _read_snapshot(path: Path, collection: store.Collection, *, mmap: bool = False) -> _Snapshot | None:
    """The snapshot of this very collection at `path`, checked, else None (with a warning when
    there is a snapshot that does not fit); `mmap`: the indexes' arrays map its files."""
    if not path.is_dir():
        return None
    started = time.perf_counter()
    try:
        arrays, meta = read_arrays(path, _MEMBER_ARRAYS, optional=("embeddings", "codes"))
        if meta.get("format") != SNAPSHOT_FORMAT or meta.get("collection_id") != collection.id \
                or meta.get("created_at") != collection.created_at.isoformat():
            log.warning("%s is a snapshot of another collection or format: rebuilding from the database", path)
            return None
        snapshot = _checked_snapshot(path, collection, arrays, meta, mmap)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s is unreadable (%s): rebuilding from the database", path, err)
        return None
    log.info("loaded %s (%d images, change %d) in %.2f s", path, len(snapshot.members.ids), snapshot.seq,
             time.perf_counter() - started)
    return snapshot


def _checked_snapshot(path: Path, collection: store.Collection, arrays: dict[str, np.ndarray], meta: dict,
                      mmap: bool) -> _Snapshot:
    """The snapshot from its read arrays; ValueError saying what does not fit the collection."""
    ids = arrays["ids"]
    n = len(ids)
    hashed = bool(collection.hash_model)
    for name in ("class_indices", "probabilities", "label_codes"):
        if len(arrays[name]) != n:
            raise ValueError(f"{name} does not hold one row per image id")
    if arrays["class_indices"].shape != arrays["probabilities"].shape:
        raise ValueError("class indices and probabilities differ in shape")
    if n and (ids[0] < 0 or (np.diff(ids) <= 0).any()):
        raise ValueError("the image ids are not ascending")
    labels = arrays["labels"].tolist()
    codes = arrays["label_codes"]
    if n and (codes.min() < -1 or codes.max() >= len(labels)):
        raise ValueError("label codes point outside the label table")
    methods = tuple(m for m in methods_of(collection.hash_model) if m not in VIEWS)
    saved = meta.get("methods")
    retrievers: dict[str, Retriever] | None = None
    if saved:
        if sorted(saved) != sorted(methods):
            raise ValueError(f"it holds methods {saved}, the collection has {list(methods)}")
        retrievers = {m: _retriever_types()[m].load(path / m, mmap=mmap) for m in methods}
        for method, retriever in retrievers.items():
            if not np.array_equal(cast(SavedRetriever, retriever).index.ids, ids):
                raise ValueError(f"the {method} index does not hold the snapshot's images")
    elif hashed and not all(name in arrays and len(arrays[name]) == n for name in ("embeddings", "codes")):
        raise ValueError("it holds neither built methods nor the images' embeddings and codes")
    members = _Members(ids, arrays["class_indices"], arrays["probabilities"],
                       None if retrievers else arrays.get("embeddings"), None if retrievers else arrays.get("codes"),
                       None, codes)
    return _Snapshot(members, arrays["words"].tolist(), arrays["class_word_ids"], int(meta["seq"]), labels, retrievers)


def _retriever_types():
    from iwan.retrieval.hashes import HashesRetriever
    from iwan.retrieval.iwan import IwanRetriever

    return {"iwan": IwanRetriever, "hashes": HashesRetriever}


# --- the catalogue -----------------------------------------------------------------------------------


def create_collection(engine: Engine, name: str, predictor: str, *, dataset: str | None = None, split: str | None = None,
                      hash_model: str | None = None, settings: Settings | None = None, progress: bool = False,
                      **options) -> CollectionInfo:
    """Create a collection and save its first snapshot (so that the first open is fast) where
    `settings` say (read from the environment when not given), with a progress bar if asked;
    `options`: top_iwk, top_wwk, strength, source."""
    from iwan.vision.predictors import ARCHITECTURES

    settings = settings or config.settings()
    if predictor not in ARCHITECTURES:
        raise ValueError(f"predictor {predictor!r} is unknown: use one of {', '.join(ARCHITECTURES)}")
    collection = store.create(engine, name, predictor, dataset=dataset, split=split, hash_model=hash_model, **options)
    try:
        members, seq, label_table = _stream_members(engine, collection, progress)
        words, class_word_ids = _vocabulary(engine, collection)
    except Exception:
        store.drop(engine, name)
        raise
    _write_snapshot(snapshot_path(name, settings), collection, members, words, class_word_ids, seq,
                    label_table=label_table)
    return _info(collection, len(members.ids))


def drop_collection(engine: Engine, name: str, *, settings: Settings | None = None) -> None:
    """Delete a collection, its uploaded files and its snapshot (where `settings` say; read from
    the environment when not given)."""
    settings = settings or config.settings()
    uploads.delete_unused_files(engine, store.drop(engine, name), settings.image_dir)
    remove_folder(snapshot_path(name, settings))
    _legacy_snapshot_path(name, settings).unlink(missing_ok=True)


def _info(collection: store.Collection, size: int) -> CollectionInfo:
    return CollectionInfo(
        name=collection.name, size=size, predictor=collection.predictor, hash_model=collection.hash_model,
        methods=methods_of(collection.hash_model), dataset=collection.dataset, split=collection.split,
        created_at=collection.created_at.isoformat(),
    )


def list_collections(engine: Engine) -> list[CollectionInfo]:
    return [_info(c, n) for c, n in store.all_collections(engine)]


def collection_info(engine: Engine, name: str) -> CollectionInfo:
    collection = store.get(engine, name)
    return _info(collection, store.size(engine, collection.id))


def collection_details(engine: Engine, name: str, *, settings: Settings | None = None) -> dict:
    """A collection's settings, size, latest change and the change its saved snapshot (where
    `settings` say; read from the environment when not given) includes."""
    settings = settings or config.settings()
    collection = store.get(engine, name)
    with engine.connect() as conn:
        seq = store.last_seq(conn, collection.id)
    path = snapshot_path(name, settings)
    loaded = _read_snapshot(path, collection, mmap=True)  # checked, not read whole: only its change is wanted
    return {
        **_info(collection, store.size(engine, collection.id)).as_dict(),
        "top_iwk": collection.top_iwk, "top_wwk": collection.top_wwk, "strength": collection.strength,
        "source": collection.source, "last_change": seq, "snapshot": str(path) if loaded else None,
        "snapshot_change": loaded.seq if loaded else None,
    }


def collections_of(engine: Engine, image_id: int) -> list[str]:
    return store.image_row(engine, image_id)["collections"]


def image_record(engine: Engine, image_id: int) -> dict:
    """The image's collections, label, top words (of its first collection's predictor) and hash code."""
    from iwan.config import HASH_BITS, STORED_PREDICTIONS
    from iwan.db.codes import load_codes
    from iwan.db.predictions import predictions_of

    row = store.image_row(engine, image_id)
    words, code = [], None
    if row["collections"]:
        collection = store.get(engine, row["collections"][0])
        predicted = predictions_of(engine, collection.predictor, np.array([image_id]), STORED_PREDICTIONS)
        words = [{"word": predicted.categories[c] if c < len(predicted.categories) else str(c), "probability": float(p)}
                 for c, p in zip(predicted.class_indices[0].tolist(), predicted.probabilities[0].tolist()) if c >= 0]
        if collection.hash_model:
            try:
                code = f"{int(load_codes(engine, collection.hash_model, np.array([image_id]))[1][0]):0{HASH_BITS // 4}x}"
            except LookupError:
                code = None
    return {"image_id": row["image_id"], "collections": row["collections"], "label": row["label"], "words": words,
            "hash_code": code}


def image_file(engine: Engine, image_id: int, *, settings: Settings | None = None) -> tuple[bytes, str]:
    """(bytes, media type) of an image, for thumbnails; LookupError if there is none. An upload's
    bytes are read from the settings' `image_dir` (read from the environment when not given)."""
    row = store.image_row(engine, image_id)
    if row["sha256"] is not None:
        path = uploads.image_path(row["sha256"], (settings or config.settings()).image_dir)
        media_type = row["media_type"]
    elif row["path"]:
        from iwan.vision.decode import media_type_of

        path = Path(row["path"])
        media_type = media_type_of(path)
    else:
        raise LookupError(f"image {image_id} has no stored file (its data set keeps only pixels)")
    try:
        return path.read_bytes(), media_type
    except FileNotFoundError:
        raise LookupError(f"image {image_id}: its file {path} is missing") from None
