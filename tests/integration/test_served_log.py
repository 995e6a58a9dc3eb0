"""The closed loop's first half end to end: the real HTTP API logs every response to a real
Tansu broker, the real lander lands them in the `served` Delta table (delta-rs), exactly once
per request id -- with the broker down (requests still succeed, drops counted), with the lander
killed -9 mid-stream, and with malformed records sent to the DLQ."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pinrec.core.lake import DeltaRsTables
from pinrec.core.contracts import cutoff_us
from pinrec.core.experiments import TrafficSplit
from pinrec.core.layout import Lake
from pinrec.core.served import encode
from serving.http_api import make_server
from serving.sample_lake import SampleLakeConfig, build
from serving.served_log import ServedLogConfig
from serving.service import RecommendationService, ServingConfig
from streaming.broker import Tansu, create_topics, free_port
from streaming.served_lander import LanderConfig, LanderMetrics, metrics_text, run as run_lander
from tests.integration.stream_helpers import read_topic

pytestmark = pytest.mark.timeout(300)
TOKEN = "t-" + os.urandom(4).hex()
DS = "2026-03-01"
SPLIT = TrafficSplit.of({"control": 0.5, "saves": 0.5}, "test-salt")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Tansu.start(log=tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    build(SampleLakeConfig(root / "lake", ds=DS, users=40, items=500, candidates=40, model=False))
    return root


def topics(bootstrap: str) -> tuple[str, str]:
    name = "served-" + uuid.uuid4().hex[:8]
    create_topics(bootstrap, {name: 2, name + "-dlq": 1})
    return name, name + "-dlq"


class Api:
    def __init__(self, root: Path, served_log: ServedLogConfig, name: str):
        self.svc = RecommendationService.load(ServingConfig(
            root / "lake", (root / f"db-{name}",), secondary_dir=root / f"sec-{name}",
            regenerate=False, traffic=SPLIT, served_log=served_log))
        self.srv = make_server(self.svc, TOKEN, port=0)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def get(self, path: str):
        c = http.client.HTTPConnection("127.0.0.1", self.srv.server_port, timeout=30)
        c.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, (json.loads(body) if r.getheader("Content-Type") == "application/json"
                          else body.decode())

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    def close(self):
        self.srv.shutdown()
        self.svc.close()


class LanderThread:
    def __init__(self, cfg: LanderConfig):
        self.metrics, self.stop_event, self.error = LanderMetrics(), threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.cfg = cfg
        self.thread.start()

    def _run(self):
        try:
            run_lander(self.cfg, self.stop_event, self.metrics)
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> LanderMetrics:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.metrics


def wait_until(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def served_rows(lake_root: Path) -> list[dict]:
    tables = DeltaRsTables(Lake.at(lake_root))
    return tables.read("served").to_pylist() if tables.exists("served") else []


def test_every_response_lands_once_with_its_arm(broker, lake):
    topic, dlq = topics(broker.bootstrap)
    api = Api(lake, ServedLogConfig(broker.bootstrap, topic), "e2e")
    lander = LanderThread(LanderConfig(broker.bootstrap, lake / "lake", topic, dlq,
                                       group="g-" + topic, max_records=25, max_wait_s=0.5))
    try:
        responses = []
        for u in range(30):
            responses.append(api.get(f"/v1/recommendations/{u}?n=8")[1])
        for u in range(30, 36):
            responses.append(api.get(f"/v1/recommendations/{u}?n=5&arm=saves")[1])
        responses.append(api.get("/v1/recommendations/999999?n=4")[1])  # no candidates: popularity
        want = {r["request_id"]: r for r in responses}
        assert len(want) == 37
        wait_until(lambda: len({r["request_id"] for r in served_rows(lake / "lake")}) == 37, 90,
                   "37 responses in the served table")
        assert api.metric("pinrec_served_log_sent_total") == 37
        assert api.metric("pinrec_served_log_dropped_total") == 0
    finally:
        api.close()
        m = lander.stop()
    got = served_rows(lake / "lake")
    assert len(got) == sum(len(r["items"]) for r in responses) == m.rows_landed
    assert "pinrec_served_lander_records_landed_total 37\n" in metrics_text(m)
    assert len({(r["request_id"], r["rank"]) for r in got}) == len(got)  # exactly once
    by_request: dict[str, list] = {}
    for row in sorted(got, key=lambda r: r["rank"]):
        by_request.setdefault(row["request_id"], []).append(row)
    for rid, resp in want.items():
        rows = by_request[rid]
        assert [r["item_id"] for r in rows] == [i["item_id"] for i in resp["items"]]
        assert [r["source"] for r in rows] == [i["source"] for i in resp["items"]]
        assert [r["outcome"] for r in rows] == [i["outcome"] for i in resp["items"]]
        assert {(r["user_id"], r["arm"], r["arm_source"], r["candidates_ds"]) for r in rows} == {
            (resp["user_id"], resp["arm"], resp["arm_source"], DS)}
        if resp["arm_source"] == "assigned":
            assert resp["arm"] == SPLIT.arm_of(resp["user_id"])
        assert rows[0]["ds"] == rows[0]["served_at"].strftime("%Y-%m-%d")
    sources = {r["arm_source"] for r in want.values()}
    assert sources == {"assigned", "requested"}
    assert {r["arm"] for r in want.values() if r["arm_source"] == "assigned"} == {"control", "saves"}
    assert {r["source"] for r in got} >= {"precomputed", "popularity"}


def test_broker_down_requests_succeed_drops_counted_then_newest_delivered(lake, tmp_path):
    port = free_port()  # nothing listens here yet
    topic = "served-down"
    api = Api(lake, ServedLogConfig(f"127.0.0.1:{port}", topic, capacity=5, batch=2,
                                    max_backoff_s=0.5, send_timeout_s=1.0), "down")
    broker = None
    try:
        ids, slowest = [], 0.0
        for u in range(12):
            t0 = time.perf_counter()
            status, r = api.get(f"/v1/recommendations/{u}?n=5")
            slowest = max(slowest, time.perf_counter() - t0)
            assert status == 200 and len(r["items"]) == 5
            ids.append(r["request_id"])
        assert slowest < 1.0, f"a request waited {slowest:.2f}s for a dead broker"
        # the sender keeps retrying; between attempts nothing is in flight: 5 kept, 7 dropped
        wait_until(lambda: api.metric("pinrec_served_log_send_errors_total") >= 2
                   and (api.metric("pinrec_served_log_buffered"),
                        api.metric("pinrec_served_log_dropped_total")) == (5, 7), 30,
                   "failed sends, 5 buffered and 7 dropped")
        assert api.metric("pinrec_served_log_sent_total") == 0
        assert api.metric("pinrec_served_log_broker_up") == 0
        assert api.metric("pinrec_served_log_logged_total") == 12
        broker = Tansu.start(port=port, log=tmp_path / "tansu.log")
        create_topics(broker.bootstrap, {topic: 1})
        wait_until(lambda: api.metric("pinrec_served_log_sent_total") == 5, 60, "5 sent")
        keys = sorted(r.key.decode() for r in read_topic(broker.bootstrap, topic, expect=5))
        assert keys == sorted(ids[-5:])  # the newest five, each once
    finally:
        api.close()
        if broker is not None:
            broker.stop()


def synthetic(i: int, served_at_us: int, items: int = 3) -> dict:
    return {"request_id": f"req-{i:05d}", "user_id": i, "arm": "control" if i % 2 else "saves",
            "arm_source": "assigned", "candidates_ds": DS, "sequences_ds": DS,
            "items": [{"item_id": 1000 * i + k, "outcome": "repin", "source": "precomputed"}
                      for k in range(items)]}


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    from streaming.produce import send_confirmed

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        assert send_confirmed(p, topic, messages) == len(messages)
    finally:
        p.close()


def start_lander(bootstrap, lake_root, topic, dlq, log: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "pinrec"), "stream", "land-served", "--lake",
           str(lake_root), "--bootstrap", bootstrap, "--topic", topic, "--dlq-topic", dlq,
           "--group", "g-" + topic, "--max-records", "40", "--max-wait-s", "0.3"]
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_lander_killed_mid_stream_lands_each_request_once_and_dead_letters_malformed(broker, tmp_path):
    topic, dlq = topics(broker.bootstrap)
    lake_root = tmp_path / "lake"
    t0 = cutoff_us(DS) + 3_600_000_000
    first = [encode(synthetic(i, t0 + i), t0 + i) for i in range(400)]
    # re-sends of already-sent responses (the served log's at-least-once) and malformed records
    resent = first[10:30]
    malformed = [(b"bad-1", b"{not json"), (b"bad-2", json.dumps({"request_id": "x"}).encode()),
                 (b"bad-3", b"\xff\xfe")]
    produce(broker.bootstrap, topic, first + malformed)
    proc = start_lander(broker.bootstrap, lake_root, topic, dlq, tmp_path / "lander.log")
    tables = DeltaRsTables(Lake.at(lake_root))
    try:
        wait_until(lambda: tables.exists("served") and 0 < len(tables.read("served")) < 1200, 120,
                   "a first landing")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        landed_at_kill = len(tables.read("served"))
        assert 0 < landed_at_kill < 1200, landed_at_kill  # killed mid-stream
        second = [encode(synthetic(i, t0 + i), t0 + i) for i in range(400, 600)]
        produce(broker.bootstrap, topic, resent + second + first[:5])
        proc = start_lander(broker.bootstrap, lake_root, topic, dlq, tmp_path / "lander.log")
        wait_until(lambda: len({r for r in tables.read("served", columns=["request_id"])
                               .column("request_id").to_pylist()}) == 600, 180, "600 requests")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "lander.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    t = tables.read("served")
    keys = list(zip(t.column("request_id").to_pylist(), t.column("rank").to_pylist()))
    assert len(keys) == len(set(keys)) == 600 * 3
    assert set(t.column("item_id").to_pylist()) == {1000 * i + k for i in range(600) for k in range(3)}
    assert set(t.column("ds").to_pylist()) == {"2026-03-02"}
    dead = read_topic(broker.bootstrap, dlq, expect=3)
    assert sorted(r.key for r in dead) == [b"bad-1", b"bad-2", b"bad-3"]
    reasons = {r.key: dict(r.headers)["reason"].decode() for r in dead}
    assert "not JSON" in reasons[b"bad-1"] and "user_id" in reasons[b"bad-2"]
    assert "UTF-8" in reasons[b"bad-3"]


def test_landing_the_same_responses_again_adds_nothing(tmp_path):
    """The lander's MERGE (limited to the batch's served_at range) finds rows landed earlier,
    also when the re-sent batch mixes old responses with new ones at the range's edges."""
    from pinrec.core.served import parse, rows
    from streaming.served_lander import merge_new_rows

    tables = DeltaRsTables(Lake.at(tmp_path / "lake"))
    t0 = cutoff_us(DS) + 7_200_000_000
    recs = [parse(encode(synthetic(i, t0), t0 + i * 1_000_000)[1], 2**62) for i in range(30)]
    merge_new_rows(tables, rows(recs[:20]))
    merge_new_rows(tables, rows(recs[25:]))                 # a later landing, other files
    assert tables.read("served").num_rows == 25 * 3
    merge_new_rows(tables, rows(recs[19:26]))               # edges of both earlier landings
    merge_new_rows(tables, rows(recs))                      # everything again
    t = tables.read("served")
    keys = list(zip(t.column("request_id").to_pylist(), t.column("rank").to_pylist()))
    assert len(keys) == len(set(keys)) == 30 * 3
    assert sorted(t.column("served_at").cast("int64").to_pylist()) == sorted(
        t0 + i * 1_000_000 for i in range(30) for _ in range(3))
