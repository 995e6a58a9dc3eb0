"""`pinrec bench sequences`: the daily incremental update vs a full 365-day rebuild, one run.

Synthesises `--users` users over 366 days (so day 366 has a full 365-day window), builds
sequences for day 365 (untimed: the base of the incremental update; kept when --lake holds it),
then times, for day 366, the incremental update and the full rebuild, and compares the two
tables row by row. Prints a table and writes `full_s`, `incremental_s`, `identical` as JSON.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from bench.cli import write_json


def configure(p: argparse.ArgumentParser) -> None:
    from jobs.spark import add_spark_args

    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--days", type=int, default=366, help="days of events (>= window + 1)")
    p.add_argument("--window-days", type=int, default=365)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--p-active", type=float, default=0.03,
                   help="daily chance a user has a session (synthetic activity level)")
    p.add_argument("--events-per-session", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lake", help="lake folder to build in (default: a temp folder); reused "
                                  "when it already holds the events")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--rebuild-base", action="store_true",
                   help="rebuild the base day (ds-1) even when --lake already holds it")
    add_spark_args(p)
    from jobs.spark_cluster import add_cluster_arg

    add_cluster_arg(p)


def sorted_table(tables, ds: str):
    """The partition as one Arrow table in user order (compared column by column, in Arrow:
    Python objects for 200k users' arrays would cost gigabytes)."""
    return tables.read("sequences", [ds]).sort_by("user_id").combine_chunks()


def run(args: argparse.Namespace) -> int:
    if args.cluster:
        from jobs.spark_cluster import run_on_cluster

        return run_on_cluster(args, run)
    import pyarrow.compute as pc

    from jobs.data_cli import run_synth
    from jobs.lake import LakeTables
    from jobs.sequences import SequencesConfig, run_job, shift_ds
    from jobs.spark import SparkConfig, get_session
    from jobs.synth import SynthConfig
    from pinrec.layout import Lake

    if args.days < args.window_days + 1:
        raise ValueError(f"--days must be at least --window-days + 1 = {args.window_days + 1}")
    lake_dir = Path(args.lake or tempfile.mkdtemp(prefix="pinrec-bench-seq-"))
    tables = LakeTables(Lake.at(lake_dir))
    synth = SynthConfig(users=args.users, days=args.days, seed=args.seed, items=args.items,
                        clusters=200, p_active=args.p_active,
                        events_per_session=args.events_per_session, start="2025-01-01")
    t0 = time.perf_counter()
    if not tables.exists("events"):
        run_synth(synth, str(lake_dir))
    synth_s = time.perf_counter() - t0
    n_events = tables.dataset("events").count_rows()
    ds = shift_ds(synth.start, args.days - 1)
    prev = shift_ds(ds, -1)
    spark = get_session(SparkConfig.from_args(args))
    kw = dict(lake=str(lake_dir), max_len=args.max_len, window_days=args.window_days)

    t0 = time.perf_counter()
    if prev in tables.partitions("sequences") and not args.rebuild_base:
        spark.range(100_000).selectExpr("id % 7 AS k").groupBy("k").count().collect()  # warm-up
        base_s = None  # the base day is deterministic: a kept one equals a rebuilt one
    else:
        run_job(spark, SequencesConfig(ds=prev, mode="full", **kw))
        base_s = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    run_job(spark, SequencesConfig(ds=ds, mode="incremental", **kw))
    incremental_s = time.perf_counter() - t0
    incremental = sorted_table(tables, ds)
    t0 = time.perf_counter()
    run_job(spark, SequencesConfig(ds=ds, mode="full", **kw))
    full_s = time.perf_counter() - t0
    full = sorted_table(tables, ds)
    identical = incremental.equals(full)

    out = {"users": args.users, "days": args.days, "window_days": args.window_days,
           "max_len": args.max_len, "events": n_events, "sequences_rows": full.num_rows,
           "mean_length": round(pc.mean(full.column("length")).as_py() or 0.0, 2),
           "ds": ds, "master": args.master, "full_s": round(full_s, 2),
           "incremental_s": round(incremental_s, 2), "ratio": round(incremental_s / full_s, 4),
           "identical": identical, "base_full_s": base_s,
           "synth_s": round(synth_s, 2), "lake": str(lake_dir)}
    print(f"{'':24}{'seconds':>10}")
    print(f"{'full 365-day rebuild':24}{full_s:>10.2f}")
    print(f"{'incremental (1 day)':24}{incremental_s:>10.2f}")
    print(f"ratio {out['ratio']:.3f} (bar <= 0.100); identical={identical}; "
          f"{n_events:,} events, {full.num_rows:,} users, mean length {out['mean_length']}")
    write_json(args.json, out)
    return 0 if identical else 1
