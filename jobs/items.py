"""`pinrec items --ds D`: every item seen in the 365-day window, with its type and features.

read (events of the window, item_features side table) -> pure transform -> write items@ds.
Features come from the one featurizer, `pinrec.core.features.feature_matrix`: the content vector
for synthetic pins, hashed attribute multi-hot for Beauty/Taobao, hashed character trigrams
of the query text for search queries. Aggregation streams the window partition by partition
(partial min/max/count, then one final pass), so memory is bounded by the item count.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.core.contracts import ITEMS_SCHEMA, parse_ds
from pinrec.core.features import FEATURE_DIM
from pinrec.core.layout import Lake

AGG_KEYS = ["item_id", "item_type"]


@dataclass(frozen=True)
class ItemsConfig:
    ds: str
    lake: str
    window_days: int = 365
    feature_dim: int = FEATURE_DIM  # width of the hashed attribute / trigram features (the model's feature_dim)

    def __post_init__(self):
        parse_ds(self.ds)
        if self.feature_dim < 1:
            raise ValueError(f"--feature-dim must be >= 1, got {self.feature_dim}")


def partial_stats(events: pa.Table) -> pa.Table:
    """Per (item_id, item_type) within one chunk: first/last seen, count, a query text."""
    g = events.group_by(AGG_KEYS).aggregate(
        [("ts", "min"), ("ts", "max"), ("ts", "count"), ("query_text", "min")])
    return g.rename_columns([_rename(n) for n in g.column_names])


def _rename(name: str) -> str:
    return {"ts_min": "first_seen", "ts_max": "last_seen", "ts_count": "engagements",
            "query_text_min": "query_text"}.get(name, name)


def combine_stats(partials: list[pa.Table]) -> pa.Table:
    """Merge per-chunk partials into one row per item (sorted by item_id)."""
    t = pa.concat_tables(partials)
    g = t.group_by(AGG_KEYS).aggregate([("first_seen", "min"), ("last_seen", "max"),
                                        ("engagements", "sum"), ("query_text", "min")])
    g = g.rename_columns([n.rsplit("_", 1)[0] if n.endswith(("_min", "_max", "_sum")) else n
                          for n in g.column_names])
    return g.sort_by([("item_id", "ascending"), ("item_type", "ascending")])


def build_items(stats: pa.Table, item_features: pa.Table | None, ds: str,
                feature_dim: int = FEATURE_DIM) -> pa.Table:
    """Item stats + side features -> the items partition for ds (pure)."""
    from pinrec.core.features import feature_matrix

    n = stats.num_rows
    attrs, contents = [None] * n, [None] * n
    if item_features is not None and item_features.num_rows:
        side_ids = item_features.column("item_id").to_numpy()
        order = np.argsort(side_ids, kind="stable")
        ids = stats.column("item_id").to_numpy()
        pos = np.searchsorted(side_ids[order], ids).clip(0, len(side_ids) - 1)
        hit = side_ids[order][pos] == ids
        side_attrs = item_features.column("attributes").to_pylist()
        side_content = item_features.column("content").to_pylist()
        for i in np.flatnonzero(hit):
            j = order[pos[i]]
            attrs[i], contents[i] = side_attrs[j], side_content[j]
    feats = feature_matrix(stats.column("item_type").to_pylist(), attrs, contents,
                           stats.column("query_text").to_pylist(), feature_dim)
    return pa.table({
        "item_id": stats.column("item_id"),
        "item_type": stats.column("item_type"),
        "features": pa.array(list(feats), pa.list_(pa.float32())),
        "first_seen": stats.column("first_seen"),
        "last_seen": stats.column("last_seen"),
        "engagements": pc.cast(stats.column("engagements"), pa.int64()),
        "ds": pa.array([ds] * n, pa.string()),
    }).cast(ITEMS_SCHEMA)


def attribute_report(item_features: pa.Table | None, dim: int) -> str | None:
    """One line on how the side table's attribute values fill `dim` buckets, or None."""
    from pinrec.core.features import shared_buckets

    if item_features is None or not item_features.num_rows:
        return None
    n, shared = shared_buckets(item_features.column("attributes").to_pylist(), dim)
    if not n:
        return None
    return (f"attributes: {n:,} distinct values in {dim:,} buckets; {shared:,} ({shared / n:.0%}) share "
            f"a bucket with another value (a wider --feature-dim separates them)")


def run_job(cfg: ItemsConfig) -> tuple[int, int]:
    """Build and write items@ds; returns (number of items, table version)."""
    import pyarrow.dataset as pads

    from pinrec.core.lake import DeltaRsTables
    from jobs.sequences import window_bounds, window_partitions

    tables = DeltaRsTables(Lake.at(cfg.lake))
    if not tables.exists("events"):
        raise ValueError(f"no events table under {cfg.lake}; import or synthesise data first")
    start, cutoff = window_bounds(cfg.ds, cfg.window_days)
    parts = sorted(set(window_partitions(cfg.ds, cfg.window_days)) & set(tables.partitions("events")))
    ts_type = pa.timestamp("us", tz="UTC")
    in_window = ((pads.field("ts") >= pa.scalar(start, ts_type))
                 & (pads.field("ts") < pa.scalar(cutoff, ts_type)))
    scanner = tables.dataset("events", parts).scanner(
        columns=["item_id", "item_type", "ts", "query_text"], filter=in_window, batch_size=1 << 20)
    partials = [partial_stats(pa.Table.from_batches([b])) for b in scanner.to_batches() if b.num_rows]
    if not partials:
        raise ValueError(f"no events in the {cfg.window_days}-day window of {cfg.ds} under {cfg.lake}")
    side = tables.read("item_features") if tables.exists("item_features") else None
    report = attribute_report(side, cfg.feature_dim)
    if report:
        print(report)
    items = build_items(combine_stats(partials), side, cfg.ds, cfg.feature_dim)
    return items.num_rows, tables.replace_partitions("items", items, [cfg.ds])


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_ds_arg, add_lake_arg

    add_lake_arg(p)
    add_ds_arg(p)
    p.add_argument("--window-days", type=int, default=365)
    p.add_argument("--feature-dim", type=int, default=FEATURE_DIM,
                   help="feature width; must equal the model's feature_dim (pinrec train --set feature_dim=N)")


def run(args: argparse.Namespace) -> int:
    n, version = run_job(ItemsConfig(ds=args.ds, lake=args.lake, window_days=args.window_days,
                                     feature_dim=args.feature_dim))
    print(f"items ds={args.ds}: {n:,} items -> table version {version}")
    return 0
