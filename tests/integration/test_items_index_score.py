"""items -> index -> score on real Delta tables, a real (randomly initialised) model and Faiss.

Checks the contracts (one row per user, arm and rank; no history item recommended; budgets
recorded), that re-running each job for a ds leaves its table/pointer exactly as one run
leaves it, and that a rejected or failed index build leaves the previous index serving.
"""
from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

pytestmark = pytest.mark.slow  # the module fixture synthesises, builds sequences and scores

from jobs.index import IndexConfig, IndexRejected, index_version
from jobs.index import run_job as run_index
from jobs.items import ItemsConfig
from jobs.items import run_job as run_items
from pinrec.core.lake import DeltaRsTables
from jobs.score import ScoreConfig
from jobs.score import run_job as run_score
from jobs.sequences import SequencesConfig
from jobs.sequences import run_job as run_sequences
from pinrec.core.sequences_store import read_sequences
from pinrec.core.layout import Lake, current, published_candidates

DAY1, DAY2 = "2026-01-14", "2026-01-15"
ARMS = {"balanced": {"repin": 0.5, "grid_click": 0.3, "outbound_click": 0.2},
        "shop": {"outbound_click": 1.0}}


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """A small synthetic lake with sequences for two days and two model versions."""
    import torch

    from jobs.data_cli import run_synth
    from jobs.synth import SynthConfig
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.api import save_model
    from pinrec_model.config import preset
    from pinrec_model.model import PinRec

    root = tmp_path_factory.mktemp("iis") / "lake"
    run_synth(SynthConfig(users=80, days=15, seed=5, items=600, clusters=10, p_active=0.5,
                          start="2026-01-01"), str(root))
    lake = Lake.at(root)
    for ds in (DAY1, DAY2):
        run_sequences(spark, SequencesConfig(ds=ds, lake=str(root), mode="full", max_len=64,
                                             window_days=30))
    for i, v in enumerate(("m1", "m2")):
        torch.manual_seed(i)
        save_model(lake.version_dir("models", v), PinRec(preset("small", variant="mt_oc")), None,
                   PINTEREST_ACTIONS, {"note": "random init: the test checks plumbing, not quality"})
    return lake


def rows(lake: Lake, table: str, ds: str) -> list[dict]:
    t = DeltaRsTables(lake).read(table, [ds])
    return sorted(t.to_pylist(), key=lambda r: json.dumps(r, default=str, sort_keys=True))


def test_items_cover_the_window_and_reruns_are_identical(lake):
    n, _ = run_items(ItemsConfig(ds=DAY1, lake=str(lake.root), window_days=30))
    first = rows(lake, "items", DAY1)
    run_items(ItemsConfig(ds=DAY1, lake=str(lake.root), window_days=30))
    assert rows(lake, "items", DAY1) == first
    t = DeltaRsTables(lake)
    events = t.read("events", [d for d in t.partitions("events") if d <= DAY1],
                    columns=["item_id", "item_type"])  # the window of DAY1 ends at its cutoff
    assert n == len(first) == len(set(zip(events.column("item_id").to_pylist(),
                                          events.column("item_type").to_pylist())))
    by_type = {r["item_type"] for r in first}
    assert by_type == {"pin", "query"}
    assert all(len(r["features"]) == 32 and abs(sum(x * x for x in r["features"]) - 1) < 1e-4
               for r in first)  # every item has a unit feature vector
    assert sum(r["engagements"] for r in first) == events.num_rows


def test_index_publishes_reuses_and_rejects_without_touching_current(lake):
    run_items(ItemsConfig(ds=DAY2, lake=str(lake.root), window_days=30))
    report = run_index(IndexConfig(ds=DAY1, lake=str(lake.root), model_version="m1", device="cpu"))
    assert report["recall@10_vs_exact"] >= 0.95
    good = index_version(DAY1, "m1")
    assert current(lake, "index").name == good
    pins = DeltaRsTables(lake).read("items", [DAY1], filter=pc.field("item_type") == "pin").num_rows
    assert report["items"] == pins
    # Re-run of the day: same version re-published, nothing rebuilt.
    assert run_index(IndexConfig(ds=DAY1, lake=str(lake.root), model_version="m1"))["reused"]

    # A build below the recall bar is rejected: no new version, the published index unchanged.
    with pytest.raises(IndexRejected):
        run_index(IndexConfig(ds=DAY2, lake=str(lake.root), model_version="m1", min_recall=1.01))
    assert not lake.version_dir("index", index_version(DAY2, "m1")).exists()
    assert current(lake, "index").name == good
    assert not list(lake.artifacts("index").glob(".*tmp*"))
    # A failed build (unknown model) leaves it too.
    with pytest.raises(FileNotFoundError, match="nope"):
        run_index(IndexConfig(ds=DAY2, lake=str(lake.root), model_version="nope"))
    assert current(lake, "index").name == good
    # --no-publish (what the DAG runs before its quality gate): a complete new version, unpublished.
    built = run_index(IndexConfig(ds=DAY2, lake=str(lake.root), model_version="m1", publish=False))
    assert (lake.version_dir("index", built["version"]) / "build.json").exists()
    assert current(lake, "index").name == good


@pytest.mark.parametrize("retrieval", ["faiss", "exact"])  # exact: the GPU path's arrays, on CPU
def test_score_writes_contract_rows_idempotently(lake, tmp_path, retrieval):
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps(ARMS))
    cfg = ScoreConfig(ds=DAY1, lake=str(lake.root), arms=str(arms), model_version="m1", n=12,
                      batch_size=32, device="cpu", retrieval=retrieval)
    stats = run_score(cfg, progress=False)
    assert stats["retrieval"] == ("exact" if retrieval == "exact" else "flat")
    first = rows(lake, "candidates", DAY1)
    seqs = {r["user_id"]: set(r["item_ids"]) for r in read_sequences(DeltaRsTables(lake), DAY1).to_pylist()}
    assert stats["users"] == len(seqs) and stats["rows"] == len(first)
    per = {}
    for r in first:
        per.setdefault((r["user_id"], r["arm"]), []).append(r)
        assert r["item_id"] not in seqs[r["user_id"]], "history items must be excluded"
        assert json.loads(r["budget"]) == ARMS[r["arm"]] and r["model_version"] == "m1"
    assert set(per) == {(u, a) for u in seqs for a in ARMS}
    for (u, a), rs in per.items():
        assert sorted(x["rank"] for x in rs) == list(range(1, 13))
        assert len({x["item_id"] for x in rs}) == 12
        ordered = sorted(rs, key=lambda x: x["rank"])
        assert all(x["score"] >= y["score"] for x, y in zip(ordered, ordered[1:]))
    assert {r["outcome"] for r in first if r["arm"] == "shop"} == {"outbound_click"}

    run_score(cfg, progress=False)  # re-run: the same rows, not twice as many
    assert rows(lake, "candidates", DAY1) == first
    assert published_candidates(lake) is None  # the gate publishes


def test_score_refuses_an_index_of_another_model_and_bad_arms(lake, tmp_path):
    run_index(IndexConfig(ds=DAY1, lake=str(lake.root), model_version="m1"))
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps(ARMS))
    with pytest.raises(ValueError, match="built with model 'm1'"):
        run_score(ScoreConfig(ds=DAY1, lake=str(lake.root), arms=str(arms), model_version="m2",
                              index_version=index_version(DAY1, "m1")), progress=False)
    arms.write_text(json.dumps({"bad": {"repin": 0.7}}))
    with pytest.raises(ValueError, match="arm 'bad'.*sum to 1"):
        run_score(ScoreConfig(ds=DAY1, lake=str(lake.root), arms=str(arms), model_version="m1"),
                  progress=False)
