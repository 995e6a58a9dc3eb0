"""Tansu on its durable s3:// engine over a local moto_server: restart the broker while a
producer streams and the consumer consumes.

Asserted strictly (no xfail): every message the broker holds after the restart is in RocksDB
exactly once, and every message the broker acknowledged with an offset is among them.

What an acknowledgement is: Tansu 0.6 takes ~5 s to stop on SIGTERM and keeps accepting
produce requests meanwhile; the requests still in flight when it exits are answered with
error_code 0 but base_offset -1 (kafka-python resolves their futures with offset -1). Some of
those batches are stored, some are not: the s3 engine had already advanced the partition's
watermark.json for them but never wrote the batch object, which leaves an offset gap (measured
before this change: 21-56 such messages per run, every lost message among them). Under
acks=all a stored record always has an offset, so offset -1 means "outcome unknown", not
"stored": the producer resends those records (at least once; the consumer's idempotent key
stores a re-sent copy once) and counts as acknowledged only what came back with an offset."""

from __future__ import annotations

import threading
import time

import pytest

from streaming.broker import MotoS3, Tansu
from streaming.consumer import ConsumerConfig
from streaming.events import decode
from streaming.store import RealtimeStore
from streaming.replay import synthetic_events, user_key

from .stream_helpers import ConsumerThread, fresh_topics, read_topic, stored_event_ids


def consumer_holds(reader: RealtimeStore) -> set[str]:
    reader.catch_up()
    return {decode(k, v).event_id for k, v in reader.scan()}


class AckedProducer(threading.Thread):
    """Streams events at `rate`, keeping the ids whose send the broker acknowledged."""

    def __init__(self, bootstrap: str, topic: str, events, rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.acked: set[str] = set()   # acknowledged with an offset
        self.unconfirmed: list = []     # answered without error but with offset -1
        self.resent = 0
        self.failed = 0
        self.lock = threading.Lock()

    def run(self):
        from kafka import KafkaProducer

        # linger 50 ms: fewer, larger batches = fewer S3 objects for every Tansu fetch to list
        p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=50, retries=20,
                          retry_backoff_ms=200, request_timeout_ms=10_000)
        t0 = time.perf_counter()
        for i, e in enumerate(self.events):
            ahead = t0 + i / self.rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            self._send(p, e)
        p.flush(timeout=120)
        for _ in range(5):  # resend what came back without an offset (outcome unknown)
            with self.lock:
                again, self.unconfirmed = self.unconfirmed, []
            if not again:
                break
            self.resent += len(again)
            for e in again:
                self._send(p, e)
            p.flush(timeout=120)
        p.close()

    def _send(self, p, e):
        fut = p.send(self.topic, key=user_key(e.user_id), value=e.to_bytes())
        fut.add_callback(self._ok, e)
        fut.add_errback(self._err)

    def _ok(self, e, meta):
        with self.lock:
            if meta.offset >= 0:
                self.acked.add(e.event_id)
            else:
                self.unconfirmed.append(e)

    def _err(self, _exc):
        with self.lock:
            self.failed += 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_restart_mid_stream_loses_nothing_acknowledged(tmp_path):
    s3 = MotoS3.start(log=tmp_path / "moto.log")
    broker = Tansu.start(storage="s3://tansu/", env=s3.env(), log=tmp_path / "tansu.log")
    try:
        topic, dlq = fresh_topics(broker.bootstrap, partitions=2)
        n = 12000
        events = list(synthetic_events(n, 50, 500, int(time.time() * 1e6) - 10_000_000))
        cfg = ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic, dlq_topic=dlq,
                             group="restart")
        c = ConsumerThread(cfg).start()
        c.wait_for(lambda m: len(m.assigned) == 2, timeout_s=60)
        prod = AckedProducer(broker.bootstrap, topic, events, rate=1000)  # ~12 s of stream
        prod.start()
        # Restart on the producer's clock, not the consumer's: on a loaded machine the consumer
        # can lag the whole stream, and the restart must still come while events are in flight.
        c.wait_for(lambda m: m.events_stored > 0, timeout_s=60)
        deadline = time.monotonic() + 60
        while len(prod.acked) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.restart()  # mid-stream for both the producer and the consumer
        restarted_with = len(prod.acked)
        prod.join(180)
        assert not prod.is_alive()
        assert restarted_with < n, "the restart came after the stream ended"
        acked = set(prod.acked)
        assert len(acked) + prod.failed + len(prod.unconfirmed) == n and len(acked) > n // 2
        print(f"acked {len(acked)}, failed {prod.failed}, answered with offset -1 and re-sent "
              f"{prod.resent}, still unconfirmed {len(prod.unconfirmed)}")
        def broker_holds() -> set[str]:
            values = {r.value for r in read_topic(broker.bootstrap, topic, expect=len(acked),
                                                  timeout_s=120)}
            return {e.event_id for e in events if e.to_bytes() in values}

        kept_ids = broker_holds()
        print(f"acknowledged with an offset but not read back from the broker: "
              f"{len(acked - kept_ids)}")
        # Wait on what RocksDB holds, not on the stored-events counter: re-sent copies and
        # re-deliveries count there twice, so the counter can reach the total early.
        reader = RealtimeStore.open_secondary(tmp_path / "db", tmp_path / "db-reader")
        deadline = time.monotonic() + 240
        while not kept_ids <= (held := consumer_holds(reader)) and time.monotonic() < deadline:
            c.wait_for(lambda m: True)  # surfaces a consumer error
            time.sleep(0.5)
        reader.close()
        # Over moto, each Tansu fetch lists the partition's batch objects and GETs them one by
        # one; on a loaded host the consumer has been seen crawling at ~25 events/s after the
        # restart. Say so rather than fail on a set difference.
        metrics = c.metrics.snapshot(time.time())
        assert kept_ids <= held, (f"the consumer holds {len(kept_ids & held)} of the {len(kept_ids)} "
                                  f"events the broker holds after 240 s: {metrics}")
        time.sleep(1.0)  # let anything beyond it arrive too
        c.stop()
        ids = stored_event_ids(tmp_path / "db")
        if set(ids) - kept_ids:
            # A fetch right after the restart can fail (seen under CI load): the independent reader
            # then under-reports what the broker holds. Read it again; the broker is the truth.
            kept_ids |= broker_holds()
        assert len(ids) == len(set(ids))  # exactly once
        assert set(ids) == kept_ids  # everything the broker has, nothing else
        lost = acked - kept_ids
        # Strict: every message acknowledged with an offset survives the restart and is stored.
        assert not lost, (f"{len(lost)} of {len(acked)} messages acknowledged with an offset are "
                          f"not in the broker after the restart (e.g. {sorted(lost)[:3]})")
    finally:
        broker.stop()
        s3.stop()
