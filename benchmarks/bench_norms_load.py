"""Time `load_norms` on the real USF Appendix A files into the embedded PostgreSQL.

Usage: python benchmarks/bench_norms_load.py [PATH] [--repeat N]
The last line is one JSON object; `ratio` compares the median load to the parse alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from iwan.config import settings
from iwan.datasets.usf import parse_paths
from iwan.db import migrate
from iwan.db.engine import make_engine
from iwan.db.norms import load_norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=settings().data_dir / "usf-appendix-a")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        # As root the embedded server runs as another user, who must pass through this folder.
        os.chmod(home, 0o711)
        os.environ["IWAN_HOME"] = home
        engine = make_engine()
        migrate.upgrade(engine)
        parse_times, load_times = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            rows = parse_paths([args.path])
            parse_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            summary = load_norms(engine, [args.path])
            load_times.append(time.perf_counter() - started)
        engine.dispose()
    result = {
        "pairs": summary.pairs,
        "rows_parsed": len(rows),
        "load_median_s": round(statistics.median(load_times), 3),
        "load_max_s": round(max(load_times), 3),
        "parse_median_s": round(statistics.median(parse_times), 3),
        "ratio_load_to_parse": round(statistics.median(load_times) / statistics.median(parse_times), 2),
        "target_s": 5.0,
    }
    print(f"load {result['pairs']:,} pairs: median {result['load_median_s']} s (max {result['load_max_s']} s), parse alone {result['parse_median_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
