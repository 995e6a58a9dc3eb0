"""The incremental sequences update in Arrow, for the embedded (delta-rs) back end.

Same contract as `jobs.sequences.build_sequences` (window, de-duplication by event_id with the
smallest (ts, item, type, action, surface) winning, order by (ts, event_id), keep the newest
`max_len`), applied to yesterday's sequences plus one day of events. Why it is exact is in
`jobs.sequences`. Users fall in two groups:
- not active on ds: their arrays are trimmed of events older than the new window start
  (arrays are chronological, so that is a prefix) and re-stamped; rows left empty are dropped;
- active on ds: yesterday's events + today's are re-built by `rebuild_users`.
Spark's fixed per-job cost (seconds) is larger than this whole update for a day of 200k users
(measured: `pinrec bench sequences`), so on one machine this path skips Spark; on a cluster the
delta-spark back end runs `jobs.sequences.build_incremental` instead. The tests and the bench
check that both equal the full Spark rebuild.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.contracts import EVENTS_SCHEMA, SEQUENCES_SCHEMA

EVENT_FIELDS = ("ts", "event_id", "item_id", "item_type", "action", "surface")
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


def incremental(tables, prev_ds: str, day_events: pa.Table, start_us: int, cutoff_us: int,
                max_len: int, out_dir) -> int:
    """Write sequences for the new day into `out_dir` from sequences@prev_ds and the day's
    events (user_id + EVENT_FIELDS); one streaming pass over prev. Returns rows written."""
    import pyarrow.parquet as pq

    active = pc.unique(day_events.column("user_id").combine_chunks()) if day_events.num_rows \
        else pa.array([], pa.int64())
    touched, rows = [day_events.select(EVENT_ROW_SCHEMA.names).cast(EVENT_ROW_SCHEMA)], 0
    scanner = tables.dataset("sequences", [prev_ds]).scanner(columns=FILE_SCHEMA.names,
                                                             batch_size=65_536)
    with pq.ParquetWriter(str(out_dir / "part-00000.parquet"), FILE_SCHEMA, compression="snappy") as w:
        for batch in scanner.to_batches():
            is_active = pc.is_in(batch.column("user_id"), value_set=active)
            kept = trim_and_restamp(batch.filter(pc.invert(is_active)), start_us, cutoff_us)
            if kept.num_rows:
                w.write_batch(kept)
                rows += kept.num_rows
            act = batch.filter(is_active)
            if act.num_rows:
                touched.append(explode(act))
        rebuilt = rebuild_users(pa.concat_tables(touched), start_us, cutoff_us, max_len)
        if rebuilt.num_rows:
            w.write_batch(rebuilt)
            rows += rebuilt.num_rows
    return rows
