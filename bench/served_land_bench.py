"""`pinrec bench served-land`: what one landing of the served lander costs as the day grows.

The lander (streaming/served_lander.py) MERGEs each micro-batch into the day's partition of
`served` on (ds, request_id, rank), which joins the batch against the rows already there. This
measures that MERGE (delta-rs, the real adapter) for a batch of --batch-responses responses of
--items items into a partition already holding each of --rows-before rows, beside a plain append
of the same batch (what the lander would cost without the exactly-once join).
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
    from pinrec.served import ServedRecord, rows

    return rows(ServedRecord(f"req-{first + i:012d}", first + i, "control", "assigned",
                             "2026-03-01", "2026-03-01", t0_us + first + i,
                             tuple((10**9 + k, "repin", "precomputed") for k in range(items)))
                for i in range(responses))


def run(args: argparse.Namespace) -> int:
    import os
    import statistics

    from jobs.lake import LakeTables
    from pinrec.contracts import cutoff_us
    from pinrec.layout import Lake

    t0 = cutoff_us("2026-03-01") + 3_600_000_000
    out = []
    for before in (int(x) for x in args.rows_before.split(",")):
        tables = LakeTables(Lake.at(tempfile.mkdtemp(prefix="pinrec-served-land-")))
        filled = 0
        while filled < before:  # the day so far, in landings of 100k rows
            n = min(100_000, before - filled) // args.items or 1
            tables.append("served", batch(10**8 + filled, n, args.items, t0))
            filled += n * args.items
        if filled:
            tables.optimize("served")  # maintenance-compacted, the state it is usually in
        merge_s, append_s = [], []
        for r in range(args.repeats):
            b = batch(r * args.batch_responses, args.batch_responses, args.items, t0)
            w = time.perf_counter()
            tables.merge("served", b, keys=["request_id", "rank"], partitions=["2026-03-02"])
            merge_s.append(time.perf_counter() - w)
        for r in range(args.repeats):
            b = batch(10**7 + r * args.batch_responses, args.batch_responses, args.items, t0)
            w = time.perf_counter()
            tables.append("served", b)
            append_s.append(time.perf_counter() - w)
        row = {"rows_before": filled, "batch_rows": args.batch_responses * args.items,
               "merge_s": merge_s, "merge_s_median": statistics.median(merge_s),
               "append_s": append_s, "append_s_median": statistics.median(append_s)}
        out.append(row)
        print(f"partition {filled:>9} rows: MERGE of {row['batch_rows']} rows median "
              f"{row['merge_s_median']:.2f} s (runs {', '.join(f'{x:.2f}' for x in merge_s)}); "
              f"append {row['append_s_median']:.2f} s", flush=True)
    result = {"landings": out, "host_cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    print(f"(host: {os.cpu_count()} cpus, 1-min load average {result['load_avg_1m']:.1f})")
    write_json(args.json, result)
    return 0
