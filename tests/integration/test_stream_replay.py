"""`pinrec stream replay` (from the lake and from a file) and `pinrec stream sweep`, through the
real command line, a real Tansu broker and real Delta tables."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinrec.core.lake import DeltaRsTables
from pinrec.core.layout import Lake
from streaming.broker import Tansu
from streaming.consumer import ConsumerConfig

from .stream_helpers import ConsumerThread, fresh_topics, stored_event_ids

PINREC = str(Path(sys.executable).parent / "pinrec")
pytestmark = pytest.mark.timeout(240)


def pinrec(*args: str) -> str:
    out = subprocess.run([PINREC, *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    t = Tansu.start(log=tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield t
    t.stop()


def test_replay_from_the_lake_delivers_every_event_of_the_chosen_days(broker, tmp_path):
    lake = tmp_path / "lake"
    pinrec("data", "synth", "--users", "60", "--days", "3", "--items", "300", "--start",
           "2026-02-01", "--lake", str(lake))
    events = DeltaRsTables(Lake.at(lake)).read("events", ["2026-02-02", "2026-02-03"])
    topic, dlq = fresh_topics(broker.bootstrap)
    out = pinrec("stream", "replay", "--bootstrap", broker.bootstrap, "--topic", topic,
                 "--from-lake", "2026-02-02", "2026-02-03", "--lake", str(lake), "--rate", "20000")
    assert f"produced {events.num_rows} messages" in out
    c = ConsumerThread(ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic,
                                      dlq_topic=dlq, group="lake-replay",
                                      max_future_s=10 * 365 * 86400)).start()
    c.wait_for(lambda m: m.events_stored + m.dlq >= events.num_rows)
    m = c.stop()
    assert (m.events_stored, m.dlq) == (events.num_rows, 0)
    assert sorted(stored_event_ids(tmp_path / "db")) == sorted(events.column("event_id").to_pylist())


def test_replay_file_sends_lines_as_is_and_paces_to_the_rate(broker, tmp_path):
    now = int(time.time() * 1e6)
    lines = [json.dumps({"event_id": f"f{i}", "user_id": i % 7, "item_id": i, "item_type": "pin",
                         "action": "repin", "surface": "homefeed", "ts": now - i}) for i in range(300)]
    lines[10] = "{broken"
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    topic, dlq = fresh_topics(broker.bootstrap)
    t0 = time.perf_counter()
    out = pinrec("stream", "replay", "--bootstrap", broker.bootstrap, "--topic", topic,
                 "--file", str(f), "--rate", "200")
    assert "produced 300 messages" in out
    assert time.perf_counter() - t0 >= 1.4  # 300 messages at 200/s take >= 1.5 s
    c = ConsumerThread(ConsumerConfig(broker.bootstrap, tmp_path / "db", topic=topic,
                                      dlq_topic=dlq, group="file")).start()
    c.wait_for(lambda m: m.events_stored + m.dlq >= 300)
    m = c.stop()
    assert (m.events_stored, m.dlq) == (299, 1)


def test_sweep_command_uses_the_newest_sequences_cutoff(tmp_path):
    import pyarrow as pa

    from pinrec.core.contracts import SEQUENCES_SCHEMA, cutoff_us
    from pinrec.core.events import Event
    from streaming.store import RealtimeStore

    lake = tmp_path / "lake"
    tables = DeltaRsTables(Lake.at(lake))
    for ds in ("2026-02-01", "2026-02-03"):  # the newest partition wins
        cut = cutoff_us(ds)
        row = {"user_id": [1], "event_ids": [[]], "item_ids": [[]], "item_types": [[]],
               "actions": [[]], "surfaces": [[]], "ts": [[]], "length": [0],
               "cutoff_ts": pa.array([cut]).cast(pa.timestamp("us", tz="UTC")), "ds": [ds]}
        tables.replace_partitions("sequences", pa.Table.from_pydict(row, schema=SEQUENCES_SCHEMA), [ds])
    cut = cutoff_us("2026-02-03")
    s = RealtimeStore.open(tmp_path / "db")
    s.apply([Event(f"e{i}", 1, i, "pin", "repin", "homefeed", cut - 3 + i) for i in range(6)])
    s.close()
    out = pinrec("stream", "sweep", "--lake", str(lake), "--db", str(tmp_path / "db"))
    assert f"swept 3 events older than {cut}; 3 remain" in out
    assert sorted(stored_event_ids(tmp_path / "db")) == ["e3", "e4", "e5"]
