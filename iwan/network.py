"""An IWAN over a registered split, built from PostgreSQL and kept on disk for later searches.

The norms, the split's stored word predictions and the class-name-to-word mapping come from the
database; the built graph is saved under IWAN_HOME/indexes/NAME/ with what a search needs to
answer in the database's terms (image ids, the model whose words queries must use).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from iwan.config import DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, MAX_TOP_IWK, USF_SOURCE, settings
from iwan.datasets import registered_name
from iwan.graph import build_graph
from iwan.imagenet_words import with_hypernyms
from iwan.norms.store import association_arrays
from iwan.predict import load_predictions
from iwan.search import IwanIndex
from iwan.words import WordMatcher

INDEX_FILE = "graph.npz"
META_FILE = "meta.json"
IDS_FILE = "image_ids.npy"
CLASS_WORDS_FILE = "class_word_ids.npy"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REBUILD = "build it again with `iwan index build --dataset D --split S --name NAME`"


class IndexFormatError(ValueError):
    """A saved index folder that is damaged, truncated or edited."""


@dataclass(frozen=True)
class IndexMeta:
    name: str
    model: str
    dataset: str
    split: str
    top_iwk: int
    top_wwk: int
    strength: str
    source: str
    n_images: int
    n_words: int
    n_word_edges: int
    mapped_classes: int
    unmapped_classes: list[str]
    build_seconds: float


@dataclass
class BuiltIndex:
    index: IwanIndex
    image_ids: np.ndarray  # database id of each image position
    class_word_ids: np.ndarray  # the model's class index -> word id in the graph (-1: none)
    meta: IndexMeta

    def query_words(self, class_indices: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images' top classes as the (word ids, weights) that `IwanIndex.search` takes."""
        top = self.meta.top_iwk
        return class_words(self.class_word_ids, np.asarray(class_indices)[:, :top]), np.asarray(probabilities)[:, :top]

    def save(self, directory: Path) -> Path:
        """Write the index into a new folder beside `directory`, then rename it into place.

        A crash or a full disk leaves the previous index (or none), never half of one, and a
        search never reads a folder being written.
        """
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            self.index.save(staging / INDEX_FILE)
            np.save(staging / IDS_FILE, self.image_ids)
            np.save(staging / CLASS_WORDS_FILE, self.class_word_ids)
            (staging / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2))
            previous = None
            if directory.exists():
                previous = directory.with_name(f".{directory.name}.{os.getpid()}.old")
                os.replace(directory, previous)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: Path) -> BuiltIndex:
        """The index saved in `directory`; a damaged or edited one is an IndexFormatError."""
        if not (directory / META_FILE).is_file():
            raise FileNotFoundError(
                f"no IWAN index in {directory}: build one with `iwan index build --dataset D --split S`"
            )
        try:
            meta = IndexMeta(**json.loads((directory / META_FILE).read_text()))
            built = cls(
                index=IwanIndex.load(directory / INDEX_FILE),
                image_ids=np.load(directory / IDS_FILE, allow_pickle=False),
                class_word_ids=np.load(directory / CLASS_WORDS_FILE, allow_pickle=False),
                meta=meta,
            )
            built._check()
        except IndexFormatError as err:
            raise IndexFormatError(f"{directory}: {err}; {_REBUILD}") from None
        except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise IndexFormatError(f"{directory}: a damaged or edited IWAN index ({reason}); {_REBUILD}") from None
        return built

    def _check(self) -> None:
        """The saved parts agree with each other (an edit or a truncation breaks that)."""
        m, graph = self.meta, self.index.graph
        ids, classes = self.image_ids, self.class_word_ids
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) != graph.n_images:
            raise IndexFormatError(f"{IDS_FILE} holds {ids.shape} {ids.dtype}, not {graph.n_images} image ids")
        if classes.ndim != 1 or classes.dtype.kind not in "iu" or (classes >= graph.n_words).any() or (classes < -1).any():
            raise IndexFormatError(f"{CLASS_WORDS_FILE} does not map classes onto the graph's {graph.n_words} words")
        if not isinstance(m.name, str) or not isinstance(m.top_iwk, int) or not 1 <= m.top_iwk <= MAX_TOP_IWK:
            raise IndexFormatError(f"{META_FILE} is not one that `iwan index build` wrote")


def class_words(class_word_ids: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Word ids of predicted classes; -1 for an empty rank (-1) or a class with no word."""
    return np.where(class_indices >= 0, class_word_ids[np.maximum(class_indices, 0)], -1)


def index_dir(name: str) -> Path:
    """The folder of the index called `name`: always directly inside IWAN_HOME/indexes.

    A name is a name, never a path: `../x`, `/any/dir` and links leading out are refused.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"index name {name!r} is not a name: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (indexes live in IWAN_HOME/indexes)"
        )
    root = settings().index_dir
    folder = root / name
    if folder.resolve().parent != root.resolve():
        raise ValueError(f"index {name!r}: {folder} leads outside {root}; remove that link")
    return folder


def default_name(dataset: str, split: str) -> str:
    """DATASET-SPLIT made a valid index name (an image folder's path is long: shortened by a hash)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}-{split}").strip("._-") or "index"
    if len(name) > 64:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:51].rstrip('._-')}-{digest}"
    return name


def latest_index() -> Path:
    """The most recently built index, for searches that name none."""
    built = sorted(
        (p for p in settings().index_dir.glob(f"*/{META_FILE}") if NAME_PATTERN.fullmatch(p.parent.name)),
        key=lambda p: p.stat().st_mtime,
    )
    if not built:
        raise FileNotFoundError(
            f"no IWAN index in {settings().index_dir}: build one with `iwan index build --dataset D --split S`"
        )
    return built[-1].parent


def build(
    engine: Engine,
    model: str,
    dataset: str,
    split: str,
    top_iwk: int = DEFAULT_TOP_IWK,
    top_wwk: int = DEFAULT_TOP_WWK,
    strength: str = "forward",
    source: str = USF_SOURCE,
    limit: int | None = None,
    name: str | None = None,
) -> BuiltIndex:
    """The IWAN of a split's stored predictions of `model` on the norm set `source`."""
    if not 1 <= top_iwk <= MAX_TOP_IWK:
        raise ValueError(f"top_iwk={top_iwk} must be 1..{MAX_TOP_IWK}")
    dataset = registered_name(dataset)
    name = name or default_name(dataset, split)
    index_dir(name)
    started = time.perf_counter()
    associations = association_arrays(engine, source)
    predictions = load_predictions(engine, model, dataset, split, top=top_iwk, limit=limit)
    mapping = with_hypernyms(WordMatcher(associations.words).map(predictions.categories), associations.words)
    class_word_ids = mapping.word_ids
    graph = build_graph(
        associations,
        class_words(class_word_ids, predictions.class_indices),
        predictions.probabilities,
        top_wwk=top_wwk,
        strength=strength,
    )
    meta = IndexMeta(
        name=name,
        model=model,
        dataset=dataset,
        split=split,
        top_iwk=top_iwk,
        top_wwk=top_wwk,
        strength=strength,
        source=source,
        n_images=graph.n_images,
        n_words=graph.n_words,
        n_word_edges=len(graph.edge_a),
        mapped_classes=int((class_word_ids >= 0).sum()),
        unmapped_classes=mapping.unmapped,
        build_seconds=round(time.perf_counter() - started, 3),
    )
    return BuiltIndex(IwanIndex(graph), predictions.ids, class_word_ids, meta)
