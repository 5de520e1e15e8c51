"""What the server counts, in Prometheus' text format at ``GET /metrics``.

Each app has its own registry, so two servers in one process never share numbers. With several
worker processes (``serve.workers``) prometheus_client writes every value to a file under
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums the live workers' files: any worker answers for all.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# seconds, from a cached answer on loopback to a large request queued behind full batches
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """The server's counters, histograms and gauges, named ``workbench_serve_*``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "workbench_serve_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "workbench_serve_errors",
            "requests answered 4xx or 5xx, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "workbench_serve_request_seconds",
            "time from the request's arrival to its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "workbench_serve_batch_rows", "rows per backend call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "workbench_serve_batch_requests", "requests merged into one backend call", buckets=BATCH_BUCKETS, registry=r
        )
        self.rows = Counter("workbench_serve_rows", "rows predicted", registry=r)
        self.queue_rows = Gauge(
            "workbench_serve_queue_rows", "rows waiting for a backend call", registry=r, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "workbench_serve_inflight_requests",
            "prediction requests admitted and not yet answered (serve.max_queue bounds it)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "workbench_serve_model_info",
            "1 for the run being served (its id, or the model's path when not a run's), 0 for one served before",
            ["run"],
            registry=r,
            multiprocess_mode="livemax",  # workers following an alias may serve two runs for a moment
        )
        self.reloads = Counter(
            "workbench_serve_reloads",
            "models loaded because the alias in serve.model moved, by outcome: ok (swapped in) or failed (kept the old)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        self.rejected = Counter(
            "workbench_serve_rejected", "prediction requests refused with 429 because the queue was full", registry=r
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text a Prometheus scrape reads, and its Content-Type."""
        folder = os.environ.get(MULTIPROCESS_DIR)
        if folder:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
