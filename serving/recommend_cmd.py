"""`pinrec recommend USER`: the same merged recommendations the API returns, as a table."""
from __future__ import annotations

import argparse

from serving.serve_cmd import add_serving_args, serving_config


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", help="user id (integer)")
    add_serving_args(p)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--arm", default=None, help="arm name (default: control, else the first arm)")
    p.add_argument("--query", default=None, help="a search query appended as the last token")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def format_table(r: dict) -> str:
    head = (f"user {r['user_id']}  arm {r['arm']}  candidates ds {r['candidates_ds']}  "
            f"sequences ds {r['sequences_ds']}  fresh events {r['fresh_events']}\n"
            f"sources: {', '.join(r['sources']) or '-'}"
            + (f"  (fallback: {r['fallback']})" if r["fallback"] else "") + "\n")
    notes = "".join(f"note: {n}\n" for n in r["notes"])
    rows = [f"{'rank':>4}  {'item_id':>20}  {'score':>10}  {'outcome':<16}  source"]
    for i, it in enumerate(r["items"], 1):
        rows.append(f"{i:>4}  {it['item_id']:>20}  {it['score']:>10.4f}  {it['outcome']:<16}  {it['source']}")
    return head + notes + "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    import json

    from pinrec.core.errors import UserError
    from serving.service import BadRequest, RecommendationService

    try:
        user_id = int(args.user)
    except ValueError:
        raise UserError(f"USER must be an integer user id, got {args.user!r}") from None
    svc = RecommendationService.load(serving_config(args))
    try:
        r = svc.recommend(user_id, n=args.n, arm=args.arm, query=args.query)
    except BadRequest as e:
        raise UserError(str(e)) from None
    finally:
        svc.close()
    print(json.dumps(r, indent=2) if args.json else format_table(r))
    return 0
