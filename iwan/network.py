"""An IWAN over stored images, built from PostgreSQL and kept on disk for later searches.

The norms, the images' stored word predictions and the class-name-to-word mapping come from the
database (`graph_of` for any images, `build` for a registered split); a split's built graph is
saved under IWAN_HOME/indexes/NAME/ with what a search needs to answer in the database's terms
(image ids, the predictor whose words queries must use).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from iwan.config import DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, MAX_TOP_IWK, USF_SOURCE, settings
from iwan.graph import Associations, IwanGraph, build_graph
from iwan.imagenet_words import with_hypernyms
from iwan.norms.store import association_arrays
from iwan.predict import SplitPredictions, classifier_categories, load_predictions, predictions_of
from iwan.search import IwanIndex
from iwan.words import WordMapping, WordMatcher

INDEX_FILE = "graph.npz"
META_FILE = "meta.json"
CLASS_WORDS_FILE = "class_word_ids.npy"
OLD_IDS_FILE = "image_ids.npy"
"""Written beside the graph before the index held its images' database ids."""


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
        directory.mkdir(parents=True, exist_ok=True)
        self.index.save(directory / INDEX_FILE)
        np.save(directory / CLASS_WORDS_FILE, self.class_word_ids)
        (directory / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> BuiltIndex:
        if not (directory / META_FILE).is_file():
            raise FileNotFoundError(
                f"no IWAN index in {directory}: build one with `iwan index build --dataset D --split S`"
            )
        meta = IndexMeta(**json.loads((directory / META_FILE).read_text()))
        if (directory / OLD_IDS_FILE).is_file():
            raise ValueError(
                f"the IWAN index in {directory} was saved by an older iwan (image positions, not ids): rebuild it "
                f"with `iwan index build --dataset {meta.dataset} --split {meta.split} --name {meta.name}`"
            )
        return cls(
            index=IwanIndex.load(directory / INDEX_FILE),
            class_word_ids=np.load(directory / CLASS_WORDS_FILE),
            meta=meta,
        )


def class_words(class_word_ids: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """Word ids of predicted classes; -1 for an empty rank (-1) or a class with no word."""
    return np.where(class_indices >= 0, class_word_ids[np.maximum(class_indices, 0)], -1)


def word_mapping(words: list[str], categories: list[str]) -> WordMapping:
    """A predictor's class names onto the norms' words (with ImageNet hypernyms for the rest)."""
    return with_hypernyms(WordMatcher(words).map(categories), words)


def class_word_mapping(engine: Engine, predictor: str, source: str = USF_SOURCE) -> WordMapping:
    """The mapping of `predictor`'s classes onto the vocabulary of the norm set `source`."""
    return word_mapping(association_arrays(engine, source).words, classifier_categories(engine, predictor))


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


def graph_of(
    engine: Engine,
    predictor: str,
    image_ids: np.ndarray,
    top_iwk: int = DEFAULT_TOP_IWK,
    top_wwk: int = DEFAULT_TOP_WWK,
    strength: str = "forward",
    source: str = USF_SOURCE,
) -> tuple[IwanGraph, WordMapping]:
    """The IWAN of the stored predictions of `predictor` for `image_ids` (ascending), and the
    mapping of the predictor's classes onto the graph's words."""
    _check_top_iwk(top_iwk)
    predictions = predictions_of(engine, predictor, image_ids, top_iwk)
    graph, mapping = _graph(association_arrays(engine, source), predictions, top_wwk, strength)
    return graph, mapping


def _check_top_iwk(top_iwk: int) -> None:
    if not 1 <= top_iwk <= MAX_TOP_IWK:
        raise ValueError(f"top_iwk={top_iwk} must be 1..{MAX_TOP_IWK}")


def index_dir(name: str) -> Path:
    return settings().index_dir / name


def default_name(dataset: str, split: str) -> str:
    return f"{dataset}-{split}".replace("/", "_").replace(":", "_")


def latest_index() -> Path:
    """The most recently built index, for searches that name none."""
    built = sorted(settings().index_dir.glob(f"*/{META_FILE}"), key=lambda p: p.stat().st_mtime)
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
    """The IWAN of a split's stored predictions of `model` on the norm set `source`, its images
    in database id order."""
    _check_top_iwk(top_iwk)
    started = time.perf_counter()
    associations = association_arrays(engine, source)
    predictions = load_predictions(engine, model, dataset, split, top=top_iwk, limit=limit)
    order = np.argsort(predictions.ids, kind="stable")
    predictions = SplitPredictions(
        predictions.ids[order], predictions.class_indices[order], predictions.probabilities[order], predictions.categories
    )
    graph, mapping = _graph(associations, predictions, top_wwk, strength)
    meta = IndexMeta(
        name=name or default_name(dataset, split),
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
