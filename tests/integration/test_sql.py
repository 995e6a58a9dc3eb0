"""`pinrec sql` over real Delta tables, and every ready query of docs/analysts.md."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.sql import query
from pinrec.cli import main
from pinrec.core.contracts import CANDIDATES_SCHEMA, ITEMS_SCHEMA, SEQUENCES_SCHEMA
from pinrec.core.layout import Lake

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
DS = "2026-01-20"
T0 = datetime(2026, 1, 20, tzinfo=timezone.utc)


def cand(user, arm, items, outcome="repin"):
    return [dict(ds=DS, user_id=user, arm=arm, rank=r, item_id=i, score=1.0 - r / 100,
                 outcome=outcome, model_version="m1", budget=json.dumps({outcome: 1.0}),
                 generated_at=T0) for r, i in enumerate(items, start=1)]


@pytest.fixture
def lake(tmp_path) -> Lake:
    lake = Lake.at(tmp_path / "lake")
    t = DeltaRsTables(lake)
    rows = cand(42, "a", [1, 2, 3, 4]) + cand(42, "b", [3, 4, 5, 6], "outbound_click") + cand(7, "a", [1, 9])
    t.replace_partitions("candidates", pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), [DS])
    items = [dict(item_id=i, item_type="pin", features=[0.0] * 32, first_seen=T0, last_seen=T0,
                  engagements=1000 if i == 1 else 1, ds=DS) for i in range(1, 201)]
    t.replace_partitions("items", pa.Table.from_pylist(items, schema=ITEMS_SCHEMA), [DS])
    seq = [dict(user_id=42, event_ids=["e1", "e2"], item_ids=[11, 12], item_types=["pin"] * 2,
                actions=["repin", "grid_click"], surfaces=["homefeed"] * 2, ts=[T0, T0], length=2,
                cutoff_ts=T0, ds=DS)]
    t.replace_partitions("sequences", pa.Table.from_pylist(seq, schema=SEQUENCES_SCHEMA), [DS])
    return lake


def doc_queries() -> dict[str, str]:
    """Heading -> SQL of every ```sql block in the analysts' guide."""
    out = {}
    # the arm queries (section "Comparing arms") are run in tests/integration/test_outcomes.py
    for section in DOC.read_text().split("\n## Comparing arms")[0].split("\n### ")[1:]:
        title = section.splitlines()[0].strip()
        m = re.search(r"```sql\n(.*?)```", section, re.S)
        if m:
            out[title] = m.group(1)
    return out


def test_every_ready_query_in_the_guide_runs_and_gives_the_known_answer(lake):
    qs = doc_queries()
    assert len(qs) == 6, sorted(qs)
    # the sequences job's own cost query needs its `sequence_runs` table, which only `pinrec
    # sequences` writes: on this hand-built lake it must fail naming that job
    with pytest.raises(Exception, match="pinrec sequences"):
        query(str(lake.root), qs["What the daily sequences run cost"])
    per_arm = query(str(lake.root), qs["Candidates per arm"]).to_pylist()
    assert [(r["arm"], r["users"], r["candidates"]) for r in per_arm] == [("a", 2, 6), ("b", 1, 4)]
    mix = query(str(lake.root), qs["Outcome mix per arm (does each arm spend its budget?)"]).to_pylist()
    assert [(r["arm"], r["outcome"], r["share"]) for r in mix] == [("a", "repin", 1.0), ("b", "outbound_click", 1.0)]
    overlap = query(str(lake.root), qs["Overlap between arms (mean Jaccard of each user's candidate sets)"]).to_pylist()
    assert overlap == [{"arm_a": "a", "arm_b": "b", "users": 1, "mean_jaccard": pytest.approx(2 / 6, abs=1e-4)}]
    skew = {r["arm"]: r for r in query(str(lake.root), qs["Coverage and popularity skew of the candidates"]).to_pylist()}
    assert skew["a"]["catalog_coverage"] == pytest.approx(5 / 200)  # items 1, 2, 3, 4, 9
    # top 1 % of 200 pins = items 1 (1000 engagements) and 2 (ties go by id): 3 of 6 slots
    assert skew["a"]["top1pct_share_of_candidates"] == pytest.approx(3 / 6, abs=1e-4)
    hist = query(str(lake.root), qs["One user's candidates next to their history"]).to_pylist()
    history = [(r["n"], r["item_id"]) for r in hist if r["what"] == "history"]
    assert sorted(history) == [(1, 12), (2, 11)]  # newest first
    assert sum(r["what"] == "candidate" for r in hist) == 8


def test_replaced_files_are_never_read(lake):
    t = DeltaRsTables(lake)
    t.replace_partitions("candidates", pa.Table.from_pylist(cand(1, "a", [5]), schema=CANDIDATES_SCHEMA), [DS])
    on_disk = sum(pq.read_metadata(p).num_rows
                  for p in Path(t.uri("candidates")).rglob("*.parquet"))
    assert on_disk == 11  # the replaced rows are still in the folder until vacuum...
    assert query(str(lake.root), "SELECT count(*) AS n FROM candidates").to_pylist() == [{"n": 1}]


def test_cli_prints_and_writes_csv_and_names_bad_sql(lake, tmp_path, capsys):
    assert main(["sql", "SELECT arm, count(*) AS n FROM candidates GROUP BY arm ORDER BY arm",
                 "--lake", str(lake.root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"a\s+6", out) and re.search(r"b\s+4", out)
    csv = tmp_path / "out" / "c.csv"
    assert main(["sql", "SELECT user_id, item_id FROM candidates WHERE arm = 'b' ORDER BY rank",
                 "--lake", str(lake.root), "--out", str(csv)]) == 0
    assert csv.read_text().splitlines() == ['"user_id","item_id"', "42,3", "42,4", "42,5", "42,6"]
    assert main(["sql", "SELEC 1", "--lake", str(lake.root)]) == 2
    assert "SQL failed" in capsys.readouterr().err
    assert main(["sql", "SELECT 1", "--lake", str(tmp_path / "nowhere")]) == 2


def test_a_table_this_lake_lacks_is_named_with_the_job_that_writes_it(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    DeltaRsTables(lake).replace_partitions(
        "candidates", pa.Table.from_pylist(cand(1, "a", [5]), schema=CANDIDATES_SCHEMA), [DS])
    with pytest.raises(ValueError, match=r"this lake has candidates; items is written by `pinrec items`"):
        query(str(lake.root), "SELECT count(*) FROM items")
    with pytest.raises(ValueError) as bad:  # a plain SQL error gets no hint
        query(str(lake.root), "SELECT nope FROM candidates")
    assert "SQL failed" in str(bad.value) and "this lake has" not in str(bad.value)
