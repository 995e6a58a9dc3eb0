"""`pinrec bench serve --phases logging`: request latency with the served log on vs off.

The same sample lake, client and offered load as the precomputed phase of bench/serve_bench.py;
the server runs with `--no-served-log` (off) or `--bootstrap <Tansu>` (on: every response goes
to the `served` topic through serving/served_log.py). Off and on alternate, in ABBA order over
`--logging-rounds` rounds, so a load change on a shared host hits both arms alike; each round
starts a fresh server. The bar: p99 with logging on within 10 % of off (median over rounds).
The lander is not running: it is a separate process on another host in production, and here
it would only add CPU contention that has nothing to do with the request path.
"""
from __future__ import annotations

import http.client
import statistics
from pathlib import Path

BAR_P99_RATIO = 1.10


def served_log_counters(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("pinrec_served_log_"):
            name, value = line.rsplit(" ", 1)
            out[name[len("pinrec_served_log_"):]] = float(value)
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def logging_phase(args, work: Path, lake: Path, db: Path, users: list[int], token: str,
                  load, summarize, Server) -> dict:
    """-> {"off": {...}, "on": {...}, "p99_ratio_on_off": ..., "rounds": [...]}.
    `load(srv, users)`, `summarize(results)` and `Server` are serve_bench's (warm-up + measured
    attempts; handed in because serve_bench imports this module)."""
    from streaming.broker import Tansu, create_topics

    broker = Tansu.start(log=work / "tansu-logging.log")
    rounds = []
    try:
        create_topics(broker.bootstrap, {"served": 4})
        for r in range(args.logging_rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                extra = (["--bootstrap", broker.bootstrap, "--served-topic", "served"]
                         if mode == "on" else ["--no-served-log"])
                srv = Server(lake, db, token, regenerate=False,
                             log=work / f"serve-logging-{mode}.log", extra=extra)
                try:
                    res, cpu = load(srv, users)
                    counters = served_log_counters(srv.port)
                finally:
                    srv.stop()
                rounds.append({"round": r, "mode": mode, **summarize(res), **cpu,
                               "served_log": counters})
                print(f"  logging {mode:<3} round {r}: p50 {rounds[-1]['p50_ms']:.2f} ms, "
                      f"p99 {rounds[-1]['p99_ms']:.2f} ms, served log {counters or '-'}", flush=True)
    finally:
        broker.stop()
    by = {m: [x for x in rounds if x["mode"] == m] for m in ("off", "on")}
    out = {m: {"p99_ms": spread([x["p99_ms"] for x in xs]), "p50_ms": spread([x["p50_ms"] for x in xs]),
               "requests": sum(x["requests"] for x in xs), "errors": sum(x["errors"] for x in xs),
               "contended_rounds": sum(1 for x in xs if x["contended"])}
           for m, xs in by.items()}
    on_logs = [x["served_log"] for x in by["on"]]
    out["on"]["served_log"] = {k: sum(c.get(k, 0) for c in on_logs)
                               for k in ("logged_total", "sent_total", "dropped_total")}
    ratio = out["on"]["p99_ms"]["median"] / out["off"]["p99_ms"]["median"]
    return {**out, "p99_ratio_on_off": ratio, "bar_p99_ratio": BAR_P99_RATIO,
            "within_bar": ratio <= BAR_P99_RATIO, "rounds": rounds}


def print_logging(res: dict) -> None:
    for m in ("off", "on"):
        s = res[m]
        print(f"served log {m:<3}: p99 median {s['p99_ms']['median']:.2f} ms "
              f"(min {s['p99_ms']['min']:.2f}, max {s['p99_ms']['max']:.2f}) over "
              f"{len(s['p99_ms']['runs'])} rounds; p50 median {s['p50_ms']['median']:.2f} ms; "
              f"{s['requests']} requests, {s['errors']} errors, {s['contended_rounds']} contended")
    print(f"p99 on/off = {res['p99_ratio_on_off']:.3f} (bar <= {res['bar_p99_ratio']:.2f}: "
          f"{'met' if res['within_bar'] else 'NOT met'}); served log with logging on: "
          f"{res['on']['served_log']}")
