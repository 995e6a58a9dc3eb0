"""The lake adapter: one narrow interface over the Delta tables.

Every job reads and writes tables through `LakeTables`, never through file paths, because a
Delta folder read as plain Parquet returns files that were logically removed (DESIGN.md §4).
This module holds the embedded default back end, delta-rs (`deltalake`); the batch-layer issue
adds MERGE, maintenance and the delta-spark back end behind the same methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as pads

from pinrec.contracts import PARTITION_COLUMNS, TABLE_SCHEMAS
from pinrec.layout import Lake


class TableNotFound(FileNotFoundError):
    pass


def conform(table: str, data: pa.Table) -> pa.Table:
    """Cast `data` to the contract schema of `table`, with a clear error on a mismatch."""
    schema = TABLE_SCHEMAS[table]
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise ValueError(f"cannot write table {table!r}: missing columns {missing}")
    data = data.select(schema.names)
    try:
        return data.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"cannot write table {table!r}: columns do not fit its schema: {e}") from e


def _ds_predicate(values: Sequence[str]) -> str:
    for v in values:
        if "'" in v:
            raise ValueError(f"bad partition value {v!r}")
    return "ds IN (" + ", ".join(f"'{v}'" for v in sorted(set(values))) + ")"


@dataclass(frozen=True)
class LakeTables:
    """Delta tables under `lake.root/tables`, through delta-rs."""

    lake: Lake

    def uri(self, table: str) -> str:
        return str(self.lake.table(table))

    def exists(self, table: str) -> bool:
        return (self.lake.table(table) / "_delta_log").is_dir()

    def _table(self, table: str):
        from deltalake import DeltaTable

        if not self.exists(table):
            raise TableNotFound(
                f"Delta table {table!r} does not exist under {self.lake.root}; "
                f"run the job that writes it first (see `pinrec --help`)"
            )
        return DeltaTable(self.uri(table))

    def replace_partitions(self, table: str, data: pa.Table, partitions: Iterable[str]) -> int:
        """Atomically replace the given `ds` partitions with `data` (idempotent re-runs).

        Returns the new table version. Rows of other partitions are untouched; `data` must hold
        only rows of the named partitions.
        """
        from deltalake import write_deltalake

        parts = sorted(set(partitions))
        data = conform(table, data)
        stray = set(data.column("ds").unique().to_pylist()) - set(parts)
        if stray:
            raise ValueError(f"rows for partitions {sorted(stray)} outside {parts} in {table!r}")
        kwargs = dict(partition_by=PARTITION_COLUMNS[table], mode="overwrite")
        if self.exists(table):
            kwargs["predicate"] = _ds_predicate(parts)
        write_deltalake(self.uri(table), data, **kwargs)
        return self._table(table).version()

    def overwrite(self, table: str, data: pa.Table) -> int:
        """Replace the whole table (for small unpartitioned side tables such as item_features)."""
        from deltalake import write_deltalake

        write_deltalake(self.uri(table), conform(table, data), mode="overwrite",
                        partition_by=PARTITION_COLUMNS[table] or None)
        return self._table(table).version()

    def append(self, table: str, data: pa.Table) -> int:
        from deltalake import write_deltalake

        write_deltalake(
            self.uri(table), conform(table, data), partition_by=PARTITION_COLUMNS[table], mode="append"
        )
        return self._table(table).version()

    def dataset(self, table: str, ds: Sequence[str] | None = None) -> pads.Dataset:
        """A pyarrow dataset over the live files of the table (optionally some partitions)."""
        dt = self._table(table)
        if ds is None:
            return dt.to_pyarrow_dataset()
        return dt.to_pyarrow_dataset(partitions=[("ds", "in", list(ds))])

    def read(self, table: str, ds: Sequence[str] | None = None, columns=None, filter=None) -> pa.Table:
        return self.dataset(table, ds).to_table(columns=columns, filter=filter)

    def partitions(self, table: str) -> list[str]:
        if not self.exists(table):
            return []
        return sorted({p["ds"] for p in self._table(table).partitions()})

    def latest_partition(self, table: str, at_most: str | None = None) -> str | None:
        parts = [p for p in self.partitions(table) if at_most is None or p <= at_most]
        return parts[-1] if parts else None

    def version(self, table: str) -> int:
        return self._table(table).version()

    def history(self, table: str, limit: int | None = None) -> list[dict]:
        return self._table(table).history(limit)
