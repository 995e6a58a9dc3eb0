"""How `sequences` is stored, and the one read path every reader uses: `read_sequences(ds)`.

Storage (docs/adr/0002-sequences-daily-cost.md):
- `sequence_days`, partition ds: one row per user active on ds, holding that day's events
  (de-duplicated, ordered, capped). The daily job writes only this: its cost follows the day.
- `sequence_checkpoints`, partition ds: the full sequences as of ds (a full rebuild, or every
  `--checkpoint-every` days a merge of the previous checkpoint with the day rows since).
- `sequence_runs`, partition ds: one row per finished run (window, cap, mode, counts). A ds is
  readable once its run row exists.

`read_sequences(tables, ds)` = latest usable checkpoint C <= ds + day rows of (C, ds] ->
`merge_batches` -> the rows a full 365-day rebuild for ds writes (same arrays, `cutoff_ts` =
cutoff(ds)), in user order. A checkpoint is usable for ds when it was built with the same
window and cap as the run of ds, and every day of (C, ds] inside the window has a run.

Migration: a lake written before this design has materialised `sequences` partitions; a ds
with no run row but such a partition is read from it (and the first run after them is a full
rebuild, logged, because they are no checkpoint). Hand-made fixtures may write that table too.

It sits on the ground floor, with the window every reader and writer shares (`window_bounds`),
because the batch jobs write sequences while serving and the speed layer's sweeper read them,
and the speed layer never imports the batch layer (DESIGN.md §2).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

import pyarrow as pa

from pinrec.core.contracts import DAY_US, SEQUENCE_RUNS_SCHEMA, SEQUENCES_SCHEMA, cutoff_us, parse_ds

DAYS, CHECKPOINTS, RUNS = "sequence_days", "sequence_checkpoints", "sequence_runs"


class SequencesNotReadable(ValueError):
    """sequences for a ds cannot be assembled (no run, or a gap with no checkpoint before it)."""


@dataclass(frozen=True)
class RunInfo:
    window_days: int
    max_len: int


@dataclass(frozen=True)
class ReadPlan:
    ds: str
    window_days: int
    max_len: int
    checkpoint: str | None  # None: no checkpoint, the day rows of the whole window
    days: tuple[str, ...]   # day partitions after the checkpoint, inside the window


# ------------------------------------------------------------------------------- the window
def shift_ds(ds: str, days: int) -> str:
    return (parse_ds(ds) + timedelta(days=days)).strftime("%Y-%m-%d")


def window_bounds(ds: str, window_days: int) -> tuple[int, int]:
    """[start, cutoff) in UTC µs: the `window_days` days before the cutoff of `ds`."""
    cutoff = cutoff_us(ds)
    return cutoff - window_days * DAY_US, cutoff


def window_partitions(ds: str, window_days: int) -> list[str]:
    """The event partitions (UTC days) that can hold events of the window."""
    return [shift_ds(ds, -d) for d in range(window_days - 1, -1, -1)]


def plan_read(ds: str, run: RunInfo, runs: dict[str, RunInfo], checkpoints: Sequence[str]) -> ReadPlan:
    """Which checkpoint and day partitions give sequences@ds (pure). Raises
    SequencesNotReadable naming the days that are missing."""
    first = shift_ds(ds, -(run.window_days - 1))
    usable = [c for c in checkpoints if c <= ds and runs.get(c) == run]
    base = max(usable) if usable and max(usable) >= first else None
    after = shift_ds(base, 1) if base else first
    days, missing, d = [], [], after
    while d <= ds:
        r = runs.get(d)
        (days if r is not None and r.max_len >= run.max_len else missing).append(d)
        d = shift_ds(d, 1)
    if missing:
        raise SequencesNotReadable(
            f"sequences for ds={ds} need a run for each day after the last checkpoint "
            f"({base or 'none in the window'}); missing or built with a smaller --max-len: "
            f"{_span(missing)}. Fix: `pinrec sequences --ds {ds} --mode full` (one full rebuild), "
            f"or run the missing days")
    return ReadPlan(ds, run.window_days, run.max_len, base, tuple(days))


def _span(days: list[str]) -> str:
    return days[0] if len(days) == 1 else f"{len(days)} days {days[0]}..{days[-1]}"


# ------------------------------------------------------------------------------------ runs
def load_runs(tables) -> dict[str, RunInfo]:
    if not tables.exists(RUNS):
        return {}
    t = tables.read(RUNS, columns=["ds", "window_days", "max_len"])
    return {d: RunInfo(w, m) for d, w, m in zip(*(t.column(c).to_pylist()
                                                 for c in ("ds", "window_days", "max_len")))}


def checkpoint_partitions(tables) -> list[str]:
    return tables.partitions(CHECKPOINTS)


def runs_row(ds: str, run: RunInfo, mode: str, counts: dict) -> pa.Table:
    row = {"ds": ds, "window_days": run.window_days, "max_len": run.max_len, "mode": mode,
           "finished_at": datetime.now(timezone.utc), **counts}
    return pa.Table.from_pylist([row]).select(SEQUENCE_RUNS_SCHEMA.names).cast(SEQUENCE_RUNS_SCHEMA)


# ------------------------------------------------------------------------------------ reads
LEGACY = "sequences"


def _legacy_partitions(tables) -> list[str]:
    return tables.partitions(LEGACY) if tables.exists(LEGACY) else []


def sequences_partitions(tables) -> list[str]:
    """Every readable ds: each ds a run finished for (unless a later backfill left a gap),
    and the materialised partitions of a lake from before ADR 0002."""
    return sorted(set(load_runs(tables)) | set(_legacy_partitions(tables)))


def latest_sequences_ds(tables, at_most: str | None = None) -> str | None:
    parts = [d for d in sequences_partitions(tables) if at_most is None or d <= at_most]
    return parts[-1] if parts else None


def plan_for(tables, ds: str) -> ReadPlan:
    runs = load_runs(tables)
    if ds not in runs:
        raise SequencesNotReadable(f"no sequences for ds={ds}: run `pinrec sequences --ds {ds}` first")
    return plan_read(ds, runs[ds], runs, checkpoint_partitions(tables))


def read_sequences(tables, ds: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Sequences as of `ds` in SEQUENCES_SCHEMA (or `columns` of it), one row per user with an
    event in the window, in user_id order: exactly what a full rebuild for ds writes."""
    from pinrec.core.sequences_arrow import FILE_SCHEMA, merge_batches

    if ds not in load_runs(tables) and ds in _legacy_partitions(tables):
        t = tables.read(LEGACY, [ds]).sort_by("user_id").cast(SEQUENCES_SCHEMA)
        return t.select(list(columns)) if columns else t
    plan = plan_for(tables, ds)
    start, cutoff = window_bounds(ds, plan.window_days)
    base = (tables.dataset(CHECKPOINTS, [plan.checkpoint]).to_batches(columns=FILE_SCHEMA.names)
            if plan.checkpoint else [])
    days = (tables.read(DAYS, list(plan.days), columns=FILE_SCHEMA.names)
            if plan.days and tables.exists(DAYS) else FILE_SCHEMA.empty_table())
    batches = list(merge_batches(base, days, start, cutoff, plan.max_len))
    t = pa.Table.from_batches(batches, FILE_SCHEMA).sort_by("user_id")
    t = t.append_column("ds", pa.array([ds] * t.num_rows, pa.string())).cast(SEQUENCES_SCHEMA)
    return t.select(list(columns)) if columns else t


def sequences_dataset(tables, ds: str):
    """`read_sequences` as a pyarrow dataset (for readers that scan in batches)."""
    import pyarrow.dataset as pads

    return pads.dataset(read_sequences(tables, ds))
