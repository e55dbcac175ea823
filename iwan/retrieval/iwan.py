"""`iwan`: images ranked by their shortest-path distance from the query words in the image-word
association network (iwan.network.index.IwanIndex, live: images are added and removed in place).

Built from the norm set's associations and the corpus images' words (their predictor's top classes
mapped onto the norms' words, with the probabilities as weights). Queries and added images are
batches of word ids and weights.

A query of several examples (`explain_examples`) starts from the positives' words together,
each word weighing the mean of its weights over the positives (0 where one lacks it) times the
share of the positives that hold it: words the examples agree on are cheap to start from, a word
only one of five examples holds costs five times its mean's cost. A start made of several
examples ranks an image by the lesser of its shortest-path distance and its **parallel
distance**: its direct word paths from the start (start word, then the image, each of length
1/weight + 1/probability) taken together as parallel resistors, 1 / sum(1 / length). An image
holding several of the examples' words is near them all at once; one path alone is its own
length, as in a single search. (Shortest paths alone rank the most confident images of the
start's cheapest word first, whatever the image's other words; README "Queries of several
examples, measured" has the figures.) A hit's `example` is the positive that gives its path's
first word the largest weight; a hit found by parallel paths names them all in `paths`,
strongest first.

Negative examples' words, combined alike, are a second search in the same call (one graph
search per polarity); an image at distance d+ from the positives and d- from the negatives ranks
at d+ + max(0, d+ - d-): nearer to the negatives than to the positives, it is pushed down by the
difference. The negatives reach the images among their nearest NEGATIVE_DEPTH_FACTOR * k (deeper
while the k-th result could still change); farther ones are not pushed. A start of one example
(either polarity) is searched as a single query is, by shortest paths only: one example alone
answers exactly as the one-image search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np

from hashing.search import check_k
from iwan.config import NEGATIVE_DEPTH_FACTOR
from iwan.network.index import IwanIndex
from iwan.network.kernels import lesser_of_two, start_weights
from iwan.retrieval.protocol import WORD_FIELDS, Batch, CorpusData, Examples, Explained
from iwan.retrieval.registry import Corpus, register_retriever, require_predictor


class IwanRetriever:
    name = "iwan"
    reads: tuple[str, ...] = WORD_FIELDS

    def __init__(self, index: IwanIndex, unmapped_classes: Sequence[str] = ()):
        self.index = index
        self.unmapped_classes = list(unmapped_classes)
        """The predictor's classes that map to no word (reported by evaluations)."""

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The built index's arrays and settings (IwanIndex.to_arrays), for a snapshot."""
        return self.index.to_arrays()

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = False) -> IwanRetriever:
        """The retriever of an index saved in `folder` (IwanIndex.load_built; `mmap`: its arrays map the files)."""
        return cls(IwanIndex.load_built(folder, mmap=mmap))

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        word_ids, weights = images.need(*WORD_FIELDS, method=self.name)
        self.index.add(np.asarray(image_ids, dtype=np.int64), word_ids, weights)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(np.asarray(image_ids, dtype=np.int64))

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """scores = -distance; a query without a usable word gets a row of padding."""
        word_ids, weights = queries.need(*WORD_FIELDS, method=self.name)
        return self.index.search(word_ids, weights, check_k(k), exclude=exclude)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's distance and word path ("CAT", "image 12", "DOG"), from the same search."""
        word_ids, weights = queries.need(*WORD_FIELDS, method=self.name)
        scores, ids, paths = self.index.search(word_ids, weights, check_k(k), exclude=exclude, paths=True)
        reasons = [
            [{"distance": float(-s), "path": self.index.path_labels(p)} if i >= 0 else {}
             for s, i, p in zip(row_scores.tolist(), row_ids.tolist(), row_paths)]
            for row_scores, row_ids, row_paths in zip(scores, ids, paths)
        ]
        return Explained(scores, ids, reasons)


    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """The positives' words as one start, pushed away from the negatives' (the module doc)."""
        scores, ids, why = self.ranked_examples(examples, k, among=among, exclude=exclude)
        return Explained(scores, ids, [[why(c) if i >= 0 else {} for c, i in enumerate(ids[0].tolist())]])

    def ranked_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Callable[[int], dict]]:
        """`explain_examples`'s scores and ids (1, k), and `why(c)`: hit c's reason, built when asked
        (a fusion explains only the hits it keeps of the deeper list it reads)."""
        k = check_k(k)
        skip = None if exclude is None else np.asarray(exclude, np.int64).reshape(1, -1)
        ((ranked, why),) = self._answer([examples], k, among, skip, paths=True)
        out_scores = np.full((1, k), -np.inf)
        out_ids = np.full((1, k), -1, np.int64)
        for c, (distance, image_id, _) in enumerate(ranked):
            out_scores[0, c], out_ids[0, c] = -distance, image_id
        kept = [c for _, _, c in ranked]
        explain = cast("Callable[[int], dict]", why)
        return out_scores, out_ids, lambda c: explain(kept[c])

    def search_examples(self, queries: Sequence[Examples], k: int, *,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`explain_examples`'s scores and ids for many queries at once, without the reasons:
        every query's start in one graph search (the negatives' in another), no paths."""
        k = check_k(k)
        skip = None if exclude is None else np.asarray(exclude, np.int64).reshape(len(queries), -1)
        scores = np.full((len(queries), k), -np.inf)
        ids = np.full((len(queries), k), -1, np.int64)
        for r, (ranked, _) in enumerate(self._answer(queries, k, None, skip, paths=False)):
            for c, (distance, image_id, _) in enumerate(ranked):
                scores[r, c], ids[r, c] = -distance, image_id
        return scores, ids

    def _answer(self, queries: Sequence[Examples], k: int, among: np.ndarray | None, exclude: np.ndarray | None,
                paths: bool) -> list[tuple[list[tuple[float, int, int]], Callable[[int], dict] | None]]:
        """Each query's ranked (distance, id, position) and what explains a position (`_ranked`;
        only with `paths`). The starts of
        the queries searched at one depth go to the graph together: a query with negatives at
        NEGATIVE_DEPTH_FACTOR * k, deeper while its k-th result could still change."""
        starts = [(combined_start(e.positive), combined_start(cast(Batch, e.negative)) if e.has_negative else None)
                  for e in queries]
        several = [(len(e.positive) > 1, e.has_negative and len(cast(Batch, e.negative)) > 1) for e in queries]
        depths = [k if negative is None else NEGATIVE_DEPTH_FACTOR * k for _, negative in starts]
        answers: list[tuple[list[tuple[float, int, int]], Callable[[int], dict] | None]] = [([], None) for _ in queries]
        pending = set(range(len(queries)))
        while pending:
            depth = min(depths[r] for r in pending)
            batch = sorted(r for r in pending if depths[r] == depth)
            rows = [(r, polarity) for r in batch for polarity in (0, 1) if starts[r][polarity] is not None]
            width = max(1, *(len(cast(tuple, starts[r][p])[0]) for r, p in rows))
            word_ids = np.full((len(rows), width), -1, np.int64)
            weights = np.zeros((len(rows), width))
            for row, (r, p) in enumerate(rows):
                w, weight, _ = cast(tuple, starts[r][p])
                word_ids[row, :len(w)], weights[row, :len(w)] = w, weight
            skip = None if exclude is None else exclude[[r for r, _ in rows]]
            found = self.index.search(word_ids, weights, depth, exclude=skip, paths=paths, among=among)
            scores, ids = found[0], found[1]
            hit_paths = found[2] if paths else [None] * len(rows)
            for row, (r, p) in enumerate(rows):
                if several[r][p]:
                    scores[row], ids[row], hit_paths[row] = self._with_parallel(
                        cast(tuple, starts[r][p]), (scores[row], ids[row], hit_paths[row]), depth,
                        None if skip is None else skip[row], among)
            at = {(r, p): row for row, (r, p) in enumerate(rows)}
            for r in batch:
                pos = at[(r, 0)]
                neg = at.get((r, 1))
                pushed = None if neg is None else (scores[neg], ids[neg], hit_paths[neg])
                ranked, why = self._ranked((scores[pos], ids[pos], hit_paths[pos]), pushed, starts[r], k)
                reached = int((ids[pos] >= 0).sum())
                # Images not ranked lie at least as far as the last one ranked, pushed or not: once
                # the k-th is no farther, deeper would change nothing.
                if neg is None or reached < depth or not ranked or ranked[-1][0] <= -scores[pos, reached - 1]:
                    answers[r] = ranked, why
                    pending.remove(r)
                else:
                    depths[r] = depth * NEGATIVE_DEPTH_FACTOR
        return answers

    def _with_parallel(self, start, found, depth: int, exclude: np.ndarray | None,
                       among: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list | None]:
        """One row of the graph's (scores, ids, paths) at `depth` merged with the start's nearest
        by parallel distance: the best `depth` by the lesser of the two distances (the graph's on
        a tie), ties to the lower id. A parallel hit's path is its direct paths, shortest first
        (`parallel_nearest`), built when its hit is explained; paths None: none asked."""
        scores, ids, paths = found
        words, weights, _ = start
        p_distance, p_ids, p_paths = parallel_ranked(self.index, words, weights, depth, exclude, among)
        n = int((ids >= 0).sum())
        every_id = np.concatenate([ids[:n], p_ids])
        distance = np.concatenate([-scores[:n], p_distance])
        # Per image its lesser distance (the graph's first among equals), then nearest first.
        kept = lesser_of_two(ids[:n], distance[:n], p_ids, p_distance, depth)
        out_scores = np.full(depth, -np.inf)
        out_ids = np.full(depth, -1, np.int64)
        out_scores[:len(kept)], out_ids[:len(kept)] = -distance[kept], every_id[kept]
        if paths is None:
            return out_scores, out_ids, None
        out_paths = [paths[c] if c < n else partial(p_paths, c - n) for c in kept.tolist()]
        return out_scores, out_ids, out_paths + [()] * (depth - len(kept))

    def _why(self, leaders: dict[int, int], path) -> dict:
        """A hit's path (its shortest direct one, for a parallel hit: then `paths`, all of them)
        and the example that led to it (`leaders`: the start's word nodes' examples, leaders_of)."""
        if callable(path):  # a parallel hit's paths, built on demand (_with_parallel)
            path = path()
        if path and isinstance(path[0], tuple):  # direct paths (word, image), one image
            words, (image,) = self.index.words, self.index.path_labels(path[0][1:])
            every = [[words[word - 1], image] for word, _ in path]
            return {"path": list(every[0]), "paths": every, "example": leaders.get(path[0][0])}
        return {"path": self.index.path_labels(path), "example": leaders.get(path[0]) if path else None}

    def _ranked(self, found, pushed, starts,
                k: int) -> tuple[list[tuple[float, int, int]], Callable[[int], dict] | None]:
        """(distance, id, position) of the best k, nearest first, ties to the lower id, and what
        explains a position (None without paths); `found` and `pushed` are the positives' and
        negatives' (scores, ids, paths) rows (paths None: no reasons). Ranked over arrays,
        explained for the hits asked only."""
        scores, ids, paths = found
        n = int((ids >= 0).sum())  # hits first, then padding
        hit_ids, distance = ids[:n], -scores[:n]
        near = np.full(n, np.inf)
        near_row = np.full(n, -1, np.int64)
        if pushed is not None:
            n_scores, n_ids, _ = pushed
            rows = np.flatnonzero(n_ids >= 0)
            rows = rows[np.argsort(n_ids[rows], kind="stable")]
            at = np.minimum(np.searchsorted(n_ids[rows], hit_ids), max(len(rows) - 1, 0))
            reached = (n_ids[rows[at]] == hit_ids) if len(rows) else np.zeros(n, bool)
            near_row[reached] = rows[at[reached]]
            near[reached] = -n_scores[near_row[reached]]
        penalised = near < distance
        # distance + (distance - near), as float64 adds it one hit at a time
        ranked_distance = np.where(penalised, distance + (distance - near), distance)
        kept = np.lexsort((hit_ids, ranked_distance))[:k]
        out = [(float(ranked_distance[c]), int(hit_ids[c]), c)
               for c in kept.tolist()]
        if paths is None:
            return out, None
        leaders = [leaders_of(start) if start is not None else {} for start in starts]

        def why(c: int) -> dict:
            reason = {"distance": float(distance[c]), **self._why(leaders[0], paths[c])}
            if penalised[c]:
                reason["penalty"] = float(distance[c] - near[c])
                reason["negative"] = {"distance": float(near[c]), **self._why(leaders[1], pushed[2][near_row[c]])}
                reason["distance"] = float(ranked_distance[c])
            return reason

        return out, why


def combined_start(examples: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word ids, weights, example) of the examples' words as one start: each word weighs the mean
    of its weights over the examples times the share of the examples holding it (a word given
    twice in one example keeps its larger weight), and `example` is the example that gives it the
    largest weight (the first among equals)."""
    word_ids, weights = examples.need(*WORD_FIELDS, method="iwan")
    words, total, leader, holders = start_weights(np.ascontiguousarray(word_ids, np.int64),
                                                  np.ascontiguousarray(weights, np.float64))
    if len(word_ids) == 1:  # the weights as given, bit for bit
        return words, total, leader
    return words, total / len(word_ids) * (holders / len(word_ids)), leader


def parallel_nearest(index: IwanIndex, words: np.ndarray, weights: np.ndarray, k: int,
                     exclude: np.ndarray | None = None,
                     among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """The k images holding several start words (word ids, weights) nearest it by parallel
    distance (the module doc), nearest first, ties to the lower id: (distances, ids, paths), each
    hit's paths its direct ones as (word node, image node), shortest first. An image holding one
    start word is left to the graph search, which finds its one path or a shorter one. `exclude`
    (ids, -1 none) are no results, and with `among` (ids) only those are.

    Every start word's run is read (a start of hub words reads a good part of the corpus:
    CIFAR-10's 50,000 images, a median 48,000 word-image edges for five examples), counting each
    image's start words and bounding its distance from its runs' floors; an image's row is read to
    score it only where that bound can beat the k-th found so far (a few hundred rows of ~11,000
    images holding several words; iwan.network.kernels.parallel_best). A threshold algorithm over
    the runs (cheapest images first) stops no earlier: the nearest images hold several words at
    middling probabilities, deep in each run."""
    distance, hit_ids, paths = parallel_ranked(index, words, weights, k, exclude, among)
    return distance, hit_ids, [paths(c) for c in range(len(hit_ids))]


def parallel_ranked(index: IwanIndex, words: np.ndarray, weights: np.ndarray, k: int,
                    exclude: np.ndarray | None = None,
                    among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Callable[[int], tuple]]:
    """`parallel_nearest` with `paths(c)` building hit c's paths when asked (a search explains
    the hits it keeps only)."""
    # An image holding one start word is its one path, which the graph search finds as short or
    # shorter: only images holding several are scored (the index's kernel reads each start
    # word's runs once).
    hit_ids, distance, hit_words, lengths = index.parallel_nearest(words, weights, k, exclude, among)
    words_of, lengths_of = hit_words.tolist(), lengths.tolist()
    image_nodes = (1 + len(index.words) + hit_ids).tolist()

    def paths(c: int) -> tuple:
        own = [(length, w) for w, length in zip(words_of[c], lengths_of[c]) if length < math.inf]
        own.sort()
        image = image_nodes[c]
        return tuple([(1 + w, image) for _, w in own])

    return distance, hit_ids, paths


def leaders_of(start: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[int, int]:
    """Each start word's node id (word w is 1 + w) -> the example that gives it the largest weight:
    the example a path beginning there was led by."""
    words, _, leader = start
    return dict(zip((words + 1).tolist(), leader.tolist()))


@register_retriever("iwan")
def build(corpus: Corpus, data: CorpusData) -> IwanRetriever:
    from iwan.network.graph import build_graph
    from iwan.network.saved import check_top_iwk

    require_predictor(corpus, "iwan")
    check_top_iwk(corpus.top_iwk)
    word_ids, weights = data.images(corpus.image_ids, WORD_FIELDS).need(*WORD_FIELDS, method="iwan")
    graph = build_graph(data.associations(), word_ids, weights, top_wwk=corpus.top_wwk,
                        strength=corpus.strength, image_ids=np.asarray(corpus.image_ids, dtype=np.int64))
    return IwanRetriever(IwanIndex(graph), data.unmapped_classes)


def build_from_chunks(corpus: Corpus, associations, class_word_ids: np.ndarray,
                      chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                      total: int | None = None) -> IwanRetriever:
    """`build`'s retriever over images streamed in chunks of (ids int64 (n,), class indices (n, top),
    probabilities float32 (n, top)), ids ascending across chunks, as the store's reader yields
    them: each chunk's classes become words through `class_word_ids` (the predictor's class ->
    word id, -1 none) and only its first corpus.top_iwk columns are used. Peak memory within
    twice the final index (IwanIndex.from_chunks); `total`: the number of images, if known."""
    from iwan.network.graph import build_graph
    from iwan.network.saved import check_top_iwk, class_words

    require_predictor(corpus, "iwan")
    check_top_iwk(corpus.top_iwk)
    top = corpus.top_iwk
    words_only = build_graph(associations, np.zeros((0, top), np.int64), np.zeros((0, top)), top_wwk=corpus.top_wwk,
                             strength=corpus.strength)
    mapped = ((ids, class_words(class_word_ids, np.asarray(classes)[:, :top]), np.asarray(probabilities)[:, :top])
              for ids, classes, probabilities in chunks)
    return IwanRetriever(IwanIndex.from_chunks(words_only, mapped, width=top, total=total))
