"""`pinrec stream replay`: produce events into the topic at a chosen rate (demo, benchmarks).

Sources: the lake's `events` table (a ds range), a JSON-lines file (sent byte for byte, so a
file of malformed lines exercises the DLQ), or synthetic events. Messages are keyed by user id,
so one user's events stay in one partition, in order.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pinrec.core.contracts import PINTEREST_ACTIONS, stable_event_id
from pinrec.core.events import Event
from streaming.limits import PRODUCER_MAX_REQUEST_SIZE

Message = tuple[bytes | None, bytes]


@dataclass(frozen=True)
class ReplayConfig:
    bootstrap: str
    topic: str = "engagements"
    rate: float = 0.0          # messages per second; 0 = as fast as possible
    limit: int | None = None
    linger_ms: int = 5
    max_request_size: int = PRODUCER_MAX_REQUEST_SIZE  # raise it to send larger test messages
    batch_size: int = 256 << 10


def user_key(user_id: int) -> bytes:
    return int(user_id).to_bytes(8, "big")


def event_messages(events: Iterable[Event]) -> Iterator[Message]:
    for e in events:
        yield user_key(e.user_id), e.to_bytes()


def file_messages(path: str | Path) -> Iterator[Message]:
    """Each line as-is (no validation: the consumer decides what is malformed)."""
    with open(path, "rb") as f:
        for line in f:
            raw = line.rstrip(b"\r\n")
            key = None
            try:
                key = user_key(json.loads(raw)["user_id"])
            except Exception:  # a malformed line is sent unkeyed; the consumer dead-letters it
                pass
            yield key, raw


def lake_events(lake_root: str | Path, ds_from: str, ds_to: str) -> Iterator[Event]:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    tables = DeltaRsTables(Lake.at(lake_root))
    parts = [p for p in tables.partitions("events") if ds_from <= p <= ds_to]
    for ds in parts:
        t = tables.read("events", [ds]).sort_by("ts")
        cols = {c: t.column(c).to_pylist() for c in
                ("event_id", "user_id", "item_id", "item_type", "action", "surface", "query_text")}
        ts = t.column("ts").cast("int64").to_pylist()
        for i in range(t.num_rows):
            yield Event(cols["event_id"][i], cols["user_id"][i], cols["item_id"][i],
                        cols["item_type"][i], cols["action"][i], cols["surface"][i], ts[i],
                        cols["query_text"][i])


def synthetic_events(n: int, users: int, items: int, start_us: int, seed: int = 0,
                     step_us: int = 1000, prefix: str = "syn") -> Iterator[Event]:
    """Deterministic valid events with unique ids (`prefix`-i), for benchmarks and tests."""
    rng = np.random.default_rng(seed)
    acts = PINTEREST_ACTIONS.engagement_actions
    u = rng.integers(0, users, n)
    it = rng.integers(1, items + 1, n)
    a = rng.integers(0, len(acts), n)
    for i in range(n):
        yield Event(stable_event_id(prefix, i), int(u[i]), int(it[i]), "pin", acts[a[i]],
                    "homefeed", start_us + i * step_us)


def produce(cfg: ReplayConfig, messages: Iterable[Message], progress=None) -> int:
    """Send messages, paced to `cfg.rate`; returns how many were sent. Records the broker
    answered without an offset, or failed, are sent again until confirmed
    (streaming/produce.py); raises if some never are."""
    from kafka import KafkaProducer

    from streaming.produce import send_confirmed

    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=cfg.linger_ms,
                             batch_size=cfg.batch_size, acks=1, client_id="pinrec-replay",
                             max_request_size=cfg.max_request_size)
    sent = 0
    again: list = []  # appended from the producer's I/O thread (list.append is atomic)
    t0 = time.perf_counter()
    try:
        for key, value in messages:
            if cfg.limit is not None and sent >= cfg.limit:
                break
            if cfg.rate > 0:
                ahead = t0 + sent / cfg.rate - time.perf_counter()
                if ahead > 0.001:
                    time.sleep(ahead)
            m = (key, value)
            producer.send(cfg.topic, key=key, value=value) \
                .add_callback(lambda meta, m=m: meta.offset < 0 and again.append(m)) \
                .add_errback(lambda _e, m=m: again.append(m))
            sent += 1
            if progress is not None and sent % 10_000 == 0:
                progress(sent)
        producer.flush()
        if again:
            send_confirmed(producer, cfg.topic, again)
    finally:
        producer.close()
    return sent
