"""Regeneration in worker processes (serving/regen_worker.py): the same answers as in the
server process, a killed worker costs its request the regenerated part only (never a 500) and
is replaced, a reload swaps the workers, and close() leaves no process behind."""
from __future__ import annotations

import os
import signal
import time

import pytest

from pinrec.core.contracts import cutoff_us
from pinrec.core.events import Event
from serving.sample_lake import SampleLakeConfig, build
from serving.service import RecommendationService, ServingConfig
from streaming.store import RealtimeStore

pytestmark = pytest.mark.timeout(300)
DS = "2026-03-01"
CUT = cutoff_us(DS)
NOW = CUT + 3_600_000_000


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-workers")
    build(SampleLakeConfig(root / "lake", ds=DS, users=30, items=600, candidates=60))
    w = RealtimeStore.open(root / "db")
    w.apply([Event(f"f{i}", 3, 500 + i, "pin", "repin", "homefeed", CUT + i * 1000)
             for i in range(5)])
    w.close()
    return root


def service(root, tmp, workers: int) -> RecommendationService:
    return RecommendationService.load(ServingConfig(root / "lake", (root / "db",),
                                                    secondary_dir=tmp / f"sec-{workers}",
                                                    regen_workers=workers))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a reaped child is gone; an unreaped zombie still answers kill(0): read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def items(r: dict) -> list[tuple]:
    return [(i["item_id"], i["outcome"], i["source"]) for i in r["items"]]


def test_worker_answers_equal_in_process_answers(lake, tmp_path):
    local, pooled = service(lake, tmp_path, 0), service(lake, tmp_path, 1)
    try:
        assert type(pooled.regenerator).__name__ == "RegenPool"
        for user, query in ((3, None), (4, "red shoes"), (999, "garden")):
            a = local.recommend(user, n=40, arm="control", query=query, now_us=NOW)
            b = pooled.recommend(user, n=40, arm="control", query=query, now_us=NOW)
            assert "regenerated" in b["sources"], b
            assert items(a) == items(b)
            assert [i["score"] for i in a["items"]] == pytest.approx([i["score"] for i in b["items"]],
                                                                     abs=1e-5)
        pool = pooled.regenerator
        assert len(pool.worker_ms) == len(pool.compute_ms) == len(pool.wait_ms) == 3
        assert all(0 < w <= c for w, c in zip(pool.worker_ms, pool.compute_ms))
    finally:
        local.close()
        pooled.close()


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_a_reload_swaps_the_workers(lake, tmp_path):
    from pinrec.core.layout import Lake
    from serving.sample_lake import items_table, publish_random_model

    import numpy as np

    svc = service(lake, tmp_path, 1)
    pool = svc.regenerator
    try:
        [pid] = pool.pids
        os.kill(pid, signal.SIGKILL)
        r = svc.recommend(3, n=20, arm="control", now_us=NOW)
        assert "regenerated" not in r["sources"] and r["n"] == 20
        assert any("regeneration skipped" in n and "died" in n for n in r["notes"]), r["notes"]
        assert pool.failures == 1
        deadline = time.monotonic() + 240
        while True:  # the replacement loads the model in the background
            r = svc.recommend(3, n=20, arm="control", now_us=NOW)
            if "regenerated" in r["sources"]:
                break
            assert time.monotonic() < deadline, r["notes"]
            time.sleep(0.5)
        [new_pid] = pool.pids
        assert new_pid != pid and alive(new_pid)

        # a newly published model: new workers serve it, the old ones are stopped
        cfg = SampleLakeConfig(lake / "lake", ds=DS, users=30, items=600, candidates=60)
        publish_random_model(Lake.at(cfg.root), items_table(cfg, np.random.default_rng(0)),
                             version="v2", seed=1)
        assert svc.reload_if_changed() is True
        assert svc.regenerator.version == "v2" and pool.version == "sample"
        assert not alive(new_pid)
        assert "regenerated" in svc.recommend(3, n=20, now_us=NOW)["sources"]
    finally:
        last = svc.regenerator.pids
        svc.close()
    assert last and not any(alive(p) for p in last)
