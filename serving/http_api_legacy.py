"""The HTTP API as it was before FastAPI (stdlib `http.server`, HTTP/1.1 keep-alive), kept
only until `pinrec bench serve --phases servers` has measured both side by side on a quiet host;
`pinrec serve --server legacy` runs it. Same routes, errors, token and metrics as
serving/http_api.py (the metrics registry is shared: serving/api_metrics.py).
"""
from __future__ import annotations

import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from serving.api_metrics import ApiMetrics
from serving.http_api import PREFIX, TOKEN_ERROR, health
from serving.service import BadRequest, RecommendationService


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
                    self._json(200, health(service))
                elif route == "/metrics":
                    self._send(200, *metrics.exposition())
                else:
                    self._json(404, {"error": f"no route {route}; see GET {PREFIX}{{user_id}}"})
                    status, route = 404, "unmatched"  # counted by template, never the raw path
            except Exception as e:  # a bug must not kill the connection thread silently
                status = 500
                self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
            metrics.observe(route, status, time.perf_counter() - t0)

        def _recommend(self) -> int:
            auth = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(auth, expected):
                self._json(401, {"error": TOKEN_ERROR}, extra=[("WWW-Authenticate", "Bearer")])
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
    srv = ThreadingHTTPServer((host, port), make_handler(service, token, ApiMetrics(service)))
    srv.daemon_threads = True
    return srv
