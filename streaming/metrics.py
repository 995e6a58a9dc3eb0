"""Speed-layer metrics: counters, commit latency, visibility lag, exported with `prometheus_client`.

`serve_metrics` exposes a registry at `/metrics` on 127.0.0.1 (prometheus_client's own server,
in a daemon thread) holding the given collectors plus the process metrics (CPU, memory, open
files). The counters live in `ConsumerMetrics`, mutated by the consumer thread alone and read at
scrape time, and the consumer also logs a one-line summary periodically, so the numbers exist
without a scraper.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prometheus_client import (CollectorRegistry, GCCollector, PlatformCollector,
                               ProcessCollector, generate_latest, start_http_server)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.parser import text_string_to_metric_families

# Upper bounds in ms of the commit-latency and produce->readable histograms.
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0


@dataclass
class BucketCounts:
    """Histogram counts filled a batch at a time: the consumer sees ~17k lags a second, and one
    numpy pass per batch costs far less than a locked `Histogram.observe` per message."""

    bounds_ms: tuple = LATENCY_BUCKETS_MS
    counts: np.ndarray = field(default=None)  # [len(bounds) + 1] per bucket, the last is +Inf
    sum_ms: float = 0.0

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(len(self.bounds_ms) + 1, dtype=np.int64)

    def add(self, values_ms) -> None:
        v = np.asarray(values_ms, dtype=np.float64)
        # `le` buckets: a value equal to a bound belongs to that bound's bucket
        self.counts += np.bincount(np.searchsorted(self.bounds_ms, v, side="left"),
                                   minlength=len(self.counts))
        self.sum_ms += float(v.sum())

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        """In seconds, as Prometheus names durations; cumulative `le` buckets."""
        cumulative = np.cumsum(self.counts)
        buckets = [(repr(b / 1e3), int(c)) for b, c in zip(self.bounds_ms, cumulative)]
        buckets.append(("+Inf", int(cumulative[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum_ms / 1e3)


@dataclass
class ConsumerMetrics:
    """Mutated only by the consumer thread; read by the /metrics thread (plain ints are atomic)."""

    events_stored: int = 0
    dlq: int = 0
    poison: int = 0          # of those, records isolated because processing them raised
    stale_skipped: int = 0
    batches: int = 0
    commits: int = 0
    swept: int = 0
    commit_ms: list[float] = field(default_factory=list)      # last 10k commit latencies
    visible_ms: list[float] = field(default_factory=list)     # produce -> readable, per message
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    assigned: set = field(default_factory=set)                # current (topic, partition)s
    started_s: float = 0.0
    keep: int = 100_000
    commit_hist: BucketCounts = field(default_factory=BucketCounts)   # every commit, ever
    visible_hist: BucketCounts = field(default_factory=BucketCounts)  # every message, ever

    def add_commit(self, ms: float) -> None:
        self.commits += 1
        self.commit_ms.append(ms)
        self.commit_hist.add([ms])
        if len(self.commit_ms) > self.keep:
            del self.commit_ms[: len(self.commit_ms) - self.keep]

    def add_visible(self, lags_ms) -> None:
        self.visible_ms.extend(lags_ms)
        self.visible_hist.add(lags_ms)
        if len(self.visible_ms) > self.keep:
            del self.visible_ms[: len(self.visible_ms) - self.keep]

    def snapshot(self, now_s: float) -> dict:
        elapsed = max(now_s - self.started_s, 1e-9)
        return {
            "events_stored": self.events_stored,
            "events_per_s": self.events_stored / elapsed,
            "dlq": self.dlq,
            "poison": self.poison,
            "stale_skipped": self.stale_skipped,
            "batches": self.batches,
            "commits": self.commits,
            "swept": self.swept,
            "commit_ms_p50": percentile(self.commit_ms, 50),
            "commit_ms_p99": percentile(self.commit_ms, 99),
            "visible_ms_p50": percentile(self.visible_ms, 50),
            "visible_ms_p99": percentile(self.visible_ms, 99),
            "committed": {f"{t}/{p}": o for (t, p), o in sorted(dict(self.committed).items())},
        }


COUNTERS = ("events_stored", "dlq", "poison", "stale_skipped", "batches", "commits", "swept")


def snapshot_families(snap: dict, prefix: str = "pinrec_stream"):
    """Metric families of one `ConsumerMetrics.snapshot`: counters, gauges (rates and the
    recent-window p50/p99 the log line prints) and the committed offset per partition."""
    for k, v in snap.items():
        if k == "committed":
            offsets = GaugeMetricFamily(f"{prefix}_committed_offset", "committed offset",
                                        labels=["topic", "partition"])
            for tp, off in v.items():
                topic, part = tp.rsplit("/", 1)
                offsets.add_metric([topic, part], off)
            yield offsets
        elif k in COUNTERS:
            yield CounterMetricFamily(f"{prefix}_{k}", k.replace("_", " "), value=v)
        else:
            yield GaugeMetricFamily(f"{prefix}_{k}", k.replace("_", " "), value=v)


class ConsumerCollector:
    """The consumer's metrics, read at scrape time (`now` is the clock, for the rate)."""

    def __init__(self, metrics: ConsumerMetrics, now):
        self.metrics, self.now = metrics, now

    def collect(self):
        yield from snapshot_families(self.metrics.snapshot(self.now()))
        yield self.metrics.commit_hist.family("pinrec_stream_commit_seconds",
                                              "offset commit latency")
        yield self.metrics.visible_hist.family("pinrec_stream_visible_seconds",
                                               "produce -> readable in RocksDB, per message")


class TextCollector:
    """Metrics a component renders as Prometheus text itself (the served lander's
    `metrics_text`), parsed back into families so they share the standard server."""

    def __init__(self, render):
        self.render = render

    def collect(self):
        return text_string_to_metric_families(self.render())


class SnapshotCollector:
    def __init__(self, snap: dict, prefix: str):
        self.snap, self.prefix = snap, prefix

    def collect(self):
        return snapshot_families(self.snap, self.prefix)


def prometheus_text(snap: dict, prefix: str = "pinrec_stream") -> str:
    """One snapshot in the Prometheus exposition format (what /metrics shows, less the
    histograms and process metrics)."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snap, prefix))
    return generate_latest(registry).decode()


def serve_metrics(port: int, *collectors):
    """Serve the collectors plus process metrics at /metrics on 127.0.0.1:port in a daemon
    thread; returns the server (`.shutdown()` stops it)."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
