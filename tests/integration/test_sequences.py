"""The sequences job on a real Spark session and real Delta tables: every day's
`read_sequences` equals a full rebuild for that day and a plain-Python reference, for both
engines (Arrow, and Spark writing Parquet that delta-rs commits), across checkpoints, a day
with no events, a re-run of a middle day and a backfill that changes a middle day."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.sequences import SequencesConfig, run_job, shift_ds, window_bounds
from pinrec.core.sequences_store import CHECKPOINTS, DAYS, RUNS, read_sequences
from pinrec.core.contracts import EVENTS_SCHEMA, ds_of_us
from pinrec.core.layout import Lake

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
    DeltaRsTables(lake).replace_partitions("events", t, set(t.column("ds").to_pylist()))


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
    t = read_sequences(DeltaRsTables(lake), ds).to_pylist()
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


def sequences(lake: Lake, ds: str) -> pa.Table:
    return read_sequences(DeltaRsTables(lake), ds)


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


def _synth(lake_root, users=120, days=12, seed=3):
    from jobs.data_cli import run_synth
    from jobs.synth import SynthConfig

    run_synth(SynthConfig(users=users, days=days, seed=seed, items=400, clusters=8,
                          p_active=0.5, events_per_session=4.0, start="2026-01-01"), str(lake_root))


def _rows(lake: Lake) -> list[tuple]:
    return [(r["event_id"], r["user_id"], r["item_id"], r["action"], _to_us(r["ts"]))
            for r in DeltaRsTables(lake).read("events").to_pylist()]


KW = dict(max_len=7, window_days=6, checkpoint_every=3)  # window edge, cap and checkpoints all bite
FIRST, QUIET = "2026-01-06", "2026-01-09"  # QUIET: a day with no events
DAYS_RUN = [shift_ds(FIRST, k) for k in range(6)]  # 01-06 .. 01-11


LATE = [("late-1", 7, 99, "repin", _us("2026-01-07", 23)),
        ("late-2", 1000, 98, "search", _us("2026-01-07", 5))]


def _backfill_events(lake: Lake) -> None:
    """Two events arrive late for 01-07 and the partition is landed again."""
    day = DeltaRsTables(lake).read("events", ["2026-01-07"])
    DeltaRsTables(lake).replace_partitions("events", pa.concat_tables([day, events_table(LATE)]),
                                        ["2026-01-07"])


@pytest.fixture(scope="module")
def expected(spark, tmp_path_factory):
    """The definition, shared by both engines: a full rebuild of every day (written as the
    checkpoint of that day and read back), before and after the backfill of 01-07."""
    lake = Lake.at(tmp_path_factory.mktemp("full") / "lake")
    _synth(lake.root)
    DeltaRsTables(lake).delete_partitions("events", [QUIET])

    def full_every_day():
        out = {}
        for ds in DAYS_RUN:
            run_job(spark, SequencesConfig(ds=ds, lake=str(lake.root), mode="full", **KW))
            out[ds] = sequences(lake, ds)
        return out

    before = full_every_day()
    ref = reference(_rows(lake), DAYS_RUN[-1], 6, 7)
    _backfill_events(lake)
    return {"before": before, "reference": ref, "after": full_every_day()}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_daily_runs_equal_full_rebuild_every_day(spark, tmp_path, engine, expected):
    inc_lake = Lake.at(tmp_path / "inc")
    _synth(inc_lake.root)
    DeltaRsTables(inc_lake).delete_partitions("events", [QUIET])
    # the embedded engine never starts Spark for a day's work
    no_spark = lambda: pytest.fail("a daily run started a Spark session")  # noqa: E731
    daily = no_spark if engine == "arrow" else spark
    modes = [run_job(spark, SequencesConfig(ds=FIRST, lake=str(inc_lake.root), mode="full", **KW))[0]]
    for ds in DAYS_RUN[1:]:
        modes.append(run_job(daily, SequencesConfig(ds=ds, lake=str(inc_lake.root), engine=engine, **KW))[0])
    # 01-09 is the 3rd day after the checkpoint of 01-06: a new checkpoint there
    assert modes == ["full", "incremental", "incremental", "checkpoint", "incremental", "incremental"]
    t = DeltaRsTables(inc_lake)
    assert t.partitions(CHECKPOINTS) == [FIRST, "2026-01-09"]
    assert QUIET in t.partitions(RUNS)
    runs = {r["ds"]: r for r in t.read(RUNS).to_pylist()}
    assert runs[QUIET]["day_events"] == 0 and runs[QUIET]["active_users"] == 0
    # a day's run writes only its active users' rows
    assert runs["2026-01-10"]["rows_written"] == runs["2026-01-10"]["active_users"] > 0
    assert runs["2026-01-10"]["rows_written"] < sequences(inc_lake, "2026-01-10").num_rows

    got = {ds: sequences(inc_lake, ds) for ds in DAYS_RUN}
    for ds in DAYS_RUN:
        assert got[ds].equals(expected["before"][ds]), ds
    ref = expected["reference"]
    assert len(ref) > 50 and table_as_dict(inc_lake, DAYS_RUN[-1]) == ref

    # Re-running a middle day (same input) changes nothing and keeps the checkpoints.
    run_job(daily, SequencesConfig(ds="2026-01-08", lake=str(inc_lake.root), engine=engine, **KW))
    assert t.partitions(CHECKPOINTS) == [FIRST, "2026-01-09"]
    assert {ds: sequences(inc_lake, ds) for ds in DAYS_RUN} == got

    # A backfill that changes a middle day: only that day is re-run; every later ds reads the
    # new events (the stale checkpoint of 01-09 is dropped) and equals a full rebuild again.
    _backfill_events(inc_lake)
    run_job(daily, SequencesConfig(ds="2026-01-07", lake=str(inc_lake.root), engine=engine, **KW))
    assert t.partitions(CHECKPOINTS) == [FIRST]
    for ds in DAYS_RUN:
        assert sequences(inc_lake, ds).equals(expected["after"][ds]), ds
    assert 1000 in sequences(inc_lake, "2026-01-11").column("user_id").to_pylist()
    assert not expected["after"]["2026-01-11"].equals(expected["before"]["2026-01-11"])


def test_incremental_without_previous_day_is_refused(spark, tmp_path):
    lake = Lake.at(tmp_path / "lake")
    write_events(lake, HAND_ROWS)
    with pytest.raises(ValueError, match="needs sequences for 2026-01-08"):
        run_job(spark, SequencesConfig(ds="2026-01-09", lake=str(lake.root), mode="incremental"))
