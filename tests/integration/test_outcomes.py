"""`pinrec outcomes` against real Delta tables: served lists come from the real serving code
(RecommendationService.recommend -> pinrec.core.served.record -> rows), the engagements are placed
around them so every number the job writes is known in advance."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.outcomes import OutcomesConfig, run_job
from pinrec.cli import main as pinrec
from pinrec.core.contracts import EVENTS_SCHEMA, parse_ds
from pinrec.core.experiments import TrafficSplit
from pinrec.core.served import record, rows as served_rows
from pinrec.core.layout import Lake
from serving.sample_lake import SampleLakeConfig, build
from serving.service import RecommendationService, ServingConfig
from streaming.store import RealtimeStore

pytestmark = pytest.mark.timeout(240)
C, D, D1 = "2026-03-01", "2026-03-02", "2026-03-03"
START = int(parse_ds(D).timestamp()) * 1_000_000
SEC = 1_000_000
SPLIT = TrafficSplit.even(["control", "saves"])
N = 10
SERVED, REQUESTED, UNSERVED = range(0, 10), 10, range(11, 16)


def event(eid: str, user: int, item: int, action: str, ts: int) -> dict:
    from pinrec.core.contracts import ds_of_us

    return {"event_id": eid, "user_id": user, "item_id": item, "item_type": "pin",
            "query_text": None, "action": action, "surface": "homefeed", "ts": ts,
            "ds": ds_of_us(ts)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("outcomes")
    build(SampleLakeConfig(root / "lake", ds=C, users=20, items=300, candidates=30, model=False))
    writer = RealtimeStore.open(root / "db")
    svc = RecommendationService.load(ServingConfig(root / "lake", (root / "db",), regenerate=False,
                                                   secondary_dir=root / "sec", traffic=SPLIT))
    records, events = [], []
    try:
        for u in [*SERVED, REQUESTED]:
            t = START + (u + 1) * 60 * SEC  # the pre-serve event stays on day D
            requested = u == REQUESTED
            # the requested user names an arm; the others are assigned one by serving's split
            resp = svc.recommend(u, n=N, arm="saves" if requested else None, now_us=t)
            assert resp["arm_source"] == ("requested" if requested else "assigned")
            assert requested or resp["arm"] == SPLIT.arm_of(u)
            records.append(record(resp, t))
            items = [i["item_id"] for i in resp["items"]]
            events += [event(f"e{u}-0", u, items[0], "repin", t + 10 * SEC),
                       event(f"e{u}-1", u, items[1], "grid_click", t + 20 * SEC),
                       event(f"e{u}-pre", u, items[2], "other", t - 10 * SEC),  # before the serve
                       event(f"e{u}-late", u, items[3], "repin", t + 86_400 * SEC + SEC)]  # after the window
        for u in UNSERVED:
            cand = svc.candidates.get(u, SPLIT.arm_of(u))[0].item_id
            events += [event(f"n{u}-hit", u, cand, "repin", START + 3600 * SEC),
                       event(f"n{u}-miss", u, 10_000, "repin", START + 3600 * SEC)]
    finally:
        svc.close()
        writer.close()
    tables = DeltaRsTables(Lake.at(root / "lake"))
    served = served_rows(records)
    tables.replace_partitions("served", served, [D])
    ev = pa.Table.from_pylist(events, schema=EVENTS_SCHEMA)
    tables.replace_partitions("events", ev, sorted(set(ev.column("ds").to_pylist())))
    return root / "lake", records, tables


def test_served_rows_follow_the_response(world):
    _, records, tables = world
    served = tables.read("served", [D]).sort_by([("request_id", "ascending"), ("rank", "ascending")])
    assert served.num_rows == N * len(records)
    r0 = served.filter(pc.equal(served.column("request_id"), records[0].request_id)).to_pylist()
    assert [r["rank"] for r in r0] == list(range(N))
    assert [r["item_id"] for r in r0] == [item_id for item_id, _, _ in records[0].items]
    assert {r["ds"] for r in r0} == {D} and {r["candidates_ds"] for r in r0} == {C}
    assert {r["source"] for r in r0} == {"precomputed"}


def expected_counts(records):
    by_arm: dict[str, dict] = {}
    for rec in records:
        if rec.arm_source != "assigned":
            continue
        a = by_arm.setdefault(rec.arm, {"users": 0, "imp": 0, "imp_repin": 0})
        a["users"] += 1
        a["imp"] += len(rec.items)
        a["imp_repin"] += sum(outcome == "repin" for _, outcome, _ in rec.items)
    return by_arm


def test_every_number_is_the_one_placed(world):
    lake, records, tables = world
    out = run_job(OutcomesConfig(str(lake), D, bootstrap=300))
    rows = {(r["arm"], r["outcome"]): r for r in out.to_pylist()}
    assert {a for a, _ in rows} == {"control", "saves"}
    assert len(rows) == 12
    unserved = {arm: sum(SPLIT.arm_of(u) == arm for u in UNSERVED) for arm in ("control", "saves")}
    for arm, exp in expected_counts(records).items():
        s = exp["users"]
        all_ = rows[(arm, "all")]
        assert all_["served_impressions"] == exp["imp"] == N * s
        assert all_["served_users"] == s
        # rank 0 (repin) and rank 1 (grid_click) were engaged after the serve; rank 2 before it
        # and rank 3 after the window earn nothing
        assert all_["engaged_items"] == 2 * s and all_["engaged_users"] == s
        assert all_["engagement_rate"] == pytest.approx(0.2)
        assert (all_["engagement_rate_lo"], all_["engagement_rate_hi"]) == pytest.approx((0.2, 0.2))
        rep = rows[(arm, "repin")]
        assert rep["served_impressions"] == exp["imp_repin"]
        assert rep["engaged_items"] == s and rep["realised_share"] == pytest.approx(0.5)
        assert rows[(arm, "grid_click")]["realised_share"] == pytest.approx(0.5)
        assert rows[(arm, "outbound_click")]["engaged_items"] == 0
        # recall window = day D: served users 3 engagements, all candidates (the late one is on
        # D+1); unserved users one hit and one miss each
        k = unserved[arm]
        assert all_["candidate_recall"] == pytest.approx((3 * s + k) / (3 * s + 2 * k))
        assert all_["candidate_recall_lo"] <= all_["candidate_recall"] <= all_["candidate_recall_hi"]
        assert all_["budget_share"] == 1.0
    assert rows[("saves", "repin")]["budget_share"] == 1.0
    assert rows[("control", "repin")]["budget_share"] == 0.5
    assert rows[("saves", "grid_click")]["served_impressions"] == 0


def test_coverage_and_novelty_over_the_arms_users(world):
    lake, records, tables = world
    out = run_job(OutcomesConfig(str(lake), D, bootstrap=100))
    cands = tables.read("candidates", [C]).to_pylist()
    hist = {r["user_id"]: set(r["item_ids"]) for r in tables.read("sequences", [C]).to_pylist()}
    served_arm = {r.user_id: r.arm for r in records if r.arm_source == "assigned"}
    for arm in ("control", "saves"):
        mine = [c for c in cands if c["arm"] == arm and c["user_id"] != REQUESTED
                and served_arm.get(c["user_id"], SPLIT.arm_of(c["user_id"])) == arm]
        row = out.filter(pc.and_(pc.equal(out.column("arm"), arm),
                                 pc.equal(out.column("outcome"), "all"))).to_pylist()[0]
        assert row["coverage"] == pytest.approx(len({c["item_id"] for c in mine}) / 300)
        novel = sum(c["item_id"] not in hist[c["user_id"]] for c in mine) / len(mine)
        assert row["novelty"] == pytest.approx(novel)


def test_rerun_replaces_the_partition_and_the_cli_runs_it(world):
    lake, _, tables = world
    assert pinrec(["outcomes", "--ds", D, "--lake", str(lake), "--bootstrap", "200"]) == 0
    first = tables.read("arm_outcomes", [D]).drop(["computed_at"]).sort_by(
        [("arm", "ascending"), ("outcome", "ascending")])
    assert pinrec(["outcomes", "--ds", D, "--lake", str(lake), "--bootstrap", "200"]) == 0
    again = tables.read("arm_outcomes", [D]).drop(["computed_at"]).sort_by(
        [("arm", "ascending"), ("outcome", "ascending")])
    assert first.num_rows == 12 and again.equals(first)


def test_a_day_without_anything_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="nothing to measure"):
        run_job(OutcomesConfig(str(tmp_path / "empty"), D))


# -- what analysts read: the ready queries of docs/analysts.md and the HTML report ---------------

def arm_queries() -> dict[str, str]:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "analysts.md").read_text()
    section = doc.split("\n## Comparing arms")[1].split("\n## ")[0]
    return {s.splitlines()[0].strip(): re.search(r"```sql\n(.*?)```", s, re.S).group(1)
            for s in section.split("\n### ")[1:]}


def sql_rows(lake, sql: str, tmp_path) -> list[dict]:
    import pyarrow.parquet as pq

    out = tmp_path / f"q{abs(hash(sql))}.parquet"
    assert pinrec(["sql", sql, "--lake", str(lake), "--out", str(out)]) == 0
    return pq.read_table(out).to_pylist()


def test_the_ready_arm_queries_give_the_placed_answers(world, tmp_path):
    lake, records, _ = world
    run_job(OutcomesConfig(str(lake), D, bootstrap=100))
    qs = arm_queries()
    assert list(qs) == ["Arm vs arm per outcome", "Budget vs realised mix (last 7 days)", "Trend over days"]
    users = {arm: e["users"] for arm, e in expected_counts(records).items()}
    vs = sql_rows(lake, qs["Arm vs arm per outcome"], tmp_path)
    assert len(vs) == 12
    alls = {r["arm"]: r for r in vs if r["outcome"] == "all"}
    assert {a: r["served_users"] for a, r in alls.items()} == users
    assert {a: (r["rate"], r["rate_lo"], r["rate_hi"]) for a, r in alls.items()} == {
        a: (0.2, 0.2, 0.2) for a in users}
    mix = {(r["arm"], r["outcome"]): r for r in sql_rows(lake, qs["Budget vs realised mix (last 7 days)"], tmp_path)}
    assert mix[("saves", "repin")]["realised"] == 0.5 and mix[("saves", "repin")]["budget"] == 1.0
    assert mix[("saves", "repin")]["realised_minus_budget"] == -0.5
    assert mix[("control", "grid_click")]["realised"] == 0.5
    assert mix[("control", "grid_click")]["realised_minus_budget"] == pytest.approx(0.2)
    trend = sql_rows(lake, qs["Trend over days"], tmp_path)
    assert [(r["ds"], r["arm"], r["served_users"], r["rate"], r["repin_share"]) for r in trend] == [
        (D, "control", users["control"], 0.2, 0.5), (D, "saves", users["saves"], 0.2, 0.5)]


def test_report_page_shows_every_arm_in_a_real_browser(world, tmp_path):
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from airflow_stack import Chromium, chromium_binary

    if chromium_binary() is None:
        pytest.skip("Debian chromium is not installed (`make sysdeps` installs it)")
    lake, _, _ = world
    run_job(OutcomesConfig(str(lake), D, bootstrap=100))
    out = tmp_path / "arms"
    assert pinrec(["report", "arms", "--from", D, "--to", D, "--out", str(out), "--lake", str(lake),
                   "--bootstrap", "200"]) == 0
    for png in ("mix_vs_budget.png", "engagement_rate.png", "candidate_recall.png"):
        assert (out / png).stat().st_size > 10_000, png
    b = Chromium(tmp_path)
    shot = tmp_path / "arms.png"
    try:
        b.goto((out / "index.html").as_uri())
        b.wait_for("document.readyState === 'complete' && [...document.images].every(i => i.complete)")
        time.sleep(1)
        b.screenshot(shot)
        arms = b.js("[...document.querySelectorAll('#arms tr.arm')].map(r => r.dataset.arm)")
        images = b.js("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
        diffs = b.js("[...document.querySelectorAll('#differences tr[data-arm]')].map(r => r.dataset.arm)")
        text = b.js("document.body.innerText")
    finally:
        b.close()
    assert arms == ["control", "saves"]
    assert sorted(src for src, _ in images) == ["candidate_recall.png", "engagement_rate.png",
                                               "mix_vs_budget.png"]
    assert all(w > 300 for _, w in images), images  # every plot loaded
    assert set(diffs) == {"saves"} and len(diffs) == 5  # saves vs the baseline (control), per action
    assert "saves − control" in text and "Realised action mix vs budget" in text
    assert shot.stat().st_size > 20_000, "the screenshot is (nearly) empty"
    # the CLI exits 99 on such a day, which the DAG's outcomes task maps to "skipped"
    assert pinrec(["outcomes", "--ds", D, "--lake", str(tmp_path / "empty")]) == 99
