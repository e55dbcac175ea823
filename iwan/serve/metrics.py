"""Prometheus metrics: requests and latency per endpoint and method, collection sizes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so that several apps (tests, replicas in one process) do not collide."""

    def __init__(self, sizes: Callable[[], Mapping[str, int]]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "iwan_http_requests", "HTTP requests answered", ("endpoint", "method", "status"), registry=self.registry
        )
        self.latency = Histogram(
            "iwan_http_request_duration_seconds", "Time to answer an HTTP request", ("endpoint", "method"),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.searches = Histogram(
            "iwan_search_duration_seconds", "Time in the retriever per search", ("collection", "method"),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_Sizes(sizes))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Sizes:
    def __init__(self, sizes: Callable[[], Mapping[str, int]]):
        self.sizes = sizes

    def collect(self):
        family = GaugeMetricFamily("iwan_collection_images", "Images in each served collection", labels=("collection",))
        for name, size in self.sizes().items():
            family.add_metric((name,), size)
        yield family


class MetricsMiddleware:
    """ASGI middleware counting every answer by route template (not raw path: ids would explode it)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint, scope["method"]).observe(time.perf_counter() - start)
