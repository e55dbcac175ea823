"""The semantic-hash method at scale: bytes per image, build time, latency and recall@100 against
exhaustive cosine, on two kinds of codes, with FAISS's binary indexes and HNSW beside it.

Usage: python benchmarks/bench_scale.py --sizes N[,N...] [--queries Q] [--no-faiss] [--collection-only]

First, per size, a whole collection as a LiveCollection holds it (`collection`): the clustered
kind's embeddings and codes, four sampled classes per image with Dirichlet probabilities, norms
of 5,000 words, 100 labels; IWAN built from chunks (iwan.retrieval.iwan.build_from_chunks), the
exhaustive and hashes indexes, the members as held. Its bytes per image per part (and before
issue 18's item 3: the members with embeddings, codes, int64 classes and a label string per
image, IWAN with int32 word ids and a cost per run entry, the exhaustive index's unit rows), the
seconds to write its snapshot, and in a fresh process the seconds to open it read and mapped
(`_read_snapshot`), with the first exhaustive search after each (which reads every row).
`bytes_per_image` in the JSON is this collection's.

Two kinds of data, each unit 100-dimensional embeddings made by benchmarks/bench_hashing.py's
generator (centres with components N(0, 1), noise 0.6 per component) and 48-bit codes:
  random     embeddings around 1,000 cluster centres, codes the sign of a random projection of
             them (bench_hashing.py's data).
  clustered  codes that cluster by class, as the real semantic codes do: 100 classes, embeddings
             the class centre plus noise; each class a root code and three codes 1-2 bits from it,
             holding 45%, 20%, 15% and 10% of the class's images, and a tail of 10% whose codes are
             the root with 1-4 random bits flipped (codes held by one or two images). The shape of
             the codes is the real one: the 1-epoch tiny-hash model's CIFAR-10 collection (5,000
             images) has 1,120 distinct codes, the largest holding 21% of the images and the four
             largest 45%, the large codes 1-3 bits apart. Within a class the code says nothing about
             the embedding (a Hamming bucket is no hint of which of its images are nearest).
Per size and kind, `hashes` (hashing.cells.CellCosineIndex at its defaults): bytes per image, build
seconds, single-query p50/p99 ms for k = 20, 100 and 250, ms per query single (mean) and in one
batch call (the median of 3), rows scored per query, recall@100 against ExhaustiveCosineIndex (float32), and
`exhaustive_scan`: the top 100 of every row of the index (a collection's exhaustive method: the
int8 offsets from the cells' centres) against the float32 one. `int8`: the same agreement for
whole int8 rows, without centres (per-row and one global scale). On random codes, recall-time curves (single-query p50, recall@100) of `hashes` over
its patience and of FAISS's IndexBinaryFlat, IndexBinaryMultiHash and IndexBinaryIVF (a Hamming
shortlist of S codes, re-ranked by float32 cosine as the old fixed shortlist was), and IndexHNSWFlat
on the embeddings, all on one thread in the same run; `at_recall` gives each method's fastest
point reaching each recall. The last line is one JSON object: {"sizes": {"<N>": {...}}, "load_average"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's hashing, not an installed one

from bench_hashing import CLUSTERS, DIM, clustered_embeddings

from hashing.cells import DEFAULT_PATIENCE, CellCosineIndex, CellScan
from hashing.codes import pack_bits
from hashing.quantized import dequantize, quantize
from iwan.config import HASH_BITS

CLASSES = 100
CODE_SHARES = (0.45, 0.2, 0.15, 0.1)  # the root code, then three near codes; the rest is the tail
TAIL_FLIPS = 4
RECALL_K = 100
LATENCY_KS = (20, 100, 250)
PATIENCES = (1, 2, 3, 5, 8, 13, 21)
SHORTLISTS = (200, 1000, 5000, 20000)
MULTIHASH_FLIPS = (0, 1, 2)
IVF_PROBES = (1, 4, 16, 64)
HNSW_EFS = (16, 64, 128, 256, 512)
TARGET_RECALLS = (0.3, 0.5, 0.7, 0.9, 0.95)
SCAN_SINGLES = 30
"""Single exhaustive scans timed (each scores a large share of the rows: milliseconds at 1M)."""
BATCH_REPEATS = 3  # the median batch, so one burst of other processes' load weighs less


def class_codes(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The `clustered` kind's codes (the module doc) for images of the given classes."""
    roots = rng.integers(0, 1 << HASH_BITS, CLASSES, dtype=np.uint64)
    near = np.array([[_flip(r, rng, int(rng.integers(1, 3))) for _ in CODE_SHARES[1:]] for r in roots])
    choices = np.concatenate([roots[:, None], near], axis=1)  # (classes, 4)
    pick = rng.choice(len(CODE_SHARES) + 1, size=len(classes), p=[*CODE_SHARES, 1 - sum(CODE_SHARES)])
    codes = choices[classes, np.minimum(pick, len(CODE_SHARES) - 1)]
    tail = np.flatnonzero(pick == len(CODE_SHARES))
    flips = rng.integers(1, TAIL_FLIPS + 1, len(tail))
    masks = np.zeros(len(tail), dtype=np.uint64)
    for bit in range(TAIL_FLIPS):
        chosen = rng.integers(0, HASH_BITS, len(tail)).astype(np.uint64)
        masks ^= np.where(bit < flips, np.uint64(1) << chosen, np.uint64(0))
    codes[tail] = roots[classes[tail]] ^ masks
    return codes


def _flip(code: np.uint64, rng: np.random.Generator, bits: int) -> np.uint64:
    for b in rng.choice(HASH_BITS, bits, replace=False):
        code ^= np.uint64(1) << np.uint64(b)
    return code


def recall(found, truth: np.ndarray) -> float:
    """The mean share of each truth row found in the same row of `found` (ids, -1 padding)."""
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def single_times(fn, n: int) -> list[float]:
    """ms of fn(i) for each of n queries."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        out.append(1e3 * (time.perf_counter() - started))
    return out


def p(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


def bench_hashes(embeddings, codes, queries, truth, singles: int) -> dict:
    started = time.perf_counter()
    index = CellCosineIndex()
    index.add(None, embeddings, codes)
    build_s = time.perf_counter() - started
    index.search(queries[:2], RECALL_K)  # compiles the kernel (numba caches it on disk)
    r: dict = {"bytes_per_image": index.nbytes / len(embeddings), "build_s": build_s, "cells": index.n_cells}
    for k in LATENCY_KS:
        times = single_times(lambda i, k=k: index.search(queries[i : i + 1], k), singles)
        r[f"k{k}"] = {"p50_ms": p(times, 50), "p99_ms": p(times, 99), "single_mean_ms": statistics.fmean(times)}
        batches = []
        for _ in range(BATCH_REPEATS):
            started = time.perf_counter()
            index.search(queries[:singles], k)
            batches.append(1e3 * (time.perf_counter() - started) / singles)
        r[f"k{k}"]["batch_ms_per_query"] = statistics.median(batches)
    _, ids, visited = index.search_counting(queries, RECALL_K)
    r["recall_at_100"] = recall(ids, truth)
    r["rows_scored_p50"] = float(np.median(visited))
    r["p50_ms"], r["p99_ms"] = r[f"k{RECALL_K}"]["p50_ms"], r[f"k{RECALL_K}"]["p99_ms"]
    scan = CellScan(index)  # a collection's exhaustive method over the same rows
    _, ids, visited = index.search_counting(queries, RECALL_K, patience=index.n_cells + 1)
    times = single_times(lambda i: scan.search(queries[i : i + 1], RECALL_K), min(singles, SCAN_SINGLES))
    r["exhaustive_scan"] = {"agreement_at_100": recall(ids, truth), "p50_ms": p(times, 50),
                            "rows_scored_p50": float(np.median(visited))}
    r["curve"] = []
    for patience in PATIENCES:
        _, ids, visited = index.search_counting(queries, RECALL_K, patience=patience)
        times = single_times(lambda i, pt=patience: index.search(queries[i : i + 1], RECALL_K, patience=pt), singles)
        r["curve"].append({"patience": patience, "recall": recall(ids, truth), "p50_ms": p(times, 50),
                           "rows_scored_p50": float(np.median(visited))})
    return r


REFERENCE_ROWS = 1 << 18
"""Rows the float32 reference scores per step: its temporaries stay small for any N."""


def exact_top(embeddings: np.ndarray, queries: np.ndarray, rows_of=None) -> np.ndarray:
    """The exhaustive float32 top 100 of each query by cosine, positions into `embeddings` (unit
    rows), best first, ties to the lower position, as ExhaustiveCosineIndex ranks them (up to
    BLAS's rounding), scored block by block rather than from a copy of the rows (4 GB at 10M).
    `rows_of(start, stop)`: the unit float32 rows to score in place of `embeddings`' (another
    form of them)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(embeddings), REFERENCE_ROWS):
        stop = min(start + REFERENCE_ROWS, len(embeddings))
        sims = queries @ (embeddings[start:stop] if rows_of is None else rows_of(start, stop)).T
        take = min(RECALL_K, sims.shape[1])
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(sims, part, axis=1)], axis=1)
        best = np.concatenate([best, part + start], axis=1)
        order = np.lexsort((best, -best_scores), axis=1)[:, :RECALL_K]
        best_scores, best = np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best, order, axis=1)
    return best


def int8_agreement(embeddings: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Top-100 agreement of exhaustive cosine over int8 embeddings with the float32 top 100."""
    rows, scales = quantize(embeddings)
    per_row = exact_top(embeddings, queries, lambda a, b: dequantize(rows[a:b], scales[a:b]))
    peak = float(np.abs(embeddings).max())

    def global_scale(a, b):
        whole = np.rint(embeddings[a:b] * (127 / peak)).astype(np.int8).astype(np.float32)
        return whole / np.linalg.norm(whole, axis=1, keepdims=True)

    return {"per_row_scale": recall(per_row, truth), "global_scale": recall(exact_top(embeddings, queries, global_scale), truth)}


def faiss_curves(embeddings, codes, queries, query_codes, truth, singles: int, with_hnsw: bool = True) -> dict:
    """Recall-time points of FAISS's binary indexes (shortlist + float32 re-rank) and HNSW."""
    import faiss  # the benchmark-only extra (pip install iwan[bench])

    faiss.omp_set_num_threads(1)  # hashes is single-threaded: compare like with like
    as_bytes = lambda c: np.ascontiguousarray(c.view(np.uint8).reshape(len(c), 8)[:, :6])  # noqa: E731
    base, probe = as_bytes(codes), as_bytes(query_codes)

    def rerank(i, candidates):
        candidates = candidates[candidates >= 0]
        scores = embeddings[candidates] @ queries[i]
        return candidates[np.argsort(-scores, kind="stable")[:RECALL_K]]

    def curve(index, settings, set_param, shortlists=SHORTLISTS):
        points = []
        for setting in settings:
            set_param(setting)
            for s in shortlists:
                run = lambda i, s=s: rerank(i, index.search(probe[i : i + 1], s)[1][0])  # noqa: E731
                times = single_times(run, singles)
                found = [run(i) for i in range(len(queries))]
                points.append({"setting": setting, "shortlist": s, "recall": recall(found, truth), "p50_ms": p(times, 50)})
        return points

    out: dict = {}
    started = time.perf_counter()
    flat = faiss.IndexBinaryFlat(HASH_BITS)
    flat.add(base)
    out["faiss_binary_flat"] = {"build_s": time.perf_counter() - started,
                                "curve": curve(flat, [None], lambda _: None)}
    started = time.perf_counter()
    multi = faiss.IndexBinaryMultiHash(HASH_BITS, 3, 16)
    multi.add(base)
    out["faiss_binary_multihash"] = {"build_s": time.perf_counter() - started,
                                     "curve": curve(multi, MULTIHASH_FLIPS, lambda f: setattr(multi, "nflip", f))}
    started = time.perf_counter()
    quantizer = faiss.IndexBinaryFlat(HASH_BITS)
    ivf = faiss.IndexBinaryIVF(quantizer, HASH_BITS, 1024)
    ivf.train(base[:: max(1, len(base) // 100_000)])
    ivf.add(base)
    out["faiss_binary_ivf"] = {"build_s": time.perf_counter() - started,
                               "curve": curve(ivf, IVF_PROBES, lambda n: setattr(ivf, "nprobe", n))}
    if not with_hnsw:
        return out
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    faiss.omp_set_num_threads(2)  # the build only: it is not what is compared
    hnsw.add(embeddings)
    faiss.omp_set_num_threads(1)
    points = []
    for ef in HNSW_EFS:
        hnsw.hnsw.efSearch = max(ef, RECALL_K)
        times = single_times(lambda i: hnsw.search(queries[i : i + 1], RECALL_K), singles)
        points.append({"setting": ef, "recall": recall(hnsw.search(queries, RECALL_K)[1], truth), "p50_ms": p(times, 50)})
    out["faiss_hnsw_flat"] = {"build_s": time.perf_counter() - started, "curve": points}
    return out


def at_recall(curves: dict[str, list[dict]]) -> dict:
    """Each method's fastest p50 among its points reaching each target recall (None: none does)."""
    return {
        str(target): {
            name: min((pt["p50_ms"] for pt in points if pt["recall"] >= target), default=None)
            for name, points in curves.items()
        }
        for target in TARGET_RECALLS
    }


def bench(n: int, n_queries: int, singles: int, seed: int, with_faiss: bool, folder: Path, collection_only: bool,
          with_hnsw: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    class_centres = rng.standard_normal((CLASSES, DIM), dtype=np.float32)
    class_embeddings, classes = clustered_embeddings(n, rng, class_centres)
    codes = class_codes(classes, rng)
    del classes
    r: dict = {"n": n, "collection": bench_collection(n, rng, class_embeddings, codes, folder)}
    r["bytes_per_image"] = r["collection"]["bytes_per_image"]
    if collection_only:
        return r
    class_queries, _ = clustered_embeddings(n_queries, rng, class_centres)
    r["clustered"] = bench_hashes(class_embeddings, codes, class_queries, exact_top(class_embeddings, class_queries), singles)
    del class_embeddings, codes
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    projection = rng.standard_normal((DIM, HASH_BITS), dtype=np.float32)
    embeddings, _ = clustered_embeddings(n, rng, centres)
    queries, _ = clustered_embeddings(n_queries, rng, centres)
    random_codes = pack_bits((embeddings @ projection > 0).astype(np.uint8))
    random_query_codes = pack_bits((queries @ projection > 0).astype(np.uint8))
    started = time.perf_counter()
    truth = exact_top(embeddings, queries)
    r["exhaustive_ms_per_query"] = 1e3 * (time.perf_counter() - started) / n_queries
    r["int8_agreement"] = int8_agreement(embeddings, queries, truth)
    r["random"] = bench_hashes(embeddings, random_codes, queries, truth, singles)
    if with_faiss:
        r["random"]["faiss"] = faiss_curves(embeddings, random_codes, queries, random_query_codes, truth, singles,
                                            with_hnsw)
        curves = {"hashes": r["random"]["curve"]} | {name: v["curve"] for name, v in r["random"]["faiss"].items()}
        r["random"]["at_recall"] = at_recall(curves)
    return r


# --- a whole collection: bytes per image and the open from its snapshot --------------------------

WORDS = 5_000
"""Vocabulary of the synthetic norms (USF's is 5,018 words)."""
LABELS = 100
OPEN_SCRIPT = """
import json, sys, time
from datetime import datetime
from pathlib import Path
from iwan.collections import live
from iwan.db.collections import Collection
collection = Collection(**json.loads(sys.argv[2]) | {"created_at": datetime.fromisoformat(json.loads(sys.argv[2])["created_at"])})
mmap = sys.argv[3] == "mmap"
started = time.perf_counter()
snapshot = live._read_snapshot(Path(sys.argv[1]), collection, mmap=mmap)
seconds = time.perf_counter() - started
assert snapshot is not None and snapshot.retrievers is not None, "the snapshot did not load"
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
from hashing.cells import CellScan
exhaustive = CellScan(snapshot.retrievers["hashes"].index)  # as a LiveCollection's exhaustive method reads it
started = time.perf_counter()
exhaustive.search(exhaustive.embeddings_of(exhaustive.ids[:1]), 10)
print(json.dumps({"open_s": seconds, "peak_rss_bytes": 1024 * peak, "first_exhaustive_s": time.perf_counter() - started}))
"""


def synthetic_collection(n: int, rng: np.random.Generator, embeddings: np.ndarray, codes: np.ndarray):
    """(collection, members as the store gives them, words, class -> word ids, associations): ids
    every other integer, four classes of 1,000 with sorted Dirichlet probabilities, 100 labels (one
    str object per image, as the database driver makes them) and norms of WORDS words, 10 targets each."""
    from datetime import UTC, datetime

    from iwan.collections.live import _Members
    from iwan.db.collections import Collection
    from iwan.network.graph import Associations

    words = [f"w{i}" for i in range(WORDS)]
    cue = np.repeat(np.arange(WORDS), 10)
    associations = Associations(words, cue, rng.integers(0, WORDS, len(cue)), rng.random(len(cue)), rng.random(len(cue)))
    class_word_ids = np.where(rng.random(1000) < 0.9, rng.integers(0, WORDS, 1000), -1).astype(np.int64)
    ids = 2 * np.arange(n, dtype=np.int64)
    classes = rng.integers(0, 1000, (n, 4)).astype(np.int64)
    probabilities = -np.sort(-rng.dirichlet((5, 2, 1, 1, 1), n)[:, :4], axis=1).astype(np.float32)
    labels = np.array([f"label {c}" for c in rng.integers(0, LABELS, n).tolist()], dtype=object)
    collection = Collection(id=1, name="bench", dataset=None, split=None, predictor="bench", hash_model="bench",
                            top_iwk=4, top_wwk=4, strength="forward", source="bench",
                            created_at=datetime(2026, 1, 1, tzinfo=UTC))
    members = _Members(ids, classes, probabilities, embeddings, codes, labels)
    return collection, members, words, class_word_ids, associations


def members_bytes(members) -> int:
    """Bytes of the members' arrays and of the label objects they point to."""
    objects = 0
    if members.labels is not None:
        distinct = {id(x): x for x in members.labels.tolist() if x is not None}
        objects = sum(sys.getsizeof(x) for x in distinct.values())
    return members.nbytes + members.labels.nbytes * (members.labels is not None) + objects


def bench_collection(n: int, rng: np.random.Generator, embeddings: np.ndarray, codes: np.ndarray, folder: Path) -> dict:
    """A collection's bytes per image per part, before this change's members and after ("shared":
    the ids and codes the members and indexes hold as one copy, counted once), and the seconds to
    save and to open its snapshot (in a fresh process)."""
    import gc
    import subprocess

    from iwan.collections.live import _write_snapshot
    from iwan.network.saved import class_words
    from iwan.retrieval.exhaustive import CellScanRetriever
    from iwan.retrieval.hashes import HashesRetriever
    from iwan.retrieval.iwan import build_from_chunks
    from iwan.retrieval.registry import Corpus

    collection, members, words, class_word_ids, associations = synthetic_collection(n, rng, embeddings, codes)
    corpus = Corpus(image_ids=members.ids, predictor="bench", hash_model="bench", top_iwk=4, top_wwk=4,
                    strength="forward", source="bench")
    step = 1 << 17
    chunks = ((members.ids[s:s + step], members.class_indices[s:s + step], members.probabilities[s:s + step])
              for s in range(0, n, step))
    started = time.perf_counter()
    retrievers: dict = {"iwan": build_from_chunks(corpus, associations, class_word_ids, chunks, total=n)}
    iwan_build = time.perf_counter() - started
    # A query of several examples allocates IWAN's parallel scratch and its runs' floors: counted.
    retrievers["iwan"].index.parallel_nearest(np.array([0, 1]), np.array([0.5, 0.5]), 20)
    cells = CellCosineIndex()
    cells.add(members.ids, embeddings, codes)
    retrievers["hashes"] = HashesRetriever(cells)
    exhaustive = CellScanRetriever(cells)  # a view: nothing of its own, no snapshot folder
    table: list[str] = []
    held = members.held(table, {})
    indexes = {m: int(r.index.nbytes) for m, r in retrievers.items()} | {"exhaustive": exhaustive.index.nbytes}
    # Before issue 18's item 3 the exhaustive index held unit float32 rows (no norms) with its
    # ids and codes, IWAN's rows int32 word ids and its runs a float64 cost per edge, and nothing
    # was shared; from item 3 until the scan, the exhaustive index held the rows with their norms.
    edges = retrievers["iwan"].index._edges
    iwan_before = indexes["iwan"] + 8 * (len(edges.main[1]) + len(edges.delta[1])) + \
        edges.row_words.size * (4 - edges.row_words.itemsize)
    float32_rows = embeddings.nbytes + members.ids.nbytes + codes.nbytes
    before = {"members": members_bytes(members), **indexes, "iwan": iwan_before, "exhaustive": float32_rows}
    retrievers["iwan"].index.share_ids(held.ids)  # as a LiveCollection shares them
    cells.share(held.ids)
    after = {"members": held.nbytes + sum(sys.getsizeof(x) for x in table), **indexes,
             "shared": -2 * held.ids.nbytes}
    # The IWAN queries of a stored image are its classes' words: check they are the same both ways.
    assert np.array_equal(class_words(class_word_ids, held.class_indices), class_words(class_word_ids, members.class_indices))
    path = folder / "bench.snapshot"
    started = time.perf_counter()
    _write_snapshot(path, collection, held, words, class_word_ids, 0, label_table=table,
                    built={m: r.to_arrays() for m, r in retrievers.items()})
    save_s = time.perf_counter() - started
    snapshot_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    del retrievers, exhaustive, cells, held, members, chunks
    gc.collect()
    described = json.dumps(collection.as_dict() | {"created_at": collection.created_at.isoformat()})
    result, mapped = (json.loads(subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, str(path), described, how], check=True, capture_output=True, text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}).stdout.strip().splitlines()[-1])
        for how in ("read", "mmap"))
    return {
        "bytes_per_image_before": {k: v / n for k, v in before.items()} | {"total": sum(before.values()) / n},
        "bytes_per_image": {k: v / n for k, v in after.items()} | {"total": sum(after.values()) / n},
        "snapshot_bytes_per_image": snapshot_bytes / n,
        "iwan_streamed_build_s": iwan_build, "save_s": save_s,
        "open_s": result["open_s"], "open_peak_rss_bytes_per_image": result["peak_rss_bytes"] / n,
        "first_exhaustive_search_s": result["first_exhaustive_s"],
        "open_mmap_s": mapped["open_s"], "first_exhaustive_search_after_mmap_s": mapped["first_exhaustive_s"],
    }


def rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def print_table(results: dict) -> None:
    for n, r in results.items():
        c = r["collection"]
        print(f"n={int(n):,} collection: bytes per image " + ", ".join(f"{k} {v:.1f}" for k, v in c["bytes_per_image"].items())
              + " (before: " + ", ".join(f"{k} {v:.1f}" for k, v in c["bytes_per_image_before"].items()) + ")")
        print(f"  snapshot {c['snapshot_bytes_per_image']:.1f} B/image, saved in {c['save_s']:.1f} s, opened in "
              f"{c['open_s']:.2f} s (peak {c['open_peak_rss_bytes_per_image']:.0f} B/image, first exhaustive search "
              f"{c['first_exhaustive_search_s']:.2f} s), mapped {c['open_mmap_s']:.2f} s (first exhaustive search "
              f"{c['first_exhaustive_search_after_mmap_s']:.2f} s); IWAN streamed build {c['iwan_streamed_build_s']:.1f} s")
        if "clustered" not in r:
            continue
        print(f"n={int(n):,}: exhaustive {r['exhaustive_ms_per_query']:.1f} ms/query; int8 top-100 agreement "
              f"per-row {r['int8_agreement']['per_row_scale']:.4f}, global {r['int8_agreement']['global_scale']:.4f}")
        for kind in ("clustered", "random"):
            h = r[kind]
            print(f"  {kind:<9} {h['bytes_per_image']:.1f} B/image, build {h['build_s']:.1f} s, {h['cells']} cells, "
                  f"recall@100 {h['recall_at_100']:.3f} (patience {DEFAULT_PATIENCE}), rows scored {h['rows_scored_p50']:.0f}")
            for k in LATENCY_KS:
                t = h[f"k{k}"]
                print(f"    k={k:<4} p50 {t['p50_ms']:.3f} ms  p99 {t['p99_ms']:.3f} ms  single mean "
                      f"{t['single_mean_ms']:.3f} ms  batch {t['batch_ms_per_query']:.3f} ms/query")
            print("    curve: " + ", ".join(f"p{c['patience']} {c['recall']:.3f}@{c['p50_ms']:.2f}ms" for c in h["curve"]))
        if "at_recall" in r["random"]:
            print("  random codes, fastest single-query p50 (ms) reaching each recall@100:")
            for target, row in r["random"]["at_recall"].items():
                print(f"    {target:>5}: " + ", ".join(f"{m} {'-' if v is None else f'{v:.3f}'}" for m, v in row.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated corpus sizes")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall (and the batch)")
    parser.add_argument("--singles", type=int, default=100, help="single queries timed per point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS and HNSW curves")
    parser.add_argument("--no-hnsw", action="store_true",
                        help="skip HNSW only (its build is most of a 10M run: about 20 minutes on 2 cores)")
    parser.add_argument("--collection-only", action="store_true",
                        help="only the whole collection's bytes and snapshot times (the size that fits in memory)")
    parser.add_argument("--snapshot-dir", type=Path, help="where the collection's snapshot is written (default: a "
                        "temporary folder, removed at the end)")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.snapshot_dir) as folder:
        results = {str(n): rounded(bench(n, args.queries, min(args.singles, args.queries), args.seed, not args.no_faiss,
                                         Path(folder), args.collection_only, not args.no_hnsw)) for n in sizes}
    print_table(results)
    print(json.dumps({"sizes": results, "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
