"""The signal service: a user's batch sequence + the realtime tail, merged by ONE stated rule.

Merge rule (tested over every arrival order of the tail):
  1. batch events come from the newest `sequences` partition (everything before its cutoff_ts);
  2. realtime events come from RocksDB, those with ts >= cutoff_ts (older ones are absorbed);
  3. the union is de-duplicated by `event_id` — when both sides hold an id, the batch copy
     is kept (it passed the batch layer's checks) — and ordered by (ts, event_id), so the
     result does not depend on the order in which events were written or delivered;
  4. the newest `max_len` events are kept, and an optional request-time search query is
     appended as the last token (the paper's search surface), at `now`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pinrec.core.contracts import QUERY_ACTION, query_item_id
from pinrec.core.events import Event


def merge_history(batch: Iterable[Event], tail: Iterable[Event], cutoff_us: int | None,
                  max_len: int, query: str | None = None, now_us: int = 0) -> list[Event]:
    """Pure: the merged chronological history (rule in the module docstring)."""
    by_id: dict[str, Event] = {}
    for e in batch:
        by_id.setdefault(e.event_id, e)
    batch_ids = set(by_id)
    for e in tail:
        if (cutoff_us is not None and e.ts_us < cutoff_us) or e.event_id in batch_ids:
            continue
        # Two realtime copies of one id cannot exist with the RocksDB key, but the rule must
        # not depend on arrival order anyway: the smaller (ts, event_id, ...) wins.
        prev = by_id.get(e.event_id)
        if prev is None or _order(e) < _order(prev):
            by_id[e.event_id] = e
    merged = sorted(by_id.values(), key=_order)[-max_len:] if max_len > 0 else []
    if query is not None and query.strip():
        merged.append(query_event(query, now_us))
    return merged


def _order(e: Event) -> tuple:
    return (e.ts_us, e.event_id, e.item_id, e.action)


def query_event(query: str, now_us: int) -> Event:
    return Event(event_id=f"query@{now_us}", user_id=-1, item_id=query_item_id(query),
                 item_type="query", action=QUERY_ACTION, surface="search", ts_us=now_us,
                 query_text=query)


@dataclass
class BatchSequences:
    """The newest `sequences` partition, flattened into numpy arrays, indexed by user."""

    ds: str | None
    cutoff_us: int | None
    index: dict[int, tuple[int, int]]
    cols: dict[str, np.ndarray]

    @staticmethod
    def empty() -> "BatchSequences":
        return BatchSequences(None, None, {}, {})

    @staticmethod
    def from_table(table, ds: str) -> "BatchSequences":
        import pyarrow.compute as pc

        offsets = table.column("item_ids").combine_chunks().offsets.to_numpy()
        users = table.column("user_id").to_numpy()
        index = {int(u): (int(offsets[i]), int(offsets[i + 1])) for i, u in enumerate(users)}
        cols = {}
        for c in ("event_ids", "item_ids", "item_types", "actions", "surfaces", "ts"):
            flat = pc.list_flatten(table.column(c).combine_chunks())
            if c == "ts":
                flat = flat.cast("int64")
            cols[c] = flat.to_numpy(zero_copy_only=False)
        cutoff = table.column("cutoff_ts").cast("int64")
        cutoff_us = int(pc.max(cutoff).as_py()) if len(cutoff) else None
        return BatchSequences(ds, cutoff_us, index, cols)

    def events(self, user_id: int) -> list[Event]:
        span = self.index.get(user_id)
        if span is None:
            return []
        a, b = span
        c = self.cols
        return [Event(str(c["event_ids"][i]), user_id, int(c["item_ids"][i]), str(c["item_types"][i]),
                      str(c["actions"][i]), str(c["surfaces"][i]), int(c["ts"][i]))
                for i in range(a, b)]


def load_batch_sequences(lake_root) -> BatchSequences:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    from pinrec.core.sequences_store import latest_sequences_ds, read_sequences

    tables = DeltaRsTables(Lake.at(lake_root))
    ds = latest_sequences_ds(tables)
    if ds is None:
        return BatchSequences.empty()
    cols = ["user_id", "event_ids", "item_ids", "item_types", "actions", "surfaces", "ts", "cutoff_ts"]
    return BatchSequences.from_table(read_sequences(tables, ds, columns=cols), ds)
