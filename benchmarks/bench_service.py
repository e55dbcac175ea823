"""The HTTP service's speed, measured over loopback against a real `iwan serve` process.

Starts `iwan serve` on a free 127.0.0.1 port over a collection of the IWAN_HOME in force (the
50,000-image CIFAR-10 collection of the main job), then measures: time from start to ready;
image query (upload of a 32x32 JPEG) p50/p99 per method; text query p50/p99; throughput with 1, 4
and 16 concurrent clients; errors; the server's resident memory; and, in the same run, the same
image query through `iwan search --image` as a whole process (the reference). Every count is
bounded; the last line is JSON.

    IWAN_HOME=... python benchmarks/bench_service.py [--collection cifar10-train] [--cli-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from served import iwan_serve

REPO = Path(__file__).resolve().parent.parent
WORDS = ("cat", "dog", "car", "truck", "ship", "airplane", "horse", "bird", "frog", "deer", "cat:0.7,dog:0.3")
GOALS = {"fused_image_p50_ms": 25.0, "text_p50_ms": 3.0, "image_qps_16": 60.0, "text_qps_16": 1000.0,
         "ready_s": 10.0, "cli_ratio": 50.0}


def query_images(n: int) -> list[bytes]:
    """32x32 JPEGs: CIFAR-10 test images when the shared data is there, else generated ones."""
    sys.path.insert(0, str(REPO))
    from iwan.config import settings

    every = sorted((settings().data_dir / "cifar10-jpg" / "test").glob("*/*.jpg"))
    files = every[:: max(1, len(every) // n)][:n]
    if files:
        return [f.read_bytes() for f in files]
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(ms)}


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.errors: list[str] = []

    def record(self, response: httpx.Response | None, error: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            if error or response is None or response.status_code != 200:
                self.errors.append(error or f"{response.status_code}: {response.text[:200]}")


def image_request(client, url, collection, data, method):
    return client.post(f"{url}/v1/collections/{collection}/search", params={"method": method, "k": 20},
                       files={"image": ("q.jpg", data, "image/jpeg")})


def text_request(client, url, collection, text, method):
    return client.post(f"{url}/v1/collections/{collection}/search", json={"text": text, "method": method, "k": 20})


def timed(send, counter: Counter) -> float:
    start = time.perf_counter()
    try:
        response = send()
        counter.record(response)
    except httpx.HTTPError as err:
        counter.record(None, f"{type(err).__name__}: {err}")
    return time.perf_counter() - start


def latencies(url, collection, make, payloads, n, counter) -> list[float]:
    with httpx.Client(timeout=60) as client:
        for payload in payloads[:5]:  # warm-up, not counted
            make(client, url, collection, payload)
        return [timed(partial(make, client, url, collection, payloads[i % len(payloads)]), counter) for i in range(n)]


def throughput(url, collection, make, payloads, clients: int, total: int, counter) -> float:
    """Requests per second with `clients` concurrent keep-alive clients sending `total` in all."""
    per_client = total // clients
    barrier = threading.Barrier(clients + 1)

    def run(offset):
        with httpx.Client(timeout=120) as client:
            make(client, url, collection, payloads[offset % len(payloads)])
            barrier.wait()
            for i in range(per_client):
                timed(partial(make, client, url, collection, payloads[(offset + i) % len(payloads)]), counter)

    threads = [threading.Thread(target=run, args=(c * 7,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return per_client * clients / (time.perf_counter() - start)


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cli_reference(image: bytes, runs: int) -> dict:
    """`iwan search --image` as a user runs it: a whole process per query (the saved IWAN index)."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(image)
        f.flush()
        seconds, failure = [], None
        for _ in range(runs):
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "iwan", "search", "--image", f.name, "--k", "20", "--json"],
                                 check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if run.returncode != 0:
                failure = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
                break
    if not seconds:
        return {"median_s": None, "runs": 0, "error": "not run (--cli-runs 0)"}
    return {"median_s": None if failure else round(statistics.median(seconds), 3), "runs": len(seconds), "error": failure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="collection to serve (default: the largest)")
    parser.add_argument("--latency-requests", type=int, default=300, help="sequential requests per latency figure")
    parser.add_argument("--text-total", type=int, default=2400, help="text requests per throughput level")
    parser.add_argument("--image-total", type=int, default=480, help="image requests per throughput level")
    parser.add_argument("--cli-runs", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from iwan.collections.live import list_collections
    from iwan.db.engine import make_engine

    engine = make_engine()
    collections = sorted(list_collections(engine), key=lambda c: -c.size)
    engine.dispose()
    if not collections:
        sys.exit("bench_service: IWAN_HOME holds no collection; create one (iwan collection create) first")
    info = next((c for c in collections if c.name == args.collection), None) if args.collection else collections[0]
    if info is None:
        sys.exit(f"bench_service: no collection {args.collection!r}; there are {', '.join(c.name for c in collections)}")
    name = info.name

    with iwan_serve(name, "bench_service") as (server, url, ready_s):
        print(f"ready in {ready_s:.2f} s: {name} ({info.size:,} images; methods {', '.join(info.methods)})", file=sys.stderr)

        images = query_images(200)
        counter = Counter()
        image_latency = {}
        for method in info.methods:
            image_latency[method] = percentiles(latencies(url, name, lambda c, u, n, d, m=method: image_request(c, u, n, d, m),
                                                          images, args.latency_requests, counter))
            print(f"image query, {method}: {image_latency[method]}", file=sys.stderr)
        text_method = "iwan"
        text_latency = percentiles(latencies(url, name, lambda c, u, n, t: text_request(c, u, n, t, text_method),
                                             list(WORDS), args.latency_requests * 3, counter))
        print(f"text query: {text_latency}", file=sys.stderr)

        default = "fused" if "fused" in info.methods else "iwan"
        qps = {}
        for clients in (1, 4, 16):
            qps[f"image_{clients}"] = round(throughput(url, name, lambda c, u, n, d: image_request(c, u, n, d, default),
                                                       images, clients, args.image_total, counter), 1)
            qps[f"text_{clients}"] = round(throughput(url, name, lambda c, u, n, t: text_request(c, u, n, t, text_method),
                                                      list(WORDS), clients, args.text_total, counter), 1)
            print(f"{clients} clients: image {qps[f'image_{clients}']}/s, text {qps[f'text_{clients}']}/s", file=sys.stderr)
        rss = resident_mib(server.pid)

    cli = cli_reference(images[0], args.cli_runs)
    print(f"reference, iwan search --image as a process: {cli}", file=sys.stderr)
    fused_p50 = image_latency.get("fused", image_latency["iwan"])["p50_ms"]
    iwan_p50 = image_latency["iwan"]["p50_ms"]
    result = {
        "benchmark": "service",
        "collection": name,
        "images": info.size,
        "ready_s": round(ready_s, 2),
        "image_query": image_latency,
        "text_query": text_latency,
        "throughput_qps": qps,
        "requests": counter.requests,
        "errors": len(counter.errors),
        "first_errors": counter.errors[:3],
        "server_rss_mib": rss,
        "cli_reference": cli,
        "cli_ratio_iwan": None if cli["median_s"] is None else round(cli["median_s"] * 1e3 / iwan_p50, 1),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    result["goals_met"] = {
        "fused_image_p50_ms<=25": fused_p50 <= GOALS["fused_image_p50_ms"],
        "text_p50_ms<=3": text_latency["p50_ms"] <= GOALS["text_p50_ms"],
        "image_qps_16>=60": qps["image_16"] >= GOALS["image_qps_16"],
        "text_qps_16>=1000": qps["text_16"] >= GOALS["text_qps_16"],
        "zero_errors": not counter.errors,
        "requests>=10000": counter.requests >= 10_000,
        "ready_s<=10": ready_s <= GOALS["ready_s"],
        "cli_ratio>=50": result["cli_ratio_iwan"] is not None and result["cli_ratio_iwan"] >= GOALS["cli_ratio"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
