"""Helpers shared by the speed-layer integration tests (real Tansu broker, real RocksDB)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from streaming.consumer import ConsumerConfig, run
from streaming.metrics import ConsumerMetrics


class ConsumerThread:
    """The real consumer loop on a thread, with its live metrics."""

    def __init__(self, cfg: ConsumerConfig):
        self.cfg = cfg
        self.metrics = ConsumerMetrics()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            run(self.cfg, self.stop_event, self.metrics)
        except BaseException as e:  # surfaced by wait_for/stop
            self.error = e

    def start(self) -> "ConsumerThread":
        self.thread.start()
        return self

    def wait_for(self, cond: Callable[[ConsumerMetrics], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.error:
                raise self.error
            if cond(self.metrics):
                return
            time.sleep(0.05)
        raise TimeoutError(f"condition not met in {timeout_s}s; metrics: "
                           f"{self.metrics.snapshot(time.time())}")

    def stop(self) -> ConsumerMetrics:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "consumer did not stop within 30 s"
        if self.error:
            raise self.error
        return self.metrics


def fresh_topics(bootstrap: str, partitions: int = 4) -> tuple[str, str]:
    from streaming.broker import create_topics

    name = "eng-" + uuid.uuid4().hex[:8]
    create_topics(bootstrap, {name: partitions, name + ".dlq": 1})
    return name, name + ".dlq"


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0):
    """Records of a topic, reading until `expect` arrived (Tansu's high watermark is wrong,
    so we count messages instead of comparing offsets)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, group_id=None)
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for r in c.poll(500).values():
                out.extend(r)
        for r in c.poll(1000).values():  # anything beyond `expect` is a bug worth seeing
            out.extend(r)
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close()


def stored_event_ids(path: Path) -> list[str]:
    from streaming.events import decode
    from streaming.store import RealtimeStore

    s = RealtimeStore.open(path)
    try:
        return [decode(k, v).event_id for k, v in s.scan()]
    finally:
        s.close()
