"""The API's /metrics through `prometheus_client`: one registry per server, standard exposition.

What it exports, and why each is there:
- `pinrec_serve_requests_total{route,status}` and the histogram
  `pinrec_serve_request_duration_seconds{route}`: labelled by the route *template*
  (`/v1/recommendations/{user_id}`), never by the raw path a client sent (one series per user).
- `pinrec_serve_latency_ms{route,quantile}`: the p50/p99 summary that dashboards and
  `pinrec bench serve` read before the histogram existed, now estimated from the histogram's
  buckets the way PromQL's `histogram_quantile` does (no latency list is kept).
- `pinrec_serve_regenerate_ms{part,quantile}`: the regenerator's own recent timings.
- the served log's counters (serving/served_log.py renders them as text; parsed back here).
- process metrics (CPU, memory, open files) and Python GC / platform metrics.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, GCCollector,
                               Histogram, PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from serving.served_log import metrics_text as served_log_text

if TYPE_CHECKING:
    from serving.service import RecommendationService

# Seconds; dense between 0.5 and 50 ms, where the p99 bars (5 ms precomputed, 50 ms with
# regeneration) sit, so the estimated quantiles are within a bucket of the truth there.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
                   0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUANTILES = (("0.50", 0.50), ("0.99", 0.99))  # label text kept as the old summary wrote it


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """q-quantile from cumulative (upper bound, count) buckets ending with +Inf, interpolated
    linearly inside the bucket that holds it (PromQL `histogram_quantile`); 0 when empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):  # beyond the last finite bound: report that bound
                return lower
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, cumulative
    return lower


def histogram_buckets(hist: Histogram) -> dict[tuple, list[tuple[float, float]]]:
    """{labels without `le`: [(upper bound, cumulative count), ...]} of a labelled histogram."""
    out: dict[tuple, list[tuple[float, float]]] = {}
    for family in hist.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                out.setdefault(key, []).append((float(s.labels["le"]), s.value))
    return out


class ServiceCollector:
    """Read at scrape time: the latency summary (from the histogram), regeneration timings and
    the served log, so nothing on the request path does more than one `observe`."""

    def __init__(self, service: "RecommendationService", latency: Histogram):
        self.service, self.latency = service, latency

    def collect(self):
        summary = Metric("pinrec_serve_latency_ms", "request latency quantiles in ms, estimated "
                         "from pinrec_serve_request_duration_seconds", "summary")
        for labels, buckets in sorted(histogram_buckets(self.latency).items()):
            for text, q in QUANTILES:
                summary.add_sample("pinrec_serve_latency_ms", {**dict(labels), "quantile": text},
                                   round(bucket_quantile(q, buckets) * 1e3, 3))
        yield summary
        regen = self.regeneration()
        if regen is not None:
            yield regen
        yield from text_string_to_metric_families(served_log_text(self.service.served_log))

    def regeneration(self) -> Metric | None:
        r = self.service.regenerator
        if r is None:
            return None
        m = Metric("pinrec_serve_regenerate_ms", "regeneration time in ms over the recent window: "
                   "compute, wait for a free slot, and the model call inside the worker", "summary")
        parts = [("compute", list(r.compute_ms)), ("wait", list(r.wait_ms))]
        if hasattr(r, "worker_ms"):  # worker processes: the model call alone, without the pipe
            parts.append(("worker", list(r.worker_ms)))
        for part, values in parts:
            for text, q in QUANTILES:
                value = float(np.percentile(values, q * 100)) if values else 0.0
                m.add_sample("pinrec_serve_regenerate_ms", {"part": part, "quantile": text},
                             round(value, 3))
            m.add_sample("pinrec_serve_regenerate_ms_count", {"part": part}, len(values))
        return m


class ApiMetrics:
    """The registry one API server exports. Its own registry, not the process-wide default, so
    two servers in one process (tests) never share or clash."""

    def __init__(self, service: "RecommendationService"):
        self.registry = CollectorRegistry()
        self.requests = Counter("pinrec_serve_requests", "requests by route template and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("pinrec_serve_request_duration_seconds",
                                 "time in the handler by route template", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ServiceCollector(service, self.latency))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, Content-Type) of GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
