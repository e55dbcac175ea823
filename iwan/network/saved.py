"""An IWAN over stored images, built from PostgreSQL and kept on disk for later searches.

The norms, the images' stored word predictions and the class-name-to-word mapping come from the
database (`build` for a registered split; iwan.retrieval.iwan builds one over any images); a split's built graph is
saved under IWAN_HOME/indexes/NAME/ with what a search needs to answer in the database's terms
(image ids, the predictor whose words queries must use).
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

from iwan.config import DEFAULT_STRENGTH, DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, MAX_TOP_IWK, USF_SOURCE, Settings
from iwan.datasets.loaders import registered_name
from iwan.db.norms import association_arrays
from iwan.db.predictions import SplitPredictions, load_predictions
from iwan.network.graph import Associations, IwanGraph, build_graph
from iwan.network.index import IwanIndex
from iwan.vision.imagenet_words import with_hypernyms
from iwan.vision.words import WordMapping, WordMatcher

INDEX_FILE = "graph.npz"
META_FILE = "meta.json"
CLASS_WORDS_FILE = "class_word_ids.npy"
OLD_IDS_FILE = "image_ids.npy"
"""Written beside the graph before the index held its images' database ids."""
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
    """The IWAN; it holds the database ids of its images."""
    class_word_ids: np.ndarray
    """The predictor's class index -> word id in the graph (-1: none)."""
    meta: IndexMeta

    @property
    def image_ids(self) -> np.ndarray:
        return self.index.image_ids

    def save(self, directory: Path) -> Path:
        """Write the index into a new folder beside `directory`, then rename it into place.

        A crash or a full disk leaves the previous index (or none), never half of one, and a
        search never reads a folder being written.
        """
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        try:
            self.index.save(staging / INDEX_FILE)
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
        except (OSError, ValueError, TypeError) as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            raise IndexFormatError(f"{directory}: a damaged or edited {META_FILE} ({reason}); {_REBUILD}") from None
        if (directory / OLD_IDS_FILE).is_file():
            raise IndexFormatError(
                f"the IWAN index in {directory} was saved by an older iwan (image positions, not ids): rebuild it "
                f"with `iwan index build --dataset {meta.dataset} --split {meta.split} --name {meta.name}`"
            )
        try:
            built = cls(
                index=IwanIndex.load(directory / INDEX_FILE),
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
        m, classes, n_words = self.meta, self.class_word_ids, len(self.index.words)
        if classes.ndim != 1 or classes.dtype.kind not in "iu" or (classes >= n_words).any() or (classes < -1).any():
            raise IndexFormatError(f"{CLASS_WORDS_FILE} does not map classes onto the graph's {n_words} words")
        if not isinstance(m.name, str) or not isinstance(m.top_iwk, int) or not 1 <= m.top_iwk <= MAX_TOP_IWK:
            raise IndexFormatError(f"{META_FILE} is not one that `iwan index build` wrote")


def class_words(class_word_ids: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Word ids of predicted classes; -1 for an empty rank (-1) or a class with no word."""
    return np.where(class_indices >= 0, class_word_ids[np.maximum(class_indices, 0)], -1)


def word_mapping(words: list[str], categories: list[str]) -> WordMapping:
    """A predictor's class names onto the norms' words (with ImageNet hypernyms for the rest)."""
    return with_hypernyms(WordMatcher(words).map(categories), words)


def _graph(associations: Associations, predictions: SplitPredictions, top_wwk: int, strength: str) -> tuple[IwanGraph, WordMapping]:
    mapping = word_mapping(associations.words, predictions.categories)
    graph = build_graph(
        associations,
        class_words(mapping.word_ids, predictions.class_indices),
        predictions.probabilities,
        top_wwk=top_wwk,
        strength=strength,
        image_ids=predictions.ids,
    )
    return graph, mapping


def check_top_iwk(top_iwk: int) -> None:
    if not 1 <= top_iwk <= MAX_TOP_IWK:
        raise ValueError(f"top_iwk={top_iwk} must be 1..{MAX_TOP_IWK}")


def check_index_name(name: str) -> str:
    """`name` if it is an index name (never a path: `../x`, `/any/dir` are refused), else ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"index name {name!r} is not a name: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (indexes live in IWAN_HOME/indexes)"
        )
    return name


def index_dir(name: str, settings: Settings) -> Path:
    """The folder of the index called `name`: always directly inside the settings' `index_dir`
    (IWAN_HOME/indexes).

    A name is a name, never a path: `../x`, `/any/dir` and links leading out are refused.
    """
    check_index_name(name)
    root = settings.index_dir
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


def latest_index(settings: Settings) -> Path:
    """The most recently built index in the settings' `index_dir`, for searches that name none."""
    built = sorted(
        (p for p in settings.index_dir.glob(f"*/{META_FILE}") if NAME_PATTERN.fullmatch(p.parent.name)),
        key=lambda p: p.stat().st_mtime,
    )
    if not built:
        raise FileNotFoundError(
            f"no IWAN index in {settings.index_dir}: build one with `iwan index build --dataset D --split S`"
        )
    return built[-1].parent


def build(
    engine: Engine,
    model: str,
    dataset: str,
    split: str,
    top_iwk: int = DEFAULT_TOP_IWK,
    top_wwk: int = DEFAULT_TOP_WWK,
    strength: str = DEFAULT_STRENGTH,
    source: str = USF_SOURCE,
    limit: int | None = None,
    name: str | None = None,
) -> BuiltIndex:
    """The IWAN of a split's stored predictions of `model` on the norm set `source`, its images
    in database id order; saved with `.save(index_dir(built.meta.name, settings))`."""
    check_top_iwk(top_iwk)
    dataset = registered_name(dataset)
    name = check_index_name(name or default_name(dataset, split))
    started = time.perf_counter()
    associations = association_arrays(engine, source)
    predictions = load_predictions(engine, model, dataset, split, top=top_iwk, limit=limit)
    order = np.argsort(predictions.ids, kind="stable")
    predictions = SplitPredictions(
        predictions.ids[order], predictions.class_indices[order], predictions.probabilities[order], predictions.categories
    )
    graph, mapping = _graph(associations, predictions, top_wwk, strength)
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
        mapped_classes=int((mapping.word_ids >= 0).sum()),
        unmapped_classes=mapping.unmapped,
        build_seconds=round(time.perf_counter() - started, 3),
    )
    return BuiltIndex(IwanIndex(graph), mapping.word_ids, meta)
