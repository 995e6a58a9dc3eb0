"""The delta-spark back end of the lake adapter (`LakeTables`, pinrec/core/lake_tables.py), and
`open_tables`, which picks the back end for a run.

Used when the Delta Spark jars are on the session's classpath (the compose stack mounts them;
these machines cannot download them, so CI runs the contract suite against delta-rs only and
skips this back end with that reason). Writes go through `DeltaTable.forPath` and Spark's Delta
writer, with the same literal partition predicates, so the two back ends produce the same
tables and the same conflict behaviour. pyspark and delta-spark are imported inside the methods
only: a session object is handed in, so importing this module stays light.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

import pyarrow as pa

from pinrec.core.contracts import PARTITION_COLUMNS, TABLE_SCHEMAS
from pinrec.core.lake import DeltaRsTables
from pinrec.core.lake_tables import (MIN_SAFE_RETENTION_HOURS, LakeTables, RetryPolicy, TableNotFound,
                                     check_partitions, check_vacuum_retention, conform, ds_predicate,
                                     merge_predicate, spark_schema)
from pinrec.core.layout import Lake


def _is_conflict(e: Exception) -> bool:
    # delta-spark raises io.delta.exceptions.Concurrent* (py: delta.exceptions.*)
    return type(e).__name__.startswith("Concurrent")


@dataclass(frozen=True)
class SparkDeltaTables:
    """Delta tables under `lake.root/tables`, written through delta-spark on `spark`."""

    lake: Lake
    spark: object
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    backend: ClassVar[str] = "delta-spark"

    # Reads and metadata are the same files and log, so delta-rs answers them.
    def _rs(self) -> DeltaRsTables:
        return DeltaRsTables(self.lake, self.retry)

    def uri(self, table: str) -> str:
        return str(self.lake.table(table))

    def exists(self, table: str) -> bool:
        return self._rs().exists(table)

    def _retry(self, op, what: str):
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return op()
            except Exception as e:  # noqa: BLE001 - only Delta conflicts are retried
                if not _is_conflict(e) or attempt == self.retry.attempts:
                    raise
                time.sleep(min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** attempt))

    def _df(self, table: str, data: pa.Table):
        return self.spark.createDataFrame(data.to_pandas(), spark_schema(TABLE_SCHEMAS[table]))

    def replace_partitions(self, table: str, data: pa.Table, partitions: Iterable[str]) -> int:
        parts = sorted(set(partitions))
        data = conform(table, data)
        check_partitions(table, data, parts)
        return self.write_spark_partitions(table, self._df(table, data), parts)

    def write_spark_partition(self, table: str, df, ds: str) -> int:
        from pyspark.sql import functions as F

        if "ds" not in df.columns:
            df = df.withColumn("ds", F.lit(ds))
        return self.write_spark_partitions(table, df, [ds])

    def write_spark_partitions(self, table: str, df, parts: Sequence[str]) -> int:
        def op():
            (df.select(*TABLE_SCHEMAS[table].names).write.format("delta").mode("overwrite")
             .option("replaceWhere", ds_predicate(parts))
             .partitionBy(*PARTITION_COLUMNS[table]).save(self.uri(table)))

        self._retry(op, f"replace {table} {list(parts)}")
        return self.version(table)

    def _save(self, table: str, data: pa.Table, mode: str) -> int:
        w = self._df(table, conform(table, data)).write.format("delta").mode(mode)
        if PARTITION_COLUMNS[table]:
            w = w.partitionBy(*PARTITION_COLUMNS[table])
        self._retry(lambda: w.save(self.uri(table)), f"{mode} {table}")
        return self.version(table)

    def overwrite(self, table: str, data: pa.Table) -> int:
        return self._save(table, data, "overwrite")

    def append(self, table: str, data: pa.Table) -> int:
        return self._save(table, data, "append")

    def merge(self, table: str, data: pa.Table, keys: Sequence[str], partitions: Iterable[str]) -> int:
        from delta.tables import DeltaTable

        parts = sorted(set(partitions))
        data = conform(table, data)
        check_partitions(table, data, parts)
        source = self._df(table, data)
        if not self.exists(table):
            self.append(table, data.slice(0, 0))

        def op():
            (DeltaTable.forPath(self.spark, self.uri(table)).alias("t")
             .merge(source.alias("s"), merge_predicate(keys, parts))
             .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())

        self._retry(op, f"merge into {table} {parts}")
        return self.version(table)

    def delete_partitions(self, table: str, partitions: Iterable[str]) -> int | None:
        from delta.tables import DeltaTable

        parts = sorted(set(partitions) & set(self.partitions(table)))
        if not parts:
            return None
        self._retry(lambda: DeltaTable.forPath(self.spark, self.uri(table)).delete(ds_predicate(parts)),
                    f"delete {table} {parts}")
        return self.version(table)

    def read_spark(self, spark, table: str, ds: Sequence[str] | None = None, columns=None):
        df = spark.read.format("delta").load(self.uri(table))
        if ds is not None:
            df = df.where(ds_predicate(ds))
        df = df.drop(*PARTITION_COLUMNS[table])
        return df.select(*columns) if columns else df

    def dataset(self, table: str, ds=None):
        return self._rs().dataset(table, ds)

    def read(self, table: str, ds=None, columns=None, filter=None) -> pa.Table:
        return self._rs().read(table, ds, columns, filter)

    def live_files(self, table: str, ds=None) -> list[str]:
        return self._rs().live_files(table, ds)

    def partitions(self, table: str) -> list[str]:
        return self._rs().partitions(table)

    def latest_partition(self, table: str, at_most: str | None = None) -> str | None:
        return self._rs().latest_partition(table, at_most)

    def version(self, table: str) -> int:
        return self._rs().version(table)

    def partition_stats(self, table: str, ds: str) -> tuple[int, int]:
        return self._rs().partition_stats(table, ds)

    def history(self, table: str, limit: int | None = None) -> list[dict]:
        return self._rs().history(table, limit)

    def optimize(self, table: str, ds=None, target_size=None) -> dict:
        from delta.tables import DeltaTable

        opt = DeltaTable.forPath(self.spark, self.uri(table)).optimize()
        if ds:
            opt = opt.where(ds_predicate(ds))
        rows = opt.executeCompaction().collect()
        return {"metrics": [r.asDict(recursive=True) for r in rows]}

    def vacuum(self, table: str, retention_hours: int = MIN_SAFE_RETENTION_HOURS,
               dry_run: bool = False, allow_unsafe: bool = False) -> list[str]:
        from delta.tables import DeltaTable

        check_vacuum_retention(retention_hours, allow_unsafe)
        if allow_unsafe:
            self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        if not self.exists(table):
            raise TableNotFound(table)
        if not dry_run:
            DeltaTable.forPath(self.spark, self.uri(table)).vacuum(retention_hours)
        return []  # delta-spark's Python vacuum does not report the deleted files


def delta_available(spark) -> bool:
    """True when the Delta Spark classes are on the session's classpath."""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException in its own type
        return False


def open_tables(lake: Lake, spark=None) -> LakeTables:
    """The back end for this run: delta-spark when a session with the Delta jars is given,
    else delta-rs. Both implement `LakeTables`; the few callers that need what only delta-rs
    can do (commit files written by pyarrow) ask with `isinstance(tables, DeltaRsTables)`."""
    if spark is not None and delta_available(spark):
        return SparkDeltaTables(lake, spark)
    return DeltaRsTables(lake)
