"""`pinrec sequences --ds D`: per-user engagement sequences over the 365 days before the cutoff.

How `sequences` is stored and read is in `pinrec/core/sequences_store.py` and
docs/adr/0002-sequences-daily-cost.md. In short, the run for ds writes:
- always: `sequence_days@ds`, one row per user active on ds (that day's events). This is the
  whole daily cost: it follows the day's events, not the number of users.
- on a full rebuild (`--mode full`, or auto when the days before ds cannot be assembled, e.g.
  a missing previous day: logged): `sequence_checkpoints@ds` from the window's events (Spark);
- every `--checkpoint-every` days: `sequence_checkpoints@ds` = previous checkpoint + day rows
  since (bounded maintenance, O(users) once per period);
- last: `sequence_runs@ds`, which makes ds readable.
Readers call `read_sequences(tables, ds)`, which gives what a full rebuild for ds gives.

Why merging a checkpoint with later day rows is exact: a sequence keeps the most recent
`max_len` events of the window, ordered by (ts, event_id). A later window loses only events
older than its start (a prefix of each chronological array), and gains only the later days.
The `max_len` most recent events of the new window are therefore among (checkpoint's capped
sequence) + (day rows since), because anything the checkpoint's cap dropped is older than
everything it kept. Users without a day row since the checkpoint only lose that prefix.

Engines: `arrow` (embedded default with delta-rs: no Spark start-up for a day's work) and
`spark` (a cluster, and the delta-spark back end) run the same steps; the full rebuild is Spark.
Tests and `pinrec bench sequences` check both against the full rebuild.

De-duplication is by `event_id` (the idempotency key; at-least-once delivery repeats events
with the same payload). When copies disagree, the smallest (ts, item, type, action, surface)
wins, so the choice does not depend on partitioning. Bad input is refused (jobs/sequences_checks.py).
"""
from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass

from pinrec.core.contracts import DAY_US, parse_ds
from pinrec.core.layout import Lake
# The event fields, the sequence array column <- event field pairs, and the day length: defined
# once beside the Arrow engine, which must build exactly the rows this Spark path builds.
from pinrec.core.sequences_arrow import ARRAY_COLUMNS, EVENT_FIELDS
from pinrec.core.sequences_store import shift_ds, window_bounds, window_partitions  # noqa: F401 (the job's dates)

MODES = ("auto", "full", "incremental")
ENGINES = ("auto", "arrow", "spark")


@dataclass(frozen=True)
class SequencesConfig:
    ds: str
    lake: str
    mode: str = "auto"
    max_len: int = 512
    window_days: int = 365
    checkpoint_every: int = 7
    engine: str = "auto"

    def __post_init__(self):
        parse_ds(self.ds)
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {ENGINES}, got {self.engine!r}")
        if self.max_len < 1 or self.window_days < 1 or self.checkpoint_every < 1:
            raise ValueError("--max-len, --window-days and --checkpoint-every must be positive")


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
    """Sequences as of an earlier ds (`prev`, a checkpoint) + the events of the days since ->
    sequences@ds (same rows as a full rebuild).
    `pinrec.core.sequences_arrow.merge_batches` is the Arrow twin; here `prev` is a checkpoint and
    `day_events` the exploded day rows since."""
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
# Planning (pure)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WritePlan:
    kind: str                  # "day" | "checkpoint" | "full"
    reason: str
    base: str | None = None    # the checkpoint a "checkpoint" run merges from
    days: tuple[str, ...] = ()  # the day partitions it merges (ds included)


def plan_write(cfg: SequencesConfig, runs: dict, checkpoints) -> WritePlan:
    """What the run for cfg.ds writes besides its day rows, given the runs and checkpoints
    already in the lake (a checkpoint at ds itself is being rewritten, so it does not count)."""
    from pinrec.core.sequences_store import RunInfo, SequencesNotReadable, plan_read

    if cfg.mode == "full":
        return WritePlan("full", "--mode full")
    run = RunInfo(cfg.window_days, cfg.max_len)
    try:
        plan = plan_read(cfg.ds, run, {**runs, cfg.ds: run}, [c for c in checkpoints if c < cfg.ds])
    except SequencesNotReadable as e:
        if cfg.mode == "incremental":
            raise ValueError(f"--mode incremental needs sequences for {shift_ds(cfg.ds, -1)} and "
                             f"the days before it: {e}") from None
        return WritePlan("full", f"automatic full rebuild: {e}")
    if plan.checkpoint is None or len(plan.days) >= cfg.checkpoint_every:
        why = (f"{len(plan.days)} day(s) since checkpoint {plan.checkpoint}" if plan.checkpoint
               else "no checkpoint in the window")
        return WritePlan("checkpoint", f"new checkpoint: {why}", plan.checkpoint, plan.days)
    return WritePlan("day", f"day rows only; read as checkpoint {plan.checkpoint} + "
                            f"{len(plan.days)} day(s)")


def stale_checkpoints(ds: str, window_days: int, checkpoints, include_ds: bool) -> list[str]:
    """Checkpoints whose window holds day ds: stale once the day rows of ds changed."""
    last = shift_ds(ds, window_days - 1)
    return [c for c in checkpoints if (c > ds or (include_ds and c == ds)) and c <= last]


# --------------------------------------------------------------------------------------------
# Edges
# --------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)


def _write_arrow(tables, table: str, batches, ds: str) -> None:
    """Arrow batches (FILE_SCHEMA) -> partition ds of `table`."""
    import pyarrow as pa

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.sequences_arrow import FILE_SCHEMA, write_batches

    if not isinstance(tables, DeltaRsTables):  # only delta-rs commits files pyarrow wrote
        t = pa.Table.from_batches(list(batches), FILE_SCHEMA)
        tables.replace_partitions(table, t.append_column("ds", pa.array([ds] * t.num_rows)), [ds])
        return
    staging = tables.staging_dir(table, ds)
    staging.mkdir(parents=True)
    try:
        write_batches(batches, staging / "part-00000.parquet")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tables.commit_partition_files(table, staging, ds)


def read_day_events(tables, ds: str):
    """The events of partition ds (user_id + EVENT_FIELDS), after the bad-input checks."""
    import pyarrow.dataset as pads

    from pinrec.core.sequences_arrow import EVENT_ROW_SCHEMA
    from jobs.sequences_checks import check_day_window, check_events_schema

    if ds not in tables.partitions("events"):
        return EVENT_ROW_SCHEMA.empty_table()  # a day with no events is a valid day
    check_events_schema(tables.live_files("events", [ds]), ds)
    day = tables.read("events", [ds], columns=list(EVENT_ROW_SCHEMA.names))
    check_day_window(day, ds)
    return day.cast(EVENT_ROW_SCHEMA)


def check_duplicates(tables, cfg: SequencesConfig, day) -> int:
    """Event ids of ds against the events of the previous `checkpoint_every` days (bounded:
    a few days' events of the day's active users); returns rows read."""
    import pyarrow.compute as pc

    from jobs.sequences_checks import check_cross_day_duplicates

    lookback = min(cfg.checkpoint_every, cfg.window_days - 1)
    landed = set(tables.partitions("events"))
    earlier = [d for d in (shift_ds(cfg.ds, -k) for k in range(1, lookback + 1)) if d in landed]
    if not earlier or not day.num_rows:
        return 0
    users = pc.unique(day.column("user_id").combine_chunks())
    rows = tables.read("events", earlier, columns=["user_id", "event_id", "ds"],
                       filter=pads_field("user_id").isin(users))
    check_cross_day_duplicates(day, rows, cfg.ds)
    return rows.num_rows


def pads_field(name: str):
    import pyarrow.dataset as pads

    return pads.field(name)


def _sorted(t):
    return t.sort_by("user_id").combine_chunks()


def write_day(spark, tables, cfg: SequencesConfig, engine: str, day) -> None:
    from pinrec.core.sequences_arrow import day_rows
    from pinrec.core.sequences_store import DAYS

    _, cutoff = window_bounds(cfg.ds, cfg.window_days)
    if engine == "arrow":
        _write_arrow(tables, DAYS, [day_rows(day, cutoff, cfg.max_len)], cfg.ds)
        return
    events = tables.read_spark(spark, "events", [cfg.ds])
    df = build_sequences(events, cfg.ds, cutoff - DAY_US, cutoff, cfg.max_len)
    tables.write_spark_partition(DAYS, df.sortWithinPartitions("user_id"), cfg.ds)


def write_checkpoint(spark, tables, cfg: SequencesConfig, engine: str, plan: WritePlan) -> int:
    """Checkpoint@ds from a full rebuild (Spark) or by merging; returns rows read."""
    from pinrec.core.sequences_store import CHECKPOINTS, DAYS

    start, cutoff = window_bounds(cfg.ds, cfg.window_days)
    if plan.kind == "full":
        parts = sorted(set(window_partitions(cfg.ds, cfg.window_days)) & set(tables.partitions("events")))
        df = build_sequences(tables.read_spark(spark, "events", parts), cfg.ds, start, cutoff,
                             cfg.max_len)
        tables.write_spark_partition(CHECKPOINTS, df.sortWithinPartitions("user_id"), cfg.ds)
        return sum(tables.partition_stats("events", d)[0] for d in parts)
    rows_read = sum(tables.partition_stats(DAYS, d)[0] for d in plan.days)
    if plan.base:
        rows_read += tables.partition_stats(CHECKPOINTS, plan.base)[0]
    if engine == "arrow":
        from pinrec.core.sequences_arrow import FILE_SCHEMA, merge_batches

        base = (tables.dataset(CHECKPOINTS, [plan.base]).to_batches(columns=FILE_SCHEMA.names)
                if plan.base else [])
        days = tables.read(DAYS, list(plan.days), columns=FILE_SCHEMA.names)
        _write_arrow(tables, CHECKPOINTS, merge_batches(base, days, start, cutoff, cfg.max_len), cfg.ds)
        return rows_read
    cols = ["user_id", *[c for c, _ in ARRAY_COLUMNS]]
    prev = tables.read_spark(spark, CHECKPOINTS if plan.base else DAYS, [plan.base or plan.days[0]],
                             columns=cols)
    prev = prev if plan.base else prev.limit(0)  # no checkpoint: everything comes from the days
    days = explode_sequences(tables.read_spark(spark, DAYS, list(plan.days), columns=cols))
    df = build_incremental(prev, days, cfg.ds, start, cutoff, cfg.max_len)
    tables.write_spark_partition(CHECKPOINTS, df.sortWithinPartitions("user_id"), cfg.ds)
    return rows_read


def run_job(spark, cfg: SequencesConfig) -> tuple[str, int]:
    """Write sequences@ds (day rows, a checkpoint when due, the run row); returns (what was
    written: "incremental" | "checkpoint" | "full", sequence_runs version).

    `spark` is a session, or a zero-argument function that starts one: then Spark starts only
    when the run needs it (a full rebuild, or --engine spark), so the daily run on the
    embedded back end skips its 10-30 s start-up."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.lake_spark import open_tables
    from pinrec.core.sequences_store import (CHECKPOINTS, DAYS, RUNS, RunInfo, checkpoint_partitions,
                                             load_runs, runs_row)

    lazy = callable(spark)
    tables = open_tables(Lake.at(cfg.lake), None if lazy else spark)
    if not tables.exists("events"):
        raise ValueError(f"no events table under {cfg.lake}; import or synthesise data first "
                         f"(`pinrec data synth --lake {cfg.lake}`)")
    engine = cfg.engine if cfg.engine != "auto" else (
        "arrow" if isinstance(tables, DeltaRsTables) else "spark")
    runs, checkpoints = load_runs(tables), checkpoint_partitions(tables)
    plan = plan_write(cfg, runs, checkpoints)
    (log.warning if plan.kind == "full" and cfg.mode == "auto" else log.info)(
        "sequences ds=%s: %s", cfg.ds, plan.reason)
    if plan.kind == "full" and cfg.mode == "auto":
        print(f"sequences ds={cfg.ds}: {plan.reason}", flush=True)
    day = read_day_events(tables, cfg.ds)  # bad input fails here, before any Spark start-up
    rows_read = day.num_rows + check_duplicates(tables, cfg, day)
    if lazy and (engine == "spark" or plan.kind == "full"):
        spark = spark()
    run = RunInfo(cfg.window_days, cfg.max_len)
    if cfg.ds in checkpoints and runs.get(cfg.ds) != run:  # built with other parameters
        tables.delete_partitions(CHECKPOINTS, [cfg.ds])
    old = _sorted(tables.read(DAYS, [cfg.ds])) if cfg.ds in runs and tables.exists(DAYS) else None
    rows_read += old.num_rows if old is not None else 0
    write_day(spark, tables, cfg, engine, day)
    changed = old is None or not old.equals(_sorted(tables.read(DAYS, [cfg.ds])))
    if changed:  # a backfill: checkpoints that hold this day are rebuilt on demand
        tables.delete_partitions(CHECKPOINTS, stale_checkpoints(
            cfg.ds, cfg.window_days, checkpoints, include_ds=plan.kind == "day"))
    if plan.kind != "day":
        rows_read += write_checkpoint(spark, tables, cfg, engine, plan)
    stats = [tables.partition_stats(DAYS, cfg.ds)]
    if plan.kind != "day":
        stats.append(tables.partition_stats(CHECKPOINTS, cfg.ds))
    counts = {"day_events": day.num_rows, "active_users": stats[0][0], "rows_read": rows_read,
              "rows_written": sum(r for r, _ in stats), "bytes_written": sum(b for _, b in stats)}
    version = tables.replace_partitions(RUNS, runs_row(cfg.ds, run, plan.kind, counts), [cfg.ds])
    label = {"day": "incremental"}.get(plan.kind, plan.kind)
    log.info("sequences ds=%s %s: %s", cfg.ds, label, counts)
    return label, version


def configure(p: argparse.ArgumentParser) -> None:
    from jobs.spark import add_spark_args
    from pinrec.core.cli_args import add_ds_arg, add_lake_arg

    add_lake_arg(p)
    add_ds_arg(p)
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="full rebuild, incremental (day rows only; fails when the days before "
                        "ds are missing), or auto (incremental, else a full rebuild, logged)")
    p.add_argument("--max-len", type=int, default=512, help="keep the most recent N events per user")
    p.add_argument("--window-days", type=int, default=365)
    p.add_argument("--checkpoint-every", type=int, default=7,
                   help="write a full checkpoint when this many days follow the last one "
                        "(bounds the work of every read)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="arrow (embedded, no Spark for a day's work) or spark (a cluster); "
                        "auto: spark with the Delta jars, else arrow")
    add_spark_args(p)


def run(args: argparse.Namespace) -> int:
    from jobs.spark import SparkConfig, get_session

    cfg = SequencesConfig(ds=args.ds, lake=args.lake, mode=args.mode, max_len=args.max_len,
                          window_days=args.window_days, checkpoint_every=args.checkpoint_every,
                          engine=args.engine)
    scfg = SparkConfig.from_args(args)
    # With Delta jars the back end is delta-spark, which needs the session up front.
    spark = get_session(scfg) if scfg.delta_jars else (lambda: get_session(scfg))
    mode, version = run_job(spark, cfg)
    print(f"sequences ds={cfg.ds} mode={mode} -> sequence_runs version {version}")
    return 0
