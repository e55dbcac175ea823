"""Every method's answers to seeded queries of examples, written out to compare two versions of the code.

On a live collection of the IWAN_HOME in force (default `cifar10`), each method answers the same
seeded search requests through the one search pipeline (`iwan.collections.pipeline.search`):
1 to 8 stored positives, some with stored negatives, texts (the word methods), label filters,
cut-offs, offsets and near-duplicate collapsing, k from 1 to 60. The answers (ids, scores,
explanations, query words, `passed`) go to `--out` as JSON (floats written exactly); with
`--compare FILE` (another run's `--out`) the script says which answers differ and exits 1 if any
does. A speed-up that must not change results is checked so: run it on the code before, then
on the code after with `--compare`.

    IWAN_HOME=/path/to/home python benchmarks/answers_examples.py --out before.json
    IWAN_HOME=/path/to/home python benchmarks/answers_examples.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEXTS = ("cat:0.8,dog:0.2", "ship, truck", "horse:0.5,deer:0.4,frog:0.1", "airplane")


def requests(live, rng: np.random.Generator, n: int) -> list[dict]:
    """n seeded request specs (plain values, so that they are written with the answers)."""
    from iwan.retrieval.protocol import WORD_FIELDS

    ids = np.asarray(live.image_ids)
    labels = [label for label, _ in live.label_counts()]
    word_methods = [m for m in live.methods if set(live.retrievers[m].reads) <= set(WORD_FIELDS)]
    specs = []
    for q in range(n):
        method = live.methods[q % len(live.methods)]
        n_positive = int(rng.choice([1, 1, 2, 3, 5, 5, 8]))
        spec: dict = {"method": method, "k": int(rng.choice([1, 5, 20, 20, 40, 60])),
                      "positive": [{"image_id": int(i)} for i in rng.choice(ids, size=n_positive, replace=False)]}
        if method in word_methods and rng.random() < 0.2:
            spec["positive"][0] = {"text": str(rng.choice(TEXTS))}
        if rng.random() < 0.3:
            spec["negative"] = [{"image_id": int(i)} for i in rng.choice(ids, size=int(rng.integers(1, 4)), replace=False)]
        if rng.random() < 0.15:
            spec["labels"] = [str(x) for x in rng.choice(labels, size=int(rng.integers(1, 3)), replace=False)]
        elif rng.random() < 0.1:
            spec["exclude_labels"] = [str(rng.choice(labels))]
        if rng.random() < 0.1:
            spec["offset"] = int(rng.integers(1, 10))
        if rng.random() < 0.1 and live.hash_model:
            spec["collapse_duplicates"] = True
        specs.append(spec)
    return specs


def answer(live, spec: dict) -> dict:
    from iwan.collections.pipeline import Example, SearchRequest, search

    fields = {key: value for key, value in spec.items() if key not in ("positive", "negative")}
    request = SearchRequest(positive=[Example(**e) for e in spec["positive"]],
                            negative=[Example(**e) for e in spec.get("negative", [])], **fields)
    document = search(live, request).as_dict()
    document.pop("timing_ms")
    return {"request": spec, "answer": document}


def main() -> None:
    from iwan.collections.live import LiveCollection
    from iwan.db.engine import make_engine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", default="cifar10")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="another run's --out: exit 1 if any answer differs")
    args = parser.parse_args()

    with LiveCollection.open(make_engine(), args.collection, follow=False) as live:
        answers = [answer(live, spec) for spec in requests(live, np.random.default_rng(args.seed), args.queries)]
    # repr-exact floats; -inf and None as JSON allows them (allow_nan is json's default)
    args.out.write_text(json.dumps(answers, sort_keys=True) + "\n")
    hits = sum(len(a["answer"]["results"]) for a in answers)
    print(f"{len(answers)} answers ({hits} results) written to {args.out}")
    if args.compare is None:
        return
    before = json.loads(args.compare.read_text())
    if [a["request"] for a in before] != [a["request"] for a in answers]:
        sys.exit(f"{args.compare} answers other requests (another collection or seed): nothing compared")
    differ = [q for q, (old, new) in enumerate(zip(before, json.loads(json.dumps(answers)))) if old != new]
    for q in differ[:10]:
        print(f"answer {q} differs: {json.dumps(answers[q]['request'])}")
    print(json.dumps({"compared": len(answers), "results": hits, "differ": len(differ)}))
    if differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
