"""The live IWAN index: memory, search speed, changes, exactness; networkx as the reference.

    python benchmarks/bench_iwan.py [--sizes 50000,1000000] [--queries 1000] [--seed 0]
    python benchmarks/bench_iwan.py --streamed 10000000   # the chunked build's peak memory alone

The graph is built from the real USF Appendix A files (parsed by iwan.datasets.usf) and the real
ImageNet label words (the 1000 torchvision category names mapped onto the norms by iwan.vision.words).
Without real predictions, each image's top-topIWK classes (4 by default) are sampled like a
classifier's:

* a "true" class t, uniform over the 1000;
* topIWK - 2 confusable classes within 10 places of t in the category list, which follows
  WordNet and so keeps near classes together (terriers beside terriers, trucks beside trucks);
* one unrelated class, more than 10 places away;
* their probabilities from a Dirichlet with weights 5 (true), 2 (first near), 1 (each other
  class) and 1 for a last share that stands for the mass on all other classes: for topIWK 4,
  Dirichlet(5, 2, 1, 1, 1). The classes are then ranked by probability, as a classifier lists
  them. Classes with no word keep their slot and give no edge.

Queries are further images drawn the same way (not in the corpus), searched for the k nearest
(k = 20 and 250). For each corpus size:

* memory: bytes of all the index's arrays (spare capacity included) per image held;
* search: per-query latency of `search_one` (median, p99), and of the batch `search`; also
  the CPU time of this thread per query, which leaves out the waits of a shared, loaded
  machine's scheduler (on 2 busy cores a query is often descheduled for a ~10 ms time slice);
* the networkx reference (at sizes up to --reference-max, on --reference-queries queries):
  its latency, and whether every result (ids and distances) agrees exactly;
* changes: images added one per call and in batches of 1,000, then removed the same ways
  (images per second); search and memory again after them; one removal large enough to trigger
  the compaction of the dead slots (its seconds); after the changes and after the compaction,
  whether every result equals a fresh build over the images then held, bit for bit.

Times are per query, over the queries that have at least one word (a query whose classes all
lack a word has nothing to search). The last line printed is one JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from iwan.config import DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, settings
from iwan.datasets.usf import parse_paths
from iwan.network.graph import Associations, build_graph
from iwan.network.index import Hit, IwanIndex, Query
from iwan.network.reference import networkx_search
from iwan.tv import models
from iwan.vision.words import map_class_names

NEAR = 10  # places in the ImageNet category list that count as "near"
KS = (20, 250)
SINGLES = 1_000  # images added (then removed) one per call
BATCHES = 10  # batches of BATCH images added (then removed)
BATCH = 1_000


def usf_folder(given: Path | None) -> Path:
    if given is not None:
        return given
    for folder in (
        settings().data_dir / "usf-appendix-a",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "usf-appendix-a",
    ):
        if folder.is_dir():
            return folder
    sys.exit("no USF Appendix A folder found: pass --usf DIR (the Cue_Target_Pairs.* files)")


def sample_predictions(rng: np.random.Generator, n: int, n_classes: int, top_iwk: int):
    """(n, top_iwk) class ids ranked by probability, and their probabilities (see the module doc)."""
    n_near = top_iwk - 2
    if not 1 <= n_near <= 2 * NEAR:
        raise ValueError(f"--top-iwk {top_iwk}: the sampler draws 3 to {2 * NEAR + 2} classes")
    true = rng.integers(0, n_classes, n)
    offsets = np.r_[-NEAR:0, 1 : NEAR + 1]
    picked = offsets[np.argsort(rng.random((n, len(offsets))), axis=1)[:, :n_near]]
    near = true[:, None] + picked
    near = np.where((near < 0) | (near >= n_classes), true[:, None] - picked, near)
    unrelated = (true + NEAR + 1 + rng.integers(0, n_classes - 2 * NEAR - 1, n)) % n_classes
    classes = np.column_stack([true, near, unrelated])
    alpha = [5.0, 2.0] + [1.0] * (n_near - 1) + [1.0, 1.0]
    probabilities = rng.dirichlet(alpha, n)[:, :top_iwk]
    order = np.argsort(-probabilities, axis=1)
    return np.take_along_axis(classes, order, 1), np.take_along_axis(probabilities, order, 1)


def ms(seconds: list[float], percentile: float) -> float:
    return round(1e3 * float(np.percentile(seconds, percentile)), 4)


def same(a: list[list[Hit]], b: list[list[Hit]]) -> bool:
    """Whether two searches' results agree exactly: ids and distances, bit for bit."""
    return all([(h.image_id, h.distance) for h in x] == [(h.image_id, h.distance) for h in y] for x, y in zip(a, b))


def search_figures(index: IwanIndex, queries: list[Query], words: np.ndarray, weights: np.ndarray):
    """Latency and memory figures, and each k's results (search_one, checked against the batch)."""
    figures, results = {"images": index.ntotal, "bytes_per_image": round(index.nbytes / index.ntotal, 1)}, {}
    index.search_one(queries[0], 1)  # loads the compiled kernel
    for k in KS:
        hits, seconds, cpu_seconds = [], [], []
        for query in queries:
            started, cpu_started = time.perf_counter(), time.thread_time()
            hits.append(index.search_one(query, k))
            if query.word_ids:
                seconds.append(time.perf_counter() - started)
                cpu_seconds.append(time.thread_time() - cpu_started)
        started = time.perf_counter()
        scores, ids = index.search(words, weights, k)
        batch_ms = 1e3 * (time.perf_counter() - started) / len(queries)
        figures[f"k{k}"] = {
            "p50_ms": ms(seconds, 50),
            "p99_ms": ms(seconds, 99),
            "max_ms": ms(seconds, 100),
            "cpu_p50_ms": ms(cpu_seconds, 50),
            "cpu_p99_ms": ms(cpu_seconds, 99),
            "batch_ms_per_query": round(batch_ms, 4),
            "batch_agrees": all(
                ids[r, : len(h)].tolist() == [x.image_id for x in h]
                and (-scores[r, : len(h)]).tolist() == [x.distance for x in h]
                and (ids[r, len(h):] == -1).all()
                for r, h in enumerate(hits)
            ),
        }
        results[k] = hits
    return figures, results


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


class Sampled:
    """All sampled images, their ids (= row), and which the index holds now."""

    def __init__(self, associations, word_ids, probabilities, top_wwk):
        self.associations, self.top_wwk = associations, top_wwk
        self.word_ids, self.probabilities = word_ids, probabilities
        self.held = np.zeros(len(word_ids), dtype=bool)

    def fresh(self) -> tuple[IwanIndex, float]:
        """A fresh build over the images held, and its seconds."""
        started = time.perf_counter()
        ids = np.flatnonzero(self.held)
        graph = build_graph(self.associations, self.word_ids[ids], self.probabilities[ids], self.top_wwk, image_ids=ids)
        index = IwanIndex(graph)
        return index, time.perf_counter() - started


def run_size(n: int, args, associations, mapping, n_categories: int, queries, query_words, query_probabilities) -> dict:
    rng = np.random.default_rng(args.seed + n)
    extra = SINGLES + BATCHES * BATCH
    classes, probabilities = sample_predictions(rng, n + extra, n_categories, args.top_iwk)
    sampled = Sampled(associations, mapping.word_ids[classes], probabilities, args.top_wwk)
    sampled.held[:n] = True
    index, build_s = sampled.fresh()
    result = {"build_s": round(build_s, 3)}
    result["fresh"], fresh_hits = search_figures(index, queries, query_words, query_probabilities)

    if n <= args.reference_max:
        graph = index.to_graph()
        started = time.perf_counter()
        nx_graph = graph.to_networkx()
        nx_build_s = time.perf_counter() - started
        n_reference = min(args.reference_queries, len(queries))
        reference, seconds = [], []
        for query in queries[:n_reference]:
            started = time.perf_counter()
            reference.append(networkx_search(nx_graph, graph, query, KS[0]))
            if query.word_ids:
                seconds.append(time.perf_counter() - started)
        result["networkx"] = {
            "queries": n_reference,
            "k": KS[0],
            "graph_s": round(nx_build_s, 2),
            "p50_ms": ms(seconds, 50),
            "speedup_p50": round(ms(seconds, 50) / result["fresh"][f"k{KS[0]}"]["p50_ms"], 1),
            "identical": same(reference, fresh_hits[KS[0]][:n_reference]),
        }
        del nx_graph

    # Changes: ids n.. are the new images, in order.
    new = iter(range(n, n + extra))
    started = time.perf_counter()
    for _ in range(SINGLES):
        i = next(new)
        index.add(np.array([i]), sampled.word_ids[i : i + 1], sampled.probabilities[i : i + 1])
        sampled.held[i] = True
    add_single_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(BATCHES):
        ids = np.array([next(new) for _ in range(BATCH)])
        index.add(ids, sampled.word_ids[ids], sampled.probabilities[ids])
        sampled.held[ids] = True
    add_batch_s = time.perf_counter() - started

    gone = rng.permutation(np.flatnonzero(sampled.held))[: SINGLES + BATCHES * BATCH]
    started = time.perf_counter()
    for i in gone[:SINGLES]:
        index.remove(np.array([i]))
    remove_single_s = time.perf_counter() - started
    started = time.perf_counter()
    for batch in gone[SINGLES:].reshape(BATCHES, BATCH):
        index.remove(batch)
    remove_batch_s = time.perf_counter() - started
    sampled.held[gone] = False
    result["changes"] = {
        "added_one_per_call_per_s": per_second(SINGLES, add_single_s),
        "added_in_batches_of_1000_per_s": per_second(BATCHES * BATCH, add_batch_s),
        "removed_one_per_call_per_s": per_second(SINGLES, remove_single_s),
        "removed_in_batches_of_1000_per_s": per_second(BATCHES * BATCH, remove_batch_s),
    }
    result["after_changes"], live_hits = search_figures(index, queries, query_words, query_probabilities)
    fresh, fresh_s = sampled.fresh()
    result["after_changes"]["fresh_build_s"] = round(fresh_s, 3)
    result["after_changes"]["identical_to_fresh_build"] = all(
        same(live_hits[k], [fresh.search_one(q, k) for q in queries]) for k in KS
    )
    del fresh

    # One removal that brings the dead slots past a quarter of all slots: it compacts them.
    slots, dead = n + extra, len(gone)  # none compacted yet at sizes above 4 * 11,000
    count = min(max(1, slots // 4 - dead + 1), int(sampled.held.sum()) - 1)
    gone = rng.permutation(np.flatnonzero(sampled.held))[:count]
    started = time.perf_counter()
    index.remove(gone)
    compact_s = time.perf_counter() - started
    sampled.held[gone] = False
    figures, live_hits = search_figures(index, queries, query_words, query_probabilities)
    fresh, _ = sampled.fresh()
    result["after_compaction"] = {
        "removed": count,
        "remove_and_compact_s": round(compact_s, 3),
        "images": figures["images"],
        "bytes_per_image": figures["bytes_per_image"],
        "identical_to_fresh_build": all(same(live_hits[k], [fresh.search_one(q, k) for q in queries]) for k in KS),
    }
    return result


def report(n: int, r: dict) -> None:
    fresh, after = r["fresh"], r["after_changes"]
    print(f"\n{n} images: built and indexed in {r['build_s']:.2f} s; {fresh['bytes_per_image']} bytes per image")
    for k in KS:
        f = fresh[f"k{k}"]
        print(
            f"  k={k}: search_one p50 {f['p50_ms']:.3f} ms, p99 {f['p99_ms']:.3f} ms, max {f['max_ms']:.3f} ms "
            f"(CPU time p50 {f['cpu_p50_ms']:.3f} ms, p99 {f['cpu_p99_ms']:.3f} ms); "
            f"batch {f['batch_ms_per_query']:.3f} ms per query (agrees: {f['batch_agrees']})"
        )
    if "networkx" in r:
        x = r["networkx"]
        print(
            f"  networkx (k={x['k']}, {x['queries']} queries): p50 {x['p50_ms']:.1f} ms, "
            f"{x['speedup_p50']}x slower; identical results: {x['identical']}"
        )
    c = r["changes"]
    print(
        f"  changes: added {c['added_one_per_call_per_s']:.0f}/s one per call, "
        f"{c['added_in_batches_of_1000_per_s']:.0f}/s in batches of 1000; removed "
        f"{c['removed_one_per_call_per_s']:.0f}/s one per call, {c['removed_in_batches_of_1000_per_s']:.0f}/s in batches"
    )
    print(
        f"  after them ({after['images']} images, {after['bytes_per_image']} bytes per image): "
        + "; ".join(
            f"k={k} p50 {after[f'k{k}']['p50_ms']:.3f} ms, p99 {after[f'k{k}']['p99_ms']:.3f} ms "
            f"(CPU p99 {after[f'k{k}']['cpu_p99_ms']:.3f} ms)"
            for k in KS
        )
        + f"; identical to a fresh build ({after['fresh_build_s']:.2f} s): {after['identical_to_fresh_build']}"
    )
    a = r["after_compaction"]
    print(
        f"  removing {a['removed']} more compacts the dead slots: {a['remove_and_compact_s']:.3f} s; "
        f"{a['bytes_per_image']} bytes per image; identical to a fresh build: {a['identical_to_fresh_build']}"
    )


def memory_kib(field: str) -> int:
    """A /proc/self/status figure (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def streamed_build(n: int, args, associations, mapping, n_categories: int) -> dict:
    """IwanIndex.from_chunks over n sampled images made chunk by chunk (as a database cursor
    yields them, never all at once): seconds, the final index's bytes, and the peak memory the
    build added to the process (VmHWM, reset first, less the RSS before), against the index."""
    chunk = 1 << 17
    empty = np.zeros((0, args.top_iwk))
    words_only = build_graph(associations, empty.astype(np.int64), empty, args.top_wwk)

    def chunks():
        for start in range(0, n, chunk):
            rng = np.random.default_rng((args.seed, start))
            classes, probabilities = sample_predictions(rng, min(chunk, n - start), n_categories, args.top_iwk)
            yield np.arange(start, start + len(classes), dtype=np.int64), mapping.word_ids[classes], probabilities

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    before = memory_kib("VmRSS")
    started = time.perf_counter()
    index = IwanIndex.from_chunks(words_only, chunks(), width=args.top_iwk, total=n)
    seconds = time.perf_counter() - started
    added = 1024 * (memory_kib("VmHWM") - before)
    return {"images": n, "build_s": seconds, "index_bytes": index.nbytes, "bytes_per_image": index.nbytes / n,
            "peak_added_bytes": added, "peak_over_index": added / index.nbytes}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,1000000", help="corpus sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--reference-queries", type=int, default=100, help="queries also run through networkx")
    parser.add_argument("--reference-max", type=int, default=50_000, help="largest size networkx runs at")
    parser.add_argument("--top-iwk", type=int, default=DEFAULT_TOP_IWK)
    parser.add_argument("--top-wwk", type=int, default=DEFAULT_TOP_WWK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--usf", type=Path, default=None, help="folder of Cue_Target_Pairs.* files")
    parser.add_argument("--streamed", type=int, default=0, metavar="N",
                        help="only the streamed build of N images and its peak memory (run it in a fresh process)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = parse_paths([usf_folder(args.usf)])
    associations = Associations.from_rows((r.cue, r.target, r.fsg, r.bsg) for r in rows)
    categories = models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    mapping = map_class_names(categories, associations.words)
    print(f"USF norms: {len(rows)} rows, {len(associations.words)} words")
    print(mapping.report(examples=5))

    if args.streamed:
        streamed = streamed_build(args.streamed, args, associations, mapping, len(categories))
        print(f"streamed build of {streamed['images']:,} images: {streamed['build_s']:.1f} s, index "
              f"{streamed['bytes_per_image']:.1f} B/image, peak added {streamed['peak_over_index']:.2f}x the index")
        result = {"streamed": streamed}
        print(json.dumps(result))
        return result

    rng = np.random.default_rng(args.seed)
    query_classes, query_probabilities = sample_predictions(rng, args.queries, len(categories), args.top_iwk)
    query_words = mapping.word_ids[query_classes]
    queries = [Query.from_weights(w, p) for w, p in zip(query_words, query_probabilities)]

    result = {
        "queries": args.queries,
        "queries_without_words": sum(not q.word_ids for q in queries),
        "top_iwk": args.top_iwk,
        "top_wwk": args.top_wwk,
        "seed": args.seed,
        "sizes": {},
    }
    for n in sizes:
        result["sizes"][str(n)] = run_size(
            n, args, associations, mapping, len(categories), queries, query_words, query_probabilities
        )
        report(n, result["sizes"][str(n)])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
