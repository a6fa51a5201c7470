"""Prometheus metrics, rendered in the text exposition format (no client library needed)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Callable, Optional

from ml_runtime.shared_cache import SharedCache

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, model: str, version: int, shared_cache: Optional[SharedCache] = None) -> None:
        self.labels = f'model="{model}",version="{version}"'
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.bucket_counts: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.worker_restarts = 0
        self.abandoned_requests = 0  # dropped from the queue: their clients had gone
        self.batch_calls = 0  # model calls of batchable endpoints
        self.batched_requests = 0  # the requests those calls answered
        self.gauges: dict[str, Callable[[], float]] = {}
        self.shared_cache = shared_cache  # the workers' store: its counters live in its directory

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        if status >= 400:
            self.errors[(route, "client" if status < 500 else "server")] += 1
        counts = self.bucket_counts.get(route)
        if counts is None:
            counts = self.bucket_counts[route] = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[route] += seconds
        self.latency_count[route] += 1

    def render(self) -> bytes:
        lines = [
            "# HELP ml_requests_total Requests answered, by route, method and status.",
            "# TYPE ml_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            lines.append(f'ml_requests_total{{{self.labels},route="{route}",method="{method}",status="{status}"}} {n}')
        lines += ["# HELP ml_request_errors_total Requests answered with an error, by route and kind.",
                  "# TYPE ml_request_errors_total counter"]
        for (route, kind), n in sorted(self.errors.items()):
            lines.append(f'ml_request_errors_total{{{self.labels},route="{route}",kind="{kind}"}} {n}')
        lines += ["# HELP ml_request_duration_seconds Request latency, by route.",
                  "# TYPE ml_request_duration_seconds histogram"]
        for route, counts in sorted(self.bucket_counts.items()):
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'ml_request_duration_seconds_bucket{{{self.labels},route="{route}",le="{le}"}} {cumulative}')
            lines.append(f'ml_request_duration_seconds_sum{{{self.labels},route="{route}"}} {self.latency_sum[route]}')
            lines.append(f'ml_request_duration_seconds_count{{{self.labels},route="{route}"}} {self.latency_count[route]}')
        lines += [
            "# HELP ml_requests_in_flight Requests being processed.",
            "# TYPE ml_requests_in_flight gauge",
            f"ml_requests_in_flight{{{self.labels}}} {self.in_flight}",
            "# HELP ml_worker_restarts_total Model worker processes replaced after dying or timing out.",
            "# TYPE ml_worker_restarts_total counter",
            f"ml_worker_restarts_total{{{self.labels}}} {self.worker_restarts}",
            "# HELP ml_abandoned_requests_total Requests dropped before a worker ran them: their client had disconnected.",
            "# TYPE ml_abandoned_requests_total counter",
            f"ml_abandoned_requests_total{{{self.labels}}} {self.abandoned_requests}",
            "# HELP ml_batch_calls_total Model calls of batchable endpoints (each answers one batch).",
            "# TYPE ml_batch_calls_total counter",
            f"ml_batch_calls_total{{{self.labels}}} {self.batch_calls}",
            "# HELP ml_batched_requests_total Requests answered by those calls (over calls: the mean batch size).",
            "# TYPE ml_batched_requests_total counter",
            f"ml_batched_requests_total{{{self.labels}}} {self.batched_requests}",
        ]
        if self.shared_cache is not None:
            stats = self.shared_cache.stats()
            for name, kind, value, text in (
                ("hits_total", "counter", stats.hits, "Shared-cache lookups that found their entry (any worker's)."),
                ("misses_total", "counter", stats.misses, "Shared-cache lookups that did not (then made once)."),
                ("evictions_total", "counter", stats.evictions, "Entries evicted, least recently used first."),
                ("entries", "gauge", stats.entries, "Entries held now."),
                ("bytes", "gauge", stats.bytes, "Bytes held now."),
                ("max_bytes", "gauge", self.shared_cache.max_bytes, "The bound (ML_SHARED_CACHE_BYTES)."),
            ):
                lines += [f"# HELP ml_shared_cache_{name} {text}", f"# TYPE ml_shared_cache_{name} {kind}",
                          f"ml_shared_cache_{name}{{{self.labels}}} {value}"]
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name}{{{self.labels}}} {read()}"]
        return ("\n".join(lines) + "\n").encode()
