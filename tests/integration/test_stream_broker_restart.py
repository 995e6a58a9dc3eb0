"""Tansu on its durable s3:// engine over a local moto_server: restart the broker mid-stream
while the consumer runs; nothing the broker acknowledged is lost, nothing is stored twice."""
from __future__ import annotations

import time

import pytest

from streaming.broker import MotoS3, Tansu
from streaming.consumer import ConsumerConfig
from streaming.replay import ReplayConfig, event_messages, produce, synthetic_events

from .stream_helpers import ConsumerThread, fresh_topics, read_topic, stored_event_ids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_restart_mid_stream_loses_nothing_acknowledged(tmp_path):
    s3 = MotoS3.start(log=tmp_path / "moto.log")
    broker = Tansu.start(storage="s3://tansu/", env=s3.env(), log=tmp_path / "tansu.log")
    try:
        topic, dlq = fresh_topics(broker.bootstrap, partitions=2)
        start = int(time.time() * 1e6) - 10_000_000
        first = list(synthetic_events(3000, 50, 500, start, prefix="before"))
        second = list(synthetic_events(3000, 50, 500, start + 4_000_000, prefix="after"))
        # produce() returns only after flush(): every message counted was acknowledged
        assert produce(ReplayConfig(broker.bootstrap, topic), event_messages(first)) == 3000
        cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq,
                             group="restart")
        c = ConsumerThread(cfg).start()
        c.wait_for(lambda m: m.events_stored > 0, timeout_s=60)
        broker.restart()  # mid-stream: the consumer is between batches or inside one
        assert produce(ReplayConfig(broker.bootstrap, topic), event_messages(second)) == 3000
        c.wait_for(lambda m: m.events_stored >= 6000, timeout_s=180)
        c.stop()
        ids = stored_event_ids(tmp_path / "db")
        assert len(ids) == len(set(ids)) == 6000
        assert set(ids) == {e.event_id for e in first + second}
        # the broker itself kept every acknowledged message across the restart
        assert len(read_topic(broker.bootstrap, topic, expect=6000)) == 6000
    finally:
        broker.stop()
        s3.stop()
