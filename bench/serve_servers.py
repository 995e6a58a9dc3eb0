"""`pinrec bench serve --phases servers`: the server against both p99 bars over repeated rounds.

The same sample lake, client, offered load and users as the precomputed and regenerate phases
of bench/serve_bench.py, each load on a fresh `pinrec serve` (FastAPI/uvicorn) for each of
`--server-rounds` rounds. The bars are serve_bench's (p99 <= 5 ms precomputed, <= 50 ms for
regenerating requests), judged on the median p99 over the rounds, so one disturbed round does
not decide. The result keeps the shape of the side-by-side run that retired the stdlib server
(bench/results/serve_servers.json, measured before it was removed): `{"fastapi": ...}`.
"""
from __future__ import annotations

import statistics
from pathlib import Path

SERVER = "fastapi"  # the result's key: `pinrec serve`'s one server
LOADS = ("precomputed", "regenerate")


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def servers_phase(args, work: Path, lake: Path, db: Path, loads: dict, token: str,
                  load, summarize, server_metrics, Server, bars: dict) -> dict:
    """-> {"fastapi": {load: {...}}, "bars_hold": {...}, "rounds": [...]}.
    `loads[name]` is (users to request, users the latency is summarised over or None);
    `load`, `summarize`, `server_metrics`, `Server` and `bars` are serve_bench's (passed in, so
    this module does not import serve_bench back)."""

    rounds = []
    for r in range(args.server_rounds):
        for mode in LOADS:
            who, of_interest = loads[mode]
            srv = Server(lake, db, token, regenerate=mode == "regenerate",
                         log=work / f"serve-{SERVER}-{mode}.log", regen_workers=args.regen_workers)
            try:
                res, cpu = load(srv, who, of_interest)
                rounds.append({"round": r, "server": SERVER, "load": mode,
                               **summarize(res, of_interest), **cpu, **server_metrics(srv.port)})
            finally:
                srv.stop()
    out: dict = {"rounds": rounds, "bars_hold": {}, SERVER: {}}
    for mode, bar in zip(LOADS, (bars["p99_ms"], bars["p99_ms_regenerate"])):
        runs = [x for x in rounds if x["load"] == mode]
        s = {k: spread([x[k] for x in runs]) for k in ("p50_ms", "p99_ms", "server_p99_ms", "server_cores")}
        s["errors"] = sum(x["errors"] for x in runs)
        s["contended_runs"] = sum(bool(x["contended"]) for x in runs)
        out[SERVER][mode] = s
        out["bars_hold"][f"{SERVER}_{mode}"] = s["p99_ms"]["median"] <= bar
    return out


def print_servers(res: dict) -> None:
    print(f"{'server':<10}{'load':<13}{'p50 ms':>9}{'p99 ms (median, min-max)':>28}"
          f"{'server p99':>12}{'cores':>7}  bar")
    for mode in LOADS:
        s = res[SERVER][mode]
        p99 = s["p99_ms"]
        print(f"{SERVER:<10}{mode:<13}{s['p50_ms']['median']:>9.2f}"
              f"{p99['median']:>12.2f} ({p99['min']:.2f}-{p99['max']:.2f})".ljust(60)
              + f"{s['server_p99_ms']['median']:>12.2f}{s['server_cores']['median']:>7.2f}"
              + f"  {'holds' if res['bars_hold'][f'{SERVER}_{mode}'] else 'MISSED'}"
              + (f"  errors {s['errors']}" if s["errors"] else "")
              + (f"  contended runs {s['contended_runs']}" if s["contended_runs"] else ""))
