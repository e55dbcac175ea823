"""The service under a burst of the costliest uploads: memory, answers, and a text search meanwhile.

Starts `iwan serve` on a free 127.0.0.1 port over a collection of the IWAN_HOME in force, warms it
with one image and one text search, measures the resident memory of the server's process tree
(the server and its children) at rest, then sends `--uploads` concurrent image searches, each a
small file holding close to the pixel limit in the format and mode that costs most to decode
(tests/hostile_images.py), while one client sends a text search every 200 ms. Reports the idle
and peak resident memory, the rise, each answer's status and time, and the text searches'
latencies, against the goals of issue 16: a rise of at most 1 GiB, every answer (200, 413 or 503)
within 60 s, at least a quarter of them 200, text searches within 1 s. The last line is JSON.

    IWAN_HOME=... python benchmarks/bench_abuse.py [--collection NAME] [--uploads 32]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from served import iwan_serve

REPO = Path(__file__).resolve().parent.parent
GOALS = {"rise_mib": 1024.0, "answer_max_s": 60.0, "ok_share": 0.25, "text_max_ms": 1000.0}


def tree_rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process and each of its descendants, by "name pid"."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            found[f"{process.name()} {process.pid}"] = process.memory_info().rss
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="collection to serve (default: the smallest)")
    parser.add_argument("--uploads", type=int, default=32, help="concurrent hostile image searches")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from hostile_images import worst_images

    from iwan.collections.live import list_collections
    from iwan.config import settings
    from iwan.db.engine import make_engine

    configured = settings()
    engine = make_engine(settings=configured)
    found = sorted(list_collections(engine), key=lambda c: c.size)
    engine.dispose()
    if not found:
        sys.exit("bench_abuse: IWAN_HOME holds no collection; create one (iwan collection create) first")
    info = next((c for c in found if c.name == args.collection), None) if args.collection else found[0]
    if info is None:
        sys.exit(f"bench_abuse: no collection {args.collection!r}; there are {', '.join(c.name for c in found)}")
    images = list(worst_images(configured.max_image_pixels).items())

    with iwan_serve(info.name, "bench_abuse") as (server, url, _):
        search = f"{url}/v1/collections/{info.name}/search"
        with httpx.Client(timeout=120) as client:  # warm: the models load on the first image query
            from livedata import png

            assert client.post(search, files={"image": ("warm.png", png(0, 64), "image/png")}).status_code == 200
            client.post(search, json={"text": "cat"})
        time.sleep(1)
        idle_tree = tree_rss(server.pid)
        idle = sum(idle_tree.values())

        samples: list[dict[str, int]] = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                samples.append(tree_rss(server.pid))
                time.sleep(0.05)

        text_ms: list[float] = []

        def text_searches():
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    client.post(search, json={"text": "dog"})
                    text_ms.append((time.perf_counter() - start) * 1e3)
                    time.sleep(0.2)

        answers: list[tuple[str, int | str, float]] = []
        barrier = threading.Barrier(args.uploads)

        def upload(i: int):
            name, data = images[i % len(images)]
            with httpx.Client(timeout=120) as client:
                barrier.wait()
                start = time.perf_counter()
                try:
                    status: int | str = client.post(search, files={"image": (name, data, "application/octet-stream")}).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                answers.append((name, status, time.perf_counter() - start))

        helpers = [threading.Thread(target=sample, daemon=True), threading.Thread(target=text_searches, daemon=True)]
        for thread in helpers:
            thread.start()
        uploads = [threading.Thread(target=upload, args=(i,)) for i in range(args.uploads)]
        started = time.perf_counter()
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join()
        burst_s = time.perf_counter() - started
        time.sleep(1)
        settled = sum(tree_rss(server.pid).values())
        done.set()
        for thread in helpers:
            thread.join()

    statuses = collections.Counter(str(status) for _, status, _ in answers)
    seconds = np.array([s for _, _, s in answers])
    peak_tree = max(samples + [idle_tree], key=lambda tree: sum(tree.values()))
    peak = sum(peak_tree.values())
    mib = 1 << 20
    result = {
        "collection": info.name, "uploads": args.uploads, "budget_mib": configured.decode_memory // mib,
        "max_image_pixels": configured.max_image_pixels,
        "idle_rss_mib": round(idle / mib, 1), "peak_rss_mib": round(peak / mib, 1),
        "rise_mib": round((peak - idle) / mib, 1), "after_rss_mib": round(settled / mib, 1),
        "processes_mib": {"idle": {k: round(v / mib, 1) for k, v in idle_tree.items()},
                          "peak": {k: round(v / mib, 1) for k, v in peak_tree.items()}},
        "statuses": dict(statuses), "burst_s": round(burst_s, 2),
        "answer_s": {"p50": round(float(np.percentile(seconds, 50)), 2), "max": round(float(seconds.max()), 2)},
        "by_image": {name: {str(s): sum(1 for n, st, _ in answers if n == name and st == s)
                            for s in sorted({st for n, st, _ in answers if n == name}, key=str)}
                     for name, _ in images},
        "text_ms": {"p50": round(float(np.percentile(text_ms, 50)), 1), "max": round(float(max(text_ms)), 1),
                    "n": len(text_ms)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    ok_share = statuses.get("200", 0) / max(1, len(answers))
    answered = all(str(status) in ("200", "413", "503") for _, status, _ in answers)
    result["goals"] = {
        "rise_mib": {"goal": GOALS["rise_mib"], "met": result["rise_mib"] <= GOALS["rise_mib"]},
        "answer_max_s": {"goal": GOALS["answer_max_s"], "met": answered and result["answer_s"]["max"] <= GOALS["answer_max_s"]},
        "ok_share": {"goal": GOALS["ok_share"], "value": round(ok_share, 3), "met": ok_share >= GOALS["ok_share"]},
        "text_max_ms": {"goal": GOALS["text_max_ms"], "met": result["text_ms"]["max"] <= GOALS["text_max_ms"]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
