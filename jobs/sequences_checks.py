"""Bad input for `pinrec sequences`: refuse it with an error that names the table, the
partition and the fix, rather than build a silently wrong sequence (issue 16, section 5).

- a landing (`events`) partition whose files do not have the contract's columns and types;
- events filed under a `ds` that is not the UTC day of their `ts` (the daily update reads only
  the partition of its day, so such an event would be missed or counted twice);
- an event id that already landed on an earlier day (`event_id` is the idempotency key: the
  same id with another timestamp is a different event reusing an id).
A missing previous day is not an error: `jobs.sequences` falls back to a full rebuild and
logs why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.core.contracts import DAY_US, EVENTS_SCHEMA, cutoff_us

REQUIRED = [f for f in EVENTS_SCHEMA if f.name != "ds"]
FIX_RELAND = ("Fix: land the partition again with the contract's columns "
              "(`pinrec data import ...`, or `LakeTables.replace_partitions('events', table, "
              "['{ds}'])`), then re-run `pinrec sequences --ds {ds}`.")


class BadInput(ValueError):
    pass


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(got) and got.unit == want.unit and got.tz is not None
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return got == want


def schema_problems(schema: pa.Schema) -> list[str]:
    """What keeps a Parquet file schema from being read as the events contract (pure)."""
    out = []
    for f in REQUIRED:
        if f.name not in schema.names:
            if not f.nullable:  # an optional column (query_text) may be absent: read as null
                out.append(f"required column {f.name!r} is missing")
        elif not _same_type(schema.field(f.name).type, f.type):
            out.append(f"column {f.name!r} is {schema.field(f.name).type}, expected {f.type}")
    return out


def check_events_schema(files: Sequence[str], ds: str) -> None:
    """Read only the footers of the partition's live files."""
    import pyarrow.parquet as pq

    for path in files:
        problems = schema_problems(pq.read_schema(path))
        if problems:
            raise BadInput(f"table 'events', partition ds={ds}: file {Path(path).name} does not "
                           f"match the landing contract: {'; '.join(problems)}. "
                           + FIX_RELAND.format(ds=ds))


def check_day_window(day_events: pa.Table, ds: str) -> None:
    """Every event of partition ds has ts in [ds 00:00, ds+1 00:00) UTC."""
    if not day_events.num_rows:
        return
    cutoff = cutoff_us(ds)
    ts = pc.cast(day_events.column("ts"), pa.int64()).to_numpy()
    bad = np.flatnonzero((ts < cutoff - DAY_US) | (ts >= cutoff))
    if bad.size:
        i = int(bad[0])
        ex = day_events.slice(i, 1).to_pylist()[0]
        raise BadInput(f"table 'events', partition ds={ds}: {bad.size:,} of {day_events.num_rows:,} "
                       f"events have a ts outside that UTC day (e.g. event_id={ex['event_id']!r}, "
                       f"ts={ex['ts']}); `ds` must be the UTC date of `ts`. Fix: move them to the "
                       f"partition of their day and land ds={ds} again, then re-run "
                       f"`pinrec sequences` for every day you moved events into or out of.")


def check_cross_day_duplicates(day_events: pa.Table, earlier: pa.Table, ds: str) -> None:
    """`earlier`: events (user_id, event_id, ds) of the days before ds that the check covers.
    An event id of ds already there is a re-landed or reused id."""
    if not day_events.num_rows or not earlier.num_rows:
        return
    seen = earlier.select(["user_id", "event_id", "ds"]).rename_columns(
        ["user_id", "event_id", "earlier_ds"])
    today = day_events.select(["user_id", "event_id"]).group_by(["user_id", "event_id"]).aggregate([])
    dup = today.join(seen, ["user_id", "event_id"], join_type="inner")
    if dup.num_rows:
        ex = dup.slice(0, 1).to_pylist()[0]
        days = sorted(set(dup.column("earlier_ds").to_pylist()))
        raise BadInput(f"table 'events', partition ds={ds}: {dup.num_rows:,} event ids already "
                       f"landed on an earlier day ({', '.join(days[:5])}; e.g. "
                       f"event_id={ex['event_id']!r} of user {ex['user_id']}). event_id is the "
                       f"idempotency key, so a second copy on another day is a re-landed or "
                       f"reused id. Fix: remove the copies from ds={ds} (or give reused ids new "
                       f"values) and land the partition again, then re-run `pinrec sequences "
                       f"--ds {ds}`.")
