"""The in-memory serving store built from one candidates partition."""
from __future__ import annotations

import json

import pyarrow as pa

from pinrec.core.contracts import CANDIDATES_SCHEMA
from serving.candidates import CandidateStore, most_frequent


def table(rows):
    cols = {k: [] for k in CANDIDATES_SCHEMA.names}
    for user, arm, rank, item, outcome in rows:
        for k, v in (("ds", "2026-03-01"), ("user_id", user), ("arm", arm), ("rank", rank),
                     ("item_id", item), ("score", 1.0 - rank / 10), ("outcome", outcome),
                     ("model_version", "v1"), ("budget", json.dumps({"repin": 0.5, "grid_click": 0.5})),
                     ("generated_at", None)):
            cols[k].append(v)
    return pa.Table.from_pydict(cols, schema=CANDIDATES_SCHEMA)


ROWS = [  # written out of order on purpose
    (2, "control", 1, 21, "grid_click"), (1, "control", 2, 13, "repin"),
    (1, "control", 0, 11, "repin"), (1, "control", 1, 12, "grid_click"),
    (1, "saves", 0, 99, "repin"), (1, "control", 3, 14, "grid_click"),
]


def test_rows_are_indexed_by_user_arm_and_outcome_in_rank_order():
    s = CandidateStore.from_table(table(ROWS), "2026-03-01", popular=[5, 6])
    assert s.ds == "2026-03-01" and s.model_version == "v1"
    assert {a: b.as_dict() for a, b in s.arms.items()} == {"control": {"repin": 0.5, "grid_click": 0.5},
                                                           "saves": {"repin": 0.5, "grid_click": 0.5}}
    got = s.get(1, "control")
    assert sorted((r.outcome, r.item_id) for r in got) == [
        ("grid_click", 12), ("grid_click", 14), ("repin", 11), ("repin", 13)]
    by_outcome = [r.item_id for r in got if r.outcome == "grid_click"]
    assert by_outcome == [12, 14]  # rank order within an outcome
    assert [r.item_id for r in s.get(1, "saves")] == [99]
    assert s.get(3, "control") == [] and s.get(1, "nope") == []
    assert all(r.source == "precomputed" for r in got)


def test_limits_cap_rows_per_outcome():
    s = CandidateStore.from_table(table(ROWS), "2026-03-01")
    got = s.get(1, "control", {"grid_click": 1}, default_limit=0)
    assert [(r.outcome, r.item_id) for r in got] == [("grid_click", 12)]


def test_popularity_defaults_to_the_most_frequent_candidates():
    assert most_frequent(pa.array([3, 1, 3, 2, 1, 3]).to_numpy()) == [3, 1, 2]
    s = CandidateStore.from_table(table(ROWS), "2026-03-01")
    assert s.popular[0] == 11  # all appear once: ties go to the smallest id
