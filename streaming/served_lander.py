"""The served lander: the `served` topic -> the `served` Delta table, exactly once per request id.

Loop (the consumer's shape, streaming/consumer.py): poll -> parse each message (pure,
pinrec/core/served.py) -> hold good records and dead letters until a trigger fires -> land:

    1. keep the first record per request_id (a re-sent response is the same response),
    2. MERGE its rows into `served` on (ds, request_id, rank), inserting only the rows not there
       yet -- so landing the same record twice stores it once. The predicate names the batch's
       ds partitions and its served_at range as literals: a row with the same request id has the
       same served_at, so only files overlapping that range can match, and delta-rs skips the
       rest by their statistics (one landing into a 1M-row day: 0.2-0.4 s instead of 7-11 s;
       `pinrec bench served-land`). Writers on other days do not conflict.
    3. send the dead letters to the DLQ and wait for their offsets,
    4. only then commit the Kafka offsets.

A crash anywhere before 4 re-delivers the batch from the last committed offsets, and step 2
makes the re-delivery a no-op for what was already landed: exactly once per request id in the
table, across crashes, rebalances and the served log's own re-sends.

Triggers: `max_records` messages pending (size) or `max_wait_s` since the first pending one
(time), whichever comes first; both bound how stale the table is and how small its files are
(maintenance compacts them). Partitions about to move to another member are landed first.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pinrec.core.contracts import Rejection
from pinrec.core.experiments import SERVED_TOPIC
from pinrec.core.served import ServedRecord, first_per_request, parse, rows
from streaming.limits import FETCH_MAX_WAIT_MS
from streaming.deadletter import Source, dead_letter, fit_limit
from streaming.limits import BROKER_MESSAGE_MAX_BYTES, PRODUCER_MAX_REQUEST_SIZE
from streaming.produce import send_confirmed

log = logging.getLogger("pinrec.stream.served")
DLQ_RECORD_LIMIT = fit_limit(PRODUCER_MAX_REQUEST_SIZE, BROKER_MESSAGE_MAX_BYTES)


@dataclass(frozen=True)
class LanderConfig:
    bootstrap: str
    lake: Path
    topic: str = SERVED_TOPIC
    dlq_topic: str = SERVED_TOPIC + "-dlq"
    group: str = "pinrec-served-lander"
    max_records: int = 5000          # size trigger (messages; one message = one response)
    max_wait_s: float = 30.0         # time trigger
    max_future_s: float = 300.0      # clock skew allowed before "served_at in the future"
    poll_ms: int = 200
    session_timeout_ms: int = 6000   # Tansu's group join takes about half of it (DESIGN.md §4)
    heartbeat_ms: int = 2000
    client_id: str = "pinrec-served-lander"
    metrics_port: int | None = None  # serve /metrics on 127.0.0.1:port


@dataclass
class LanderMetrics:
    """Mutated by the lander thread only; plain ints, read by tests and the log line."""

    records_landed: int = 0      # distinct request ids per landing, summed
    rows_landed: int = 0
    duplicates_in_batch: int = 0
    dlq: int = 0
    landings: int = 0
    committed: dict = field(default_factory=dict)  # (topic, partition) -> next offset


@dataclass
class Pending:
    """What was polled since the last landing."""

    records: list[ServedRecord] = field(default_factory=list)
    dead: list = field(default_factory=list)          # (key, value, headers)
    offsets: dict = field(default_factory=dict)       # TopicPartition -> next offset
    since: float | None = None                        # monotonic time of the first message

    def messages(self) -> int:
        return len(self.records) + len(self.dead)


def due(p: Pending, cfg: LanderConfig, now_mono: float) -> bool:
    """The size/time trigger."""
    if not p.offsets:
        return False
    return p.messages() >= cfg.max_records or now_mono - (p.since or now_mono) >= cfg.max_wait_s


def served_at_literal(us: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("'%Y-%m-%dT%H:%M:%S.%fZ'")


def landing_predicate(table) -> str:
    """Key match, limited to the batch's days and served_at range (see the module docstring)."""
    import pyarrow.compute as pc

    from pinrec.core.lake_tables import merge_predicate

    days = sorted(set(table.column("ds").to_pylist()))
    lo_hi = pc.min_max(table.column("served_at").cast("int64"))
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    return (merge_predicate(["request_id", "rank"], days)
            + f" AND t.served_at >= {served_at_literal(lo)} AND t.served_at <= {served_at_literal(hi)}")


def merge_new_rows(tables, table) -> None:
    """Insert the rows of `table` whose (ds, request_id, rank) is not in `served` yet."""
    from deltalake import DeltaTable, write_deltalake

    from pinrec.core.lake_tables import conform, with_retry
    from pinrec.core.contracts import PARTITION_COLUMNS

    data = conform("served", table)
    predicate = landing_predicate(data)

    def op():
        if not tables.exists("served"):
            try:
                write_deltalake(tables.uri("served"), data.slice(0, 0), mode="error",
                                partition_by=PARTITION_COLUMNS["served"])
            except Exception:  # noqa: BLE001 - a concurrent lander created it first
                if not tables.exists("served"):
                    raise
        (DeltaTable(tables.uri("served")).merge(data, predicate, source_alias="s", target_alias="t")
         .when_not_matched_insert_all().execute())

    with_retry(op, "land served", tables.retry)


class Lander:
    def __init__(self, cfg: LanderConfig, metrics: LanderMetrics | None = None):
        from pinrec.core.lake import DeltaRsTables
        from pinrec.core.layout import Lake

        self.cfg = cfg
        self.metrics = metrics or LanderMetrics()
        self.tables = DeltaRsTables(Lake.at(cfg.lake))
        self.pending = Pending()
        self.consumer = self.producer = None

    # -- one message ----------------------------------------------------------------------
    def add(self, records_by_tp: dict, now_s: float, now_mono: float) -> None:
        max_ts = int((now_s + self.cfg.max_future_s) * 1e6)
        for tp, records in records_by_tp.items():
            for r in records:
                p = parse(r.value, max_ts)
                if isinstance(p, Rejection):
                    # the same dead-letter copy as the engagement consumer's: cut to fit, with
                    # the source's topic/partition/offset and the original's size and checksum
                    self.pending.dead.append(dead_letter(Source(r.topic, r.partition, r.offset), r.key,
                                                         r.value, p.reason, DLQ_RECORD_LIMIT))
                    log.info("DLQ %s/%d@%d: %s", r.topic, r.partition, r.offset, p.reason)
                else:
                    self.pending.records.append(p)
            if records:
                self.pending.offsets[tp] = records[-1].offset + 1
                if self.pending.since is None:
                    self.pending.since = now_mono

    # -- landing ----------------------------------------------------------------------------
    def land(self) -> None:
        """Delta MERGE, then DLQ (confirmed), then the offsets; see the module docstring."""
        from kafka.structs import OffsetAndMetadata

        p, self.pending = self.pending, Pending()
        if not p.offsets:
            return
        unique = first_per_request(p.records)
        table = rows(unique)
        if table.num_rows:
            merge_new_rows(self.tables, table)
        send_confirmed(self.producer, self.cfg.dlq_topic, p.dead)
        self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in p.offsets.items()})
        m = self.metrics
        m.records_landed += len(unique)
        m.rows_landed += table.num_rows
        m.duplicates_in_batch += len(p.records) - len(unique)
        m.dlq += len(p.dead)
        m.landings += 1
        m.committed.update({(tp.topic, tp.partition): o for tp, o in p.offsets.items()})
        log.info("landed %d responses (%d rows, %d duplicates, %d to the DLQ)", len(unique),
                 table.num_rows, len(p.records) - len(unique), len(p.dead))

    # -- the edges ----------------------------------------------------------------------------
    def _open(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

        c = self.cfg
        self.producer = KafkaProducer(bootstrap_servers=c.bootstrap, acks="all", linger_ms=5,
                                      client_id=c.client_id + "-dlq")
        self.consumer = KafkaConsumer(
            bootstrap_servers=c.bootstrap, group_id=c.group, client_id=c.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=c.session_timeout_ms, heartbeat_interval_ms=c.heartbeat_ms,
            max_poll_records=min(c.max_records, 1000), fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        lander = self

        class LandOnRevoke(ConsumerRebalanceListener):
            """Land what was polled before partitions move: the next owner starts from there."""

            def on_partitions_revoked(self, revoked):
                lander.land()

            def on_partitions_assigned(self, assigned):
                log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

        self.consumer.subscribe([c.topic], listener=LandOnRevoke())

    def _close(self) -> None:
        try:
            if self.consumer is not None:
                self.land()  # what was polled before the stop: land it rather than re-read it
                self.consumer.close(autocommit=False)
        finally:
            if self.producer is not None:
                self.producer.flush()
                self.producer.close()

    def run(self, stop: threading.Event) -> LanderMetrics:
        self._open()
        try:
            while not stop.is_set():
                polled = self.consumer.poll(timeout_ms=self.cfg.poll_ms)
                if polled:
                    self.add(polled, time.time(), time.monotonic())
                if due(self.pending, self.cfg, time.monotonic()):
                    self.land()
        finally:
            self._close()
        return self.metrics


def metrics_text(m: LanderMetrics) -> str:
    """Prometheus text: the counters and the committed offset per partition."""
    lines = []
    for k in ("records_landed", "rows_landed", "duplicates_in_batch", "dlq", "landings"):
        lines += [f"# TYPE pinrec_served_lander_{k}_total counter",
                  f"pinrec_served_lander_{k}_total {getattr(m, k)}"]
    lines.append("# TYPE pinrec_served_lander_committed_offset gauge")
    for (topic, part), off in sorted(dict(m.committed).items()):
        lines.append(f'pinrec_served_lander_committed_offset{{topic="{topic}",partition="{part}"}} {off}')
    return "\n".join(lines) + "\n"


def run(cfg: LanderConfig, stop: threading.Event | None = None,
        metrics: LanderMetrics | None = None) -> LanderMetrics:
    """Land until `stop` is set or SIGTERM/SIGINT arrives (when on the main thread)."""
    from streaming.metrics import TextCollector, serve_metrics

    stop = stop or threading.Event()
    metrics = metrics or LanderMetrics()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    srv = (serve_metrics(cfg.metrics_port, TextCollector(lambda: metrics_text(metrics)))
           if cfg.metrics_port else None)
    try:
        return Lander(cfg, metrics).run(stop)
    finally:
        if srv is not None:
            srv.shutdown()
