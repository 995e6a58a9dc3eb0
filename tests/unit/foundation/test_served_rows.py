"""pinrec.core.served.record / rows: one served response -> the lander's record -> rows of `served`."""
from __future__ import annotations

import pytest

from pinrec.core.contracts import SERVED_SCHEMA
from pinrec.core.served import record, rows

RESPONSE = {"user_id": 42, "arm": "repin", "arm_source": "assigned", "request_id": "r1",
            "candidates_ds": "2026-03-01", "sequences_ds": "2026-03-01",
            "items": [{"item_id": 7, "score": 0.9, "outcome": "repin", "source": "precomputed"},
                      {"item_id": 3, "score": 0.5, "outcome": "repin", "source": "regenerated"},
                      {"item_id": 9, "score": -1.0, "outcome": "popularity", "source": "popularity"}]}
MIDNIGHT = 1_772_409_600_000_000  # 2026-03-02 00:00 UTC


def test_one_row_per_item_in_rank_order_on_the_utc_day_it_was_sent():
    late = record(RESPONSE, MIDNIGHT - 1)
    early = record({**RESPONSE, "request_id": "r2", "arm_source": "requested"}, MIDNIGHT)
    t = rows([late, early])
    assert t.schema == SERVED_SCHEMA
    got = t.to_pylist()
    assert [(r["request_id"], r["rank"], r["item_id"]) for r in got] == [
        ("r1", 0, 7), ("r1", 1, 3), ("r1", 2, 9), ("r2", 0, 7), ("r2", 1, 3), ("r2", 2, 9)]
    assert [r["ds"] for r in got] == ["2026-03-01"] * 3 + ["2026-03-02"] * 3
    assert [r["source"] for r in got[:3]] == ["precomputed", "regenerated", "popularity"]
    assert {r["arm_source"] for r in got[3:]} == {"requested"}
    assert got[0]["served_at"].timestamp() * 1e6 == MIDNIGHT - 1


def test_a_response_that_is_no_valid_record_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="arm_source"):
        record({**RESPONSE, "arm_source": "guessed"}, MIDNIGHT)
    with pytest.raises(ValueError, match="request_id"):
        record({**RESPONSE, "request_id": ""}, MIDNIGHT)
    with pytest.raises(ValueError, match="source"):
        record({**RESPONSE, "items": [{"item_id": 1, "outcome": None, "source": "cache"}]}, MIDNIGHT)


def test_no_records_no_rows():
    assert rows([]).num_rows == 0
