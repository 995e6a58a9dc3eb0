"""The served log: every API response goes to the `served` Kafka topic, off the request path.

The request thread only appends (response, served_at) to a bounded in-memory buffer: one lock,
one deque append, no encoding, no network. A background thread encodes (pinrec/core/served.py),
sends with kafka-python and waits for the broker's answer. The rules:

- Never block or fail a request. The buffer is bounded (`capacity`); when it is full (the
  broker is down or slower than the traffic) the OLDEST record is dropped and counted:
  a recent response is worth more to an analyst than an old one, and a bounded buffer keeps
  the server's memory bounded whatever the broker does.
- At least once while the process lives: a record leaves the buffer for good only when the
  broker answered with an offset (streaming/produce.py says why an answer without one does not
  count). A batch that failed goes back to the front of the buffer and is sent again after a
  back-off; a record the broker stored but did not confirm is sent twice, which is why the key
  is the request id and the lander stores each request id once.
- On shutdown the thread drains the buffer for up to `drain_s`; what is left is counted as dropped.

Counters (logged, sent, dropped, send errors, buffered) are exposed on the API's /metrics.
"""
from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass

from pinrec.core.experiments import SERVED_TOPIC
from pinrec.core.served import encode

log = logging.getLogger("pinrec.serve.served_log")


@dataclass(frozen=True)
class ServedLogConfig:
    bootstrap: str
    topic: str = SERVED_TOPIC
    capacity: int = 20_000        # records held while the broker is slow or down (~100 s at 200/s)
    batch: int = 500              # records sent per round trip
    # How long the sender collects responses before a round trip. Each round trip costs the
    # server CPU (kafka-python is pure Python) whatever its size: at 200 responses/s a record
    # cost 0.18-0.23 ms of CPU with 0.2 s, 0.70-0.73 ms with 0.02 s, 0.15-0.19 ms with 1 s
    # (50 items; loaded 2-core host). bench/serve_logging.py measures the effect on latency.
    linger_s: float = 0.2
    send_timeout_s: float = 5.0   # a round trip longer than this counts as failed
    max_backoff_s: float = 5.0    # retry a down broker at most this far apart
    drain_s: float = 5.0          # how long close() keeps sending what is buffered
    client_id: str = "pinrec-serve-served-log"


class ServedLog:
    def __init__(self, cfg: ServedLogConfig):
        if cfg.capacity < 1 or cfg.batch < 1:
            raise ValueError(f"served log capacity and batch must be >= 1, got {cfg.capacity}, {cfg.batch}")
        self.cfg = cfg
        self._buf: deque = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = None
        self._partitions: list[int] | None = None
        # Plain ints: written under the lock (or by the sender thread alone), read by /metrics.
        self.logged = self.sent = self.dropped = self.send_errors = 0
        self.broker_up = False

    # -- the request path -------------------------------------------------------------------
    def log(self, response: dict, served_at_us: int) -> None:
        """Queue one response; O(1), never waits for the broker."""
        with self._lock:
            if len(self._buf) >= self.cfg.capacity:
                self._buf.popleft()
                self.dropped += 1
            self._buf.append((response, served_at_us))
            self.logged += 1

    # -- the sender thread ------------------------------------------------------------------
    def start(self) -> "ServedLog":
        self._thread = threading.Thread(target=self._run, daemon=True, name="served-log-sender")
        self._thread.start()
        return self

    def _take(self) -> list:
        with self._lock:
            n = min(self.cfg.batch, len(self._buf))
            return [self._buf.popleft() for _ in range(n)]

    def _put_back(self, batch: list) -> None:
        """Failed records go back to the front, in order; beyond capacity the oldest are dropped."""
        with self._lock:
            room = self.cfg.capacity - len(self._buf)
            keep = batch[len(batch) - room:] if room < len(batch) else batch
            if room <= 0:
                keep = []
            self.dropped += len(batch) - len(keep)
            self._buf.extendleft(reversed(keep))

    def _connect(self):
        from kafka import KafkaProducer

        ms = int(self.cfg.send_timeout_s * 1000)
        # bootstrap_timeout_ms bounds the constructor and max_block_ms send() while the broker is
        # down (kafka-python waits 30 s and 60 s by default: the buffer would sit in flight); delivery_timeout
        # bounds how long a future may stay open; acks=all: the record survives a leader change.
        return KafkaProducer(bootstrap_servers=self.cfg.bootstrap, client_id=self.cfg.client_id,
                             acks="all", linger_ms=5, max_block_ms=ms, request_timeout_ms=ms,
                             bootstrap_timeout_ms=ms,
                             delivery_timeout_ms=ms + 5, retries=0,
                             reconnect_backoff_max_ms=int(self.cfg.max_backoff_s * 1000))

    def _send(self, batch: list) -> list:
        """Send one batch; -> the records the broker did not confirm with an offset."""
        if self._producer is None:
            self._producer = self._connect()  # raises while the broker is down
        if self._partitions is None:
            found = self._producer.partitions_for(self.cfg.topic)
            if not found:
                raise RuntimeError(f"topic {self.cfg.topic!r} has no partitions; create it")
            self._partitions = sorted(found)
        futures = []
        for item in batch:
            key, value = encode(*item)
            # Our own partition choice: kafka-python's murmur2 is pure Python (~25 us a record
            # on the server's CPU); crc32 is C. Stable per request id, so re-sends of one
            # response land in one partition.
            part = self._partitions[zlib.crc32(key) % len(self._partitions)]
            futures.append((item, self._producer.send(self.cfg.topic, key=key, value=value,
                                                      partition=part)))
        self._producer.flush(timeout=self.cfg.send_timeout_s)
        failed = []
        for item, fut in futures:
            try:
                ok = fut.get(timeout=self.cfg.send_timeout_s).offset >= 0
            except Exception:  # noqa: BLE001 - any failure: the record is sent again
                ok = False
            if not ok:
                failed.append(item)
        return failed

    def _round(self, backoff: float) -> float:
        """One send round; -> the back-off before the next one."""
        batch = self._take()
        if not batch:
            self._stop.wait(self.cfg.linger_s)
            return 0.0
        try:
            failed = self._send(batch)
        except Exception as e:  # noqa: BLE001 - broker down, metadata timeout, ...
            failed = batch
            if self.broker_up or backoff == 0.0:
                log.warning("served log: sending to %s failed (%s); buffering, dropping the oldest "
                            "beyond %d records", self.cfg.bootstrap, e, self.cfg.capacity)
        self.sent += len(batch) - len(failed)
        self.broker_up = not failed
        if failed:
            self.send_errors += 1
            self._partitions = None  # look the topic up again: it may have changed
            self._put_back(failed)
            backoff = min(self.cfg.max_backoff_s, max(0.05, backoff * 2))
            self._stop.wait(backoff)
            return backoff
        return 0.0

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            backoff = self._round(backoff)
        deadline = time.monotonic() + self.cfg.drain_s
        while self._buf and time.monotonic() < deadline:
            batch = self._take()
            try:
                failed = self._send(batch)
            except Exception:  # noqa: BLE001
                failed = batch
            self.sent += len(batch) - len(failed)
            if failed:
                self._put_back(failed)
                time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.cfg.drain_s + self.cfg.send_timeout_s + 5)
        with self._lock:
            self.dropped += len(self._buf)
            self._buf.clear()
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a producer of a dead broker
                pass

    # -- metrics ------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"logged": self.logged, "sent": self.sent, "dropped": self.dropped,
                "send_errors": self.send_errors, "buffered": len(self._buf),
                "broker_up": int(self.broker_up)}


def metrics_text(served_log: ServedLog | None) -> str:
    """Prometheus text for the API's /metrics (empty when logging is off)."""
    if served_log is None:
        return ""
    s = served_log.stats()
    lines = []
    for k in ("logged", "sent", "dropped", "send_errors"):
        lines += [f"# TYPE pinrec_served_log_{k}_total counter", f"pinrec_served_log_{k}_total {s[k]}"]
    for k in ("buffered", "broker_up"):
        lines += [f"# TYPE pinrec_served_log_{k} gauge", f"pinrec_served_log_{k} {s[k]}"]
    return "\n".join(lines) + "\n"
