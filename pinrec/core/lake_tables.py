"""The lake adapter's one interface, `LakeTables`, and what its back ends share.

Every job reads and writes tables through a `LakeTables`, never through file paths, because a
Delta folder read as plain Parquet returns files that were logically removed (DESIGN.md §4).
Two back ends implement it:
- `pinrec.core.lake.DeltaRsTables`: delta-rs (`deltalake`), the embedded default, and the only
  one that can also commit Parquet files someone else wrote (Spark or pyarrow) into a partition
  without rewriting them (`commit_partition_files`);
- `pinrec.core.lake_spark.SparkDeltaTables`: delta-spark, used when the Delta jars are on the
  Spark session's classpath (the compose stack); `open_tables` picks it.
Code that needs a capability only one back end has asks by type
(`isinstance(tables, DeltaRsTables)`), never by probing for a method.

Concurrency: Delta commits are optimistic. A writer that loses a race gets a conflict error;
every write re-reads the table and retries a bounded number of times (`RetryPolicy`), which is
safe because each write is idempotent (replace a partition, or upsert by key). Writers on
disjoint partitions do not conflict at all because every predicate names its partitions as
literals (`ds_predicate`), so the conflict checker can see that the files they touch are disjoint.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Protocol, Sequence, TypeVar, runtime_checkable

import pyarrow as pa
import pyarrow.dataset as pads

from pinrec.core.contracts import TABLE_SCHEMAS

T = TypeVar("T")
log = logging.getLogger(__name__)
MIN_SAFE_RETENTION_HOURS = 168  # Delta's default: a reader may hold a snapshot for a week


class TableNotFound(FileNotFoundError):
    pass


@runtime_checkable
class LakeTables(Protocol):
    """The Delta tables under one lake root (`lake: pinrec.core.layout.Lake`), whatever writes them.

    Every write returns the table's new version and is idempotent: re-running a day replaces its
    partitions or upserts by key, never duplicates rows."""

    backend: ClassVar[str]  # "deltalake" | "delta-spark": for logs and test ids

    def uri(self, table: str) -> str: ...
    def exists(self, table: str) -> bool: ...

    # writes
    def replace_partitions(self, table: str, data: pa.Table, partitions: Iterable[str]) -> int: ...
    def overwrite(self, table: str, data: pa.Table) -> int: ...
    def append(self, table: str, data: pa.Table) -> int: ...
    def merge(self, table: str, data: pa.Table, keys: Sequence[str], partitions: Iterable[str]) -> int: ...
    def delete_partitions(self, table: str, partitions: Iterable[str]) -> int | None: ...
    def write_spark_partition(self, table: str, df, ds: str) -> int: ...

    # reads
    def dataset(self, table: str, ds: Sequence[str] | None = None) -> pads.Dataset: ...
    def read(self, table: str, ds: Sequence[str] | None = None, columns=None, filter=None) -> pa.Table: ...
    def read_spark(self, spark, table: str, ds: Sequence[str] | None = None, columns=None): ...
    def live_files(self, table: str, ds: Sequence[str] | None = None) -> list[str]: ...
    def partitions(self, table: str) -> list[str]: ...
    def latest_partition(self, table: str, at_most: str | None = None) -> str | None: ...
    def version(self, table: str) -> int: ...
    def partition_stats(self, table: str, ds: str) -> tuple[int, int]: ...
    def history(self, table: str, limit: int | None = None) -> list[dict]: ...

    # maintenance
    def optimize(self, table: str, ds: Sequence[str] | None = None, target_size: int | None = None) -> dict: ...
    def vacuum(self, table: str, retention_hours: int = MIN_SAFE_RETENTION_HOURS,
               dry_run: bool = False, allow_unsafe: bool = False) -> list[str]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of a whole write when a concurrent writer won the commit race."""

    attempts: int = 8
    base_delay_s: float = 0.05
    max_delay_s: float = 2.0


def with_retry(op: Callable[[], T], what: str, policy: RetryPolicy = RetryPolicy()) -> T:
    """Run `op`; on CommitFailedError re-run it (it re-reads the table) up to `policy.attempts`."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(1, policy.attempts + 1):
        try:
            return op()
        except CommitFailedError as e:
            if attempt == policy.attempts:
                raise RuntimeError(
                    f"{what}: gave up after {attempt} attempts, a concurrent writer kept winning "
                    f"the commit ({e}); re-run the job, it is idempotent"
                ) from e
            # Jitter so two losers do not collide again on the next attempt.
            delay = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
            log.warning("%s: commit conflict on attempt %d, retrying: %s", what, attempt, e)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")


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


def _literal(v: str) -> str:
    if "'" in v or "\\" in v:
        raise ValueError(f"bad partition value {v!r}")
    return f"'{v}'"


def ds_predicate(values: Sequence[str], alias: str | None = None) -> str:
    """`ds IN ('…')`: the partitions a write touches, as literals."""
    col = f"{alias}.ds" if alias else "ds"
    return f"{col} IN (" + ", ".join(_literal(v) for v in sorted(set(values))) + ")"


def merge_predicate(keys: Sequence[str], partitions: Sequence[str]) -> str:
    """`t.ds IN ('…') AND t.k = s.k …`: the literal partition list keeps disjoint writers apart."""
    if not keys:
        raise ValueError("merge needs at least one key column")
    on = " AND ".join(f"t.{k} = s.{k}" for k in ["ds", *[k for k in keys if k != "ds"]])
    return f"{ds_predicate(partitions, 't')} AND {on}"


def check_partitions(table: str, data: pa.Table, parts: Sequence[str]) -> None:
    stray = set(data.column("ds").unique().to_pylist()) - set(parts)
    if stray:
        raise ValueError(f"rows for partitions {sorted(stray)} outside {list(parts)} in {table!r}")


def check_vacuum_retention(retention_hours: int, allow_unsafe: bool) -> None:
    """Below a week a reader holding an older snapshot could lose files mid-read."""
    if retention_hours < MIN_SAFE_RETENTION_HOURS and not allow_unsafe:
        raise ValueError(
            f"vacuum retention {retention_hours} h is below the safe {MIN_SAFE_RETENTION_HOURS} h; "
            f"pass --unsafe-retention only when no reader or writer is running"
        )


def spark_type(t):
    """The Spark type for an Arrow type of the contract schemas (pyspark imported here only)."""
    from pyspark.sql import types as T

    if pa.types.is_list(t):
        return T.ArrayType(spark_type(t.value_type), True)
    simple = {pa.string(): T.StringType(), pa.int64(): T.LongType(), pa.int32(): T.IntegerType(),
              pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(), pa.bool_(): T.BooleanType()}
    if pa.types.is_timestamp(t):
        return T.TimestampType()
    if t in simple:
        return simple[t]
    raise TypeError(f"no Spark type for Arrow type {t}")


def spark_schema(schema: pa.Schema):
    """Spark StructType for an Arrow schema (nullability kept)."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, spark_type(f.type), f.nullable) for f in schema])
