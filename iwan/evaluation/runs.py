"""The comparative evaluation: IWAN, exhaustive cosine, the hash method (cosine over k-means cells), and their fusion.

Every method is built by name through the retriever registry (iwan.retrieval) over the corpus
split and answers the same query batch (the stored predictions, embeddings and codes of the query
images) in the retriever protocol; every ranking is scored by the same metrics. Any registered
method can be evaluated: a new method is one module. When the queries are the corpus (the
original work's protocol) each query is left out of its own results and out of its relevant
count. Rankings, as corpus positions, are cached in OUT/cache, so an interrupted run resumes with
the methods it had finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from tqdm import tqdm

from iwan.config import (
    DEFAULT_KS,
    DEFAULT_PREDICTOR,
    DEFAULT_STRENGTH,
    DEFAULT_TOP_IWK,
    DEFAULT_TOP_WWK,
    EVALUATION_FUSION_RULE,
    FUSED_MEMBERS,
    MAX_TOP_IWK,
    METHODS,
)
from iwan.db.images import SplitLabels, split_labels
from iwan.evaluation import metrics
from iwan.retrieval import Batch, Corpus, Retriever, fusion, get_retriever, retriever_names

log = logging.getLogger(__name__)

LABELS = {"iwan": "IWAN", "exhaustive": "exhaustive cosine", "hashes": "hashes (cosine in cells)"}
"""How the report names a method (a method not listed is named as registered)."""
CACHE_FORMAT = "retrievers/1"
"""Part of every cached ranking's key: rankings made before the retriever registry are remade."""
LATENCY_SAMPLE = 200
VALIDATION_QUERIES = 500
SWEEP_QUERIES = 1000
SWEEP_K = 20


@dataclass(frozen=True)
class EvaluationSpec:
    dataset: str
    corpus_split: str
    query_split: str
    methods: tuple[str, ...] = METHODS
    ks: tuple[int, ...] = DEFAULT_KS
    limit_queries: int | None = None
    limit_corpus: int | None = None
    predictor: str = DEFAULT_PREDICTOR
    hash_model: str | None = None
    top_iwk: int = DEFAULT_TOP_IWK
    top_wwk: int = DEFAULT_TOP_WWK
    strength: str = DEFAULT_STRENGTH
    fusion: str = EVALUATION_FUSION_RULE
    """The fusion rule."""
    hierarchy: Path | None = None
    sweep: bool = True

    def __post_init__(self):
        known = retriever_names()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: choose from {', '.join(known)}")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"every k must be >= 1, got {self.ks}")
        if self.fusion not in fusion.RULES:
            raise ValueError(f"fusion rule {self.fusion!r} is unknown: choose from {', '.join(fusion.RULES)}")

    def label(self, method: str) -> str:
        """The method's name in the report."""
        return f"fused ({self.fusion})" if method == "fused" else LABELS.get(method, method)

    def corpus(self, image_ids: np.ndarray) -> Corpus:
        return Corpus(
            image_ids=np.sort(image_ids), predictor=self.predictor, hash_model=self.hash_model,
            top_iwk=self.top_iwk, top_wwk=self.top_wwk, strength=self.strength,
        )

    def key(self, method: str, stored: str) -> str:
        """What a cached ranking of `method` depends on; `stored` is `stored_digest`'s."""
        relevant = asdict(self)
        relevant.pop("methods")
        relevant.pop("sweep")
        relevant["method"] = method
        relevant["stored"] = stored
        relevant["format"] = CACHE_FORMAT
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_digest(engine: Engine, spec: EvaluationSpec) -> str:
    """A digest of the predictions and hash codes the methods read, so that re-running `predict`
    or `hash encode` under the same model name invalidates the cached rankings."""
    from iwan.db.codes import codes_digest
    from iwan.db.predictions import predictions_digest

    return f"{predictions_digest(engine, spec.predictor)}/{codes_digest(engine, spec.hash_model or '')}"


def hierarchy_path(dataset: str, given: Path | None) -> Path:
    from iwan.datasets.hierarchies import shipped_hierarchy

    return given if given is not None else shipped_hierarchy(dataset.partition(":")[0])


Ranking = tuple[np.ndarray, np.ndarray]


@dataclass
class Workload:
    """Labels of corpus and queries, and where each query sits in the corpus (-1: not in it)."""

    corpus: SplitLabels
    queries: SplitLabels
    exclude: np.ndarray
    similarity: np.ndarray
    _id_order: np.ndarray | None = None

    @property
    def query_in_corpus(self) -> np.ndarray:
        return self.exclude >= 0

    @property
    def exclude_ids(self) -> np.ndarray:
        """The database id each query leaves out of its results (itself, in the corpus; -1: none)."""
        return np.where(self.exclude >= 0, self.corpus.ids[np.maximum(self.exclude, 0)], -1)

    def positions(self, ranking: Ranking) -> Ranking:
        """A ranking of database ids as corpus positions (what the metrics index labels with)."""
        scores, ids = ranking
        if self._id_order is None:
            self._id_order = np.argsort(self.corpus.ids, kind="stable")
        order = self._id_order
        at = order[np.minimum(np.searchsorted(self.corpus.ids, ids, sorter=order), len(order) - 1)]
        return scores, np.where(ids >= 0, at, -1)


def workload(engine: Engine, spec: EvaluationSpec) -> Workload:
    from hashing.hierarchy import load_hierarchy

    corpus = split_labels(engine, spec.dataset, spec.corpus_split, spec.limit_corpus)
    queries = split_labels(engine, spec.dataset, spec.query_split, spec.limit_queries)
    position = {int(i): p for p, i in enumerate(corpus.ids)}
    exclude = np.array([position.get(int(i), -1) for i in queries.ids], dtype=np.int64)
    similarity = load_hierarchy(hierarchy_path(spec.dataset, spec.hierarchy)).similarity_matrix()
    n_classes = int(max(corpus.fine_labels.max(), queries.fine_labels.max())) + 1
    if similarity.shape[0] < n_classes:
        raise ValueError(
            f"the hierarchy has {similarity.shape[0]} classes but {spec.dataset} uses labels up to "
            f"{n_classes - 1}: give the data set's own hierarchy with --hierarchy"
        )
    return Workload(corpus, queries, exclude, similarity)


class Methods:
    """The retrievers of one evaluation, built through the registry over the corpus split, and
    query batches of stored images in their terms."""

    def __init__(self, engine: Engine, spec: EvaluationSpec, corpus: Corpus, methods: Sequence[str]):
        from iwan.retrieval.stored import StoreData

        self.engine, self.spec, self.corpus = engine, spec, corpus
        self.data = StoreData(engine, corpus)
        self.retrievers: dict[str, Retriever] = {}
        for method in methods:
            if method != "fused":
                self.retrievers[method] = get_retriever(method, corpus, self.data)
        unmapped = getattr(self.retrievers.get("iwan"), "unmapped_classes", None)
        if unmapped:
            log.info("%d classes of %s map to no word", len(unmapped), spec.predictor)

    def reads(self) -> set[str]:
        """The query fields the retrievers read."""
        return set().union(*(r.reads for r in self.retrievers.values()))

    def queries(self, image_ids: np.ndarray) -> Batch:
        """The stored images `image_ids` as queries, with what the retrievers read."""
        return self.data.images(image_ids, fields=self.reads())


def score(work: Workload, ranking: Ranking, ks: Sequence[int],
          left_out: np.ndarray | None = None) -> dict[str, dict[int, float]]:
    """Every metric of one method at every cut-off, as the report expects; `left_out` (q,): how
    many corpus images of its class each query leaves out of its results (default: itself, where
    it is in the corpus; a query of examples: each example the corpus holds)."""
    _, ids = ranking
    ks = sorted(ks)
    labels = metrics.labels_of(ids, work.corpus.fine_labels)
    query_labels = work.queries.fine_labels
    n_classes = work.similarity.shape[0]
    histogram = metrics.label_histogram(work.corpus.fine_labels, n_classes)
    in_corpus = work.query_in_corpus if left_out is None else left_out
    relevant = metrics.relevant_counts(query_labels, histogram, query_in_corpus=in_corpus)
    hier = (labels, query_labels, work.similarity, histogram, ks)
    table = {
        "mAP": metrics.mean_average_precision(labels, query_labels, relevant, ks),
        "mAP (trec_eval, /R)": metrics.mean_average_precision(labels, query_labels, relevant, ks, normalise="r"),
        "mHP (original mAHP)": metrics.mhp_at_k(*hier, query_in_corpus=in_corpus),
        "Barz mAHP": metrics.mahp_barz_at_k(*hier, query_in_corpus=in_corpus),
        "P": metrics.precision_at_k(labels, query_labels, ks).mean(axis=0),
        "balanced accuracy (majority of top k)": metrics.balanced_accuracy_at_k(labels, query_labels, ks),
    }
    return {name: {k: float(v) for k, v in zip(ks, values)} for name, values in table.items()}


def cached_ranking(cache: Path, key: str, compute: Callable[[], tuple[Ranking, float]]) -> tuple[Ranking, float]:
    """The ranking and its search seconds saved as cache/KEY.npz, else `compute`d and saved (whole or not at all)."""
    path = cache / f"{key}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return (saved["scores"], saved["ids"]), float(saved["seconds"])
    (scores, ids), seconds = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), scores=scores, ids=ids, seconds=seconds)
    path.with_suffix(".tmp.npz").replace(path)
    return (scores, ids), seconds


class Ranker:
    """One method answering one query batch: `rank(rows, k)` ranks the corpus (as positions) for
    those queries, each leaving out its `exclude` id."""

    def __init__(self, retriever: Retriever, work: Workload, queries: Batch, exclude: np.ndarray):
        self.retriever, self.work, self.queries, self.exclude = retriever, work, queries, exclude

    def rank(self, rows: np.ndarray, k: int) -> Ranking:
        return self.work.positions(self.search(self.queries.rows(rows), self.exclude[rows], k))

    def search(self, queries: Batch, exclude: np.ndarray, k: int) -> Ranking:
        return self.retriever.search(queries, k, exclude=exclude)


def _run_batch(ranker: Ranker, label: str, n: int, k: int, progress: bool, chunk: int = 500) -> tuple[Ranking, float]:
    """All queries in chunks (a progress bar per method); returns the ranking and total seconds."""
    scores, ids, seconds = [], [], 0.0
    with tqdm(total=n, desc=label, unit="query", disable=not progress) as bar:
        for start in range(0, n, chunk):
            rows = np.arange(start, min(start + chunk, n))
            queries, exclude = ranker.queries.rows(rows), ranker.exclude[rows]
            began = time.perf_counter()
            found = ranker.search(queries, exclude, k)
            seconds += time.perf_counter() - began
            s, i = ranker.work.positions(found)
            scores.append(s)
            ids.append(i)
            bar.update(len(rows))
    return (np.concatenate(scores), np.concatenate(ids)), seconds


def _single_latency(ranker: Ranker, n: int, k: int, sample: int = LATENCY_SAMPLE) -> list[float]:
    rows = np.linspace(0, n - 1, min(sample, n)).astype(np.int64)
    times = []
    for row in rows:
        queries, exclude = ranker.queries.rows([row]), ranker.exclude[[row]]
        began = time.perf_counter()
        ranker.search(queries, exclude, k)
        times.append(time.perf_counter() - began)
    return times


def choose_fusion_weight(methods: Methods, work: Workload, k: int) -> tuple[float, list[float]]:
    """The IWAN weight of the weighted fusion, chosen on validation queries, never the test ones.

    Validation queries are corpus images (each left out of its own results) that are not among the
    evaluation queries; the weight maximises their mHP@k.
    """
    taken = set(work.exclude[work.exclude >= 0].tolist())
    free = [p for p in range(len(work.corpus.ids)) if p not in taken]
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(free, size=min(VALIDATION_QUERIES, len(free)), replace=False))
    if len(rows) < 10:
        raise ValueError("fewer than 10 corpus images lie outside the queries: too few to choose a fusion weight")
    ids = work.corpus.ids[rows]
    queries = methods.queries(ids)
    depth = 2 * k
    first, second = (Ranker(methods.retrievers[m], work, queries, ids) for m in FUSED_MEMBERS)
    everything = np.arange(len(rows))
    a, b = first.rank(everything, depth), second.rank(everything, depth)
    labels = work.corpus.fine_labels[rows]
    histogram = metrics.label_histogram(work.corpus.fine_labels, work.similarity.shape[0])

    def metric(ids: np.ndarray) -> float:
        retrieved = metrics.labels_of(ids, work.corpus.fine_labels)
        return float(metrics.mhp_at_k(retrieved, labels, work.similarity, histogram, k, query_in_corpus=True))

    weight, values = fusion.choose_weight(a, b, metric, k)
    return weight, [round(float(v), 6) for v in values]


def sweep_top_iwk(engine: Engine, spec: EvaluationSpec, work: Workload, progress: bool) -> tuple[dict, dict]:
    """IWAN at topIWK 1..10 on SWEEP_QUERIES queries: quality at k=20 and latency.

    The queries are a seeded sample over the whole query set: splits are often ordered by class,
    so the first queries alone would be one class.
    """
    n = len(work.queries.ids)
    rows = np.sort(np.random.default_rng(0).choice(n, size=min(SWEEP_QUERIES, n), replace=False))
    values: dict[str, list[float]] = {f"mAP@{SWEEP_K}": [], f"mHP@{SWEEP_K}": []}
    median_ms = []
    settings = list(range(1, MAX_TOP_IWK + 1))
    for top_iwk in tqdm(settings, desc="topIWK sweep", disable=not progress):
        setting = replace(spec, top_iwk=top_iwk)
        methods = Methods(engine, setting, setting.corpus(work.corpus.ids), ("iwan",))
        ranker = Ranker(methods.retrievers["iwan"], work, methods.queries(work.queries.ids[rows]), work.exclude_ids[rows])
        began = time.perf_counter()
        found = ranker.search(ranker.queries, ranker.exclude, SWEEP_K)
        median_ms.append(1000 * (time.perf_counter() - began) / len(rows))
        scored = score(_subset(work, rows), work.positions(found), [SWEEP_K])
        values[f"mAP@{SWEEP_K}"].append(scored["mAP"][SWEEP_K])
        values[f"mHP@{SWEEP_K}"].append(scored["mHP (original mAHP)"][SWEEP_K])
    sweep = {"top_iwk": settings, "metrics": values, "median_ms": {"IWAN": median_ms}}
    scatter = {
        "k": SWEEP_K,
        "labels": [f"IWAN topIWK={t}" for t in settings],
        "mAP": list(values[f"mAP@{SWEEP_K}"]),
        "mHP": list(values[f"mHP@{SWEEP_K}"]),
    }
    return sweep, scatter


def _subset(work: Workload, rows: np.ndarray) -> Workload:
    q = work.queries
    queries = SplitLabels(
        q.ids[rows], q.positions[rows], q.fine_labels[rows],
        None if q.coarse_labels is None else q.coarse_labels[rows], q.class_names,
    )
    return Workload(work.corpus, queries, work.exclude[rows], work.similarity)


def build_methods(engine: Engine, spec: EvaluationSpec, work: Workload) -> tuple[Methods, dict]:
    """Every method of `spec` built over the corpus (a fused one with its members, its weight
    chosen on validation images for the weighted rule), and what the fusion report says."""
    built = [m for m in spec.methods if m != "fused"]
    if "fused" in spec.methods:
        built += [m for m in FUSED_MEMBERS if m not in built]
    methods = Methods(engine, spec, spec.corpus(work.corpus.ids), built)
    fusion_info: dict = {}
    if "fused" in spec.methods:
        weights = None
        if spec.fusion == "weighted":
            weight, by_weight = choose_fusion_weight(methods, work, SWEEP_K)
            weights = (weight, 1.0 - weight)
            fusion_info = {"iwan_weight": weight, f"validation_mHP@{SWEEP_K}_by_weight": by_weight}
        fusion_info["rule"] = spec.fusion
        methods.retrievers["fused"] = get_retriever(
            "fused", methods.corpus, methods.data, members=[methods.retrievers[m] for m in FUSED_MEMBERS],
            fusion=spec.fusion, weights=weights,
        )
    return methods, fusion_info


def run(
    engine: Engine,
    spec: EvaluationSpec,
    out: Path,
    progress: bool = True,
    gallery_images: tuple[np.ndarray, np.ndarray] | None = None,
    metadata: dict | None = None,
) -> dict:
    """Evaluate every method of `spec`, write the report into `out`, return the results.

    `gallery_images` = (corpus images, query images) in index order, for the picture of queries.
    """
    from iwan.evaluation.report import write_report

    work = workload(engine, spec)
    n, k_max = len(work.queries.ids), max(spec.ks)
    methods, fusion_info = build_methods(engine, spec, work)
    queries = methods.queries(work.queries.ids)
    rankers = {m: Ranker(methods.retrievers[m], work, queries, work.exclude_ids) for m in spec.methods if m != "fused"}
    if "fused" in spec.methods:
        rankers["fused"] = Ranker(methods.retrievers["fused"], work, queries, work.exclude_ids)
    labels = {m: spec.label(m) for m in rankers}

    results: dict = {
        "metadata": {
            "dataset": spec.dataset,
            "corpus": f"{spec.corpus_split} ({len(work.corpus.ids):,} images)",
            "queries": f"{spec.query_split} ({n:,} images{', each left out of its own results' if work.query_in_corpus.any() else ''})",
            "corpus_size": len(work.corpus.ids),
            "query_size": n,
            "predictor": spec.predictor,
            "hash_model": spec.hash_model,
            "settings": {"top_iwk": spec.top_iwk, "top_wwk": spec.top_wwk, "strength": spec.strength},
            "fusion": fusion_info,
            **(metadata or {}),
        },
        "metrics": {},
        "latency": {},
    }
    rankings = {}
    cache = out / "cache"
    stored = stored_digest(engine, spec)
    for method, ranker in rankers.items():
        key = spec.key(method, stored) + ("-" + str(fusion_info.get("iwan_weight")) if method == "fused" else "")
        ranking, seconds = cached_ranking(cache, key, partial(_run_batch, ranker, labels[method], n, k_max, progress))
        rankings[method] = ranking
        results["metrics"][labels[method]] = score(work, ranking, spec.ks)
        latency = metrics.latency_summary(_single_latency(ranker, n, k_max))
        latency["throughput_qps"] = round(n / seconds, 1) if seconds > 0 else float("inf")
        latency["batch_ms_per_query"] = round(1000 * seconds / n, 3)
        results["latency"][labels[method]] = latency
    if spec.sweep and "iwan" in spec.methods:
        results["sweep"], results["settings_scatter"] = sweep_top_iwk(engine, spec, work, progress)
        for method, label in labels.items():
            if method != "iwan":
                scored = results["metrics"][label]
                if SWEEP_K in scored["mAP"]:
                    results["settings_scatter"]["labels"].append(label)
                    results["settings_scatter"]["mAP"].append(scored["mAP"][SWEEP_K])
                    results["settings_scatter"]["mHP"].append(scored["mHP (original mAHP)"][SWEEP_K])
    results["notes"] = fusion_findings(results, labels, fusion_info)
    gallery = None
    if gallery_images is not None:
        gallery = _gallery(work, labels, rankings, gallery_images)
    write_report(results, out, gallery)
    return results


FUSION_METRIC, FUSION_K = "Barz mAHP", 250


def fusion_findings(results: dict, labels: dict[str, str], fusion_info: dict) -> list[str]:
    """Whether the fused ranking beats each retriever it fuses on Barz mAHP@250, by how much, and
    what the validated weight says about why; `labels` names each evaluated method in the report."""
    if "fused" not in labels:
        return []
    table = results["metrics"]
    if FUSION_K not in table[labels["fused"]][FUSION_METRIC]:
        return [f"Fusion is not compared: the cut-offs do not include k={FUSION_K}."]
    fused = table[labels["fused"]][FUSION_METRIC][FUSION_K]
    members = [labels[m] for m in FUSED_MEMBERS]
    deltas = ", ".join(
        f"{name} {100 * table[name][FUSION_METRIC][FUSION_K]:.2f} ({100 * (fused - table[name][FUSION_METRIC][FUSION_K]):+.2f} points)"
        for name in members
    )
    beats = all(fused > table[name][FUSION_METRIC][FUSION_K] for name in members)
    notes = [
        f"Fusion {'beats' if beats else 'does not beat'} both retrievers it fuses on {FUSION_METRIC}@{FUSION_K}: "
        f"fused {100 * fused:.2f} against {deltas}."
    ]
    weight = fusion_info.get("iwan_weight")
    if weight in (0.0, 1.0):
        alone, other = (members[1], members[0]) if weight == 0.0 else members
        notes.append(
            f"The IWAN weight chosen on validation images of the corpus is {weight:.1f}: {other} adds "
            f"nothing that helps there, so the fused ranking is {alone}'s, searched twice as deep "
            "(which alone changes a Hamming shortlist: it re-ranks twice as many candidates)."
        )
    elif weight is not None:
        notes.append(f"The IWAN weight chosen on validation images of the corpus is {weight:.1f}.")
    return notes


GALLERY_QUERIES = 4
GALLERY_TOP = 10


def _gallery(work: Workload, labels: dict[str, str], rankings: dict, images: tuple[np.ndarray, np.ndarray]):
    from iwan.evaluation.report import Gallery

    corpus_images, query_images = images
    names = work.corpus.class_names
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(work.queries.ids), size=min(GALLERY_QUERIES, len(work.queries.ids)), replace=False))
    result_images, result_labels = {}, {}
    for method, label in labels.items():
        ids = rankings[method][1][rows, :GALLERY_TOP]
        corpus_rows = work.corpus.positions
        result_images[label] = [[corpus_images[corpus_rows[i]] for i in row if i >= 0] for row in ids]
        result_labels[label] = [[names[work.corpus.fine_labels[i]] for i in row if i >= 0] for row in ids]
    return Gallery(
        query_images=[query_images[work.queries.positions[r]] for r in rows],
        query_labels=[names[work.queries.fine_labels[r]] for r in rows],
        result_images=result_images,
        result_labels=result_labels,
    )
