"""`pinrec serve`: the recommendations HTTP API. The bearer token comes from the environment
(PINREC_API_TOKEN) or a file, never from the code or the command line (which `ps` shows)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pinrec.core.cli_args import add_lake_arg
from pinrec.core.errors import UserError


def add_serving_args(p: argparse.ArgumentParser) -> None:
    add_lake_arg(p)
    p.add_argument("--db", action="append", default=None,
                   help="the consumer's RocksDB folder (default: $PINREC_REALTIME_DB or "
                        "<lake>/realtime/rocksdb); repeat it for one store per consumer")
    p.add_argument("--no-regenerate", action="store_true",
                   help="never regenerate candidates on CPU from fresh events")
    p.add_argument("--regen-share", type=float, default=0.5,
                   help="share of each outcome's slots that regenerated candidates may take (0..1)")
    p.add_argument("--traffic", default=None, metavar="FILE|ARM=SHARE,...",
                   help="traffic shares of the arms for requests that name no arm: a JSON file "
                        '{"traffic": {"balanced": 0.5, "repin": 0.5}, "salt": "exp-1"} (the arms '
                        "file of `pinrec score --arms` may carry these keys) or inline balanced=0.5,repin=0.5; "
                        "default: every such request gets the default arm")
    p.add_argument("--salt", default=None,
                   help="experiment salt of the arm assignment (a new salt reshuffles users; "
                        "overrides the file's)")


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
                         regen_share=args.regen_share, regen_workers=workers,
                         traffic=traffic_split(getattr(args, "traffic", None),
                                               getattr(args, "salt", None)),
                         served_log=served_log_config(args))


def parse_traffic(spec: str) -> tuple[dict[str, float], str | None]:
    """--traffic: (shares, salt from the file or None) from a JSON file or `arm=share,...`."""
    import json

    if "=" in spec and not Path(spec).exists():
        shares = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            arm, _, share = part.partition("=")
            try:
                shares[arm.strip()] = float(share)
            except ValueError:
                raise UserError(f"--traffic {spec!r}: {part!r} is not ARM=SHARE (e.g. repin=0.5)") from None
        return shares, None
    try:
        raw = json.loads(Path(spec).read_text())
    except FileNotFoundError:
        raise UserError(f"--traffic {spec}: no such file; give a JSON file or ARM=SHARE,...") from None
    except ValueError as e:
        raise UserError(f"--traffic {spec} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("traffic"), dict):
        raise UserError(f"--traffic {spec} must hold {{\"traffic\": {{ARM: SHARE, ...}}, "
                        "\"salt\": \"...\"}} (salt optional)")
    return raw["traffic"], raw.get("salt")


def traffic_split(spec: str | None, salt: str | None):
    from pinrec.core.experiments import DEFAULT_SALT, TrafficSplit

    if spec is None:
        if salt is not None:
            raise UserError("--salt needs --traffic (the shares it splits users over)")
        return None
    shares, file_salt = parse_traffic(spec)
    try:
        return TrafficSplit.of(shares, salt or file_salt or DEFAULT_SALT)
    except ValueError as e:
        raise UserError(f"--traffic {spec}: {e}") from None


def served_log_config(args):
    """Responses go to Kafka when a broker is named (--bootstrap or $PINREC_KAFKA); only
    `pinrec serve` logs (a one-shot `pinrec recommend` is a look, not traffic)."""
    from serving.served_log import ServedLogConfig

    if not hasattr(args, "served_topic"):
        return None
    bootstrap = getattr(args, "bootstrap", None) or os.environ.get("PINREC_KAFKA")
    if getattr(args, "no_served_log", False) or not bootstrap:
        return None
    return ServedLogConfig(bootstrap=bootstrap, topic=args.served_topic,
                           capacity=args.served_log_capacity)


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
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap host:port for the served log (default: $PINREC_KAFKA; "
                        "with neither, responses are not logged)")
    p.add_argument("--served-topic", default="served", help="topic of the served log")
    p.add_argument("--served-log-capacity", type=int, default=20_000,
                   help="responses buffered while the broker is slow or down; beyond it the "
                        "oldest are dropped (counted in /metrics)")
    p.add_argument("--no-served-log", action="store_true", help="do not log responses to Kafka")


def run(args: argparse.Namespace) -> int:
    import gc
    import signal
    import sys

    from serving.http_api import make_server
    from serving.service import RecommendationService

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
          f"{'on' if svc.regenerator else 'off (' + svc.regen_unavailable + ')'} "
          f"traffic={dict(svc.cfg.traffic.shares) if svc.cfg.traffic else 'default arm'} "
          f"served_log={svc.cfg.served_log.bootstrap + '/' + svc.cfg.served_log.topic if svc.cfg.served_log else 'off'}",
          flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        svc.close()
    return 0
