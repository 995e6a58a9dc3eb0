"""`pinrec sql "SELECT ..."`: SQL over the lake tables for analysts (duckdb).

Every Delta table is registered as a view over its live Arrow dataset (the snapshot's files,
`LakeTables.dataset`), never over the folder, so files a later commit removed are never read.
Tables: events, sequences, items, candidates, item_features, served, arm_outcomes, and how
sequences is stored (sequence_days, sequence_checkpoints, sequence_runs). `sequences` is the table as of one ds
(`--ds`, default the newest), assembled by `pinrec.core.sequences_store.read_sequences` exactly as a
full rebuild for that ds would write it (docs/adr/0002-sequences-daily-cost.md).
Ready queries live in docs/analysts.md.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pinrec.core.layout import TABLES, Lake


# Which job writes each table: named when a query asks for a table this lake does not have yet.
WRITTEN_BY = {"events": "`pinrec data import|synth` or the stream", "sequences": "`pinrec sequences`",
              "items": "`pinrec items`", "candidates": "`pinrec score`",
              "item_features": "`pinrec data import` (datasets with item attributes)",
              "served": "the speed layer's `served` lander (or `pinrec demo`'s closed loop)",
              "arm_outcomes": "`pinrec outcomes`",
              "sequence_days": "`pinrec sequences`", "sequence_checkpoints": "`pinrec sequences`",
              "sequence_runs": "`pinrec sequences`"}
SEQUENCES_REF = re.compile(r"\bsequences\b", re.IGNORECASE)


def connect(lake: str, sequences_ds: str | None = None, with_sequences: bool = True):
    """(a duckdb connection with one view per existing lake table, the names of those tables).
    `sequences` is the table as of `sequences_ds` (default: the newest readable ds); it is
    assembled only when `with_sequences`."""
    import duckdb

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.sequences_store import latest_sequences_ds, read_sequences, sequences_partitions

    tables = DeltaRsTables(Lake.at(lake))
    con = duckdb.connect()
    found = [t for t in TABLES if t != "sequences" and tables.exists(t)]
    for name in found:
        con.register(name, tables.dataset(name))
    readable = sequences_partitions(tables)
    if readable:
        found.append("sequences")
        if sequences_ds is not None and sequences_ds not in readable:
            raise ValueError(f"--ds {sequences_ds}: no sequences for that day; readable: "
                             f"{readable[0]}..{readable[-1]} ({len(readable)} days)")
        if with_sequences:
            con.register("sequences", read_sequences(tables, sequences_ds or latest_sequences_ds(tables)))
    if not found:
        raise ValueError(f"no Delta tables under {lake}/tables; check --lake (or $PINREC_LAKE)")
    return con, found


def query(lake: str, sql: str, sequences_ds: str | None = None):
    """Run `sql` and return the result as a pyarrow Table."""
    import duckdb

    con, found = connect(lake, sequences_ds, with_sequences=bool(SEQUENCES_REF.search(sql)))
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise ValueError(f"SQL failed: {e}{missing_table_hint(str(e), found)}") from None
    finally:
        con.close()


def missing_table_hint(error: str, found: list[str]) -> str:
    """' (this lake has ...; X is written by ...)' when the error names a lake table not here."""
    missing = [t for t in TABLES if t not in found and re.search(rf"\b{t}\b", error)]
    if not missing:
        return ""
    return (f" (this lake has {', '.join(found)}; "
            + "; ".join(f"{t} is written by {WRITTEN_BY[t]}" for t in missing) + ")")


def write_result(result, out: str) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pcsv.write_csv(_flatten_lists(result), path)
    elif path.suffix == ".parquet":
        pq.write_table(result, path)
    else:
        raise ValueError(f"--out {out!r}: use a .csv or .parquet file name")


def _flatten_lists(t):
    """CSV has no lists: render list columns as JSON-like text."""
    import pyarrow as pa

    cols = []
    for c in t.columns:
        if pa.types.is_list(c.type):
            c = pa.array([None if v is None else str(v) for v in c.to_pylist()], pa.string())
        cols.append(c)
    return pa.table(cols, names=t.column_names) if cols else t


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_lake_arg

    p.add_argument("sql", help='the query, e.g. "SELECT arm, count(*) FROM candidates GROUP BY arm"; '
                               "tables: " + ", ".join(TABLES))
    add_lake_arg(p)
    p.add_argument("--ds", help="the day `sequences` is read as of (default: the newest)")
    p.add_argument("--out", help="write the result to a .csv or .parquet file instead of printing")
    p.add_argument("--max-rows", type=int, default=50, help="rows to print (default 50)")


def run(args: argparse.Namespace) -> int:
    result = query(args.lake, args.sql, args.ds)
    if args.out:
        write_result(result, args.out)
        print(f"{result.num_rows:,} rows -> {args.out}")
        return 0
    import pandas as pd

    with pd.option_context("display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 60):
        df = result.slice(0, args.max_rows).to_pandas()
        print(df.to_string(index=False) if len(df) else "(no rows)")
    if result.num_rows > args.max_rows:
        print(f"... {result.num_rows - args.max_rows:,} more rows (use --out or --max-rows)",
              file=sys.stderr)
    return 0
