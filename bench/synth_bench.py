"""`pinrec bench synth`: synthetic event generation rate and peak memory.

Generation only by default (what the generator costs); `--lake` adds the Delta writes. Peak RSS
shows that memory is bounded by one day of one user chunk, not by the length of the year.
"""
from __future__ import annotations

import argparse
import resource
import time
from bench.cli import write_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> int:
    from jobs.synth import SynthConfig, build_world, generate

    cfg = SynthConfig(users=args.users, days=args.days, items=args.items, seed=args.seed,
                      clusters=200)
    world = build_world(cfg)
    rss_world = peak_rss_mib()
    n, t0, per_day = 0, time.perf_counter(), []
    for ds, t in generate(cfg, world):
        n += t.num_rows
        per_day.append(peak_rss_mib())
    secs = time.perf_counter() - t0
    out = {"users": cfg.users, "days": cfg.days, "items": cfg.items, "events": n,
           "seconds": round(secs, 2), "events_per_s": round(n / secs),
           "peak_rss_mib_after_world": round(rss_world), "peak_rss_mib_first_day": round(per_day[0]),
           "peak_rss_mib_last_day": round(per_day[-1])}
    print(f"{'users':>10} {'days':>5} {'events':>12} {'seconds':>8} {'events/s':>10} {'peak RSS MiB (day 1 -> last)':>30}")
    print(f"{cfg.users:>10,} {cfg.days:>5} {n:>12,} {secs:>8.1f} {out['events_per_s']:>10,} "
          f"{out['peak_rss_mib_first_day']:>14,} -> {out['peak_rss_mib_last_day']:,}")
    write_json(args.json, out)
    return 0
