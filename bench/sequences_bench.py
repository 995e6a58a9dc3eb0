"""`pinrec bench sequences`: the daily run vs a full 365-day rebuild, at several sizes, one run.

For each `--sizes` entry (users; the same activity per user, so the day's events grow with the
users): synthesise `--days` days (day `--days` has a full window), build the checkpoint of the
day before (untimed; kept when the lake already holds it), then `--repeat` times, on the last
day: the daily run (day rows only; its rows read, rows and bytes written), the read of that day
(`read_sequences`: what every reader pays), the daily run of the next, empty day (the fixed cost of a run: table opens, log
reads, the run row's commit), the full Spark rebuild, and a checkpoint run (the
periodic maintenance, O(users)). The daily run's result is compared with the full rebuild's
table row by row every repetition. Reports median and min-max of each; writes JSON.

Bars (issue 16): daily <= 1/20 of the full rebuild at the largest size, identical; daily
seconds per event of the day within 1.5x across sizes while the full rebuild grows. The spread
is reported twice: of daily seconds / day events (the bar as written), and of (daily - empty day)
/ day events, because a fixed cost per run makes the smaller size look dearer per event even when
the cost that follows the events is flat.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.cli import write_json


def configure(p: argparse.ArgumentParser) -> None:
    from jobs.spark import add_spark_args

    p.add_argument("--sizes", default="250000,1000000", help="comma-separated user counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--days", type=int, default=366, help="days of events (>= window + 1)")
    p.add_argument("--window-days", type=int, default=365)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--p-active", type=float, default=0.03,
                   help="daily chance a user has a session (synthetic activity level)")
    p.add_argument("--events-per-session", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lake", help="folder for one lake per size (default: a temp folder); a "
                                  "lake that already holds the events is reused")
    p.add_argument("--json", help="write the result here")
    add_spark_args(p)
    from jobs.spark_cluster import add_cluster_arg

    add_cluster_arg(p)


def spread(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4),
            "max": round(max(xs), 4), "runs": [round(x, 4) for x in xs]}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def reset_day(tables, ds: str) -> None:
    """Forget ds so the next run is a real first run of the day after the checkpoint."""
    from pinrec.core.sequences_store import CHECKPOINTS, DAYS, RUNS

    for t in (RUNS, CHECKPOINTS, DAYS):
        tables.delete_partitions(t, [ds])


def bench_size(spark, args, users: int, root: Path) -> dict:
    from jobs.data_cli import run_synth
    from pinrec.core.lake import DeltaRsTables
    from jobs.sequences import SequencesConfig, run_job, shift_ds
    from pinrec.core.sequences_store import CHECKPOINTS, RUNS, read_sequences
    from jobs.synth import SynthConfig
    from pinrec.core.contracts import SEQUENCES_SCHEMA
    from pinrec.core.layout import Lake

    lake_dir = root / f"users-{users}"
    tables = DeltaRsTables(Lake.at(lake_dir))
    synth = SynthConfig(users=users, days=args.days, seed=args.seed, items=args.items,
                        clusters=200, p_active=args.p_active,
                        events_per_session=args.events_per_session, start="2025-01-01")
    if not tables.exists("events"):
        run_synth(synth, str(lake_dir))
    ds = shift_ds(synth.start, args.days - 1)
    landed = set(tables.partitions("events"))
    if ds not in landed or len(landed) < args.days:
        # an interrupted synthesis leaves a partial table: reusing it would time empty days
        raise SystemExit(f"{lake_dir} holds events for {len(landed)} of {args.days} days (last "
                         f"{max(landed, default='none')}, want {ds}): an interrupted synthesis? "
                         f"Delete {lake_dir} and run again.")
    prev = shift_ds(ds, -1)
    kw = dict(lake=str(lake_dir), max_len=args.max_len, window_days=args.window_days)
    if prev not in tables.partitions(CHECKPOINTS):
        run_job(spark, SequencesConfig(ds=prev, mode="full", **kw))
    no_spark = lambda: (_ for _ in ()).throw(AssertionError("the daily run started Spark"))  # noqa: E731
    daily, empty, read, full, ckpt, identical, counts = [], [], [], [], [], [], None
    empty_ds = shift_ds(ds, 1)  # no events land on it: a run that only pays the fixed cost
    for rep in range(args.repeat):
        reset_day(tables, ds)
        s, _ = timed(lambda: run_job(no_spark, SequencesConfig(ds=ds, mode="incremental", **kw)))
        daily.append(s)
        counts = {k: v for k, v in tables.read(RUNS, [ds]).to_pylist()[0].items()
                  if k in ("day_events", "active_users", "rows_read", "rows_written", "bytes_written")}
        reset_day(tables, empty_ds)
        s, _ = timed(lambda: run_job(no_spark, SequencesConfig(ds=empty_ds, mode="incremental", **kw)))
        empty.append(s)
        reset_day(tables, empty_ds)
        s, got = timed(lambda: read_sequences(tables, ds))
        read.append(s)
        s, _ = timed(lambda: run_job(spark, SequencesConfig(ds=ds, mode="full", **kw)))
        full.append(s)
        written = tables.read(CHECKPOINTS, [ds]).sort_by("user_id").cast(SEQUENCES_SCHEMA)
        identical.append(got.combine_chunks().equals(written.combine_chunks()))
        reset_day(tables, ds)  # a checkpoint run: the maintenance every --checkpoint-every days
        s, _ = timed(lambda: run_job(no_spark, SequencesConfig(ds=ds, checkpoint_every=1, **kw)))
        ckpt.append(s)
        print(f"  users={users:,} rep {rep + 1}: daily {daily[-1]:.2f} s, empty day {empty[-1]:.2f} s, read {read[-1]:.2f} s, "
              f"full {full[-1]:.2f} s, checkpoint {ckpt[-1]:.2f} s, identical={identical[-1]}",
              flush=True)
    n_events = sum(tables.partition_stats("events", d)[0] for d in tables.partitions("events"))
    med = statistics.median
    return {"users": users, "events": n_events, "sequences_rows": got.num_rows, "ds": ds,
            "daily_s": spread(daily), "empty_day_s": spread(empty), "read_s": spread(read), "full_s": spread(full),
            "checkpoint_s": spread(ckpt), "ratio_daily_to_full": round(med(daily) / med(full), 4),
            "daily_us_per_day_event": round(1e6 * med(daily) / max(counts["day_events"], 1), 3),
            "daily_net_us_per_day_event": round(
                1e6 * (med(daily) - med(empty)) / max(counts["day_events"], 1), 3),
            "daily_work": counts, "identical": all(identical), "lake": str(lake_dir)}


def run(args: argparse.Namespace) -> int:
    if args.cluster:  # a standalone master and N workers for the run's Spark jobs
        from jobs.spark_cluster import run_on_cluster

        return run_on_cluster(args, run)
    from jobs.spark import SparkConfig, get_session

    if args.days < args.window_days + 1:
        raise ValueError(f"--days must be at least --window-days + 1 = {args.window_days + 1}")
    sizes = [int(x) for x in args.sizes.split(",")]
    root = Path(args.lake or tempfile.mkdtemp(prefix="pinrec-bench-seq-"))
    spark = get_session(SparkConfig.from_args(args))
    spark.range(100_000).selectExpr("id % 7 AS k").groupBy("k").count().collect()  # warm-up
    results = [bench_size(spark, args, users, root) for users in sizes]
    per_event = [r["daily_us_per_day_event"] for r in results]
    net = [r["daily_net_us_per_day_event"] for r in results]
    big = results[-1]
    out = {"sizes": results, "repeat": args.repeat, "days": args.days,
           "window_days": args.window_days, "max_len": args.max_len, "master": args.master,
           "load_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
           "bars": {"ratio_at_largest": big["ratio_daily_to_full"], "ratio_bar": 0.05,
                    "per_event_spread": round(max(per_event) / min(per_event), 3),
                    "per_event_bar": 1.5,
                    "net_per_event_spread": round(max(net) / min(net), 3),
                    "full_growth": round(big["full_s"]["median"] / results[0]["full_s"]["median"], 3),
                    "identical": all(r["identical"] for r in results)}}
    print(f"{'users':>10}{'day events':>12}{'daily s':>18}{'full s':>22}{'ratio':>8}"
          f"{'us/event':>10}{'net us/ev':>10}{'rows written':>14}{'MB written':>12}")
    for r in results:
        d, f, w = r["daily_s"], r["full_s"], r["daily_work"]
        print(f"{r['users']:>10,}{w['day_events']:>12,}"
              f"{d['median']:>8.2f} ({d['min']:.2f}-{d['max']:.2f})"
              f"{f['median']:>10.2f} ({f['min']:.2f}-{f['max']:.2f})"
              f"{r['ratio_daily_to_full']:>8.4f}{r['daily_us_per_day_event']:>10.2f}"
              f"{r['daily_net_us_per_day_event']:>10.2f}"
              f"{w['rows_written']:>14,}{w['bytes_written'] / 1e6:>12.2f}")
    b = out["bars"]
    print(f"ratio at {big['users']:,} users {b['ratio_at_largest']:.4f} (bar <= 0.05); per-event "
          f"spread {b['per_event_spread']:.2f}x (bar <= 1.5x; net of the empty day "
          f"{b['net_per_event_spread']:.2f}x); full grows {b['full_growth']:.2f}x; "
          f"identical={b['identical']}; load avg {out['load_1min']} on {out['cpus']} CPUs")
    write_json(args.json, out)
    return 0 if b["identical"] else 1
