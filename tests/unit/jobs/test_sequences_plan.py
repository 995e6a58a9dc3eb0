"""Pure parts of the sequences storage (ADR 0002): which checkpoint and days a read of ds
uses, what a run writes, which checkpoints a backfill makes stale, the bad-input rules, and the
Arrow merge against a from-scratch rebuild on random data."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from jobs.sequences import SequencesConfig, WritePlan, plan_write, shift_ds, stale_checkpoints
from jobs.sequences_checks import BadInput, check_day_window, schema_problems
from pinrec.core.sequences_store import ReadPlan, RunInfo, SequencesNotReadable, plan_read
from pinrec.core.contracts import EVENTS_SCHEMA, cutoff_us

R = RunInfo(window_days=5, max_len=4)


def days(first: str, n: int) -> list[str]:
    return [shift_ds(first, k) for k in range(n)]


def test_read_uses_the_latest_matching_checkpoint_and_the_days_after_it():
    runs = {d: R for d in days("2026-01-01", 10)}
    plan = plan_read("2026-01-10", R, runs, ["2026-01-03", "2026-01-07"])
    assert plan == ReadPlan("2026-01-10", 5, 4, "2026-01-07", ("2026-01-08", "2026-01-09", "2026-01-10"))
    # a checkpoint built with another window or cap is not used
    other = {**runs, "2026-01-07": RunInfo(30, 4)}
    assert plan_read("2026-01-10", R, other, ["2026-01-07"]).checkpoint is None
    # a checkpoint older than the window is useless: the window's days are read instead
    plan = plan_read("2026-01-10", R, runs, ["2026-01-03"])
    assert plan.checkpoint is None and plan.days == tuple(days("2026-01-06", 5))


def test_read_names_the_missing_days_and_the_fix():
    runs = {d: R for d in days("2026-01-01", 10) if d not in ("2026-01-08", "2026-01-09")}
    with pytest.raises(SequencesNotReadable, match=r"2 days 2026-01-08\.\.2026-01-09.*--mode full"):
        plan_read("2026-01-10", R, runs, ["2026-01-07"])
    # day rows capped smaller than the read's cap do not count
    runs = {**{d: R for d in days("2026-01-01", 10)}, "2026-01-09": RunInfo(5, 2)}
    with pytest.raises(SequencesNotReadable, match="2026-01-09"):
        plan_read("2026-01-10", R, runs, ["2026-01-07"])


def cfg(ds: str, **kw) -> SequencesConfig:
    return SequencesConfig(ds=ds, lake="/x", **{"max_len": 4, "window_days": 5, "checkpoint_every": 3, **kw})


def test_a_run_writes_day_rows_a_checkpoint_when_due_or_a_logged_full_rebuild():
    runs = {d: R for d in days("2026-01-01", 4)}
    assert plan_write(cfg("2026-01-05"), runs, ["2026-01-03"]).kind == "day"
    due = plan_write(cfg("2026-01-06"), {**runs, "2026-01-05": R}, ["2026-01-03"])
    assert due == WritePlan("checkpoint", due.reason, "2026-01-03", ("2026-01-04", "2026-01-05", "2026-01-06"))
    # the checkpoint of ds itself is being rewritten: it does not count as a base
    assert plan_write(cfg("2026-01-03"), runs, ["2026-01-03"]).kind == "full"
    gap = plan_write(cfg("2026-01-06"), runs, ["2026-01-03"])  # 01-05 never ran
    assert gap.kind == "full" and "automatic full rebuild" in gap.reason and "2026-01-05" in gap.reason
    with pytest.raises(ValueError, match="--mode incremental needs sequences for 2026-01-05"):
        plan_write(cfg("2026-01-06", mode="incremental"), runs, ["2026-01-03"])
    assert plan_write(cfg("2026-01-05", mode="full"), runs, ["2026-01-03"]).kind == "full"


def test_a_changed_day_makes_the_checkpoints_whose_window_holds_it_stale():
    cps = ["2026-01-01", "2026-01-03", "2026-01-05", "2026-01-07", "2026-01-08"]
    assert stale_checkpoints("2026-01-03", 5, cps, include_ds=False) == ["2026-01-05", "2026-01-07"]
    assert stale_checkpoints("2026-01-03", 5, cps, include_ds=True) == ["2026-01-03", "2026-01-05", "2026-01-07"]


def test_schema_problems_name_missing_and_mistyped_columns():
    good = pa.schema([f for f in EVENTS_SCHEMA if f.name != "ds"])
    assert schema_problems(good) == []
    assert schema_problems(good.remove(good.get_field_index("query_text"))) == []  # optional
    bad = good.set(good.get_field_index("ts"), pa.field("ts", pa.int64())).remove(1)
    assert schema_problems(bad) == ["required column 'user_id' is missing",
                                    "column 'ts' is int64, expected timestamp[us, tz=UTC]"]


def test_day_window_check_counts_events_of_other_days():
    ds = "2026-01-09"
    ts = [cutoff_us(ds) - 1, cutoff_us(ds), cutoff_us(ds) - 86_400_000_000, cutoff_us(ds) - 86_400_000_001]
    t = pa.table({"event_id": ["a", "b", "c", "d"], "ts": pa.array(ts).cast(pa.timestamp("us", tz="UTC"))})
    with pytest.raises(BadInput, match=r"partition ds=2026-01-09: 2 of 4 events .* event_id='b'"):
        check_day_window(t, ds)
    check_day_window(t.slice(0, 1), ds)


def _events(rows) -> pa.Table:
    from pinrec.core.sequences_arrow import EVENT_ROW_SCHEMA

    cols = list(zip(*rows)) if rows else [[] for _ in EVENT_ROW_SCHEMA]
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, EVENT_ROW_SCHEMA)], schema=EVENT_ROW_SCHEMA)


def test_checkpoint_plus_day_rows_equals_a_rebuild_on_random_data():
    """merge_batches(checkpoint@c, day rows (c, ds]) == rebuild_users(all events) for random
    users, days, duplicates within a day, ties on ts, and caps that bite."""
    from jobs.sequences import window_bounds
    from pinrec.core.sequences_arrow import day_rows, merge_batches, rebuild_users

    rng = random.Random(7)
    first, W, L = "2026-01-01", 6, 5
    rows = []
    for k in range(14):
        day0 = cutoff_us(shift_ds(first, k)) - 86_400_000_000
        for n in range(rng.randint(0, 25)):
            u, ts = rng.randint(1, 12), day0 + rng.randint(0, 3) * 3_600_000_000  # ties
            e = (u, ts, f"e{k}-{n}", rng.randint(1, 50), "pin", "repin", "homefeed")
            rows += [e, e] if rng.random() < 0.1 else [e]  # at-least-once replays
    by_day = {}
    for r in rows:
        by_day.setdefault(next(d for d in days(first, 14) if cutoff_us(d) > r[1]), []).append(r)
    for c, ds in [("2026-01-07", "2026-01-10"), ("2026-01-08", "2026-01-14"), ("2026-01-06", "2026-01-07")]:
        cs, cc = window_bounds(c, W)
        ckpt = rebuild_users(_events(rows), cs, cc, L)
        after = [d for d in days(first, 14) if c < d <= ds]
        dr = [day_rows(_events(by_day.get(d, [])), cutoff_us(d), L) for d in after]
        start, cutoff = window_bounds(ds, W)
        got = pa.Table.from_batches(list(merge_batches([ckpt], pa.Table.from_batches(dr), start, cutoff, L)))
        want = pa.Table.from_batches([rebuild_users(_events(rows), start, cutoff, L)])
        assert got.sort_by("user_id").equals(want.sort_by("user_id")), (c, ds)
