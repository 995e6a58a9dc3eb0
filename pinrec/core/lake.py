"""The delta-rs back end of the lake adapter (`LakeTables`, pinrec/core/lake_tables.py): the
embedded default, `DeltaRsTables`.

It offers every method of the interface (replace partitions, append, MERGE upsert with a literal
partition predicate, read as Arrow or Spark, history, compact, vacuum) and one more: Parquet
files written by someone else -- Spark (`stage_spark`) or pyarrow (the sequences and scoring
jobs) -- are committed into a partition without rewriting them (`commit_partition_files`):
the writer puts them in a staging folder inside the table and one transaction adds them.

A remote lake (`s3://bucket/prefix`, docs/adr/0003): delta-rs opens the tables at their URIs and
commits with S3 conditional writes (concurrent writers are safe); staged output is written to
the table's local mirror (`Lake.table`), uploaded under the same relative paths and then
committed; Spark reads a snapshot's files from local copies in that mirror (Delta data files are
immutable, so a copy never goes stale), because these machines have no hadoop-aws jars for s3a.
"""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in partition_stats
import pyarrow.dataset as pads

from pinrec.core.contracts import PARTITION_COLUMNS, TABLE_SCHEMAS
from pinrec.core.lake_tables import (MIN_SAFE_RETENTION_HOURS, RetryPolicy, TableNotFound, check_partitions,
                                     check_vacuum_retention, conform, ds_predicate, merge_predicate,
                                     spark_schema, with_retry)
from pinrec.core.layout import Lake


def snapshot_dataset(dt, uri: str, ds: Sequence[str] | None = None) -> pads.Dataset:
    """A pyarrow dataset of exactly the files a Delta snapshot `dt` (at `uri`) holds, each
    with its `ds` partition value as a fragment expression (partition columns are not in
    the Parquet files of a partitioned Delta table); `ds` keeps only those partitions."""
    from urllib.parse import unquote

    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    adds = pa.table(dt.get_add_actions(flatten=True))
    schema = pa.schema(dt.schema().to_arrow())
    if uri.startswith("s3://"):
        from pinrec.core.lake_store import filesystem

        fs, base = filesystem(), uri.split("://", 1)[1].rstrip("/")
    else:
        fs, base = pafs.FileSystem.from_uri(uri)
    values = (adds.column("partition.ds").to_pylist() if "partition.ds" in adds.column_names
              else [None] * adds.num_rows)
    paths, parts = [], []
    for rel, v in zip(adds.column("path").to_pylist(), values):
        if ds is not None and v not in ds:
            continue
        # the log holds paths relative to the table, percent-encoded (absolute only for clones)
        paths.append(pafs.FileSystem.from_uri(rel)[1] if "://" in rel else f"{base}/{unquote(rel)}")
        parts.append(pc.scalar(True) if "ds" not in schema.names else
                     pc.field("ds").is_null() if v is None else pc.field("ds") == v)
    return pads.FileSystemDataset.from_paths(paths, schema=schema, format=pads.ParquetFileFormat(),
                                             filesystem=fs, partitions=parts)


@dataclass(frozen=True)
class DeltaRsTables:
    """Delta tables under `lake.root/tables`, through delta-rs (the embedded default back end)."""

    lake: Lake
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    backend: ClassVar[str] = "deltalake"

    def uri(self, table: str) -> str:
        return self.lake.table_uri(table)

    def exists(self, table: str) -> bool:
        if self.lake.remote:
            from deltalake import DeltaTable

            return DeltaTable.is_deltatable(self.uri(table))
        return (self.lake.table(table) / "_delta_log").is_dir()

    def _table(self, table: str):
        from deltalake import DeltaTable

        if not self.exists(table):
            raise TableNotFound(
                f"Delta table {table!r} does not exist under {self.lake.location}; "
                f"run the job that writes it first (see `pinrec --help`)"
            )
        return DeltaTable(self.uri(table))

    # ---------------------------------------------------------------------------- writes
    def replace_partitions(self, table: str, data: pa.Table, partitions: Iterable[str]) -> int:
        """Atomically replace the given `ds` partitions with `data` (idempotent re-runs).

        Returns the new table version. Rows of other partitions are untouched; `data` must hold
        only rows of the named partitions.
        """
        from deltalake import write_deltalake

        parts = sorted(set(partitions))
        data = conform(table, data)
        check_partitions(table, data, parts)

        def op():
            kwargs = dict(partition_by=PARTITION_COLUMNS[table], mode="overwrite")
            if self.exists(table):
                kwargs["predicate"] = ds_predicate(parts)
            write_deltalake(self.uri(table), data, **kwargs)

        with_retry(op, f"replace {table} {parts}", self.retry)
        return self._table(table).version()

    def overwrite(self, table: str, data: pa.Table) -> int:
        """Replace the whole table (for small unpartitioned side tables such as item_features)."""
        from deltalake import write_deltalake

        data = conform(table, data)
        with_retry(lambda: write_deltalake(self.uri(table), data, mode="overwrite",
                                           partition_by=PARTITION_COLUMNS[table] or None),
                   f"overwrite {table}", self.retry)
        return self._table(table).version()

    def append(self, table: str, data: pa.Table) -> int:
        from deltalake import write_deltalake

        data = conform(table, data)
        with_retry(lambda: write_deltalake(self.uri(table), data, mode="append",
                                           partition_by=PARTITION_COLUMNS[table]),
                   f"append {table}", self.retry)
        return self._table(table).version()

    def merge(self, table: str, data: pa.Table, keys: Sequence[str], partitions: Iterable[str]) -> int:
        """Upsert `data` by `keys` into the named `ds` partitions: matched rows are updated, new
        ones inserted. The first write of an absent table creates it. Returns the new version."""
        from deltalake import write_deltalake

        parts = sorted(set(partitions))
        data = conform(table, data)
        check_partitions(table, data, parts)
        predicate = merge_predicate(keys, parts)

        def op():
            if not self.exists(table):
                try:
                    write_deltalake(self.uri(table), data.slice(0, 0), mode="error",
                                    partition_by=PARTITION_COLUMNS[table] or None)
                except Exception:  # noqa: BLE001 - a concurrent writer created it first
                    if not self.exists(table):
                        raise
            (self._table(table).merge(data, predicate, source_alias="s", target_alias="t")
             .when_matched_update_all().when_not_matched_insert_all().execute())

        with_retry(op, f"merge into {table} {parts}", self.retry)
        return self._table(table).version()

    def commit_partition_files(self, table: str, files_dir: Path, ds: str) -> int:
        """Commit the Parquet files under `files_dir` (a staging folder inside the table, see
        `staging_dir`), written by Spark or by pyarrow, as the new content of partition `ds`,
        without rewriting them. Idempotent: the transaction removes every file the partition
        had before."""
        from deltalake import DeltaTable, Schema
        from deltalake.transaction import create_table_with_add_actions

        root = self.lake.table(table)
        files_dir = Path(files_dir)
        if root not in files_dir.parents:
            raise ValueError(f"{files_dir} must lie inside the table folder {root}")
        for junk in list(files_dir.glob(".*.crc")) + list(files_dir.glob("_*")):
            junk.unlink()
        files = sorted(files_dir.glob("*.parquet"))
        actions = [_add_action(root, f, {"ds": ds}) for f in files]
        if self.lake.remote:  # same relative paths under the table's URI, then one commit
            from pinrec.core.lake_store import upload_file

            try:
                for f in files:
                    upload_file(f, f"{self.uri(table)}/{f.relative_to(root).as_posix()}")
            except BaseException:
                shutil.rmtree(files_dir, ignore_errors=True)
                raise
        schema = TABLE_SCHEMAS[table]
        partition_by = PARTITION_COLUMNS[table]

        def op():
            if not self.exists(table):
                try:
                    create_table_with_add_actions(self.uri(table), Schema.from_arrow(schema),
                                                  actions, mode="error", partition_by=partition_by)
                    return
                except Exception:  # noqa: BLE001 - lost the race to create; fall through
                    if not self.exists(table):
                        raise
            DeltaTable(self.uri(table)).create_write_transaction(
                actions, mode="overwrite", schema=schema, partition_by=partition_by,
                partition_filters=[("ds", "=", ds)])

        try:
            with_retry(op, f"commit files to {table} ds={ds}", self.retry)
        except BaseException:
            shutil.rmtree(files_dir, ignore_errors=True)  # never-committed files: nothing reads them
            raise
        if self.lake.remote:
            shutil.rmtree(files_dir, ignore_errors=True)  # the committed copies live in S3
        return self._table(table).version()

    def delete_partitions(self, table: str, partitions: Iterable[str]) -> int | None:
        """Remove the given `ds` partitions (a no-op for absent ones or an absent table);
        returns the new version, or None when nothing was there."""
        parts = sorted(set(partitions) & set(self.partitions(table)))
        if not parts:
            return None
        with_retry(lambda: self._table(table).delete(ds_predicate(parts)),
                   f"delete {table} {parts}", self.retry)
        return self._table(table).version()

    def staging_dir(self, table: str, ds: str) -> Path:
        """A fresh folder inside the table for one run's output files (unique per run)."""
        return self.lake.table(table) / f"ds={ds}" / f"run-{uuid.uuid4().hex[:12]}"

    # ---------------------------------------------------------------------------- reads
    def dataset(self, table: str, ds: Sequence[str] | None = None) -> pads.Dataset:
        """A pyarrow dataset over the live files of the table (optionally some partitions).

        Built from the snapshot's add actions on pyarrow's own filesystem, not by
        `DeltaTable.to_pyarrow_dataset()`: that one reads through delta-rs's Python filesystem
        handler, whose Arrow threads outlive the read, and a process that exits soon after
        aborts ("terminate called without an active exception", exit 134) -- 7 of 12 short
        reads of `events` here, so a finished job could report failure to Airflow. The same
        workaround is in delta-rs #2184 and polars #24169."""
        return snapshot_dataset(self._table(table), self.uri(table), ds)

    def read(self, table: str, ds: Sequence[str] | None = None, columns=None, filter=None) -> pa.Table:
        return self.dataset(table, ds).to_table(columns=columns, filter=filter)

    def live_files(self, table: str, ds: Sequence[str] | None = None) -> list[str]:
        """Absolute paths of the files of the current snapshot (never the folder listing)."""
        dt = self._table(table)
        if ds is not None and not ds:
            return []
        uris = dt.file_uris([("ds", "in", list(ds))] if ds is not None else None)
        return [u[len("file://"):] if u.startswith("file://") else u for u in uris]

    def local_files(self, table: str, ds: Sequence[str] | None = None) -> list[str]:
        """`live_files` as local paths: on a remote lake, copies in the table's local mirror
        (fetched once: a Delta data file never changes under its name)."""
        files = self.live_files(table, ds)
        if not self.lake.remote:
            return files
        from urllib.parse import unquote

        from pinrec.core.lake_store import download_file

        prefix, root, out = self.uri(table) + "/", self.lake.table(table), []
        for uri in files:
            local = root / unquote(uri[len(prefix):]) if uri.startswith(prefix) else None
            if local is None:
                raise ValueError(f"{table}: file {uri} lies outside the table {prefix}")
            if not local.exists():
                download_file(uri, local)
            out.append(str(local))
        return out

    def read_spark(self, spark, table: str, ds: Sequence[str] | None = None, columns=None):
        """A Spark DataFrame over the live files of the snapshot, without the partition column
        (Parquet files of a partitioned Delta table do not hold it; filter with `ds` instead)."""
        parts = set(PARTITION_COLUMNS[table])
        schema = spark_schema(pa.schema([f for f in TABLE_SCHEMAS[table] if f.name not in parts]))
        files = self.local_files(table, ds)
        df = (spark.read.schema(schema).parquet(*files) if files
              else spark.createDataFrame([], schema))
        return df.select(*columns) if columns else df

    def stage_spark(self, table: str, df, ds: str, staging: Path | None = None) -> Path:
        """Write a Spark DataFrame as Parquet into a staging folder inside the table (a fresh
        one unless given; not yet part of the table); `commit_partition_files` makes it partition
        `ds`, together with any other Parquet file put there."""
        staging = staging or self.staging_dir(table, ds)
        cols = [f.name for f in TABLE_SCHEMAS[table] if f.name not in PARTITION_COLUMNS[table]]
        df.select(*cols).write.mode("append").parquet(str(staging))
        return staging

    def write_spark_partition(self, table: str, df, ds: str) -> int:
        """Replace partition `ds` with a Spark DataFrame: Spark writes Parquet into the table
        folder, delta-rs commits those files as they are."""
        return self.commit_partition_files(table, self.stage_spark(table, df, ds), ds)

    def partitions(self, table: str) -> list[str]:
        if not self.exists(table):
            return []
        return sorted({p["ds"] for p in self._table(table).partitions()})

    def latest_partition(self, table: str, at_most: str | None = None) -> str | None:
        parts = [p for p in self.partitions(table) if at_most is None or p <= at_most]
        return parts[-1] if parts else None

    def version(self, table: str) -> int:
        return self._table(table).version()

    def partition_stats(self, table: str, ds: str) -> tuple[int, int]:
        """(rows, bytes) of the live files of partition `ds`, from the log (no data read)."""
        if not self.exists(table):
            return 0, 0
        adds = pa.table(self._table(table).get_add_actions(flatten=True))
        if not adds.num_rows or "partition.ds" not in adds.column_names:
            return 0, 0
        mine = adds.filter(pa.compute.equal(adds.column("partition.ds"), ds))
        rows = sum(v or 0 for v in mine.column("num_records").to_pylist())
        return int(rows), int(sum(mine.column("size_bytes").to_pylist()))

    def history(self, table: str, limit: int | None = None) -> list[dict]:
        return self._table(table).history(limit)

    # ---------------------------------------------------------------------------- maintenance
    def optimize(self, table: str, ds: Sequence[str] | None = None,
                 target_size: int | None = None) -> dict:
        """Compact small files (per partition); returns delta-rs metrics. Data is unchanged."""
        filters = [("ds", "in", list(ds))] if ds else None
        return with_retry(lambda: self._table(table).optimize.compact(
            partition_filters=filters, target_size=target_size), f"optimize {table}", self.retry)

    def vacuum(self, table: str, retention_hours: int = MIN_SAFE_RETENTION_HOURS,
               dry_run: bool = False, allow_unsafe: bool = False) -> list[str]:
        """Delete files no live snapshot within `retention_hours` references. Below a week a
        reader holding an older snapshot could lose files mid-read, so that needs `allow_unsafe`."""
        check_vacuum_retention(retention_hours, allow_unsafe)
        return self._table(table).vacuum(retention_hours=retention_hours, dry_run=dry_run,
                                         enforce_retention_duration=not allow_unsafe)


def _add_action(root: Path, f: Path, partition_values: dict[str, str]):
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    st = f.stat()
    stats = json.dumps({"numRecords": pq.read_metadata(f).num_rows})
    return AddAction(path=str(f.relative_to(root)), size=st.st_size,
                     partition_values=partition_values,
                     modification_time=int(st.st_mtime * 1000), data_change=True, stats=stats)
