"""The speed-layer consumer: Kafka topic -> RocksDB, at-least-once, idempotent, with a DLQ.

Loop (confluent-kafka's example shape): poll a batch -> parse each message (pure) -> write all
good events in ONE WriteBatch with the WAL -> send rejects to the dead-letter topic and flush ->
only then commit the batch's offsets. A crash anywhere before the commit re-delivers the batch,
and the re-delivery overwrites the same keys, so every event is stored exactly once.
Offsets are also committed when partitions are revoked and on SIGTERM/SIGINT, then it closes.

No single message can stop it (docs/adr/0005-speed-layer-poison-messages.md): a rejected message
of any size goes to the DLQ, cut to fit the DLQ producer's limit (streaming/deadletter.py); a
batch that fails for any other reason is bisected (streaming/isolate.py) and the record to blame
is dead-lettered with the error. What it cannot get past, it stops on with a message that names
the records and the fix, and a distinct exit code: a record it cannot dead-letter
(EXIT_CANNOT_DEAD_LETTER) or a store it cannot write (EXIT_STORE_UNAVAILABLE).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pinrec.core.contracts import vocab as vocab_by_name
from pinrec.core.events import Event
from streaming.deadletter import Source, dead_letter, fit_limit
from streaming.events import MAX_MESSAGE_BYTES, parse
from streaming.isolate import isolate
from streaming.limits import (BROKER_MESSAGE_MAX_BYTES, FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS,
                              MAX_PARTITION_FETCH_BYTES,
                              PRODUCER_MAX_REQUEST_SIZE)
from streaming.produce import send_confirmed
from streaming.metrics import ConsumerCollector, ConsumerMetrics, serve_metrics
from streaming.store import RealtimeStore

log = logging.getLogger("pinrec.stream")

# sysexits.h: EX_UNAVAILABLE, EX_IOERR. Distinct from 1 (a crash) so a supervisor can stop
# restarting and page someone instead (docs/ops.md, "The consumer stopped").
EXIT_CANNOT_DEAD_LETTER = 69
EXIT_STORE_UNAVAILABLE = 74


class CannotDeadLetter(RuntimeError):
    """Records that must go to the DLQ could not be sent there; nothing past them is committed."""


class StoreUnavailable(RuntimeError):
    """RocksDB does not take writes (not one event's fault); nothing of the batch is committed."""


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap: str
    db_path: Path
    topic: str = "engagements"
    dlq_topic: str = "engagements-dlq"  # the name compose and the demo create
    group: str = "pinrec-speed-layer"
    vocab: str = "pinterest"
    max_future_s: float = 300.0          # clock skew allowed before "timestamp in the future"
    # The event contract's size limit: a message larger than this is rejected ("oversized
    # payload") whatever it holds, e.g. a 2 MB query_text. A real event is ~200 B.
    max_event_bytes: int = MAX_MESSAGE_BYTES
    # Size limits, Kafka's defaults (docs/ops.md lists them with the broker's).
    fetch_max_bytes: int = FETCH_MAX_BYTES
    max_partition_fetch_bytes: int = MAX_PARTITION_FETCH_BYTES
    dlq_max_request_size: int = PRODUCER_MAX_REQUEST_SIZE           # DLQ producer max.request.size
    dlq_broker_max_message_bytes: int = BROKER_MESSAGE_MAX_BYTES    # broker/topic message.max.bytes
    poll_ms: int = 100
    # Small batches keep a fetch in flight while one is processed: 500 drained Tansu at
    # 11-27k events/s here where 5000 gave 7.5-9k (measured under load, bench/stream_bench.py).
    max_poll_records: int = 500
    # How long the broker may hold a fetch open waiting for data; it bounds how stale a quiet
    # partition's newest event can be before it is stored (the produce->readable latency).
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
    # Tansu's group join takes about half of session_timeout_ms (DESIGN.md §4).
    session_timeout_ms: int = 6000
    heartbeat_ms: int = 2000
    metrics_port: int | None = None      # serve /metrics on 127.0.0.1:port
    log_every_s: float = 10.0
    lake: Path | None = None             # when set, skip and sweep events older than the batch cutoff
    sweep_every_s: float = 300.0
    client_id: str = "pinrec-consumer"

    @property
    def dlq_record_limit(self) -> int:
        return fit_limit(self.dlq_max_request_size, self.dlq_broker_max_message_bytes)


def source(record) -> Source:
    return Source(record.topic, record.partition, record.offset)


def where(records, show: int = 5) -> str:
    """'t/0@12, t/0@40 and 3 more': the records an operator has to look at."""
    names = ", ".join(str(source(r)) for r in records[:show])
    return names + (f" and {len(records) - show} more" if len(records) > show else "")


@dataclass
class Stored:
    """What one successful attempt over some records did."""
    events: list            # [(record, Event)] written to RocksDB
    dead: list              # [(record, reason)] rejected by the contract
    stale: int = 0          # older than the batch cutoff, skipped


def _commit_on_revoke(runner: "ConsumerRunner"):
    from kafka import ConsumerRebalanceListener

    class CommitOnRevoke(ConsumerRebalanceListener):
        """Commit what was processed for partitions before they move to another member."""

        def on_partitions_revoked(self, revoked):
            runner.commit_processed(set(revoked))
            runner.metrics.assigned = set()

        def on_partitions_assigned(self, assigned):
            runner.metrics.assigned = {(tp.topic, tp.partition) for tp in assigned}
            log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    return CommitOnRevoke()


class ConsumerRunner:
    def __init__(self, cfg: ConsumerConfig, metrics: ConsumerMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or ConsumerMetrics()
        self.vocab = vocab_by_name(cfg.vocab)
        self.processed: dict = {}    # TopicPartition -> next offset to consume (processed)
        self.committed: dict = {}
        self.cutoff_us: int | None = None
        self.consumer = self.producer = self.store = None

    # -- the edges ------------------------------------------------------------------------
    def _open(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        c = self.cfg
        # Fail at start, not on the first bad message, when the DLQ limit cannot hold a record.
        dead_letter(Source(c.topic, 0, 0), None, b"", "probe", c.dlq_record_limit)
        self.store = RealtimeStore.open(c.db_path)
        self.producer = KafkaProducer(bootstrap_servers=c.bootstrap, acks="all", linger_ms=5,
                                      client_id=c.client_id + "-dlq",
                                      max_request_size=c.dlq_max_request_size)
        self.consumer = KafkaConsumer(
            bootstrap_servers=c.bootstrap, group_id=c.group, client_id=c.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=c.session_timeout_ms, heartbeat_interval_ms=c.heartbeat_ms,
            max_poll_records=c.max_poll_records, fetch_max_bytes=c.fetch_max_bytes,
            fetch_max_wait_ms=c.fetch_max_wait_ms,
            max_partition_fetch_bytes=c.max_partition_fetch_bytes)
        self.consumer.subscribe([c.topic], listener=_commit_on_revoke(self))

    def _close(self) -> None:
        try:
            if self.consumer is not None:
                self.commit_processed(None)
                self.consumer.close(autocommit=False)
        finally:
            if self.producer is not None:
                self.producer.flush()
                self.producer.close()
            if self.store is not None:
                self.store.close()

    def commit_processed(self, partitions) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        todo = {tp: off for tp, off in self.processed.items()
                if (partitions is None or tp in partitions) and self.committed.get(tp) != off}
        if not todo:
            return
        t0 = time.perf_counter()
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in todo.items()})
        except KafkaError as e:
            # The group moved on; another member re-reads these messages (idempotent writes).
            log.warning("offset commit failed (%s); the batch will be re-delivered", e)
            return
        self.metrics.add_commit((time.perf_counter() - t0) * 1e3)
        self.committed.update(todo)
        for tp, o in todo.items():
            self.metrics.committed[(tp.topic, tp.partition)] = o

    def _refresh_cutoff(self) -> None:
        from streaming.sweeper import batch_cutoff_us

        cutoff = batch_cutoff_us(self.cfg.lake)
        if cutoff is not None and cutoff != self.cutoff_us:
            self.cutoff_us = cutoff
            removed = self.store.sweep(cutoff)
            self.metrics.swept += removed
            log.info("batch cutoff %d: swept %d events", cutoff, removed)

    # -- one batch --------------------------------------------------------------------------
    def _attempt(self, records, max_ts: int) -> Stored:
        """Parse and store some records; raises if anything fails (then nothing is reported,
        and what was written is harmless: a re-write of the same keys)."""
        out = Stored([], [])
        for r in records:
            p = parse(r.value, self.vocab, max_ts, self.cfg.max_event_bytes)
            if not isinstance(p, Event):
                out.dead.append((r, p.reason))
            elif self.cutoff_us is not None and p.ts_us < self.cutoff_us:
                out.stale += 1
            else:
                out.events.append((r, p))
        self.store.apply([e for _, e in out.events])
        return out

    def _blame(self, record, exc: Exception) -> None:
        """One record failed alone: its fault if the store takes a write, else stop."""
        try:
            self.store.probe()
        except Exception as e:
            raise StoreUnavailable(
                f"RocksDB at {self.cfg.db_path} does not take writes ({type(e).__name__}: {e}); "
                f"the record {source(record)} failed with {type(exc).__name__}: {exc}. Nothing of "
                f"this batch was committed. Fix the disk (free space, permissions, a second "
                f"writer holding the lock), then restart the consumer: the batch is re-delivered."
            ) from e
        log.warning("record %s failed alone (%s: %s) while the store takes writes: dead-lettering "
                    "it", source(record), type(exc).__name__, exc)

    def _dead_letter(self, dead: list) -> None:
        """Send [(record, reason)] to the DLQ, confirmed with offsets, in source order."""
        if not dead:
            return
        limit = self.cfg.dlq_record_limit
        msgs = [dead_letter(source(r), r.key, r.value, reason, limit) for r, reason in dead]
        try:
            send_confirmed(self.producer, self.cfg.dlq_topic, msgs)
        except Exception as e:
            first = dead[0][0]
            raise CannotDeadLetter(
                f"could not dead-letter {len(dead)} record(s) to topic {self.cfg.dlq_topic!r} "
                f"({type(e).__name__}: {e}): {where([r for r, _ in dead])}. Nothing from there on "
                f"was committed. Fix: make the DLQ writable (topic exists, broker up, its "
                f"max.message.bytes >= {limit}), then restart; or, to give up on a record, stop "
                f"the group and move it past the record: `pinrec stream skip --group "
                f"{self.cfg.group} --topic {first.topic} --partition {first.partition} --offset "
                f"{first.offset}` (docs/ops.md, 'The consumer stopped')."
            ) from e
        for r, reason in dead:
            log.info("DLQ %s: %s", source(r), reason[:200])

    def process(self, polled: dict, now_s: float) -> None:
        """Parse, store, dead-letter, then commit one poll's records."""
        max_ts = int((now_s + self.cfg.max_future_s) * 1e6)
        records = [r for recs in polled.values() for r in recs]
        done, failed = isolate(records, lambda rs: self._attempt(rs, max_ts), self._blame)
        dead = [d for s in done for d in s.dead]
        dead += [(r, f"processing failed: {type(e).__name__}: {e}") for r, e in failed]
        dead.sort(key=lambda d: (d[0].topic, d[0].partition, d[0].offset))
        stored = [ev for s in done for ev in s.events]
        visible_ms = time.time() * 1e3
        self.metrics.add_visible([visible_ms - r.timestamp for r, _ in stored])
        # The DLQ copy must exist before the offset moves past it: confirmed with an offset,
        # not just flushed (streaming/produce.py says why); raises, so nothing is committed.
        self._dead_letter(dead)
        # Only now is the batch durable (RocksDB WAL + DLQ acks): if anything above raised,
        # these offsets are never committed, not even by the shutdown path, and the batch
        # is re-delivered.
        self.processed.update({tp: recs[-1].offset + 1 for tp, recs in polled.items() if recs})
        self.metrics.events_stored += len(stored)
        self.metrics.stale_skipped += sum(s.stale for s in done)
        self.metrics.dlq += len(dead)
        self.metrics.poison += len(failed)
        self.metrics.batches += 1
        self.commit_processed(set(polled))

    def run(self, stop: threading.Event) -> ConsumerMetrics:
        self._open()
        last_log = last_sweep = time.monotonic()
        try:
            if self.cfg.lake is not None:
                self._refresh_cutoff()
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=self.cfg.poll_ms,
                                            max_records=self.cfg.max_poll_records)
                if polled:
                    if not self.metrics.started_s:
                        self.metrics.started_s = time.time()
                    self.process(polled, time.time())
                mono = time.monotonic()
                if mono - last_log >= self.cfg.log_every_s and self.metrics.started_s:
                    s = self.metrics.snapshot(time.time())
                    log.info("stored=%d (%.0f/s) dlq=%d commit_p99=%.1fms visible_p99=%.0fms",
                             s["events_stored"], s["events_per_s"], s["dlq"],
                             s["commit_ms_p99"], s["visible_ms_p99"])
                    last_log = mono
                if self.cfg.lake is not None and mono - last_sweep >= self.cfg.sweep_every_s:
                    self._refresh_cutoff()
                    last_sweep = mono
        finally:
            self._close()
        return self.metrics


def run(cfg: ConsumerConfig, stop: threading.Event | None = None,
        metrics: ConsumerMetrics | None = None) -> ConsumerMetrics:
    """Consume until `stop` is set or SIGTERM/SIGINT arrives (when on the main thread)."""
    stop = stop or threading.Event()
    runner = ConsumerRunner(cfg, metrics)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    srv = None
    if cfg.metrics_port is not None:
        srv = serve_metrics(cfg.metrics_port, ConsumerCollector(runner.metrics, time.time))
    try:
        return runner.run(stop)
    finally:
        if srv is not None:
            srv.shutdown()
