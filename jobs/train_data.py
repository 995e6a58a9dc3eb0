"""What `pinrec train` (and `pinrec eval`, the gate's evaluation) train on, read from a lake.

`read_training_data`: the sequences partition of ds as one row per token (else the imported
`events`), and item features; `prepare`: the catalog and per-user sequences built from them;
`items_table_features` / `use_items_features`: the `items` table's vectors given to the catalog
so training featurises every item as index, score and serving do.
"""
from __future__ import annotations

from dataclasses import dataclass


def read_training_data(lake, ds=None):
    """(events-like arrow table, item_features table or None) from the lake."""
    from pinrec.core.lake import DeltaRsTables

    lt = DeltaRsTables(lake)
    feats = lt.read("item_features") if lt.exists("item_features") else None
    from pinrec.core.sequences_store import read_sequences, sequences_partitions

    if ds and ds in sequences_partitions(lt):
        return events_from_sequences(read_sequences(lt, ds)), feats
    if not lt.exists("events"):
        raise ValueError(f"lake {lake.root} has no events table: run `pinrec data import ...` or "
                         f"`pinrec data synth ... --lake {lake.root}` first")
    ev = lt.read("events", columns=["user_id", "item_id", "item_type", "query_text", "action", "surface", "ts"])
    return ev, feats


def items_table_features(lake, ds: str | None):
    """The `items` table at `ds` (item_id, features), or None when there is none: the vectors
    that index, score and serving give each item."""
    from pinrec.core.lake import DeltaRsTables

    lt = DeltaRsTables(lake)
    if ds and lt.exists("items") and ds in lt.partitions("items"):
        return lt.read("items", [ds], columns=["item_id", "features"])
    return None


def use_items_features(catalog, items, width: int) -> int:
    """Give the catalog rows the `items` table's vectors -> how many rows got one.

    Training from `sequences` has no query texts (the contract does not carry them), so each
    query token would be featurised from an empty text here and from its real text at serving:
    a train/serve skew on every search token. The items table is built before `train` in the
    DAG, by the same featuriser, at the same width (a different width is refused, with the fix)."""
    from pinrec_model.api import ItemFeatures

    f = ItemFeatures.from_table(items, width)
    rows = catalog.rows(f.ids)
    hit = rows >= 0
    catalog.features[rows[hit]] = f.features[hit]
    return int(hit.sum())


def events_from_sequences(seq):
    """The sequences contract (one row per user, arrays) -> one row per token."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(seq.column("item_ids")).to_numpy(zero_copy_only=False)
    users = np.repeat(seq.column("user_id").to_numpy(), lengths)
    flat = lambda c: pc.list_flatten(seq.column(c))
    return pa.table({"user_id": users, "item_id": flat("item_ids"), "item_type": flat("item_types"),
                     "query_text": pa.nulls(int(lengths.sum()), pa.string()), "action": flat("actions"),
                     "surface": flat("surfaces"), "ts": flat("ts")})


@dataclass
class Prepared:
    catalog: object
    seqs: object  # UserSeqs


def prepare(events, item_features, vocab, feature_dim: int | None = None):
    from pinrec.core.features import FEATURE_DIM
    from pinrec_model.data import build_catalog, build_user_seqs

    cat = build_catalog(events, item_features, feature_dim or FEATURE_DIM)
    return Prepared(cat, build_user_seqs(events, cat, vocab))
