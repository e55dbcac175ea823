"""Time the semantic-hash retrieval against exhaustive cosine, the torch cdist formulation and FAISS.

Usage: python benchmarks/bench_hashing.py [--n N ...] [--queries Q] [--k K] [--singles S]

Synthetic corpus: clustered unit embeddings (d=100) and 48-bit codes from the sign of a random
projection of them, so near codes mean near embeddings and the Hamming shortlist is meaningful.
For each corpus size, median (and mean) ms per single query over different queries, and ms per
query in one search call over a batch of Q queries, for:
  hashes        HammingCosineIndex: Hamming shortlist of factor*k, cosine re-rank, top k
  exhaustive    ExhaustiveCosineIndex: cosine over all, top k
  cdist         the original torch formulation: cdist(p=0) on float 0/1 bits + topk shortlist,
                the same cosine re-rank
  faiss_binary  faiss.IndexBinaryFlat on the same codes (6 bytes), top shortlist: the Hamming stage
                alone, which is what `hashes` adds a re-rank to
  faiss_flat    faiss.IndexFlatIP on the same embeddings, top k
recall_at_100 is the share of the exhaustive top k (k=100) that the hash search returns.
The baselines (cdist, faiss_*) are timed on their libraries' default threads and on one thread,
and the faster time is reported, so ratios never flatter `hashes` (single-threaded numpy) on a
busy machine. A slow method's batch is cut to what fits BATCH_BUDGET_S (`*_batch_queries` says
how many). faiss is the benchmark-only extra (pip install iwan[bench]). The last line is one JSON
object with one entry per n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from hashing.codes import pack_bits, unpack_bits
from hashing.search import ExhaustiveCosineIndex, HammingCosineIndex
from iwan.config import DEFAULT_SHORTLIST_FACTOR, HASH_BITS

DIM = 100
CLUSTERS = 1000
NOISE = 0.6  # per-component noise around a cluster centre whose components are N(0, 1)

QUERY_CHUNK = 64  # cdist batch: queries per call, so the (queries x n) float matrix stays small
SINGLE_BUDGET_S = 3.0  # single-query timing of one method stops after this long...
MIN_SINGLES = 10  # ...once it has this many queries
BATCH_BUDGET_S = 10.0  # a batch is cut to the queries that fit this long at single-query speed...
MIN_BATCH = 64  # ...but never below this many
THREADED = {"cdist", "faiss_binary", "faiss_flat"}  # timed on default threads and on one


def synthetic(n: int, rng: np.random.Generator, projection: np.ndarray, centres: np.ndarray):
    """(n, DIM) unit float32 embeddings around random cluster centres, and their uint64 codes."""
    embeddings, _ = clustered_embeddings(n, rng, centres)
    codes = pack_bits((embeddings @ projection > 0).astype(np.uint8))
    return embeddings, codes


def clustered_embeddings(n: int, rng: np.random.Generator, centres: np.ndarray):
    """(n, DIM) unit float32 embeddings around random cluster centres, and (n,) each one's cluster."""
    embeddings = np.empty((n, DIM), dtype=np.float32)
    clusters = rng.integers(0, len(centres), n)
    step = 100_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = centres[clusters[start:stop]]
        rows = rows + NOISE * rng.standard_normal(rows.shape, dtype=np.float32)
        embeddings[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return embeddings, clusters


def single_ms(fn, n_queries: int, limit: int) -> tuple[float, float]:
    """Median and mean ms of fn(i) over up to `limit` different queries, stopping after
    SINGLE_BUDGET_S. On a shared machine the mean also counts the time slices other processes
    take, as a batch's time per query does; the median mostly does not."""
    times: list[float] = []
    deadline = time.perf_counter() + SINGLE_BUDGET_S
    for i in range(min(limit, n_queries)):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
        if len(times) >= MIN_SINGLES and started > deadline:
            break
    return 1e3 * statistics.median(times), 1e3 * statistics.fmean(times)


def batch_ms(fn, n_queries: int, single: float) -> tuple[float, int]:
    """ms per query of fn(m) on the first m queries, in one call; m is all of them unless that
    would take over BATCH_BUDGET_S at the single-query speed. Cheap batches are repeated and the
    median taken, so a burst of load from other processes weighs less."""
    m = int(min(n_queries, max(MIN_BATCH, 1e3 * BATCH_BUDGET_S / single)))
    repeats = 3 if single * m < 1e3 * BATCH_BUDGET_S / 3 else 1
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(m)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times) / m, m


@contextmanager
def threads(n: int | None):
    """torch and faiss on n threads (None: their defaults)."""
    import faiss

    saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    if n is not None:
        torch.set_num_threads(n)
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        faiss.omp_set_num_threads(saved[1])


class CdistSearch:
    """The original torch formulation: float 0/1 bit tensors, cdist(p=0), topk, cosine re-rank."""

    def __init__(self, embeddings: np.ndarray, codes: np.ndarray) -> None:
        self.embeddings = torch.from_numpy(embeddings)
        self.bits = torch.from_numpy(unpack_bits(codes, HASH_BITS).astype(np.float32))

    def search(self, q_emb: torch.Tensor, q_bits: torch.Tensor, k: int, shortlist: int) -> torch.Tensor:
        out = []
        for s in range(0, len(q_emb), QUERY_CHUNK):
            dist = torch.cdist(q_bits[s : s + QUERY_CHUNK], self.bits, p=0)
            candidates = torch.topk(dist, shortlist, largest=False).indices
            cos = torch.einsum("qsd,qd->qs", self.embeddings[candidates], q_emb[s : s + QUERY_CHUNK])
            out.append(torch.gather(candidates, 1, torch.topk(cos, k).indices))
        return torch.cat(out)


def bench(n: int, n_queries: int, k: int, singles: int, seed: int) -> dict:
    import faiss  # the benchmark-only extra

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    projection = rng.standard_normal((DIM, HASH_BITS), dtype=np.float32)
    embeddings, codes = synthetic(n, rng, projection, centres)
    queries, query_codes = synthetic(n_queries, rng, projection, centres)
    shortlist = DEFAULT_SHORTLIST_FACTOR * k

    hashes = HammingCosineIndex()
    hashes.add(None, embeddings, codes)
    exhaustive = ExhaustiveCosineIndex()
    exhaustive.add(None, embeddings)
    cdist = CdistSearch(embeddings, codes)
    q_emb = torch.from_numpy(queries)
    q_bits = torch.from_numpy(unpack_bits(query_codes, HASH_BITS).astype(np.float32))
    faiss_binary = faiss.IndexBinaryFlat(HASH_BITS)
    faiss_binary.add(np.ascontiguousarray(codes.view(np.uint8).reshape(n, 8)[:, :6]))  # little-endian: bits 0-47
    faiss_queries = np.ascontiguousarray(query_codes.view(np.uint8).reshape(-1, 8)[:, :6])
    faiss_flat = faiss.IndexFlatIP(DIM)
    faiss_flat.add(embeddings)

    # Each method: (single query i, first m queries). The baselines are timed with their libraries'
    # default threads and with one thread, and the faster counts: the comparison never favours ours.
    methods = {
        "hashes": (
            lambda i: hashes.search(queries[i : i + 1], k, query_codes=query_codes[i : i + 1]),
            lambda m: hashes.search(queries[:m], k, query_codes=query_codes[:m])[1],
        ),
        "exhaustive": (
            lambda i: exhaustive.search(queries[i : i + 1], k),
            lambda m: exhaustive.search(queries[:m], k)[1],
        ),
        "cdist": (
            lambda i: cdist.search(q_emb[i : i + 1], q_bits[i : i + 1], k, shortlist),
            lambda m: cdist.search(q_emb[:m], q_bits[:m], k, shortlist),
        ),
        "faiss_binary": (
            lambda i: faiss_binary.search(faiss_queries[i : i + 1], shortlist),
            lambda m: faiss_binary.search(faiss_queries[:m], shortlist),
        ),
        "faiss_flat": (
            lambda i: faiss_flat.search(queries[i : i + 1], k),
            lambda m: faiss_flat.search(queries[:m], k),
        ),
    }
    r = {"n": n, "k": k, "shortlist": shortlist, "queries": n_queries}
    for name, (one, many) in methods.items():
        single, mean = single_ms(one, n_queries, singles)
        if name in THREADED:
            with threads(1):
                single, mean = min((single, mean), single_ms(one, n_queries, singles))
        r[f"{name}_single_ms"], r[f"{name}_single_mean_ms"] = single, mean
        r[f"{name}_batch_ms_per_query"], r[f"{name}_batch_queries"] = batch_ms(many, n_queries, single)

    m = r["exhaustive_batch_queries"]
    hash_ids, exact_ids = methods["hashes"][1](m), methods["exhaustive"][1](m)
    found = [len(np.intersect1d(h, e)) for h, e in zip(hash_ids, exact_ids)]
    r[f"recall_at_{k}"] = float(np.mean(found)) / k
    r["recall_queries"] = m
    r["speedup_vs_cdist"] = r["cdist_single_ms"] / r["hashes_single_ms"]
    r["batch_speedup_vs_cdist"] = r["cdist_batch_ms_per_query"] / r["hashes_batch_ms_per_query"]
    r["ratio_vs_faiss_binary"] = r["hashes_single_ms"] / r["faiss_binary_single_ms"]
    r["batch_ratio_vs_faiss_binary"] = r["hashes_batch_ms_per_query"] / r["faiss_binary_batch_ms_per_query"]
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in r.items()}


def print_table(results: list[dict]) -> None:
    methods = ["hashes", "exhaustive", "cdist", "faiss_binary", "faiss_flat"]
    print(f"{'n':>10} {'method':<13} {'single ms':>10} {'(mean)':>9} {'batch ms/q':>11} {'(batch of)':>10}")
    for r in results:
        for m in methods:
            print(
                f"{r['n']:>10,} {m:<13} {r[f'{m}_single_ms']:>10.3f} {r[f'{m}_single_mean_ms']:>9.3f} "
                f"{r[f'{m}_batch_ms_per_query']:>11.3f} {r[f'{m}_batch_queries']:>10}"
            )
        recall = r[f"recall_at_{r['k']}"]
        print(
            f"{'':>10} recall@{r['k']} {recall:.3f}, speed-up vs cdist {r['speedup_vs_cdist']:.1f}x single / "
            f"{r['batch_speedup_vs_cdist']:.1f}x batch, vs faiss binary {r['ratio_vs_faiss_binary']:.2f}x single / "
            f"{r['batch_ratio_vs_faiss_binary']:.2f}x batch (time ratio, lower is faster)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50_000, 1_000_000], help="corpus sizes")
    parser.add_argument("--queries", type=int, default=1000, help="queries in the batch")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--singles", type=int, default=200, help="most single queries timed per method (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [bench(n, args.queries, args.k, args.singles, args.seed) for n in args.n]
    print_table(results)
    print(json.dumps({str(r["n"]): r for r in results}))


if __name__ == "__main__":
    main()
