"""The speed layer against a real Tansu broker and a real RocksDB on disk."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pinrec.core.contracts import SEQUENCES_SCHEMA
from streaming.broker import Tansu
from streaming.consumer import ConsumerConfig
from streaming.corpus import good_event, malformed_messages
from streaming.replay import ReplayConfig, event_messages, produce, synthetic_events

from .stream_helpers import (ConsumerThread, committed, fresh_topics, read_topic,
                             stored_event_ids)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    t = Tansu.start(log=tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield t
    t.stop()


def now_us() -> int:
    return int(time.time() * 1e6)


def test_malformed_messages_go_to_the_dlq_and_good_ones_around_them_are_stored(broker, tmp_path):
    import json

    topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
    corpus = malformed_messages(now_us())
    msgs, good_ids = [], []
    for i, (_, raw, _) in enumerate(corpus):  # good, bad, good, bad, ... , good
        g = good_event(i, now_us(), user_id=i)
        msgs.append((b"k", json.dumps(g).encode()))
        good_ids.append(g["event_id"])
        msgs.append((b"k", raw))
    g = good_event(len(corpus), now_us())
    msgs.append((b"k", json.dumps(g).encode()))
    good_ids.append(g["event_id"])
    assert produce(ReplayConfig(broker.bootstrap, topic), msgs) == len(msgs)

    cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq, group="g1")
    c = ConsumerThread(cfg).start()
    c.wait_for(lambda m: m.events_stored + m.dlq >= len(msgs))
    m = c.stop()
    assert (m.events_stored, m.dlq) == (len(good_ids), len(corpus))
    assert sorted(stored_event_ids(tmp_path / "db")) == sorted(good_ids)
    assert committed(broker.bootstrap, "g1", topic, 1) == {0: len(msgs)}

    dead = read_topic(broker.bootstrap, dlq, expect=len(corpus))
    assert len(dead) == len(corpus)
    for (kind, raw, reason), rec in zip(corpus, sorted(dead, key=lambda r: r.offset)):
        h = {k: v.decode() for k, v in rec.headers}
        assert rec.value == (raw or b""), kind
        assert reason in h["reason"], (kind, h["reason"])
        assert h["source_topic"] == topic and h["source_partition"] == "0"
        # bad message i sits at offset 2i+1 (good ones in between)
        assert int(h["source_offset"]) == 2 * [k for k, _, _ in corpus].index(kind) + 1


def test_redelivery_to_the_same_store_creates_no_duplicates(broker, tmp_path):
    topic, dlq = fresh_topics(broker.bootstrap)
    n = 3000
    produce(ReplayConfig(broker.bootstrap, topic),
            event_messages(synthetic_events(n, users=50, items=500, start_us=now_us() - n * 1000)))
    for group in ("first", "second"):  # a new group re-reads everything from the start
        cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq,
                             group=group)
        c = ConsumerThread(cfg).start()
        c.wait_for(lambda m: m.events_stored >= n)
        assert c.stop().events_stored == n
    ids = stored_event_ids(tmp_path / "db")
    assert len(ids) == len(set(ids)) == n


def test_two_consumers_in_one_group_split_partitions_and_store_every_event_once(broker, tmp_path):
    topic, dlq = fresh_topics(broker.bootstrap, partitions=4)
    cs = [ConsumerThread(ConsumerConfig(broker.bootstrap, tmp_path / f"db{i}", topic=topic,
                                        dlq_topic=dlq, group="pair", client_id=f"c{i}")).start()
          for i in range(2)]
    # Produce only once the group has settled on a split, so the test checks the split itself.
    deadline = time.monotonic() + 60
    while not (all(c.metrics.assigned for c in cs)
               and sum(len(c.metrics.assigned) for c in cs) == 4):
        assert time.monotonic() < deadline, [c.metrics.assigned for c in cs]
        time.sleep(0.1)
    n = 4000
    produce(ReplayConfig(broker.bootstrap, topic),
            event_messages(synthetic_events(n, users=400, items=500, start_us=now_us() - n * 1000)))
    cs[0].wait_for(lambda _: sum(c.metrics.events_stored for c in cs) >= n)
    ms = [c.stop() for c in cs]
    assert all(m.events_stored > 0 for m in ms), [m.events_stored for m in ms]
    a, b = (set(stored_event_ids(tmp_path / f"db{i}")) for i in range(2))
    assert not a & b
    assert len(a | b) == n == sum(m.events_stored for m in ms)
    assert sum(committed(broker.bootstrap, "pair", topic, 4).values()) == n


def test_events_older_than_the_batch_cutoff_are_skipped_and_swept(broker, tmp_path):
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake
    from streaming.store import RealtimeStore

    cutoff = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    cutoff_us = int(cutoff.timestamp() * 1e6)
    lake = tmp_path / "lake"
    ds = (cutoff - timedelta(days=1)).strftime("%Y-%m-%d")
    row = {"user_id": [1], "event_ids": [["x"]], "item_ids": [[1]], "item_types": [["pin"]],
           "actions": [["repin"]], "surfaces": [["homefeed"]], "ts": [[cutoff - timedelta(hours=1)]],
           "length": [1], "cutoff_ts": [cutoff], "ds": [ds]}
    DeltaRsTables(Lake.at(lake)).replace_partitions(
        "sequences", pa.Table.from_pydict(row, schema=SEQUENCES_SCHEMA), [ds])
    old = list(synthetic_events(100, 10, 50, start_us=cutoff_us - 200_000, step_us=1000,
                                prefix="old"))
    pre = RealtimeStore.open(tmp_path / "db")
    pre.apply(old[:50])  # already in the store from before the batch ran
    pre.close()
    new = list(synthetic_events(300, 10, 50, start_us=cutoff_us, prefix="new"))
    topic, dlq = fresh_topics(broker.bootstrap)
    produce(ReplayConfig(broker.bootstrap, topic), event_messages(old + new))
    cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq,
                         group="g", lake=lake)
    c = ConsumerThread(cfg).start()
    c.wait_for(lambda m: m.events_stored + m.stale_skipped >= 400)
    m = c.stop()
    assert (m.events_stored, m.stale_skipped, m.swept) == (300, 100, 50)
    assert sorted(stored_event_ids(tmp_path / "db")) == sorted(e.event_id for e in new)


def test_sigterm_commits_and_exits_cleanly(broker, tmp_path):
    topic, dlq = fresh_topics(broker.bootstrap, partitions=2)
    n = 2000
    produce(ReplayConfig(broker.bootstrap, topic),
            event_messages(synthetic_events(n, 20, 100, start_us=now_us() - n * 1000)))
    from streaming.broker import free_port

    mport = free_port()
    cmd = [str(Path(sys.executable).parent / "pinrec"), "stream", "consume", "--bootstrap", broker.bootstrap,
           "--topic", topic, "--dlq-topic", dlq, "--group", "term", "--db", str(tmp_path / "db"),
           "--no-sweep", "--log-every-s", "0.2", "--lake", str(tmp_path / "lake"),
           "--metrics-port", str(mport)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while sum(v or 0 for v in committed(broker.bootstrap, "term", topic, 2).values()) < n:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert f"pinrec_stream_events_stored_total {n}" in text
    assert "pinrec_stream_dlq_total 0" in text and "pinrec_stream_commit_ms_p99" in text
    assert sum(int(float(ln.rsplit(" ", 1)[1])) for ln in text.splitlines()  # exposition: "989.0"
               if ln.startswith("pinrec_stream_committed_offset{")) == n
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"stored {n} events" in out
    assert len(stored_event_ids(tmp_path / "db")) == n


def test_a_failed_store_write_commits_nothing_and_the_batch_is_redelivered(broker, tmp_path):
    """Regression: offsets of a batch whose RocksDB write failed must not be committed, not
    even by the shutdown path's final commit. A store that takes no write at all is not one
    record's fault: the consumer stops with StoreUnavailable and dead-letters nothing."""
    from streaming.consumer import StoreUnavailable
    from streaming.store import RealtimeStore

    topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
    n = 500
    produce(ReplayConfig(broker.bootstrap, topic),
            event_messages(synthetic_events(n, 10, 100, start_us=now_us() - n * 1000)))
    real_write = RealtimeStore._write

    def failing_write(self, wb):  # every write, the health probe's too
        raise OSError("disk full (injected)")

    cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq, group="fail")
    RealtimeStore._write = failing_write
    try:
        c = ConsumerThread(cfg).start()
        c.thread.join(60)
        assert isinstance(c.error, StoreUnavailable), c.error
        assert "does not take writes" in str(c.error) and f"{topic}/0@" in str(c.error)
        assert isinstance(c.error.__cause__, OSError)
    finally:
        RealtimeStore._write = real_write
    assert committed(broker.bootstrap, "fail", topic, 1) == {0: None}
    assert c.metrics.dlq == 0
    c = ConsumerThread(cfg).start()
    c.wait_for(lambda m: m.events_stored >= n)
    c.stop()
    assert len(stored_event_ids(tmp_path / "db")) == n
    assert read_topic(broker.bootstrap, dlq, expect=0, timeout_s=2) == []
