"""Bad input for `pinrec sequences` (issue 16, section 5) on real Delta tables: each case is
refused with an error naming the table, the partition and the fix, or (a missing previous day)
handled by an automatic full rebuild that says so in the log. Never a silently wrong sequence."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.sequences import SequencesConfig, run_job
from jobs.sequences_checks import BadInput
from pinrec.core.sequences_store import RUNS, read_sequences
from pinrec.core.layout import Lake
from tests.integration.test_sequences import (_us, events_table, reference, table_as_dict,
                                              write_events)

KW = dict(max_len=4, window_days=5)
ROWS = [  # (event_id, user_id, item_id, action, ts_us), one or two events a day for 01-05..01-09
    ("a", 1, 10, "repin", _us("2026-01-05", 1)),
    ("b", 1, 11, "grid_click", _us("2026-01-06", 2)),
    ("c", 2, 12, "search", _us("2026-01-07", 3)),
    ("d", 1, 13, "repin", _us("2026-01-08", 4)),
    ("e", 3, 14, "other", _us("2026-01-09", 5)),
    ("f", 1, 15, "repin", _us("2026-01-09", 6)),
]


def _lake(tmp_path, rows=ROWS) -> Lake:
    lake = Lake.at(tmp_path / "lake")
    write_events(lake, rows)
    return lake


def _cfg(lake: Lake, ds: str, **kw) -> SequencesConfig:
    return SequencesConfig(ds=ds, lake=str(lake.root), **{**KW, **kw})


def no_spark():
    pytest.fail("bad input must be refused before Spark starts")


def test_landing_partition_with_the_wrong_schema_is_refused(tmp_path):
    lake = _lake(tmp_path)
    tables = DeltaRsTables(lake)
    # An outside writer committed a file with ts as text and no user_id into ds=01-09.
    staging = tables.staging_dir("events", "2026-01-09")
    staging.mkdir(parents=True)
    pq.write_table(pa.table({"event_id": ["x"], "item_id": [1], "item_type": ["pin"],
                             "action": ["repin"], "surface": ["homefeed"],
                             "ts": ["2026-01-09T10:00:00Z"]}), staging / "part-0.parquet")
    tables.commit_partition_files("events", staging, "2026-01-09")
    with pytest.raises(BadInput) as e:
        run_job(no_spark, _cfg(lake, "2026-01-09"))
    msg = str(e.value)
    assert "table 'events', partition ds=2026-01-09" in msg
    assert "required column 'user_id' is missing" in msg and "column 'ts' is string" in msg
    assert "Fix: land the partition again" in msg
    assert not tables.exists(RUNS)  # nothing was written


def test_events_outside_the_days_window_are_refused(tmp_path):
    t = events_table(ROWS)
    # event "d" (ts 01-08) filed under ds=01-09 as well as a correct one
    wrong = events_table([("late", 2, 99, "repin", _us("2026-01-08", 22))])
    wrong = wrong.set_column(wrong.schema.get_field_index("ds"), wrong.schema.field("ds"),
                             pa.array(["2026-01-09"]))
    lake = Lake.at(tmp_path / "lake")
    DeltaRsTables(lake).replace_partitions("events", pa.concat_tables([t, wrong]),
                                        set(t.column("ds").to_pylist()))
    with pytest.raises(BadInput) as e:
        run_job(no_spark, _cfg(lake, "2026-01-09"))
    msg = str(e.value)
    assert "table 'events', partition ds=2026-01-09: 1 of 3 events have a ts outside" in msg
    assert "event_id='late'" in msg and "Fix: move them to the partition of their day" in msg


def test_an_event_id_that_landed_on_an_earlier_day_is_refused(spark, tmp_path):
    rows = ROWS + [("b", 1, 77, "repin", _us("2026-01-09", 8))]  # "b" landed on 01-06 already
    lake = _lake(tmp_path, rows)
    run_job(spark, _cfg(lake, "2026-01-08", mode="full"))
    with pytest.raises(BadInput) as e:
        run_job(no_spark, _cfg(lake, "2026-01-09"))
    msg = str(e.value)
    assert "table 'events', partition ds=2026-01-09: 1 event ids already landed on an earlier day (2026-01-06" in msg
    assert "event_id='b' of user 1" in msg and "Fix: remove the copies from ds=2026-01-09" in msg
    assert DeltaRsTables(lake).partitions(RUNS) == ["2026-01-08"]


def test_a_missing_previous_day_triggers_a_logged_full_rebuild(spark, tmp_path, caplog):
    lake = _lake(tmp_path)
    run_job(spark, _cfg(lake, "2026-01-07", mode="full"))
    # 01-08 never ran: the day rows of 01-08 are missing, so 01-09 rebuilds from the events
    with caplog.at_level(logging.WARNING, logger="jobs.sequences"):
        mode, _ = run_job(spark, _cfg(lake, "2026-01-09"))
    assert mode == "full"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("automatic full rebuild" in m and "2026-01-08" in m for m in warned), warned
    assert table_as_dict(lake, "2026-01-09") == reference(ROWS, "2026-01-09", 5, 4)
    # and the next day is a plain daily run again
    mode, _ = run_job(no_spark, _cfg(lake, "2026-01-10"))
    assert mode == "incremental"
    assert table_as_dict(lake, "2026-01-10") == reference(ROWS, "2026-01-10", 5, 4)
    assert pc.sum(read_sequences(DeltaRsTables(lake), "2026-01-10").column("length")).as_py() == 5
