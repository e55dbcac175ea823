"""Search latency with 5 positive examples against 1, per method (issue 17's goal: at most 2x).

On a live collection of the IWAN_HOME in force (default `cifar10`), every method the collection
has answers the same seeded queries through the one search pipeline
(`iwan.collections.pipeline.search`, as `iwan serve` answers them): a query of one stored image,
and a query of that image and 4 other stored images. Stored image ids as examples leave out the
models' passes over uploads (not part of the goal); each query's examples are left out of its
results, as a search request's are. The two kinds alternate query by query, so a change in the
machine's load reaches both alike. Figures: median and p95 of the whole pipeline call (ms), the
median of its search step alone, and the ratio of the medians.

    IWAN_HOME=/path/to/home python benchmarks/bench_examples.py [--collection cifar10] [--queries 300]

The last line is one JSON object; `load_average` is the machine's at the start and the end
(the CPUs may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL = 2.0


def main() -> None:
    from iwan.collections.live import LiveCollection
    from iwan.collections.pipeline import Example, SearchRequest, search
    from iwan.db.engine import make_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", default="cifar10")
    parser.add_argument("--queries", type=int, default=300, help="queries per method and kind")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--examples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_start = os.getloadavg()
    with LiveCollection.open(make_engine(), args.collection, follow=False) as live:
        ids = np.asarray(live.image_ids)
        rng = np.random.default_rng(args.seed)
        sets = [rng.choice(ids, size=args.examples, replace=False).tolist() for _ in range(args.queries)]
        figures: dict[str, dict] = {}
        for method in live.methods:
            requests = {
                1: [SearchRequest(positive=[Example(image_id=s[0])], method=method, k=args.k) for s in sets],
                args.examples: [SearchRequest(positive=[Example(image_id=i) for i in s], method=method, k=args.k)
                                for s in sets],
            }
            for n in requests:  # warm: the first searches compile and fill caches
                for request in requests[n][:5]:
                    search(live, request)
            total: dict[int, list[float]] = {n: [] for n in requests}
            searched: dict[int, list[float]] = {n: [] for n in requests}
            for q in range(args.queries):
                for n in requests:
                    began = time.perf_counter()
                    answer = search(live, requests[n][q])
                    total[n].append(1000 * (time.perf_counter() - began))
                    searched[n].append(answer.timing_ms["search"])
            row = {}
            for n in requests:
                row[f"{n}_examples"] = {"median_ms": round(float(np.median(total[n])), 3),
                                        "p95_ms": round(float(np.percentile(total[n], 95)), 3),
                                        "search_median_ms": round(float(np.median(searched[n])), 3)}
            ratio = row[f"{args.examples}_examples"]["median_ms"] / row["1_examples"]["median_ms"]
            row["ratio"] = round(ratio, 2)
            row["goal_met"] = ratio <= GOAL
            figures[method] = row
            print(f"{method:<12} 1 example {row['1_examples']['median_ms']:.3f} ms, {args.examples} examples "
                  f"{row[f'{args.examples}_examples']['median_ms']:.3f} ms (median): {ratio:.2f}x", flush=True)
    print(json.dumps({
        "collection": args.collection, "images": len(ids), "k": args.k, "queries": args.queries,
        "examples": args.examples, "goal_ratio": GOAL, "methods": figures,
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
    }))


if __name__ == "__main__":
    main()
