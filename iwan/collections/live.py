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
import os
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

import numpy as np
from sqlalchemy.engine import Engine

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
    from iwan.retrieval.iwan import IwanRetriever

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "iwan-collection-snapshot/2"
SNAPSHOT_EVERY = 5000
"""Images added or removed since the last snapshot after which a catch-up saves a new one, so that
a restart replays little of the log."""


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
    """What the retrievers are built from, one row per image, ids ascending."""

    ids: np.ndarray
    class_indices: np.ndarray
    probabilities: np.ndarray
    embeddings: np.ndarray | None
    codes: np.ndarray | None
    labels: np.ndarray | None = None
    """Object array of str or None (None only for queries, which have no labels)."""

    def rows(self, keep) -> _Members:
        # Any: None only ever stands for an optional field
        return _Members(*(cast(Any, None if a is None else a[keep]) for a in self._arrays()))

    def _arrays(self):
        return self.ids, self.class_indices, self.probabilities, self.embeddings, self.codes, self.labels

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


def _stream_members(engine: Engine, collection: store.Collection, progress: bool = False) -> tuple[_Members, int]:
    """Every member's data and the last change it includes, read in one database snapshot
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
            class_indices = np.empty((n, collection.top_iwk), dtype=np.int64)
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
    labels = np.array([*names, None], dtype=object)[label_codes]
    return _Members(ids, class_indices, probabilities, embeddings, codes, labels), seq


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
    """Where collection `name`'s snapshot is kept: in the settings' `collection_dir`."""
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
                 class_word_ids: np.ndarray, seq: int, encoder: Encoder | None = None, *, settings: Settings):
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
        for method in self.methods:
            if method == "fused":
                # Fusion over the collection's own member retrievers, shared, not copies.
                shared = [self.retrievers[m] for m in FUSED_MEMBERS]
                self.retrievers[method] = get_retriever(method, corpus, data, members=shared)
            else:
                self.retrievers[method] = get_retriever(method, corpus, data)

    # --- opening and closing -----------------------------------------------------------------------

    @classmethod
    def open(cls, engine: Engine, name: str, *, settings: Settings | None = None, follow: bool = True,
             encoder: Encoder | None = None) -> LiveCollection:
        """The collection warm: snapshot (or the database), then the changes after it; LookupError if unknown.

        `settings`: where its snapshot, uploaded files and models live and the largest upload,
        kept by the collection for everything it does; read from the environment when not given."""
        settings = settings or config.settings()
        collection = store.get(engine, name)
        loaded = _read_snapshot(snapshot_path(name, settings), collection)
        if loaded is None:
            members, seq = _stream_members(engine, collection)
            words, class_word_ids = _vocabulary(engine, collection)
        else:
            members, words, class_word_ids, seq = loaded
        live = cls(engine, collection, members, words, class_word_ids, seq, encoder, settings=settings)
        if loaded is None:
            live.save_snapshot()
        else:
            live.snapshot_seq = seq
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
            labels = cast(np.ndarray, members.labels)  # a collection's members have labels; queries have none
            return [labels[r] if ok else None for r, ok in zip(rows.tolist(), held.tolist())]

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
                by_label: dict[str | None, list[int]] = {}
                for image_id, label in zip(members.ids.tolist(), cast(np.ndarray, members.labels).tolist()):
                    by_label.setdefault(label, []).append(image_id)
                index = (members, {label: np.array(ids, dtype=np.int64) for label, ids in by_label.items()})
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
        """The retrievers that hold images themselves (fusion holds none of its own)."""
        return [r for m, r in self.retrievers.items() if m != "fused"]

    def _batch(self, members: _Members, with_ids: bool = False) -> Batch:
        from iwan.network.saved import class_words

        return Batch(
            word_ids=class_words(self.class_word_ids, members.class_indices),
            weights=members.probabilities.astype(np.float64),
            embeddings=members.embeddings,
            codes=members.codes,
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
            self._members = self._members.extend(added)
        if gone is not None and len(gone):
            for retriever in self._held():
                retriever.remove(gone)
            self._members = self._members.rows(~np.isin(self._members.ids, gone))

    # --- snapshots -------------------------------------------------------------------------------------

    def save_snapshot(self) -> Path:
        """Write the arrays and the sequence number they include (atomically: temp file + rename)."""
        with self._lock:
            # Changes replace the arrays, never write into them: these stay as they are.
            members, seq = self._members, self.seq
        path = _write_snapshot(snapshot_path(self.name, self.settings), self.collection, members, self.words,
                               self.class_word_ids, seq)
        self.snapshot_seq, self._unsaved = seq, 0
        return path


def _write_snapshot(path: Path, collection: store.Collection, members: _Members, words: list[str],
                    class_word_ids: np.ndarray, seq: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    # Members come with codes exactly when they come with embeddings (a hash model); and, unlike
    # queries, with labels.
    extra = {} if members.embeddings is None else {"embeddings": members.embeddings, "codes": cast(np.ndarray, members.codes)}
    labels = cast(np.ndarray, members.labels)
    with partial.open("wb") as f:
        np.savez(
            f, format=np.array(SNAPSHOT_FORMAT), collection_id=np.array(collection.id),
            created_at=np.array(collection.created_at.isoformat()), seq=np.array(seq),
            ids=members.ids, class_indices=members.class_indices, probabilities=members.probabilities,
            labels=np.array(["" if x is None else x for x in labels], dtype=str),
            labelled=np.array([x is not None for x in labels], dtype=bool),
            # numpy's stub lets **extra reach savez's allow_pickle (a bool); its keys are array names
            words=np.array(words, dtype=str), class_word_ids=class_word_ids, **extra,  # type: ignore[arg-type]
        )
    os.replace(partial, path)
    return path


def _read_snapshot(path: Path, collection: store.Collection):
    """(members, words, class_word_ids, seq) from a snapshot of this very collection, else None."""
    if not path.is_file():
        return None
    started = time.perf_counter()
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["format"]) != SNAPSHOT_FORMAT or int(saved["collection_id"]) != collection.id \
                    or str(saved["created_at"]) != collection.created_at.isoformat():
                log.warning("%s is a snapshot of another collection: rebuilding from the database", path)
                return None
            has_codes = "codes" in saved.files
            if bool(collection.hash_model) != has_codes:
                return None
            labels = np.array([x if ok else None for x, ok in zip(saved["labels"].tolist(), saved["labelled"].tolist())],
                              dtype=object)
            members = _Members(
                saved["ids"], saved["class_indices"], saved["probabilities"],
                saved["embeddings"] if has_codes else None, saved["codes"] if has_codes else None, labels,
            )
            words, class_word_ids, seq = saved["words"].tolist(), saved["class_word_ids"], int(saved["seq"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("%s is unreadable (%s): rebuilding from the database", path, err)
        return None
    log.info("loaded %s (%d images, change %d) in %.2f s", path, len(members.ids), seq, time.perf_counter() - started)
    return members, words, class_word_ids, seq


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
        members, seq = _stream_members(engine, collection, progress)
        words, class_word_ids = _vocabulary(engine, collection)
    except Exception:
        store.drop(engine, name)
        raise
    _write_snapshot(snapshot_path(name, settings), collection, members, words, class_word_ids, seq)
    return _info(collection, len(members.ids))


def drop_collection(engine: Engine, name: str, *, settings: Settings | None = None) -> None:
    """Delete a collection, its uploaded files and its snapshot (where `settings` say; read from
    the environment when not given)."""
    settings = settings or config.settings()
    uploads.delete_unused_files(engine, store.drop(engine, name), settings.image_dir)
    snapshot_path(name, settings).unlink(missing_ok=True)


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
    loaded = _read_snapshot(path, collection)
    return {
        **_info(collection, store.size(engine, collection.id)).as_dict(),
        "top_iwk": collection.top_iwk, "top_wwk": collection.top_wwk, "strength": collection.strength,
        "source": collection.source, "last_change": seq, "snapshot": str(path) if loaded else None,
        "snapshot_change": loaded[3] if loaded else None,
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
