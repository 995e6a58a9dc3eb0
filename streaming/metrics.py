"""Speed-layer metrics: counters, commit latency, visibility lag, in the Prometheus text format.

A tiny stdlib HTTP server exposes `/metrics` on 127.0.0.1 (threads only read a snapshot), and
the consumer also logs a one-line summary periodically, so the numbers exist without a scraper.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else 0.0


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

    def add_commit(self, ms: float) -> None:
        self.commits += 1
        self.commit_ms.append(ms)
        if len(self.commit_ms) > self.keep:
            del self.commit_ms[: len(self.commit_ms) - self.keep]

    def add_visible(self, lags_ms) -> None:
        self.visible_ms.extend(lags_ms)
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


def prometheus_text(snap: dict, prefix: str = "pinrec_stream") -> str:
    lines = []
    kinds = {"events_stored": "counter", "dlq": "counter", "poison": "counter", "stale_skipped": "counter",
             "batches": "counter", "commits": "counter", "swept": "counter"}
    for k, v in snap.items():
        if k == "committed":
            lines.append(f"# TYPE {prefix}_committed_offset gauge")
            for tp, off in v.items():
                topic, part = tp.rsplit("/", 1)
                lines.append(f'{prefix}_committed_offset{{topic="{topic}",partition="{part}"}} {off}')
            continue
        name = f"{prefix}_{k}" + ("_total" if kinds.get(k) == "counter" else "")
        lines.append(f"# TYPE {name} {kinds.get(k, 'gauge')}")
        lines.append(f"{name} {float(v):.6g}")
    return "\n".join(lines) + "\n"


def serve_metrics(port: int, render) -> ThreadingHTTPServer:
    """Serve `render()` (a str) at GET /metrics on 127.0.0.1:port in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            if self.path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True, name="metrics").start()
    return srv
