"""No single message stops the speed layer (issue 13 §2), against a real Tansu broker and RocksDB.

Tansu 0.6 has no message-size limit (no `tansu broker` flag; a 20 MB record is stored and
fetched back with Kafka's default fetch limits, KIP-74 style), so "the broker configured to
accept them" needs no flag here; the producer in the test raises its own max_request_size.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming.broker import Tansu
from streaming.consumer import EXIT_CANNOT_DEAD_LETTER, ConsumerConfig
from streaming.corpus import good_event, malformed_messages
from streaming.deadletter import record_bytes
from streaming.replay import ReplayConfig, produce

from .stream_helpers import (ConsumerThread, committed, fresh_topics, read_topic,
                             stored_event_ids)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    t = Tansu.start(log=tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield t
    t.stop()


def now_us() -> int:
    return int(time.time() * 1e6)


def long_query_event(i: int, text_len: int) -> bytes:
    """A well-formed search event whose query_text makes it megabytes long (the issue's case)."""
    d = {**good_event(i, now_us(), user_id=900 + i), "event_id": f"long-query-{i}",
         "item_type": "query", "action": "search", "surface": "search",
         "query_text": "q" * text_len}
    return json.dumps(d).encode()


def test_2mb_and_20mb_messages_amid_good_and_malformed_ones(broker, tmp_path):
    topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
    big_query = long_query_event(0, 2_000_000)
    blob = os.urandom(20_000_000)  # 20 MB, not even text
    bad = [("query_2mb", big_query, "oversized payload: 2000")] + \
          [(k, raw, reason) for k, raw, reason in malformed_messages(now_us())] + \
          [("blob_20mb", blob, "oversized payload: 20000000 bytes")]
    msgs, good_ids = [], []
    for i, (_, raw, _) in enumerate(bad):  # good, bad, good, bad, ..., good
        g = good_event(i, now_us(), user_id=i)
        good_ids.append(g["event_id"])
        msgs += [(b"k", json.dumps(g).encode()), (b"k", raw)]
    g = good_event(len(bad), now_us())
    good_ids.append(g["event_id"])
    msgs.append((b"k", json.dumps(g).encode()))
    assert produce(ReplayConfig(broker.bootstrap, topic, max_request_size=64 << 20), msgs) == len(msgs)

    cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq, group="big")
    c = ConsumerThread(cfg).start()
    c.wait_for(lambda m: m.events_stored + m.dlq >= len(msgs), timeout_s=120)
    # Still up: events produced after the poison are consumed too.
    later = [good_event(1000 + i, now_us(), user_id=77) for i in range(50)]
    produce(ReplayConfig(broker.bootstrap, topic), [(b"k", json.dumps(e).encode()) for e in later])
    c.wait_for(lambda m: m.events_stored >= len(good_ids) + len(later), timeout_s=60)
    m = c.stop()
    assert (m.events_stored, m.dlq, m.poison) == (len(good_ids) + len(later), len(bad), 1)
    ids = stored_event_ids(tmp_path / "db")
    assert len(ids) == len(set(ids))  # once each
    assert set(ids) == set(good_ids) | {e["event_id"] for e in later}
    assert committed(broker.bootstrap, "big", topic, 1) == {0: len(msgs) + len(later)}

    dead = sorted(read_topic(broker.bootstrap, dlq, expect=len(bad), timeout_s=60),
                  key=lambda r: r.offset)
    assert len(dead) == len(bad)
    limit = cfg.dlq_record_limit
    for i, ((kind, raw, reason), rec) in enumerate(zip(bad, dead)):
        h = {k: v.decode() for k, v in rec.headers}
        raw = raw or b""
        assert reason in h["reason"], (kind, h["reason"])
        assert (h["source_topic"], h["source_partition"], h["source_offset"]) == \
            (topic, "0", str(2 * i + 1)), kind
        assert h["original_bytes"] == str(len(raw)), kind
        assert h["original_sha256"] == hashlib.sha256(raw).hexdigest(), kind
        assert record_bytes(rec.key, rec.value, rec.headers) <= limit, kind
        if len(raw) > limit:
            assert int(h["truncated_to"]) == len(rec.value) and raw.startswith(rec.value), kind
        else:
            assert "truncated_to" not in h and rec.value == raw, kind
    assert {k for (k, raw, _), rec in zip(bad, dead) if "truncated_to" in dict(rec.headers)} == \
        {"query_2mb", "blob_20mb"}


def test_a_record_that_fails_processing_is_isolated_and_its_neighbours_stored(broker, tmp_path):
    """A record whose write raises (an encoder bug, injected for one event id) is found by
    bisection and dead-lettered with the error; the other 499 of its batch are stored."""
    import streaming.store as store_mod

    topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
    events = [good_event(i, now_us(), user_id=i % 17) for i in range(500)]
    produce(ReplayConfig(broker.bootstrap, topic), [(b"k", json.dumps(e).encode()) for e in events])
    real = store_mod.encode_value

    def encode_with_a_bug(e):
        if e.event_id == "good-321":
            raise struct_error("item_id does not fit (injected)")
        return real(e)

    class struct_error(Exception):
        pass

    store_mod.encode_value = encode_with_a_bug
    try:
        cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq,
                             group="iso")
        c = ConsumerThread(cfg).start()
        c.wait_for(lambda m: m.events_stored + m.dlq >= 500, timeout_s=60)
        m = c.stop()
    finally:
        store_mod.encode_value = real
    assert (m.events_stored, m.dlq, m.poison) == (499, 1, 1)
    assert sorted(stored_event_ids(tmp_path / "db")) == \
        sorted(e["event_id"] for e in events if e["event_id"] != "good-321")
    [rec] = read_topic(broker.bootstrap, dlq, expect=1)
    h = {k: v.decode() for k, v in rec.headers}
    assert h["reason"] == "processing failed: struct_error: item_id does not fit (injected)"
    assert h["source_offset"] == "321" and rec.value == json.dumps(events[321]).encode()
    assert committed(broker.bootstrap, "iso", topic, 1) == {0: 500}


def test_a_record_that_cannot_be_dead_lettered_stops_the_consumer_with_a_clear_message(
        broker, tmp_path):
    """The DLQ is unusable (here: an illegal topic name, rejected by the client): the consumer
    exits 69 naming the record and the fix, commits nothing of that batch; fixed, it resumes."""
    topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
    g0, g1 = (good_event(i, now_us()) for i in range(2))
    produce(ReplayConfig(broker.bootstrap, topic),
            [(b"k", json.dumps(g0).encode()), (b"k", b"{not json"), (b"k", json.dumps(g1).encode())])
    cmd = [str(Path(sys.executable).parent / "pinrec"), "stream", "consume", "--bootstrap",
           broker.bootstrap, "--topic", topic, "--group", "nodlq", "--db", str(tmp_path / "db"),
           "--no-sweep", "--lake", str(tmp_path / "lake")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd + ["--dlq-topic", "engagements dlq"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == EXIT_CANNOT_DEAD_LETTER, p.stderr[-3000:]
    assert f"could not dead-letter 1 record(s) to topic 'engagements dlq'" in p.stderr
    assert f"{topic}/0@1" in p.stderr and "Fix:" in p.stderr
    assert f"pinrec stream skip --group nodlq --topic {topic} --partition 0 --offset 1" in p.stderr
    assert p.stderr.count("Traceback") == 0  # a message for ops, not a crash
    assert committed(broker.bootstrap, "nodlq", topic, 1) == {0: None}

    proc = subprocess.Popen(cmd + ["--dlq-topic", dlq], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 90
    while committed(broker.bootstrap, "nodlq", topic, 1) != {0: 3}:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    proc.terminate()
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert sorted(stored_event_ids(tmp_path / "db")) == ["good-0", "good-1"]
    [rec] = read_topic(broker.bootstrap, dlq, expect=1)
    assert rec.value == b"{not json" and dict(rec.headers)["source_offset"] == b"1"


def test_ops_can_skip_a_record_that_cannot_be_dead_lettered(broker, tmp_path):
    """The other way out of exit 69: `pinrec stream skip` moves the group past the record; the
    consumer then resumes with the rest, and the events before the record were already stored."""
    topic, _ = fresh_topics(broker.bootstrap, partitions=1)
    g0, g1 = (good_event(i, now_us()) for i in range(2))
    produce(ReplayConfig(broker.bootstrap, topic),
            [(b"k", json.dumps(g0).encode()), (b"k", b"{not json"), (b"k", json.dumps(g1).encode())])
    pinrec = str(Path(sys.executable).parent / "pinrec")
    consume = [pinrec, "stream", "consume", "--bootstrap", broker.bootstrap, "--topic", topic,
               "--group", "skip", "--db", str(tmp_path / "db"), "--no-sweep",
               "--lake", str(tmp_path / "lake"), "--dlq-topic", "engagements dlq"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(consume, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == EXIT_CANNOT_DEAD_LETTER and f"{topic}/0@1" in p.stderr
    s = subprocess.run([pinrec, "stream", "skip", "--bootstrap", broker.bootstrap, "--group",
                        "skip", "--topic", topic, "--partition", "0", "--offset", "1"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert s.returncode == 0, s.stderr
    assert "committed None -> 2" in s.stdout
    proc = subprocess.Popen(consume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 90
    while committed(broker.bootstrap, "skip", topic, 1) != {0: 3}:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    proc.terminate()
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert sorted(stored_event_ids(tmp_path / "db")) == ["good-0", "good-1"]
    again = subprocess.run([pinrec, "stream", "skip", "--bootstrap", broker.bootstrap, "--group",
                            "skip", "--topic", topic, "--partition", "0", "--offset", "1"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 2 and "nothing to skip" in again.stderr
