"""The floor of `pinrec bench serve`: a trivial server, run as its own process, that answers
every request with one fixed body captured from the precomputed phase. The same client against
it shows what the client and an HTTP stack alone cost on this host (bench/serve_bench.py)."""
from __future__ import annotations

import signal
from pathlib import Path


def trivial_server(port: int, token: str, body_file: str) -> None:
    """A minimal stdlib HTTP server (HTTP/1.1 keep-alive, no Nagle, thread per connection,
    bearer check) answering every request with one fixed body: the floor."""
    import hmac
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body, expected = Path(body_file).read_bytes(), f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):  # noqa: N802
            ok = hmac.compare_digest((self.headers.get("Authorization") or "").encode(), expected)
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if ok else 2))
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.server_close()
