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
are rebuilt (explode + the same `build_sequences`); every other row is copied with the new
`cutoff_ts`/`ds`. That is what makes the daily update cheap: no 365-day shuffle.

De-duplication is by `event_id` (the idempotency key; at-least-once delivery repeats events
with the same payload). When copies disagree, the smallest (ts, item, type, action, surface)
wins, so the choice does not depend on partitioning.
"""
from __future__ import annotations

import argparse
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
    """sequences@(ds-1) + events of day ds -> sequences@ds (same rows as a full rebuild)."""
    from pyspark.sql import functions as F

    day = day_events.select("user_id", *EVENT_FIELDS)
    active = F.broadcast(day.select("user_id").distinct())
    stale = F.element_at("ts", 1) < _us_to_ts(start_us)  # oldest kept event left the window
    untouched = prev.join(active, "user_id", "left_anti").where(~stale)
    rebuild_prev = prev.join(active, "user_id", "left_semi").unionByName(
        prev.join(active, "user_id", "left_anti").where(stale))
    rebuilt = build_sequences(explode_sequences(rebuild_prev).unionByName(day), ds, start_us,
                              cutoff_us_, max_len)
    kept = _finish(untouched.select("user_id", *[c for c, _ in ARRAY_COLUMNS]), ds, cutoff_us_)
    return kept.unionByName(rebuilt)


# --------------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------------

def compute(spark, tables, cfg: SequencesConfig):
    """Read inputs and return (mode used, sequences DataFrame for cfg.ds); writes nothing."""
    start, cutoff = window_bounds(cfg.ds, cfg.window_days)
    prev_ds = shift_ds(cfg.ds, -1)
    have_prev = prev_ds in tables.partitions("sequences")
    mode = cfg.mode
    if mode == "auto":
        mode = "incremental" if have_prev else "full"
    if mode == "incremental":
        if not have_prev:
            raise ValueError(f"--mode incremental needs sequences for {prev_ds}; run that day "
                             f"first or use --mode full")
        prev = tables.read_spark(spark, "sequences", [prev_ds]).drop("ds", "length", "cutoff_ts")
        day = tables.read_spark(spark, "events", [cfg.ds])
        day = day.where(day.ts >= _us_to_ts(cutoff - DAY_US))
        return mode, build_incremental(prev, day, cfg.ds, start, cutoff, cfg.max_len)
    parts = set(window_partitions(cfg.ds, cfg.window_days)) & set(tables.partitions("events"))
    events = tables.read_spark(spark, "events", sorted(parts))
    return mode, build_sequences(events, cfg.ds, start, cutoff, cfg.max_len)


def run_job(spark, cfg: SequencesConfig) -> tuple[str, int]:
    """Build and write sequences@ds; returns (mode, table version)."""
    from jobs.lake import open_tables

    tables = open_tables(Lake.at(cfg.lake), spark)
    if not tables.exists("events"):
        raise ValueError(f"no events table under {cfg.lake}; import or synthesise data first "
                         f"(`pinrec data synth --lake {cfg.lake}`)")
    mode, df = compute(spark, tables, cfg)
    version = tables.write_spark_partition("sequences", df.sortWithinPartitions("user_id"), cfg.ds)
    return mode, version


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
    spark = get_session(SparkConfig.from_args(args))
    mode, version = run_job(spark, cfg)
    print(f"sequences ds={cfg.ds} mode={mode} -> table version {version}")
    return 0
