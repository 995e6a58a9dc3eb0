"""`pinrec bench served-land`: what one landing of the served lander costs as the day grows.

The lander (streaming/served_lander.py) MERGEs each micro-batch into the day's partition of
`served` on (ds, request_id, rank), which joins the batch against the rows already there. This
measures one landing of --batch-responses responses of --items items into a partition already
holding each of --rows-before rows (written in 100k-row landings, 1000 s of served_at apart),
three ways: the lander's MERGE (predicate limited to the batch's served_at range, so delta-rs
skips files by their statistics), the plain key MERGE (LakeTables.merge, no range), and an
append (what landing would cost without the exactly-once join).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.cli import write_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows-before", default="0,250000,1000000",
                   help="comma-separated sizes of the day's partition before the landing")
    p.add_argument("--batch-responses", type=int, default=500)
    p.add_argument("--items", type=int, default=50, help="items per response")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)


def batch(first: int, responses: int, items: int, t0_us: int):
    from pinrec.core.served import ServedRecord, rows

    return rows(ServedRecord(f"req-{first + i:012d}", first + i, "control", "assigned",
                             "2026-03-01", "2026-03-01", t0_us + first + i,
                             tuple((10**9 + k, "repin", "precomputed") for k in range(items)))
                for i in range(responses))


def run(args: argparse.Namespace) -> int:
    import os
    import statistics

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.contracts import cutoff_us
    from pinrec.core.layout import Lake
    from streaming.served_lander import merge_new_rows

    t0 = cutoff_us("2026-03-01") + 3_600_000_000
    out = []
    for before in (int(x) for x in args.rows_before.split(",")):
        tables = DeltaRsTables(Lake.at(tempfile.mkdtemp(prefix="pinrec-served-land-")))
        filled, k = 0, 0
        while filled < before:  # the day so far, in landings of 100k rows, 1000 s apart
            n = min(100_000, before - filled) // args.items or 1
            tables.append("served", batch(10**8 + filled, n, args.items, t0 + k * 10**9))
            filled, k = filled + n * args.items, k + 1
        late = t0 + (k + 1) * 10**9  # the new landing: responses served after all of those
        times = {"lander_merge_s": [], "key_merge_s": [], "append_s": []}
        for r in range(args.repeats):
            for how, first in (("lander_merge_s", 0), ("key_merge_s", 10**6), ("append_s", 10**7)):
                b = batch(first + r * args.batch_responses, args.batch_responses, args.items, late)
                w = time.perf_counter()
                if how == "lander_merge_s":
                    merge_new_rows(tables, b)
                elif how == "key_merge_s":
                    tables.merge("served", b, keys=["request_id", "rank"], partitions=["2026-03-02"])
                else:
                    tables.append("served", b)
                times[how].append(time.perf_counter() - w)
        row = {"rows_before": filled, "batch_rows": args.batch_responses * args.items, **times,
               **{k.replace("_s", "_s_median"): statistics.median(v) for k, v in times.items()}}
        out.append(row)
        print(f"partition {filled:>9} rows, landing {row['batch_rows']} rows: lander MERGE median "
              f"{row['lander_merge_s_median']:.2f} s (runs "
              f"{', '.join(f'{x:.2f}' for x in times['lander_merge_s'])}); key-only MERGE "
              f"{row['key_merge_s_median']:.2f} s; append {row['append_s_median']:.2f} s", flush=True)
    result = {"landings": out, "host_cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    print(f"(host: {os.cpu_count()} cpus, 1-min load average {result['load_avg_1m']:.1f})")
    write_json(args.json, result)
    return 0
