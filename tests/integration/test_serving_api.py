"""The serving layer end to end: a real lake (Delta via delta-rs), a real RocksDB written by a
writer while serving follows it as a secondary, a real model on CPU, and the real HTTP server."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pinrec.core.contracts import cutoff_us
from pinrec.core.events import Event
from serving.http_api import make_server
from serving.sample_lake import ARMS, SampleLakeConfig, build
from serving.service import RecommendationService, ServingConfig
from streaming.broker import free_port, wait_port
from streaming.store import RealtimeStore

pytestmark = pytest.mark.timeout(240)
TOKEN = "test-token-" + os.urandom(4).hex()
DS = "2026-03-01"
CUT = cutoff_us(DS)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    build(SampleLakeConfig(root / "lake", ds=DS, users=50, items=800, candidates=60))
    w = RealtimeStore.open(root / "db")
    # user 3: fresh engagements with 5 items, plus one event older than the cutoff
    w.apply([Event(f"f{i}", 3, 700 + i, "pin", "repin", "homefeed", CUT + i * 1000)
             for i in range(5)] + [Event("stale", 3, 799, "pin", "repin", "homefeed", CUT - 5)])
    yield root, w
    w.close()


@pytest.fixture(scope="module")
def api(lake):
    root, _ = lake
    svc = RecommendationService.load(ServingConfig(root / "lake", (root / "db",),
                                                   secondary_dir=root / "sec", catch_up_ms=20))
    srv = make_server(svc, TOKEN, port=0)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield svc, srv.server_port
    srv.shutdown()
    svc.close()


def get(port: int, path: str, token: str | None = TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    ctype = r.getheader("Content-Type")
    return r.status, (json.loads(body) if ctype == "application/json" else body.decode())


def test_precomputed_candidates_for_a_user_without_fresh_events(api, lake):
    svc, port = api
    status, r = get(port, "/v1/recommendations/4?n=10&arm=control")
    assert status == 200
    assert r["sources"] == ["precomputed"] and r["fallback"] is None and r["fresh_events"] == 0
    expected = [x.item_id for x in svc.candidates.get(4, "control")]
    # quota order: 5 repin, 3 grid_click, 2 outbound_click, each in rank order
    assert sorted(i["item_id"] for i in r["items"]) == sorted(
        [x.item_id for x in svc.candidates.get(4, "control") if x.outcome == "repin"][:5]
        + [x.item_id for x in svc.candidates.get(4, "control") if x.outcome == "grid_click"][:3]
        + [x.item_id for x in svc.candidates.get(4, "control") if x.outcome == "outbound_click"][:2])
    assert set(i["item_id"] for i in r["items"]) <= set(expected)


def test_fresh_events_filter_and_regenerate(api):
    _, port = api
    status, r = get(port, "/v1/recommendations/3?n=40&arm=control")
    assert status == 200 and r["fresh_events"] == 5  # the pre-cutoff event is not "fresh"
    assert {"precomputed", "regenerated", "realtime_filter", "realtime_history"} <= set(r["sources"])
    ids = [i["item_id"] for i in r["items"]]
    assert len(ids) == len(set(ids)) == 40
    assert not set(ids) & {700, 701, 702, 703, 704}
    outcomes = [i["outcome"] for i in r["items"]]
    assert {o: outcomes.count(o) for o in set(outcomes)} == {"repin": 20, "grid_click": 12,
                                                             "outbound_click": 8}


def test_new_events_become_visible_to_the_running_service(api, lake):
    _, w = lake
    _, port = api
    w.apply([Event("late-1", 9, 1, "pin", "grid_click", "homefeed", CUT + 1)])
    deadline = time.monotonic() + 10
    while True:
        _, r = get(port, "/v1/recommendations/9?n=5&arm=saves")
        if r["fresh_events"] == 1:
            break
        assert time.monotonic() < deadline, r
        time.sleep(0.05)
    assert "regenerated" in r["sources"] and 1 not in [i["item_id"] for i in r["items"]]


def test_user_without_history_gets_marked_popularity_fallback(api):
    svc, port = api
    status, r = get(port, "/v1/recommendations/123456?n=5")
    assert status == 200 and r["arm"] == "control"
    assert r["fallback"] == "popularity" and r["sources"] == ["popularity"]
    assert [i["item_id"] for i in r["items"]] == svc.candidates.popular[:5]


def test_query_regenerates_for_a_user_with_no_events(api):
    _, port = api
    status, r = get(port, "/v1/recommendations/123457?n=5&arm=saves&query=red%20shoes")
    assert status == 200 and r["fallback"] is None and len(r["items"]) == 5
    assert r["sources"][0] == "regenerated" and r["sources"][-1] == "query"
    # regenerated first; a random-weight model may retrieve fewer than n distinct items from a
    # one-token history, and the blend then fills from popularity (never leaves slots empty)
    assert r["items"][0]["source"] == "regenerated"
    assert all(i["outcome"] == "repin" for i in r["items"] if i["source"] == "regenerated")
    assert set(r["sources"]) <= {"regenerated", "popularity", "query"}


@pytest.mark.parametrize("path,token,status,msg", [
    ("/v1/recommendations/4", None, 401, "bearer token"),
    ("/v1/recommendations/4", "wrong", 401, "bearer token"),
    ("/v1/recommendations/abc", TOKEN, 400, "user_id must be an integer"),
    ("/v1/recommendations/", TOKEN, 400, "user_id is missing (got '')"),
    ("/v1/recommendations/", None, 401, "bearer token"),
    ("/v1/recommendations/4?n=0", TOKEN, 400, "n must be between 1 and 1000"),
    ("/v1/recommendations/4?n=1001", TOKEN, 400, "n must be between 1 and 1000"),
    ("/v1/recommendations/4?arm=nope", TOKEN, 400, "unknown arm 'nope'; known arms: ['control', 'saves']"),
    ("/v2/other", TOKEN, 404, "no route"),
])
def test_errors_are_clear_4xx(api, path, token, status, msg):
    _, port = api
    got, body = get(port, path, token)
    assert got == status and msg in body["error"]


def test_healthz_and_metrics(api):
    _, port = api
    status, h = get(port, "/healthz", token=None)
    assert status == 200 and h["arms"] == sorted(ARMS) and h["candidates_ds"] == DS
    assert h["regeneration"] is True
    # what serves is named, so ops (and `pinrec rehearse`) can check it is of one ds
    assert {"model_version", "index_version", "candidates_model_version"} <= set(h)
    get(port, "/v1/recommendations/4?n=3")
    status, text = get(port, "/metrics", token=None)
    assert status == 200
    assert 'pinrec_serve_requests_total{route="/v1/recommendations/{user_id}",status="200"}' in text
    # the exposition format writes labels in sorted order
    assert 'pinrec_serve_latency_ms{quantile="0.99",route="/v1/recommendations/{user_id}"}' in text


def test_pinrec_serve_and_recommend_commands(lake, tmp_path):
    root, _ = lake
    env = {**os.environ, "PINREC_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    base = [str(Path(sys.executable).parent / "pinrec")]
    args = ["--lake", str(root / "lake"), "--db", str(root / "db")]
    out = subprocess.run(base + ["recommend", "3", "--n", "5", "--arm", "saves"] + args,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sources: precomputed, regenerated" in out.stdout and "fresh events 5" in out.stdout
    assert len([ln for ln in out.stdout.splitlines() if ln.strip().split(" ")[0].isdigit()]) == 5
    bad = subprocess.run(base + ["recommend", "x"] + args, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "USER must be an integer" in bad.stderr
    no_token = {k: v for k, v in env.items() if k != "PINREC_API_TOKEN"}
    bad = subprocess.run(base + ["serve"] + args, capture_output=True, text=True, env=no_token)
    assert bad.returncode == 2 and "PINREC_API_TOKEN" in bad.stderr

    port = free_port()
    proc = subprocess.Popen(base + ["serve", "--port", str(port), "--no-regenerate"] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port, timeout_s=60, proc=proc)
        status, r = get(port, "/v1/recommendations/3?n=5")
        assert status == 200 and "regenerated" not in r["sources"]
        assert any("regeneration unavailable: disabled" in n for n in r["notes"])
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_tail_is_merged_across_consumer_stores(lake, tmp_path):
    """Two consumers, two stores: a user whose partition moved has events in both."""
    root, _ = lake
    a, b = RealtimeStore.open(tmp_path / "a"), RealtimeStore.open(tmp_path / "b")
    a.apply([Event("s1", 21, 701, "pin", "repin", "homefeed", CUT + 10),
             Event("s2", 21, 702, "pin", "repin", "homefeed", CUT + 30)])
    b.apply([Event("s3", 21, 703, "pin", "repin", "homefeed", CUT + 20),
             Event("s2", 21, 702, "pin", "repin", "homefeed", CUT + 30)])  # re-delivered copy
    a.close()
    b.close()
    svc = RecommendationService.load(ServingConfig(root / "lake", (tmp_path / "a", tmp_path / "b"),
                                                   secondary_dir=tmp_path / "sec", regenerate=False))
    try:
        assert [e.event_id for e in svc.tail(21, CUT)] == ["s1", "s3", "s2"]
        r = svc.recommend(21, n=30, arm="control")
        assert r["fresh_events"] == 3 and not {701, 702, 703} & {i["item_id"] for i in r["items"]}
    finally:
        svc.close()


def test_a_newly_published_candidates_partition_is_picked_up(tmp_path):
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake, publish_candidates
    from serving.sample_lake import candidates_table

    import numpy as np

    cfg = SampleLakeConfig(tmp_path / "lake", ds=DS, users=5, items=100, candidates=10, model=False)
    build(cfg)
    svc = RecommendationService.load(ServingConfig(cfg.root, (tmp_path / "db",),
                                                   secondary_dir=tmp_path / "sec", regenerate=False))
    try:
        assert svc.reload_if_changed() is False
        before = svc.recommend(1, n=5)
        assert before["candidates_ds"] == DS
        new_ds = "2026-03-02"
        new = candidates_table(SampleLakeConfig(cfg.root, ds=new_ds, users=5, items=100, candidates=10),
                               np.random.default_rng(9))
        DeltaRsTables(Lake.at(cfg.root)).replace_partitions("candidates", new, [new_ds])
        assert svc.reload_if_changed() is False  # written but not published: not served
        publish_candidates(Lake.at(cfg.root), new_ds)
        assert svc.reload_if_changed() is True
        after = svc.recommend(1, n=5)
        assert after["candidates_ds"] == new_ds
        assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    finally:
        svc.close()
