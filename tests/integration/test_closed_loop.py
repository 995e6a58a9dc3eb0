"""The closed loop against the real speed layer and API: a Tansu broker, the consumer writing
RocksDB, the HTTP API following it, Delta tables. The candidates are what a perfectly
outcome-conditioned generator would write in this world (for outcome a, the user's interest
items whose format most often draws a), so the test isolates what the loop, `pinrec outcomes`
and `pinrec report arms` must show when conditioning works: the repin arm's realised repin share
above the balanced arm's, the 95 % interval of the difference excluding zero. (With the demo's
trained model, tests/integration/test_closed_loop_demo.py.)"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.arm_report import ArmReportConfig, write_report
from jobs.data_cli import run_synth
from pinrec.core.lake import DeltaRsTables
from jobs.outcomes import OutcomesConfig, run_job
from jobs.synth import ACTION_PROBS, SynthConfig
from pinrec.core.contracts import CANDIDATES_SCHEMA, PINTEREST_ACTIONS
from pinrec.core.experiments import TrafficSplit
from pinrec.core.layout import Lake, publish_candidates
from serving.closed_loop import LoopConfig, WorldState, resume_world, simulate_day
from serving.http_api import make_server
from pinrec.core.budgets import DEFAULT_ARMS, Arms
from serving.service import RecommendationService, ServingConfig
from streaming.broker import Tansu, create_topics
from streaming.consumer import ConsumerConfig

sys.path.insert(0, str(Path(__file__).parent))
from stream_helpers import ConsumerThread  # noqa: E402

pytestmark = pytest.mark.timeout(600)
SYN = SynthConfig(users=300, days=3, items=1200, clusters=8, seed=5, start="2026-04-01")
BATCH_DS = "2026-04-03"
ARMS = Arms.parse(DEFAULT_ARMS, PINTEREST_ACTIONS.engagement_actions)  # the demo's closed loop
TOKEN = "loop-test-token"
PER_ARM = 60


def oracle_candidates(state: WorldState) -> pa.Table:
    """Per user, arm and outcome a: the user's interest-cluster items ranked by P(a | format)."""
    world, acts = state.world, PINTEREST_ACTIONS.engagement_actions
    rows = []
    rng = np.random.default_rng(0)
    for u in range(1, SYN.users + 1):
        mine = np.flatnonzero(np.isin(world.item_cluster, state.interests[u - 1]))
        for arm, budget in ARMS.items():
            rank = 0
            for a, q in budget.quotas(PER_ARM).items():
                p = ACTION_PROBS[world.item_format[mine], acts.index(a)] + 1e-3 * rng.random(len(mine))
                order = np.argsort(-p)[:q]
                for idx, score in zip(mine[order], p[order]):
                    rows.append({"ds": BATCH_DS, "user_id": u, "arm": arm, "rank": rank,
                                 "item_id": int(idx) + 1, "score": float(score), "outcome": a,
                                 "model_version": "oracle", "budget": json.dumps(budget.as_dict()),
                                 "generated_at": None})
                    rank += 1
    return pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    lake = root / "lake"
    run_synth(SYN, str(lake))
    tables = DeltaRsTables(Lake.at(lake))
    state = resume_world(SYN, lake)
    tables.replace_partitions("candidates", oracle_candidates(state), [BATCH_DS])
    publish_candidates(Lake.at(lake), BATCH_DS)
    broker = Tansu.start(log=root / "tansu.log")
    create_topics(broker.bootstrap, {"engagements": 2, "engagements-dlq": 1})
    consumer = ConsumerThread(ConsumerConfig(broker.bootstrap, root / "db", session_timeout_ms=6000,
                                             heartbeat_ms=2000)).start()
    svc = srv = None
    days = []
    try:
        # serving follows the consumer's RocksDB as a secondary: the consumer creates it first
        consumer.wait_for(lambda m: (root / "db" / "CURRENT").exists(), timeout_s=60)
        svc = RecommendationService.load(ServingConfig(lake, (root / "db",), regenerate=False,
                                                       secondary_dir=root / "sec", catch_up_ms=20,
                                                       traffic=TrafficSplit.even(["balanced", "repin"])))
        srv = make_server(svc, TOKEN, port=0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        cfg = LoopConfig(lake, f"http://127.0.0.1:{srv.server_port}", TOKEN, broker.bootstrap, SYN,
                         arms=(("balanced", 0.5), ("repin", 0.5)), n=20)
        produced = 0
        for _ in range(2):
            day = simulate_day(cfg, state)
            produced += day["events"]
            consumer.wait_for(lambda m: m.events_stored >= produced, timeout_s=120)
            for s in svc.stores:  # what serving reads next: everything the consumer stored
                s.catch_up()
            days.append(day)
    finally:
        if srv is not None:
            srv.shutdown()
        if svc is not None:
            svc.close()
        try:
            consumer.stop()
        finally:
            broker.stop()
    return lake, tables, days, root


def test_the_loop_served_both_arms_and_users_responded(loop):
    lake, tables, days, _ = loop
    assert [d["ds"] for d in days] == ["2026-04-04", "2026-04-05"]
    for d in days:
        served = tables.read("served", [d["ds"]])
        assert served.num_rows == 20 * d["served_users"] > 0
        assert set(served.column("arm").to_pylist()) == {"balanced", "repin"}
        ev = tables.read("events", [d["ds"]], columns=["event_id"])
        loop_ids = [e for e in ev.column("event_id").to_pylist() if e.startswith("loop")]
        assert len(loop_ids) == d["responses"] > 50


def test_day_two_serves_around_what_day_one_engaged_through_kafka_and_rocksdb(loop):
    """Day one's responses went through Kafka into RocksDB; the API filters engaged items."""
    lake, tables, days, _ = loop
    d1, d2 = days[0]["ds"], days[1]["ds"]
    ev = tables.read("events", [d1], columns=["event_id", "user_id", "item_id"])
    engaged = {(u, i) for e, u, i in zip(*(ev.column(c).to_pylist() for c in ("event_id", "user_id", "item_id")))
               if e.startswith("loop")}
    s2 = tables.read("served", [d2], columns=["user_id", "item_id"])
    again = set(zip(s2.column("user_id").to_pylist(), s2.column("item_id").to_pylist())) & engaged
    users2 = set(s2.column("user_id").to_pylist())
    assert {u for u, _ in engaged} & users2, "no user engaged on day one was served on day two"
    assert again == set()


def test_outcomes_and_report_show_the_repin_arm_realising_more_repins(loop, tmp_path):
    lake, tables, days, _ = loop
    for d in days:
        out = run_job(OutcomesConfig(str(lake), d["ds"], bootstrap=500))
        rows = {(r["arm"], r["outcome"]): r for r in out.to_pylist()}
        assert rows[("repin", "repin")]["served_impressions"] == rows[("repin", "all")]["served_impressions"]
        assert rows[("balanced", "repin")]["budget_share"] == 0.4
    page = write_report(ArmReportConfig(str(lake), days[0]["ds"], days[-1]["ds"], tmp_path / "arms",
                                        bootstrap=1000))
    stats = json.loads((tmp_path / "arms" / "arms.json").read_text())
    rep = stats["arms"]["repin"]["realised_share"]["repin"]
    bal = stats["arms"]["balanced"]["realised_share"]["repin"]
    d = stats["differences"]["repin"]["repin"]
    print(f"\nrealised repin share: repin arm {rep}, balanced arm {bal}, difference {d}")
    assert rep["value"] > bal["value"] and d["lo"] > 0
    assert page.exists() and "repin − balanced" in page.read_text()
