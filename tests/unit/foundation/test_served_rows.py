"""served_record / served_rows: one served response -> one log record -> rows of `served`."""
from __future__ import annotations

import pytest

from pinrec.experiments import SERVED_SCHEMA, served_record, served_rows

RESPONSE = {"user_id": 42, "arm": "repin", "candidates_ds": "2026-03-01", "sequences_ds": "2026-03-01",
            "items": [{"item_id": 7, "score": 0.9, "outcome": "repin", "source": "precomputed"},
                      {"item_id": 3, "score": 0.5, "outcome": "repin", "source": "regenerated"},
                      {"item_id": 9, "score": -1.0, "outcome": "popularity", "source": "popularity"}]}
MIDNIGHT = 1_772_409_600_000_000  # 2026-03-02 00:00 UTC


def test_one_row_per_item_in_rank_order_on_the_utc_day_it_was_sent():
    late = served_record(RESPONSE, "r1", "assigned", MIDNIGHT - 1)
    early = served_record(RESPONSE, "r2", "requested", MIDNIGHT)
    t = served_rows([late, early])
    assert t.schema == SERVED_SCHEMA
    rows = t.to_pylist()
    assert [(r["request_id"], r["rank"], r["item_id"]) for r in rows] == [
        ("r1", 0, 7), ("r1", 1, 3), ("r1", 2, 9), ("r2", 0, 7), ("r2", 1, 3), ("r2", 2, 9)]
    assert [r["ds"] for r in rows] == ["2026-03-01"] * 3 + ["2026-03-02"] * 3
    assert [r["source"] for r in rows[:3]] == ["precomputed", "regenerated", "popularity"]
    assert {r["arm_source"] for r in rows[3:]} == {"requested"}
    assert rows[0]["served_at"].timestamp() * 1e6 == MIDNIGHT - 1


def test_the_record_is_json_and_checks_what_it_is_given():
    import json

    rec = served_record(RESPONSE, "r1", "assigned", MIDNIGHT)
    assert json.loads(json.dumps(rec)) == rec
    with pytest.raises(ValueError, match="arm_source"):
        served_record(RESPONSE, "r1", "guessed", MIDNIGHT)
    with pytest.raises(ValueError, match="request_id"):
        served_record(RESPONSE, "", "assigned", MIDNIGHT)
    bad = {**rec, "items": [{"item_id": 1, "outcome": None, "source": "cache"}]}
    with pytest.raises(ValueError, match="source"):
        served_rows([bad])


def test_no_records_no_rows():
    assert served_rows([]).num_rows == 0
