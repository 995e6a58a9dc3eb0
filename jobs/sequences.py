"""`pinrec sequences --ds D`: per-user engagement sequences over the 365 days before the cutoff.

read -> pure transform -> write:
- full:        events of the window  --build_sequences-->  sequences@ds
- incremental: sequences@(ds-1) + events of ds  --build_incremental-->  sequences@ds

Both give the same table (tested, and checked by `pinrec bench sequences`). Why the incremental
update is exact: a sequence keeps the most recent `max_len` events of the window, ordered by
(ts, event_id). The new window loses only events older than its start, and gains only day `ds`.
The `max_len` most recent events of the new window are therefore among (previous capped
sequence) + (day ds), because anything the previous cap dropped is older than everything it
kept. So only users who were active on ds, or whose oldest kept event fell out of the window,
are rebuilt (explode + the same `build_sequences`, in Spark); every other row is copied with the
new `cutoff_ts`/`ds`. No 365-day shuffle, which is what makes the daily update cheap. With
delta-spark (a cluster) the update runs in Spark (`build_incremental`); with the embedded
delta-rs back end it runs in Arrow in one streaming pass (`jobs/sequences_arrow.py`), because
Spark's fixed cost per job and its row-wise handling of nested arrays cost more than the
whole update on one machine. Tests and `pinrec bench sequences` check both against the full
Spark rebuild.

De-duplication is by `event_id` (the idempotency key; at-least-once delivery repeats events
with the same payload). When copies disagree, the smallest (ts, item, type, action, surface)
wins, so the choice does not depend on partitioning.
"""
from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from datetime import timedelta

from pinrec.contracts import cutoff_us, parse_ds
from pinrec.layout import Lake

DAY_US = 86_400_000_000
EVENT_FIELDS = ("ts", "event_id", "item_id", "item_type", "action", "surface")
# Sequence array column <- event field, in contract order.
ARRAY_COLUMNS = (("event_ids", "event_id"), ("item_ids", "item_id"), ("item_types", "item_type"),
                 ("actions", "action"), ("surfaces", "surface"), ("ts", "ts"))
MODES = ("auto", "full", "incremental")


@dataclass(frozen=True)
class SequencesConfig:
    ds: str
    lake: str
    mode: str = "auto"
    max_len: int = 512
    window_days: int = 365

    def __post_init__(self):
        parse_ds(self.ds)
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.max_len < 1 or self.window_days < 1:
            raise ValueError("--max-len and --window-days must be positive")


# --------------------------------------------------------------------------------------------
# Dates (pure)
# --------------------------------------------------------------------------------------------

def shift_ds(ds: str, days: int) -> str:
    return (parse_ds(ds) + timedelta(days=days)).strftime("%Y-%m-%d")


def window_bounds(ds: str, window_days: int) -> tuple[int, int]:
    """[start, cutoff) in UTC µs: the `window_days` days before the cutoff of `ds`."""
    cutoff = cutoff_us(ds)
    return cutoff - window_days * DAY_US, cutoff


def window_partitions(ds: str, window_days: int) -> list[str]:
    """The event partitions (UTC days) that can hold events of the window."""
    return [shift_ds(ds, -d) for d in range(window_days - 1, -1, -1)]


# --------------------------------------------------------------------------------------------
# Pure transforms (DataFrame -> DataFrame)
# --------------------------------------------------------------------------------------------

def _us_to_ts(us: int):
    from pyspark.sql import functions as F

    return F.timestamp_micros(F.lit(us))


def build_sequences(events, ds: str, start_us: int, cutoff_us_: int, max_len: int):
    """Events (any superset of the window) -> one row per user active in [start, cutoff)."""
    from pyspark.sql import functions as F

    in_window = events.where((F.col("ts") >= _us_to_ts(start_us)) & (F.col("ts") < _us_to_ts(cutoff_us_)))
    payload = [f for f in EVENT_FIELDS if f != "event_id"]
    deduped = (in_window.groupBy("user_id", "event_id")
               .agg(F.min(F.struct(*payload)).alias("e"))
               .select("user_id", *[F.col(f"e.{f}").alias(f) if f != "event_id" else F.col(f)
                                    for f in EVENT_FIELDS]))
    # Struct order = sort order: chronological, ties broken by event_id.
    grouped = deduped.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct(*EVENT_FIELDS))).alias("s"))
    capped = grouped.select(
        "user_id", F.slice("s", F.greatest(F.size("s") - max_len + 1, F.lit(1)), max_len).alias("s"))
    return _finish(capped.select("user_id", *[F.col(f"s.{f}").alias(c) for c, f in ARRAY_COLUMNS]),
                   ds, cutoff_us_)


def _finish(df, ds: str, cutoff_us_: int):
    from pyspark.sql import functions as F

    return df.select("user_id", *[c for c, _ in ARRAY_COLUMNS],
                     F.size("item_ids").cast("int").alias("length"),
                     _us_to_ts(cutoff_us_).alias("cutoff_ts"), F.lit(ds).alias("ds"))


def explode_sequences(seqs):
    """Sequences rows -> one event row per element (the inverse of build_sequences)."""
    from pyspark.sql import functions as F

    z = F.arrays_zip(*[F.col(c) for c, _ in ARRAY_COLUMNS])
    return (seqs.select("user_id", F.explode(z).alias("z"))
            .select("user_id", *[F.col(f"z.{c}").alias(f) for c, f in ARRAY_COLUMNS]))


def build_incremental(prev, day_events, ds: str, start_us: int, cutoff_us_: int, max_len: int):
    """sequences@(ds-1) + events of day ds -> sequences@ds (same rows as a full rebuild).
    `untouched_mask` is the Arrow twin of the split made here."""
    from pyspark.sql import functions as F

    day = day_events.select("user_id", *EVENT_FIELDS)
    active = F.broadcast(day.select("user_id").distinct().withColumn("_active", F.lit(True)))
    # One scan of prev: each row is either rebuilt or copied.
    marked = prev.join(active, "user_id", "left").withColumn(
        "_rebuild", F.col("_active").isNotNull()
        | (F.element_at("ts", 1) < _us_to_ts(start_us)))  # oldest kept event left the window
    rebuild_prev = marked.where("_rebuild").drop("_active", "_rebuild")
    rebuilt = build_sequences(explode_sequences(rebuild_prev).unionByName(day), ds, start_us,
                              cutoff_us_, max_len)
    untouched = marked.where(~F.col("_rebuild"))
    kept = _finish(untouched.select("user_id", *[c for c, _ in ARRAY_COLUMNS]), ds, cutoff_us_)
    return kept.unionByName(rebuilt)


# --------------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------------

def spark_incremental(spark, tables, cfg: SequencesConfig):
    """The incremental update as a Spark DataFrame (the cluster path)."""
    start, cutoff = window_bounds(cfg.ds, cfg.window_days)
    day = tables.read_spark(spark, "events", [cfg.ds])
    day = day.where(day.ts >= _us_to_ts(cutoff - DAY_US))
    prev = tables.read_spark(spark, "sequences", [shift_ds(cfg.ds, -1)]).drop("length", "cutoff_ts")
    return build_incremental(prev, day, cfg.ds, start, cutoff, cfg.max_len)


def run_job(spark, cfg: SequencesConfig) -> tuple[str, int]:
    """Build and write sequences@ds; returns (mode used, table version).

    `spark` is a session, or a zero-argument function that starts one: then Spark starts only
    when the run needs it (a full rebuild), and the daily incremental update on the embedded
    back end skips its 10-30 s start-up."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from jobs.lake import open_tables

    lazy = callable(spark)
    tables = open_tables(Lake.at(cfg.lake), None if lazy else spark)
    if not tables.exists("events"):
        raise ValueError(f"no events table under {cfg.lake}; import or synthesise data first "
                         f"(`pinrec data synth --lake {cfg.lake}`)")
    start, cutoff = window_bounds(cfg.ds, cfg.window_days)
    prev_ds = shift_ds(cfg.ds, -1)
    have_prev = prev_ds in tables.partitions("sequences")
    mode = cfg.mode if cfg.mode != "auto" else ("incremental" if have_prev else "full")
    if mode == "full":
        spark = spark() if lazy else spark
        parts = set(window_partitions(cfg.ds, cfg.window_days)) & set(tables.partitions("events"))
        df = build_sequences(tables.read_spark(spark, "events", sorted(parts)), cfg.ds, start,
                             cutoff, cfg.max_len)
        return mode, tables.write_spark_partition("sequences", df.sortWithinPartitions("user_id"), cfg.ds)
    if not have_prev:
        raise ValueError(f"--mode incremental needs sequences for {prev_ds}; run that day "
                         f"first or use --mode full")
    if not hasattr(tables, "stage_spark"):  # delta-spark: the whole update stays in Spark
        df = spark_incremental(spark, tables, cfg)
        return mode, tables.write_spark_partition("sequences", df.sortWithinPartitions("user_id"), cfg.ds)
    # delta-rs: Arrow, one streaming pass over ds-1 (jobs/sequences_arrow.py says why).
    from jobs.sequences_arrow import EVENT_ROW_SCHEMA, incremental

    day_start = pa.scalar(cutoff - DAY_US, pa.timestamp("us", tz="UTC"))
    day_events = tables.read("events", [cfg.ds], columns=list(EVENT_ROW_SCHEMA.names),
                             filter=pads.field("ts") >= day_start)
    staging = tables.staging_dir("sequences", cfg.ds)
    staging.mkdir(parents=True)
    try:
        incremental(tables, prev_ds, day_events, start, cutoff, cfg.max_len, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return mode, tables.commit_spark_output("sequences", staging, cfg.ds)


def configure(p: argparse.ArgumentParser) -> None:
    from jobs.spark import add_spark_args
    from pinrec.cli import add_ds_arg, add_lake_arg

    add_lake_arg(p)
    add_ds_arg(p)
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="full rebuild, incremental from ds-1, or auto (incremental when ds-1 exists)")
    p.add_argument("--max-len", type=int, default=512, help="keep the most recent N events per user")
    p.add_argument("--window-days", type=int, default=365)
    add_spark_args(p)


def run(args: argparse.Namespace) -> int:
    from jobs.spark import SparkConfig, get_session

    cfg = SequencesConfig(ds=args.ds, lake=args.lake, mode=args.mode, max_len=args.max_len,
                          window_days=args.window_days)
    scfg = SparkConfig.from_args(args)
    # With Delta jars the back end is delta-spark, which needs the session up front.
    spark = get_session(scfg) if scfg.delta_jars else (lambda: get_session(scfg))
    mode, version = run_job(spark, cfg)
    print(f"sequences ds={cfg.ds} mode={mode} -> table version {version}")
    return 0
