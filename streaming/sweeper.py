"""Retention: the realtime store keeps only what the batch layer has not absorbed yet.

The cutoff is `cutoff_ts` of the newest `sequences` partition: every event before it is already
in the users' batch sequences, so serving reads it from there and RocksDB may drop it.
"""
from __future__ import annotations

from pathlib import Path

from pinrec.layout import Lake


def batch_cutoff_us(lake_root: str | Path) -> int | None:
    """cutoff_ts (UTC µs) of the newest sequences partition, or None when there is none."""
    import pyarrow.compute as pc

    from jobs.lake import LakeTables

    tables = LakeTables(Lake.at(lake_root))
    ds = tables.latest_partition("sequences")
    if ds is None:
        return None
    col = tables.read("sequences", [ds], columns=["cutoff_ts"]).column("cutoff_ts")
    if len(col) == 0:
        return None
    return int(pc.max(col).cast("int64").as_py())
