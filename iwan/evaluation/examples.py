"""Queries of several examples, measured (`iwan evaluate --examples 1,3,5 --negatives 1,2,3`).

Each query image of the query split becomes a query of n positive examples: itself and n - 1
other images of its class from the query split, drawn with a seed (a class with fewer than n
images gives as many as it has; the report counts the queries this affects). The draws are
nested: the examples of n = 3 are among those of n = 5. Optionally m negative examples join
it: m images of the query class's most confused class, the wrong class that the method's own
one-example search (n = 1) ranks most often in the top CONFUSION_K of that class's queries
(a class whose searches rank no wrong image gets no negatives). They are drawn from the query
split too, with the seed, nested in m.

Every method answers the queries as a search request of examples does
(`ExampleRetriever.search_examples`: `explain_examples`'s ranking, many queries at once, no
reasons). Examples the corpus holds (the original protocol, where queries and corpus are one
split) are left out of the results as a stored-image search leaves itself out, and the positive
ones out of the query's relevant count R and of the ideal ranking of hierarchical precision.
n = 1 without negatives is the one-image search, scored as `iwan evaluate` scores it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from tqdm import tqdm

from iwan.evaluation import metrics
from iwan.evaluation.runs import EvaluationSpec, Workload, build_methods, cached_ranking, score, stored_digest, workload
from iwan.retrieval.protocol import Batch, ExampleRetriever, Examples

EXAMPLES_FORMAT = "examples/2"
"""Part of every cached ranking's key (OUT/cache, as `iwan evaluate` caches its rankings): a
rerun resumes with the rankings it had made."""
CONFUSION_K = 20
"""How deep the one-example search is read for each class's most confused class."""
CHUNK = 250
"""Queries per search_examples call (a progress step)."""
GOAL_METRICS = (("mAP", 20), ("Barz mAHP", 250), ("P", 20))
"""What the report tabulates for each number of examples."""


def draw_positives(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(q, n) rows of the query split: row r's own row first, then up to n - 1 other rows of its
    class in a seeded order (the first n' of them are the draw for any n' < n); -1 pads a row
    whose class has fewer than n images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.full((len(labels), n), -1, np.int64)
    out[:, 0] = np.arange(len(labels))
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    for r, label in enumerate(labels.tolist()):
        others = members[label][members[label] != r]
        picked = rng.permutation(others)[: n - 1]
        out[r, 1 : 1 + len(picked)] = picked
    return out


def most_confused(retrieved_labels: np.ndarray, query_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) per class the wrong class its queries' rankings hold most often (ties to the
    lower class; -1 for a class whose rankings hold no wrong label, or that no query has)."""
    retrieved = np.asarray(retrieved_labels, np.int64)
    query_labels = np.asarray(query_labels, np.int64)
    wrong = (retrieved >= 0) & (retrieved != query_labels[:, None])
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (np.broadcast_to(query_labels[:, None], retrieved.shape)[wrong], retrieved[wrong]), 1)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def draw_negatives(labels: np.ndarray, classes: np.ndarray, m: int, seed: int) -> np.ndarray:
    """(q, m) rows of the query split: for row r, m images of class `classes[r]` in a seeded
    order (nested in m); -1 pads (a class with fewer images, or none: -1)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.full((len(classes), m), -1, np.int64)
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    for r, c in enumerate(np.asarray(classes).tolist()):
        if c >= 0:
            picked = rng.permutation(members.get(c, np.empty(0, np.int64)))[:m]
            out[r, : len(picked)] = picked
    return out


def example_queries(queries: Batch, positives: np.ndarray, negatives: np.ndarray | None) -> list[Examples]:
    """One `Examples` per row: the query split's rows named in `positives` and `negatives` (-1: none)."""
    out = []
    for r, row in enumerate(positives):
        against = None if negatives is None else negatives[r][negatives[r] >= 0]
        out.append(Examples(queries.rows(row[row >= 0]),
                            None if against is None or not len(against) else queries.rows(against)))
    return out


def search(retriever: ExampleRetriever, queries: Batch, work: Workload, positives: np.ndarray,
           negatives: np.ndarray | None, k: int, label: str, progress: bool) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Every query of examples ranked by `retriever` (corpus positions), each leaving out the
    examples the corpus holds; and the seconds its searches took."""
    rows = positives if negatives is None else np.hstack([positives, negatives])
    held = (rows >= 0) & work.query_in_corpus[np.maximum(rows, 0)]
    exclude = np.where(held, work.queries.ids[np.maximum(rows, 0)], -1)
    scores, ids, seconds = [], [], 0.0
    with tqdm(total=len(rows), desc=label, unit="query", disable=not progress) as bar:
        for start in range(0, len(rows), CHUNK):
            at = slice(start, start + CHUNK)
            asked = example_queries(queries, positives[at], None if negatives is None else negatives[at])
            began = time.perf_counter()
            found = retriever.search_examples(asked, k, exclude=exclude[at])
            seconds += time.perf_counter() - began
            s, i = work.positions(found)
            scores.append(s)
            ids.append(i)
            bar.update(len(asked))
    return (np.concatenate(scores), np.concatenate(ids)), seconds


def run_examples(engine: Engine, spec: EvaluationSpec, out: Path, ns: Sequence[int], negatives: Sequence[int] = (),
                 seed: int = 0, progress: bool = True) -> dict:
    """Every method of `spec` on queries of n examples for each n of `ns` (1 always among them),
    with 0 and each m of `negatives` negative examples; the report goes to `out`."""
    from iwan.evaluation.report import write_examples_report

    ns = sorted({1, *ns})
    ms = sorted({0, *negatives})
    if ns[0] < 1 or ms[0] < 0:
        raise ValueError(f"examples ({ns}) must be >= 1 and negatives ({ms}) >= 0")
    work = workload(engine, spec)
    methods, fusion_info = build_methods(engine, spec, work)
    queries = methods.queries(work.queries.ids)
    labels = work.queries.fine_labels
    k = max(spec.ks)
    if k < CONFUSION_K:
        raise ValueError(f"the cut-offs reach k={k}: the most confused class is read at k={CONFUSION_K}; add it to --k")
    positives = draw_positives(labels, ns[-1], seed)
    sizes = np.bincount(labels)[labels]
    stored = stored_digest(engine, spec)
    runs: list[dict] = []
    confused: dict[str, dict[str, str | None]] = {}
    names = work.queries.class_names
    for method in spec.methods:
        retriever = methods.retrievers[method]
        if not isinstance(retriever, ExampleRetriever):
            raise ValueError(f"method {method!r} answers one example per query: choose among the example methods")
        label = spec.label(method)
        classes = None
        for m in ms:
            drawn = None
            if m:
                drawn = draw_negatives(labels, classes[labels], ms[-1], seed + 1)[:, :m]  # type: ignore[index]
            for n in ns:
                chosen = positives[:, :n]
                key = f"{spec.key(method, stored)}-{fusion_info.get('iwan_weight') if method == 'fused' else ''}-" \
                      f"{EXAMPLES_FORMAT}-n{n}-m{m}-seed{seed}"
                ranking, seconds = cached_ranking(out / "cache", hashlib.sha256(key.encode()).hexdigest()[:16], partial(
                    search, retriever, queries, work, chosen, drawn, k, f"{label} n={n} m={m}", progress))
                left_out = ((chosen >= 0) & work.query_in_corpus[np.maximum(chosen, 0)]).sum(axis=1)
                runs.append({"method": label, "examples": n, "negatives": m,
                             "metrics": score(work, ranking, spec.ks, left_out),
                             "batch_ms_per_query": round(1000 * seconds / len(labels), 3)})
                if n == 1 and m == 0:
                    top = metrics.labels_of(ranking[1][:, :CONFUSION_K], work.corpus.fine_labels)
                    classes = most_confused(top, labels, work.similarity.shape[0])
                    confused[label] = {names[c]: names[int(o)] if o >= 0 else None
                                       for c, o in enumerate(classes.tolist()) if c < len(names) and (labels == c).any()}
    results = {
        "metadata": {
            "dataset": spec.dataset,
            "corpus": f"{spec.corpus_split} ({len(work.corpus.ids):,} images)",
            "queries": f"{spec.query_split} ({len(labels):,} images"
                       f"{', each example the corpus holds left out of the results' if work.query_in_corpus.any() else ''})",
            "predictor": spec.predictor,
            "hash_model": spec.hash_model,
            "settings": {"top_iwk": spec.top_iwk, "top_wwk": spec.top_wwk, "strength": spec.strength},
            "fusion": fusion_info,
            "examples": ns,
            "negatives": ms,
            "seed": seed,
            "queries_with_fewer_examples": {str(n): int((sizes < n).sum()) for n in ns},
            "most_confused_class": confused,
        },
        "runs": runs,
    }
    results["notes"] = findings(results)
    write_examples_report(results, out)
    return results


def findings(results: dict) -> list[str]:
    """The issue's goals against the figures: mAP@20 at n = 3 against n = 1 (every method at least
    +3 points, IWAN at least +12), and P@20 with one negative against none."""
    by = {(r["method"], r["examples"], r["negatives"]): r["metrics"] for r in results["runs"]}
    methods = list(dict.fromkeys(r["method"] for r in results["runs"]))
    notes = []
    if (methods[0], 3, 0) in by and 20 in by[(methods[0], 1, 0)]["mAP"]:
        for method in methods:
            gain = 100 * (by[(method, 3, 0)]["mAP"][20] - by[(method, 1, 0)]["mAP"][20])
            goal = 12 if method == "IWAN" else 3
            notes.append(f"{method}: mAP@20 {100 * by[(method, 1, 0)]['mAP'][20]:.1f} with one example, "
                         f"{100 * by[(method, 3, 0)]['mAP'][20]:.1f} with three ({gain:+.1f} points; goal +{goal}: "
                         f"{'met' if gain >= goal else 'not met'}).")
    if 1 in results["metadata"]["negatives"] and 20 in by[(methods[0], 1, 0)]["P"]:
        for method in methods:
            changes = ", ".join(
                f"n={n} {100 * (by[(method, n, 1)]['P'][20] - by[(method, n, 0)]['P'][20]):+.1f}"
                for n in results["metadata"]["examples"])
            notes.append(f"{method}: one negative of the most confused class changes P@20 by {changes} points.")
    return notes
