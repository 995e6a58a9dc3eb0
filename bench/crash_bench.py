"""`pinrec bench crash`: kill -9 the consumer at random points while events stream in, then
check that every produced event is in RocksDB exactly once (count and key set).

A producer process (`pinrec stream replay`) streams --events synthetic events at --rate;
consumer processes (`pinrec stream consume`) are started one after another, and each of the
first --kills is killed with SIGKILL at a random moment after it has committed progress. A
last consumer drains the rest and stops with SIGTERM. Then the store is read back.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from bench.cli import write_json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rate", type=float, default=4000,
                   help="producer messages/s (slow enough that the kills land mid-stream)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=None)


def _pinrec() -> str:
    return str(Path(sys.executable).parent / "pinrec")


class Offsets:
    """Committed offsets of the consumer group, read from the broker (not from the high
    watermark, which Tansu reports wrongly)."""

    def __init__(self, bootstrap, group, topic, partitions):
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def total(self) -> int:
        return sum(self.c.committed(tp) or 0 for tp in self.tps)

    def close(self):
        self.c.close()


def crash_run(bootstrap: str, work: Path, events: int, kills: int, rate: float, partitions: int,
              seed: int, log=print) -> dict:
    from streaming.broker import create_topics
    from streaming.events import decode
    from streaming.store import RealtimeStore
    from pinrec.core.contracts import stable_event_id

    topic, group, db = "crash", "crash-group", work / "db"
    create_topics(bootstrap, {topic: partitions, topic + ".dlq": 1})
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start_us = int(time.time() * 1e6) - events * 1000
    producer = subprocess.Popen(
        [_pinrec(), "stream", "replay", "--bootstrap", bootstrap, "--topic", topic, "--synthetic",
         str(events), "--rate", str(rate), "--users", "10000", "--seed", str(seed),
         "--start-us", str(start_us)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    consume = [_pinrec(), "stream", "consume", "--bootstrap", bootstrap, "--topic", topic,
               "--dlq-topic", topic + ".dlq", "--group", group, "--db", str(db), "--no-sweep",
               "--lake", str(work / "lake")]
    offsets = Offsets(bootstrap, group, topic, partitions)
    kill_points = []
    logf = open(work / "consumers.log", "ab")
    try:
        for k in range(kills):
            before = offsets.total()
            proc = subprocess.Popen(consume, stdout=logf, stderr=logf, env=env)
            deadline = time.monotonic() + 120
            while offsets.total() <= before:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"consumer {k} made no progress (exit {proc.poll()}); "
                                       f"see {work / 'consumers.log'}")
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kill_points.append({"committed": offsets.total(), "mid_stream": producer.poll() is None})
            log(f"kill -9 #{k + 1}: {kill_points[-1]}")
        out, _ = producer.communicate(timeout=events / max(rate, 1) * 5 + 120)
        if producer.returncode:
            raise RuntimeError(f"producer failed with {producer.returncode}")
        produced = int(out.split("produced ")[1].split()[0])
        proc = subprocess.Popen(consume, stdout=logf, stderr=logf, env=env)
        deadline = time.monotonic() + 600
        while offsets.total() < produced:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"final consumer stalled at {offsets.total()}/{produced}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        offsets.close()
        logf.close()
        if producer.poll() is None:
            producer.kill()
    store = RealtimeStore.open(db)
    try:
        counts = Counter(decode(k, v).event_id for k, v in store.scan())
    finally:
        store.close()
    expected = {stable_event_id("syn", i) for i in range(produced)}
    return {"produced": produced, "kills": len(kill_points), "kill_points": kill_points,
            "kills_mid_stream": sum(k["mid_stream"] for k in kill_points),
            "stored_keys": sum(counts.values()),
            "stored_once": sum(1 for e in expected if counts.get(e) == 1),
            "duplicates": sum(c - 1 for c in counts.values() if c > 1),
            "missing": sum(1 for e in expected if e not in counts),
            "unexpected": sum(1 for e in counts if e not in expected)}


def run(args: argparse.Namespace) -> int:
    from streaming.broker import Tansu

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pinrec-bench-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = Tansu.start(log=work / "tansu.log")
    t0 = time.perf_counter()
    try:
        r = crash_run(broker.bootstrap, work, args.events, args.kills, args.rate, args.partitions,
                      args.seed)
    finally:
        broker.stop()
    r["seconds"] = time.perf_counter() - t0
    r["host_cpus"], r["load_avg_1m"] = os.cpu_count(), os.getloadavg()[0]  # say how busy it was
    ok = r["stored_once"] == r["produced"] and not (r["duplicates"] or r["missing"] or r["unexpected"])
    r["exactly_once"] = ok
    print(f"{'produced':<10}{'kills (mid-stream)':>20}{'stored once':>13}{'duplicates':>12}{'missing':>9}  result")
    print(f"{r['produced']:<10}{r['kills']:>12} ({r['kills_mid_stream']}){'':>4}{r['stored_once']:>13}{r['duplicates']:>12}"
          f"{r['missing']:>9}  {'exactly once' if ok else 'FAILED'}")
    write_json(args.json, r)
    return 0 if ok else 1
