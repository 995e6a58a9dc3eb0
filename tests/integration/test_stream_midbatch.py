"""Tansu 0.6 mid-batch fetch (DESIGN.md §4): upstream found that a fetch starting *inside* a
stored record batch skipped that whole batch (memory and s3 engines). A consumer resuming from
a committed offset in the middle of a producer's batch would then silently miss the rest of it.

Exactly that, against the real broker: a producer writes large batches (linger 1 s, 256 KiB
batches: ~1,200 events each), a consumer process commits every 7 records (so its commits land
inside batches), is killed with SIGKILL three times and resumed; every event must be stored,
once. The consumer counts an offset as processed only for records it got, so a skipped batch
would show up as missing ids, not as a stall.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming.broker import MotoS3, Tansu
from streaming.replay import ReplayConfig, event_messages, produce, synthetic_events

from .stream_helpers import committed, fresh_topics, stored_event_ids

pytestmark = pytest.mark.timeout(300)


def stored_batches(bootstrap: str, topic: str, n: int) -> list[tuple[int, int]]:
    """[(base_offset, last_offset)] of the record batches the broker returns for the topic,
    read from offset 0, seen where kafka-python parses the fetch response."""
    from kafka import KafkaConsumer
    from kafka.record.memory_records import MemoryRecords

    seen, real = [], MemoryRecords.next_batch

    def next_batch(self, *a, **kw):
        b = real(self, *a, **kw)
        if b is not None:
            seen.append((b.base_offset, b.base_offset + b.last_offset_delta))
        return b

    MemoryRecords.next_batch = next_batch
    try:
        c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False, group_id=None)
        got, deadline = 0, time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            got += sum(len(r) for r in c.poll(500).values())
        c.close()
    finally:
        MemoryRecords.next_batch = real
    return sorted(set(seen))


@pytest.mark.parametrize("storage", ["memory", "s3"])
def test_resuming_from_a_commit_inside_a_producer_batch_loses_nothing(tmp_path, storage):
    s3 = MotoS3.start(log=tmp_path / "moto.log") if storage == "s3" else None
    broker = Tansu.start(storage=f"{storage}://tansu/", env=s3.env() if s3 else None,
                         log=tmp_path / "tansu.log")
    try:
        topic, dlq = fresh_topics(broker.bootstrap, partitions=1)
        n = 6000
        events = list(synthetic_events(n, 50, 500, int(time.time() * 1e6) - n * 1000,
                                       prefix="midbatch"))
        produce(ReplayConfig(broker.bootstrap, topic, linger_ms=1000, batch_size=256 << 10),
                event_messages(events))
        batches = stored_batches(broker.bootstrap, topic, n)
        assert batches[0][0] == 0 and batches[-1][1] == n - 1
        assert max(last - base + 1 for base, last in batches) >= 500, batches  # large batches
        cmd = [str(Path(sys.executable).parent / "pinrec"), "stream", "consume", "--bootstrap",
               broker.bootstrap, "--topic", topic, "--dlq-topic", dlq, "--group", "mid",
               "--db", str(tmp_path / "db"), "--no-sweep", "--lake", str(tmp_path / "lake"),
               "--max-poll-records", "7"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(tmp_path / "consumer.log", "ab")
        kill_points = []
        for k in range(3):
            before = committed(broker.bootstrap, "mid", topic, 1)[0] or 0
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
            deadline = time.monotonic() + 90
            while (committed(broker.bootstrap, "mid", topic, 1)[0] or 0) < before + 300 * (k + 1):
                assert time.monotonic() < deadline and proc.poll() is None, \
                    (tmp_path / "consumer.log").read_text()[-3000:]
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kill_points.append(committed(broker.bootstrap, "mid", topic, 1)[0])
        assert all(0 < p < n for p in kill_points), kill_points
        # Each resume point lies strictly inside a stored batch: the fetch starts mid-batch.
        assert all(any(base < p <= last for base, last in batches) for p in kill_points), \
            (kill_points, batches)
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 150
        while committed(broker.bootstrap, "mid", topic, 1)[0] != n:
            assert time.monotonic() < deadline and proc.poll() is None, \
                (kill_points, committed(broker.bootstrap, "mid", topic, 1))
            time.sleep(0.2)
        proc.terminate()
        proc.wait(30)
        log.close()
    finally:
        broker.stop()
        if s3 is not None:
            s3.stop()
    print(f"{storage}: {len(batches)} stored batches {batches}; resumed at {kill_points}")
    ids = stored_event_ids(tmp_path / "db")
    missing = {e.event_id for e in events} - set(ids)
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert not missing, (f"{len(missing)} events never delivered after resuming at {kill_points} "
                         f"(Tansu skipped a batch?)")
