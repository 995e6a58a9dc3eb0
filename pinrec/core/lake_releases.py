"""The `releases` table: what serving uses, published atomically on object storage.

A local lake publishes by replacing one file, its release record (`RELEASE.json`,
pinrec/core/layout.py); object stores have no atomic rename, so a remote lake appends one row
to a small Delta table, `<lake>/releases`, and that row names the model version, the index
version and the candidates `ds` together: one Delta commit (an S3 conditional write of the
next log entry) makes all three visible at once, so a reader that takes the latest row never
pairs a model of one day with the candidates of another. A publish that fails before its commit
leaves no row: the previous release keeps serving.

`seq` orders the releases. A publisher reads the latest row and appends `seq + 1` through a
MERGE keyed on `seq`: two publishers racing for the same `seq` cannot both commit (the loser's
MERGE conflicts, re-reads and takes the next `seq`). The table's Delta history is the audit log.
"""
from __future__ import annotations

import time
import uuid

from dataclasses import dataclass

import pyarrow as pa

RELEASES_SCHEMA = pa.schema([
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("model", pa.string()),
    pa.field("index", pa.string()),
    pa.field("candidates_ds", pa.string()),
    pa.field("released_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("release_id", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class Release:
    """What serves, published together: a model version, an index version and the candidates
    `ds`, on a remote lake (a `releases` row) and a local one (its release record,
    pinrec/core/layout.py). `seq` orders a lake's releases; -1 marks one read from the per-kind
    pointers of a local lake published before release records existed."""

    seq: int
    model: str | None
    index: str | None
    candidates_ds: str | None
    release_id: str


def releases_uri(lake) -> str:
    return f"{lake.remote}/releases" if lake.remote else str(lake.root / "releases")


def _latest(uri: str, seq: int | None = None) -> Release | None:
    """The newest release (or the one holding `seq`). Ties on `seq` -- only possible if two
    commits slipped past the conflict check -- go to the larger release_id, the same for
    every reader."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(uri):
        return None
    t = DeltaTable(uri).to_pyarrow_table()  # a few rows per day: small
    if seq is not None:
        t = t.filter(pc.equal(t.column("seq"), seq))
    if t.num_rows == 0:
        return None
    row = t.sort_by([("seq", "descending"), ("release_id", "descending")]).slice(0, 1).to_pylist()[0]
    return Release(row["seq"], row["model"], row["index"], row["candidates_ds"], row["release_id"])


def latest_release(lake) -> Release | None:
    """The release serving uses now (one read: model, index and candidates belong together)."""
    return _latest(releases_uri(lake))


def append_release(lake, **changes) -> Release:
    """Publish a new release: the latest one with `changes` (model=, index=, candidates_ds=)
    applied, as one Delta commit. Retried when a concurrent publisher took the same `seq`."""
    from deltalake import DeltaTable, write_deltalake

    from pinrec.core.lake_tables import with_retry

    uri = releases_uri(lake)
    unknown = set(changes) - {"model", "index", "candidates_ds"}
    if unknown:
        raise ValueError(f"a release names model, index and candidates_ds, not {sorted(unknown)}")

    def op() -> Release:
        prev = _latest(uri)
        base = dict(model=prev.model, index=prev.index, candidates_ds=prev.candidates_ds) if prev else \
            dict(model=None, index=None, candidates_ds=None)
        rel = Release(seq=(prev.seq + 1) if prev else 0, release_id=uuid.uuid4().hex,
                      **(base | changes))
        row = pa.table({"seq": [rel.seq], "model": [rel.model], "index": [rel.index],
                        "candidates_ds": [rel.candidates_ds],
                        "released_at": [int(time.time() * 1e6)], "release_id": [rel.release_id]},
                       ).cast(RELEASES_SCHEMA)
        if not DeltaTable.is_deltatable(uri):
            try:
                write_deltalake(uri, row.slice(0, 0), mode="error")
            except Exception:  # noqa: BLE001 - a concurrent publisher created it first
                if not DeltaTable.is_deltatable(uri):
                    raise
        (DeltaTable(uri).merge(row, "t.seq = s.seq", source_alias="s", target_alias="t")
         .when_not_matched_insert_all().execute())
        won = _latest(uri, rel.seq)
        if won is None or won.release_id != rel.release_id:
            # the MERGE matched an existing seq (a racer committed it first): take the next one
            from deltalake.exceptions import CommitFailedError

            raise CommitFailedError(f"release seq {rel.seq} was taken by a concurrent publisher")
        return rel

    return with_retry(op, f"publish release to {uri}")
