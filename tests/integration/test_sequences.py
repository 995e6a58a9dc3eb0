"""The sequences job on a real Spark session and real Delta tables, checked against a
plain-Python reference, in both modes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from jobs.lake import LakeTables
from jobs.sequences import SequencesConfig, run_job, spark_incremental, window_bounds
from pinrec.contracts import EVENTS_SCHEMA, ds_of_us
from pinrec.layout import Lake

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(day: str, hour: int = 12) -> int:
    d = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return int(d.timestamp()) * 1_000_000 + hour * 3_600_000_000


def events_table(rows) -> pa.Table:
    """rows: (event_id, user_id, item_id, action, ts_us)."""
    cols = {n: [] for n in EVENTS_SCHEMA.names}
    for eid, uid, item, action, ts in rows:
        q = action == "search"
        cols["event_id"].append(eid)
        cols["user_id"].append(uid)
        cols["item_id"].append(item)
        cols["item_type"].append("query" if q else "pin")
        cols["query_text"].append(f"q{item}" if q else None)
        cols["action"].append(action)
        cols["surface"].append("search" if q else "homefeed")
        cols["ts"].append(ts)
        cols["ds"].append(ds_of_us(ts))
    return pa.table(cols).cast(EVENTS_SCHEMA)


def write_events(lake: Lake, rows) -> None:
    t = events_table(rows)
    LakeTables(lake).replace_partitions("events", t, set(t.column("ds").to_pylist()))


def reference(rows, ds: str, window_days: int, max_len: int) -> dict[int, list[tuple]]:
    """Plain-Python statement of the contract: window, dedup by event_id, order, cap."""
    start, cutoff = window_bounds(ds, window_days)
    best: dict[tuple, tuple] = {}
    for eid, uid, item, action, ts in rows:
        if start <= ts < cutoff:
            key = (uid, eid)
            cand = (ts, item, action)
            best[key] = min(best.get(key, cand), cand)
    per_user: dict[int, list] = {}
    for (uid, eid), (ts, item, action) in best.items():
        per_user.setdefault(uid, []).append((ts, eid, item, action))
    return {u: sorted(v)[-max_len:] for u, v in per_user.items()}


def table_as_dict(lake: Lake, ds: str) -> dict[int, list[tuple]]:
    t = LakeTables(lake).read("sequences", [ds]).to_pylist()
    out = {}
    for r in t:
        assert r["length"] == len(r["item_ids"])
        assert r["cutoff_ts"] == datetime.fromtimestamp(window_bounds(ds, 1)[1] / 1e6, timezone.utc)
        out[r["user_id"]] = [(_to_us(ts), e, i, a)
                             for ts, e, i, a in zip(r["ts"], r["event_ids"], r["item_ids"], r["actions"])]
    assert len(out) == len(t), "one row per user"
    return out


def _to_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def sorted_rows(lake: Lake, ds: str) -> list[dict]:
    return sorted(LakeTables(lake).read("sequences", [ds]).to_pylist(), key=lambda r: r["user_id"])


HAND_ROWS = [
    # user 1: a duplicate event id (replayed), an out-of-window event, more than max_len events
    ("a", 1, 10, "repin", _us("2026-01-01")),          # before the 5-day window of 01-09
    ("b", 1, 11, "grid_click", _us("2026-01-05", 1)),
    ("c", 1, 12, "search", _us("2026-01-06", 2)),
    ("c", 1, 12, "search", _us("2026-01-06", 2)),      # replay: same event twice
    ("d", 1, 13, "outbound_click", _us("2026-01-07", 3)),
    ("e", 1, 14, "repin", _us("2026-01-08", 4)),
    ("f", 1, 15, "other", _us("2026-01-09", 5)),
    ("g", 1, 16, "repin", _us("2026-01-10", 6)),        # after the cutoff of 01-09
    # user 2: only old events -> no row; user 3: one event on the last day
    ("h", 2, 20, "repin", _us("2026-01-02")),
    ("i", 3, 30, "grid_click", _us("2026-01-09", 23)),
    # user 4: a tie on ts, broken by event_id
    ("k2", 4, 41, "repin", _us("2026-01-07")),
    ("k1", 4, 40, "repin", _us("2026-01-07")),
]


def test_full_build_matches_reference_on_hand_rows(spark, tmp_path):
    lake = Lake.at(tmp_path / "lake")
    write_events(lake, HAND_ROWS)
    cfg = SequencesConfig(ds="2026-01-09", lake=str(lake.root), mode="full", max_len=4, window_days=5)
    mode, _ = run_job(spark, cfg)
    assert mode == "full"
    got = table_as_dict(lake, "2026-01-09")
    assert got == reference(HAND_ROWS, "2026-01-09", 5, 4)
    assert [e for _, e, _, _ in got[1]] == ["c", "d", "e", "f"]  # deduped, capped, windowed
    assert 2 not in got and [e for _, e, _, _ in got[4]] == ["k1", "k2"]


def _synth(lake_root, users=120, days=12, seed=3):
    from jobs.data_cli import run_synth
    from jobs.synth import SynthConfig

    run_synth(SynthConfig(users=users, days=days, seed=seed, items=400, clusters=8,
                          p_active=0.5, events_per_session=4.0, start="2026-01-01"), str(lake_root))


@pytest.mark.slow
def test_incremental_equals_full_and_reference_and_reruns_are_identical(spark, tmp_path):
    """Window 6 days and cap 7 so both the window edge and the cap bite every day."""
    full_lake, inc_lake = Lake.at(tmp_path / "full"), Lake.at(tmp_path / "inc")
    for lake in (full_lake, inc_lake):
        _synth(lake.root)
    rows = [(r["event_id"], r["user_id"], r["item_id"], r["action"], _to_us(r["ts"]))
            for r in LakeTables(full_lake).read("events").to_pylist()]
    kw = dict(max_len=7, window_days=6)
    days = ["2026-01-08", "2026-01-09", "2026-01-10"]
    run_job(spark, SequencesConfig(ds=days[0], lake=str(inc_lake.root), mode="full", **kw))
    for ds in days[1:]:
        mode, _ = run_job(spark, SequencesConfig(ds=ds, lake=str(inc_lake.root), **kw))
        assert mode == "incremental"
    run_job(spark, SequencesConfig(ds=days[-1], lake=str(full_lake.root), mode="full", **kw))
    expected = reference(rows, days[-1], 6, 7)
    assert len(expected) > 50
    assert table_as_dict(full_lake, days[-1]) == expected
    assert sorted_rows(inc_lake, days[-1]) == sorted_rows(full_lake, days[-1])
    # The Spark incremental (the delta-spark / cluster path) gives the same rows too.
    spark_rows = spark_incremental(spark, LakeTables(inc_lake), SequencesConfig(
        ds=days[-1], lake=str(inc_lake.root), **kw)).toArrow().to_pylist()
    assert sorted(spark_rows, key=lambda r: r["user_id"]) == sorted_rows(full_lake, days[-1])

    # Idempotency: re-running a day (either mode) leaves the table contents identical.
    before = {ds: sorted_rows(inc_lake, ds) for ds in days}
    # (the embedded incremental path must not even start Spark)
    no_spark = lambda: pytest.fail("the incremental update started a Spark session")  # noqa: E731
    run_job(no_spark, SequencesConfig(ds=days[-1], lake=str(inc_lake.root), mode="incremental", **kw))
    run_job(spark, SequencesConfig(ds=days[1], lake=str(inc_lake.root), mode="full", **kw))
    assert {ds: sorted_rows(inc_lake, ds) for ds in days} == before


def test_incremental_without_previous_day_is_refused(spark, tmp_path):
    lake = Lake.at(tmp_path / "lake")
    write_events(lake, HAND_ROWS)
    with pytest.raises(ValueError, match="needs sequences for 2026-01-08"):
        run_job(spark, SequencesConfig(ds="2026-01-09", lake=str(lake.root), mode="incremental"))
