"""What runs throughout a rehearsal, each started and stopped by process id.

- a local S3 (moto_server) and Tansu on its s3:// engine: the memory engine loses every topic
  and committed offset on restart, which no production broker does, so the broker-restart
  fault would test the engine, not the pipeline;
- `pinrec stream consume` and `pinrec serve` as their own processes, supervised the way a
  process manager would: a process that exits unexpectedly is started again and counted;
- a producer that keeps the ids of the events the broker acknowledged with an offset (Tansu
  answers some in-flight requests around a restart with offset -1: outcome unknown, re-sent,
  see tests/integration/test_stream_broker_restart.py);
- background API traffic, retried by the client while the API restarts, as a load balancer would.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

TOPIC, DLQ = "engagements", "engagements-dlq"


@dataclass
class Proc:
    """One long-running `pinrec` process in its own process group."""

    name: str
    argv: list[str]
    log: Path
    env: dict = field(default_factory=dict)
    popen: subprocess.Popen | None = None
    exits: list = field(default_factory=list)  # (time, return code) of every unexpected exit

    def start(self) -> "Proc":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, env={**os.environ, **self.env})
        out.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def supervise(self) -> bool:
        """Start the process again if it died on its own; True when it had to."""
        if self.popen is None or self.alive():
            return False
        self.exits.append((time.time(), self.popen.returncode))
        self.start()
        return True

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.popen = None  # a kill we chose is not an unexpected exit

    def stop(self, timeout_s: float = 20) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def http_json(url: str, token: str | None = None, timeout: float = 10):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def wait_until(cond, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (v := cond()):
                return v
        except (OSError, ValueError):
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s")


def metric_sum(port: int, names: tuple[str, ...]) -> float:
    """Sum of the named Prometheus counters the consumer exports on 127.0.0.1:port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    return sum(float(line.split()[1]) for line in text.splitlines()
               if line.split(" ")[0].split("{")[0] in names)


class AckedProducer(threading.Thread):
    """Sends (key, value, event_id) messages; keeps the ids acknowledged with an offset and
    re-sends what came back with offset -1 (stored or not: unknown)."""

    def __init__(self, bootstrap: str, messages: list, max_request_size: int = 1 << 20,
                 rate: float = 100.0):
        super().__init__(daemon=True)
        # paced (messages/s), so a fault that waits for a third of the acknowledgements lands
        # while the rest is still being sent (unpaced, a day's ~1,000 events took < 1 s and the
        # 7-day run's broker restart came after the last send)
        self.rate = rate
        self.bootstrap, self.messages, self.max_request_size = bootstrap, messages, max_request_size
        self.acked: set[str] = set()
        self.unconfirmed: list = []
        self.failed: list = []  # (event_id, error) after the last re-send
        self.resent = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def run(self):
        from kafka import KafkaProducer

        try:
            p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=100,
                              retries=20, retry_backoff_ms=300, request_timeout_ms=15_000,
                              max_request_size=self.max_request_size)
            t0 = time.perf_counter()
            for i, m in enumerate(self.messages):
                ahead = t0 + i / self.rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                self._send(p, m)
            p.flush(timeout=180)
            for _ in range(8):
                with self.lock:
                    again, self.unconfirmed = self.unconfirmed + self.failed, []
                    self.failed = []
                if not again:
                    break
                self.resent += len(again)
                time.sleep(1.0)
                for m, _err in again:
                    self._send(p, m)
                p.flush(timeout=180)
            p.close(timeout=30)
        except BaseException as e:  # surfaced by the runner
            self.error = e

    def _send(self, p, m):
        key, value, eid = m
        fut = p.send(TOPIC, key=key, value=value)
        fut.add_callback(self._ok, m)
        fut.add_errback(self._err, m)

    def _ok(self, m, meta):
        with self.lock:
            if meta.offset >= 0:
                if m[2]:
                    self.acked.add(m[2])
            else:
                self.unconfirmed.append((m, "offset -1"))

    def _err(self, m, exc):
        with self.lock:
            self.failed.append((m, repr(exc)))

    def wait_acked(self, n: int, timeout_s: float = 120) -> None:
        wait_until(lambda: len(self.acked) >= n or not self.is_alive(), timeout_s,
                   f"{n} acknowledged messages")


class Traffic(threading.Thread):
    """Steady requests for sampled users; a refused connection is retried for up to
    `retry_s` (the API restarting) and only then counted as unanswered."""

    def __init__(self, url: str, token: str, users: list[int], rate: float = 4.0,
                 retry_s: float = 90.0):
        super().__init__(daemon=True)
        self.url, self.token, self.users, self.rate, self.retry_s = url, token, users, rate, retry_s
        self.records: list[tuple] = []  # (t_start, latency_ms, outcome, retried_s)
        self.stop_event = threading.Event()

    def run(self):
        i = 0
        while not self.stop_event.wait(1.0 / self.rate):
            u = self.users[i % len(self.users)]
            i += 1
            self.records.append(self.one(u))

    def one(self, user: int) -> tuple:
        t0 = time.time()
        while True:
            t1 = time.perf_counter()
            try:
                status, body = http_json(f"{self.url}/v1/recommendations/{user}?n=10", self.token)
                ok = status == 200 and body.get("n", 0) > 0
                return (t0, (time.perf_counter() - t1) * 1e3, "ok" if ok else "empty",
                        round(time.time() - t0 - (time.perf_counter() - t1), 3))
            except urllib.error.HTTPError as e:
                return (t0, (time.perf_counter() - t1) * 1e3, f"http {e.code}", 0.0)
            except OSError:
                if time.time() - t0 > self.retry_s or self.stop_event.is_set():
                    return (t0, None, "unanswered", round(time.time() - t0, 3))
                time.sleep(0.2)

    def window(self, t_from: float, t_to: float) -> list[tuple]:
        return [r for r in list(self.records) if t_from <= r[0] < t_to]

    def stop(self):
        self.stop_event.set()
        self.join(self.retry_s + 30)
