"""Retention: the realtime store keeps only what the batch layer has not absorbed yet.

The cutoff is `cutoff_ts` of the newest `sequences` partition: every event before it is already
in the users' batch sequences, so serving reads it from there and RocksDB may drop it.
"""
from __future__ import annotations

from pathlib import Path

from pinrec.core.layout import Lake


def batch_cutoff_us(lake_root: str | Path) -> int | None:
    """cutoff_ts (UTC µs) of the newest sequences partition, or None when there is none."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.sequences_store import latest_sequences_ds
    from pinrec.core.contracts import cutoff_us

    ds = latest_sequences_ds(DeltaRsTables(Lake.at(lake_root)))
    return None if ds is None else cutoff_us(ds)  # cutoff_ts of every row of sequences@ds
