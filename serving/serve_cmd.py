"""`pinrec serve`: the recommendations HTTP API. The bearer token comes from the environment
(PINREC_API_TOKEN) or a file, never from the code or the command line (which `ps` shows)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pinrec.cli import UserError, add_lake_arg


def add_serving_args(p: argparse.ArgumentParser) -> None:
    add_lake_arg(p)
    p.add_argument("--db", action="append", default=None,
                   help="the consumer's RocksDB folder (default: $PINREC_REALTIME_DB or "
                        "<lake>/realtime/rocksdb); repeat it for one store per consumer")
    p.add_argument("--no-regenerate", action="store_true",
                   help="never regenerate candidates on CPU from fresh events")
    p.add_argument("--regen-share", type=float, default=0.5,
                   help="share of each outcome's slots that regenerated candidates may take (0..1)")


def serving_config(args):
    from serving.service import ServingConfig
    from streaming.cli import default_db

    if not 0.0 <= args.regen_share <= 1.0:
        raise UserError(f"--regen-share must be within 0..1, got {args.regen_share}")
    dbs = tuple(Path(d) for d in (args.db or [default_db(args.lake)]))
    workers = getattr(args, "regen_workers", 0)
    if workers < 0:
        raise UserError(f"--regen-workers must be >= 0, got {workers}")
    return ServingConfig(lake=Path(args.lake), db_paths=dbs, regenerate=not args.no_regenerate,
                         regen_share=args.regen_share, regen_workers=workers)


def read_token(token_file: str | None) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise UserError(f"--token-file {token_file}: {e}") from None
    else:
        token = os.environ.get("PINREC_API_TOKEN", "").strip()
    if not token:
        raise UserError("no API token: set PINREC_API_TOKEN or pass --token-file FILE "
                        "(clients send 'Authorization: Bearer <token>')")
    return token


def _interrupt(*_):
    raise KeyboardInterrupt


def configure(p: argparse.ArgumentParser) -> None:
    add_serving_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument("--regen-workers", type=int, default=1,
                   help="processes that regenerate candidates (off the HTTP server's GIL); "
                        "0 regenerates inside the server process")


def run(args: argparse.Namespace) -> int:
    import signal

    from serving.http_api import make_server
    from serving.service import RecommendationService

    import gc
    import sys

    token = read_token(args.token_file)
    # Hand the GIL over every 0.5 ms instead of 5 ms: a request thread waiting behind a
    # CPU-bound regeneration would otherwise queue for whole 5 ms slices.
    sys.setswitchinterval(0.0005)
    svc = RecommendationService.load(serving_config(args))
    # The stores are millions of long-lived objects: moved out of the collected generations,
    # a full collection no longer walks them in the middle of a request.
    gc.collect()
    gc.freeze()
    srv = make_server(svc, token, args.host, args.port)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: close the store cleanly
    print(f"serving on http://{args.host}:{srv.server_port} candidates ds={svc.candidates.ds} "
          f"arms={sorted(svc.candidates.arms)} regeneration="
          f"{'on' if svc.regenerator else 'off (' + svc.regen_unavailable + ')'}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        svc.close()
    return 0
