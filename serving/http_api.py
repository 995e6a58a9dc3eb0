"""The HTTP API (stdlib `http.server`, HTTP/1.1 keep-alive; no framework on the hot path).

    GET /v1/recommendations/{user_id}?n=&arm=&query=   bearer token required
    GET /healthz  (also /health)                       liveness + what is loaded, no token
    GET /metrics                                       Prometheus text, no token (no user data)

Errors are JSON `{"error": ...}` with 400 (bad input), 401 (missing/wrong token), 404 (route).
"""
from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from serving.served_log import metrics_text as served_log_metrics
from serving.service import BadRequest, RecommendationService
from streaming.metrics import percentile

PREFIX = "/v1/recommendations/"


class ApiMetrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency_ms: dict[str, list[float]] = {}

    def observe(self, route: str, status: int, ms: float) -> None:
        with self.lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            lat = self.latency_ms.setdefault(route, [])
            lat.append(ms)
            if len(lat) > 50_000:
                del lat[:10_000]

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE pinrec_serve_requests_total counter"]
            for (route, status), c in sorted(self.requests.items()):
                lines.append(f'pinrec_serve_requests_total{{route="{route}",status="{status}"}} {c}')
            lines.append("# TYPE pinrec_serve_latency_ms summary")
            for route, lat in sorted(self.latency_ms.items()):
                for q in (50, 99):
                    lines.append(f'pinrec_serve_latency_ms{{route="{route}",quantile="0.{q}"}} '
                                 f"{percentile(lat, q):.3f}")
        return "\n".join(lines) + "\n"


def parse_request(path: str) -> tuple[int, int, str | None, str | None]:
    """(user_id, n, arm, query) from the URL, or BadRequest naming the bad input."""
    parts = urlsplit(path)
    raw_user = unquote(parts.path[len(PREFIX):])
    try:
        user_id = int(raw_user)
    except ValueError:
        raise BadRequest(f"user_id must be an integer, got {raw_user!r}") from None
    if user_id < 0:
        raise BadRequest(f"user_id must be non-negative, got {user_id}")
    q = parse_qs(parts.query, keep_blank_values=True)
    raw_n = q.get("n", ["50"])[-1]
    try:
        n = int(raw_n)
    except ValueError:
        raise BadRequest(f"n must be an integer between 1 and 1000, got {raw_n!r}") from None
    arm = q.get("arm", [None])[-1] or None
    query = q.get("query", [None])[-1] or None
    return user_id, n, arm, query


def regeneration_metrics(service: RecommendationService) -> str:
    r = service.regenerator
    if r is None:
        return ""
    lines = ["# TYPE pinrec_serve_regenerate_ms summary"]
    parts = [("compute", list(r.compute_ms)), ("wait", list(r.wait_ms))]
    if hasattr(r, "worker_ms"):  # worker processes: the model call alone, without the pipe
        parts.append(("worker", list(r.worker_ms)))
    for part, values in parts:
        for q in (50, 99):
            lines.append(f'pinrec_serve_regenerate_ms{{part="{part}",quantile="0.{q}"}} '
                         f"{percentile(values, q):.3f}")
        lines.append(f'pinrec_serve_regenerate_ms_count{{part="{part}"}} {len(values)}')
    return "\n".join(lines) + "\n"


def served_version(folder: str) -> str | None:
    """The version name of a snapshot's model/index folder ("None" when nothing is published)."""
    return None if folder in ("None", "") else folder.rstrip("/").rsplit("/", 1)[-1]


def make_handler(service: RecommendationService, token: str, metrics: ApiMetrics):
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes; with Nagle on, the body can wait for the client's
        # delayed ACK (tens of ms) — fatal to a 5 ms p99.
        disable_nagle_algorithm = True

        def _send(self, status: int, body: bytes, ctype="application/json", extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj, extra=()):
            self._send(status, json.dumps(obj, separators=(",", ":")).encode(), extra=extra)

        def do_GET(self):  # noqa: N802 (stdlib name)
            t0 = time.perf_counter()
            route, status = self.path.split("?")[0], 200
            try:
                if route.startswith(PREFIX):
                    route = PREFIX + "{user_id}"
                    status = self._recommend()
                elif route in ("/healthz", "/health"):
                    snap = service.snapshot  # one snapshot: the versions below belong together
                    self._json(200, {"status": "ok", "candidates_ds": snap.candidates.ds,
                                     "sequences_ds": snap.sequences.ds,
                                     "arms": sorted(snap.candidates.arms),
                                     "regeneration": snap.regenerator is not None,
                                     # what ops (and `pinrec rehearse`) check belongs to one ds
                                     "model_version": served_version(snap.key[2]),
                                     "index_version": served_version(snap.key[3]),
                                     "candidates_model_version": snap.candidates.model_version})
                elif route == "/metrics":
                    text = (metrics.text() + regeneration_metrics(service)
                            + served_log_metrics(service.served_log))
                    self._send(200, text.encode(), "text/plain; version=0.0.4")
                else:
                    status = 404
                    self._json(404, {"error": f"no route {route}; see GET {PREFIX}{{user_id}}"})
            except Exception as e:  # a bug must not kill the connection thread silently
                status = 500
                self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
            metrics.observe(route, status, (time.perf_counter() - t0) * 1e3)

        def _recommend(self) -> int:
            auth = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(auth, expected):
                self._json(401, {"error": "missing or wrong bearer token: send "
                                          "'Authorization: Bearer <token>'"},
                           extra=[("WWW-Authenticate", "Bearer")])
                return 401
            try:
                user_id, n, arm, query = parse_request(self.path)
                body = service.recommend(user_id, n=n, arm=arm, query=query)
            except BadRequest as e:
                self._json(400, {"error": str(e)})
                return 400
            self._json(200, body)
            return 200

        def log_message(self, *a):
            pass

    return Handler


def make_server(service: RecommendationService, token: str, host: str = "127.0.0.1",
                port: int = 8000) -> ThreadingHTTPServer:
    if not token:
        raise ValueError("an API token is required: set PINREC_API_TOKEN (or --token-file)")
    srv = ThreadingHTTPServer((host, port), make_handler(service, token, ApiMetrics()))
    srv.daemon_threads = True
    return srv
