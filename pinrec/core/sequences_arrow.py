"""The sequences transforms in Arrow: the embedded (delta-rs) engine and the read path.

Same contract as `jobs.sequences.build_sequences` (window, de-duplication by event_id with the
smallest (ts, item, type, action, surface) winning, order by (ts, event_id), keep the newest
`max_len`). Three uses (docs/adr/0002-sequences-daily-cost.md):
- `day_rows`: the daily job's whole output, one row per user active that day;
- `merge_batches`: a checkpoint (sequences as of an earlier ds) + the day rows after it ->
  sequences as of ds. Users fall in two groups:
  - no day row since the checkpoint: their arrays are trimmed of events older than the new
    window start (arrays are chronological, so that is a prefix); rows left empty are dropped;
  - a day row since the checkpoint: checkpoint events + day events are re-built by
    `rebuild_users`.
  `pinrec.core.sequences_store.read_sequences` runs it for every reader; the periodic checkpoint
  writes its output.
Spark's fixed per-job cost (seconds) is larger than a whole day's update on one machine, so the
embedded back end skips Spark for these; a cluster runs the Spark twins in `jobs.sequences`.
The tests and the bench check both against the full Spark rebuild.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.core.contracts import DAY_US, EVENTS_SCHEMA, SEQUENCES_SCHEMA

EVENT_FIELDS = ("ts", "event_id", "item_id", "item_type", "action", "surface")
# Sequence array column <- event field, in contract order. The Spark engine (jobs/sequences.py)
# imports EVENT_FIELDS and ARRAY_COLUMNS from here: one definition for both engines.
ARRAY_COLUMNS = (("event_ids", "event_id"), ("item_ids", "item_id"), ("item_types", "item_type"),
                 ("actions", "action"), ("surfaces", "surface"), ("ts", "ts"))
FILE_SCHEMA = pa.schema([f for f in SEQUENCES_SCHEMA if f.name != "ds"])
EVENT_ROW_SCHEMA = pa.schema([EVENTS_SCHEMA.field(n) for n in ("user_id", *EVENT_FIELDS)])
TS = pa.timestamp("us", tz="UTC")


def _lists(offsets: np.ndarray, values: dict[str, pa.Array], users, cutoff_us: int) -> pa.RecordBatch:
    """Sequence rows from per-user offsets into flat, already ordered element arrays."""
    off = pa.array(offsets.astype(np.int32))
    n = len(offsets) - 1
    cols = {"user_id": users}
    for c, f in ARRAY_COLUMNS:
        cols[c] = pa.ListArray.from_arrays(off, values[f])
    cols["length"] = pa.array(np.diff(offsets).astype(np.int32))
    cols["cutoff_ts"] = pa.array(np.full(n, cutoff_us, np.int64)).cast(TS)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in FILE_SCHEMA], schema=FILE_SCHEMA)


def trim_and_restamp(batch: pa.RecordBatch, start_us: int, cutoff_us: int) -> pa.RecordBatch:
    """Rows of users not active on ds: drop elements before `start_us`, set the new cutoff."""
    ts = batch.column("ts")
    flat_ts = pc.list_flatten(ts).cast(pa.int64()).to_numpy()
    keep = flat_ts >= start_us
    lengths = pc.list_value_length(ts).to_numpy(zero_copy_only=False)
    if keep.all():  # the common case: nothing left the window, only the cutoff changes
        counts = lengths
        values = {f: pc.list_flatten(batch.column(c)) for c, f in ARRAY_COLUMNS}
    else:
        parent = pc.list_parent_indices(ts).to_numpy()
        counts = np.bincount(parent[keep], minlength=batch.num_rows)
        mask = pa.array(keep)
        values = {f: pc.list_flatten(batch.column(c)).filter(mask) for c, f in ARRAY_COLUMNS}
    rows = _lists(np.concatenate([[0], np.cumsum(counts)]), values, batch.column("user_id"),
                  cutoff_us)
    return rows.filter(pa.array(counts > 0)) if (counts == 0).any() else rows


def explode(seqs) -> pa.Table:
    """Sequence rows -> one event row per element (user_id + EVENT_FIELDS)."""
    lists = {c: seqs.column(c) for c, _ in ARRAY_COLUMNS}
    lists = {c: a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for c, a in lists.items()}
    parent = pc.list_parent_indices(lists["item_ids"])
    cols = [pc.take(seqs.column("user_id"), parent)]
    cols += [pc.list_flatten(lists[c]) for c, f in sorted(ARRAY_COLUMNS, key=lambda x: EVENT_FIELDS.index(x[1]))]
    return pa.table(cols, schema=EVENT_ROW_SCHEMA)


def _changed(col: pa.ChunkedArray) -> np.ndarray:
    """[n] bool: row i differs from row i-1 (row 0 counts as changed)."""
    a = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    out = np.ones(len(a), bool)
    if len(a) > 1:
        out[1:] = pc.not_equal(a.slice(1), a.slice(0, len(a) - 1)).to_numpy(zero_copy_only=False)
    return out


def rebuild_users(events: pa.Table, start_us: int, cutoff_us: int, max_len: int) -> pa.RecordBatch:
    """Events of some users -> their sequences: window, dedup, order, cap (the contract)."""
    ts = pc.cast(events.column("ts"), pa.int64())
    events = events.filter(pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, cutoff_us)))
    if events.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=FILE_SCHEMA)
    # De-duplicate (user, event_id): the smallest (ts, item, type, action, surface) wins.
    keys = ["user_id", "event_id", "ts", "item_id", "item_type", "action", "surface"]
    events = events.take(pc.sort_indices(events, sort_keys=[(k, "ascending") for k in keys]))
    first = _changed(events.column("user_id")) | _changed(events.column("event_id"))
    events = events.filter(pa.array(first))
    # Chronological per user, ties by event_id; keep the newest max_len.
    order = [("user_id", "ascending"), ("ts", "ascending"), ("event_id", "ascending")]
    events = events.take(pc.sort_indices(events, sort_keys=order))
    starts = np.flatnonzero(_changed(events.column("user_id")))
    ends = np.append(starts[1:], events.num_rows)
    group_end = np.repeat(ends, ends - starts)
    keep = group_end - np.arange(events.num_rows) <= max_len
    events = events.filter(pa.array(keep))
    counts = np.minimum(ends - starts, max_len)
    users = pc.take(events.column("user_id"), pa.array(np.concatenate([[0], np.cumsum(counts)[:-1]])))
    values = {f: events.column(f).combine_chunks() for f in EVENT_FIELDS}
    return _lists(np.concatenate([[0], np.cumsum(counts)]), values,
                  users.combine_chunks() if isinstance(users, pa.ChunkedArray) else users, cutoff_us)


def day_rows(day_events: pa.Table, cutoff_us: int, max_len: int) -> pa.RecordBatch:
    """One day's events -> one row per active user: that day's events, de-duplicated, ordered,
    capped. Exact as a building block because a window is whole days: when an event of the day
    is in a later window, every newer event of the same day is too, so the per-day cap never
    drops an event a windowed, capped sequence keeps."""
    return rebuild_users(day_events.select(EVENT_ROW_SCHEMA.names).cast(EVENT_ROW_SCHEMA),
                         cutoff_us - DAY_US, cutoff_us, max_len)


def merge_batches(base_batches: Iterable[pa.RecordBatch], days: pa.Table, start_us: int,
                  cutoff_us: int, max_len: int) -> Iterator[pa.RecordBatch]:
    """Sequences as of `cutoff_us` from a checkpoint (`base_batches`, sequences as of an earlier
    cutoff, streamed) and the day rows after it (`days`). Users without a day row keep their
    checkpoint row, trimmed to the window; the others are rebuilt from checkpoint + day rows
    (why that is exact: `jobs.sequences`). Yields FILE_SCHEMA batches, rebuilt users last."""
    days = days.select(FILE_SCHEMA.names).cast(FILE_SCHEMA) if days.num_rows else None
    active = (pc.unique(days.column("user_id").combine_chunks()) if days is not None
              else pa.array([], pa.int64()))
    touched = [explode(days)] if days is not None else []
    for batch in base_batches:
        batch = batch.select(FILE_SCHEMA.names) if hasattr(batch, "select") else batch
        is_active = pc.is_in(batch.column("user_id"), value_set=active)
        kept = trim_and_restamp(batch.filter(pc.invert(is_active)), start_us, cutoff_us)
        if kept.num_rows:
            yield kept
        act = batch.filter(is_active)
        if act.num_rows:
            touched.append(explode(act))
    if touched:
        rebuilt = rebuild_users(pa.concat_tables(touched), start_us, cutoff_us, max_len)
        if rebuilt.num_rows:
            yield rebuilt


def write_batches(batches: Iterable[pa.RecordBatch], path) -> int:
    """Stream FILE_SCHEMA batches into one Parquet file; returns rows written."""
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(str(path), FILE_SCHEMA, compression="snappy") as w:
        for b in batches:
            w.write_batch(b.cast(FILE_SCHEMA) if b.schema != FILE_SCHEMA else b)
            rows += b.num_rows
    return rows
