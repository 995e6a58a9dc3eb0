"""RealtimeStore on a real RocksDB in a temp folder."""
from __future__ import annotations

from pinrec.core.events import Event
from streaming.metrics import ConsumerMetrics, prometheus_text
from streaming.store import RealtimeStore


def ev(i: int, user: int, ts: int) -> Event:
    return Event(f"e{i}", user, 100 + i, "pin", "grid_click", "homefeed", ts)


def test_apply_is_idempotent_and_tail_is_chronological(tmp_path):
    s = RealtimeStore.open(tmp_path / "db")
    events = [ev(i, user=i % 3, ts=1000 - i) for i in range(30)]  # written newest first
    assert s.apply(events) == 30
    assert s.apply(events[:10]) == 10      # re-delivery
    assert s.count() == 30
    tail = s.tail(1)
    assert [e.ts_us for e in tail] == sorted(e.ts_us for e in events if e.user_id == 1)
    assert {e.event_id for e in tail} == {e.event_id for e in events if e.user_id == 1}
    assert [e.ts_us for e in s.tail(1, limit=2)] == [e.ts_us for e in tail[-2:]]
    assert all(e.ts_us >= 990 for e in s.tail(1, since_us=990))
    assert len(s.tail(1, since_us=990)) == sum(1 for e in tail if e.ts_us >= 990)
    assert s.tail(99) == []
    s.close()


def test_sweep_removes_only_events_before_the_cutoff(tmp_path):
    s = RealtimeStore.open(tmp_path / "db")
    s.apply([ev(i, user=i % 5, ts=i) for i in range(100)])
    assert s.sweep(cutoff_us=40) == 40
    assert s.count() == 60
    assert min(e.ts_us for u in range(5) for e in s.tail(u)) == 40
    s.close()


def test_secondary_reader_sees_writes_after_catch_up(tmp_path):
    w = RealtimeStore.open(tmp_path / "db")
    w.apply([ev(1, 5, 10)])
    r = RealtimeStore.open_secondary(tmp_path / "db", tmp_path / "sec")
    assert [e.event_id for e in r.tail(5)] == ["e1"]
    w.apply([ev(2, 5, 20)])
    r.catch_up()
    assert [e.event_id for e in r.tail(5)] == ["e1", "e2"]
    r.close()
    w.close()


def test_prometheus_text_has_counters_and_committed_offsets():
    m = ConsumerMetrics(events_stored=12, dlq=3, started_s=1.0)
    m.committed[("engagements", 2)] = 77
    m.add_commit(4.0)
    text = prometheus_text(m.snapshot(now_s=3.0))
    assert "pinrec_stream_events_stored_total 12" in text
    assert "pinrec_stream_dlq_total 3" in text
    # the exposition format writes labels in sorted order
    assert 'pinrec_stream_committed_offset{partition="2",topic="engagements"} 77' in text
    assert "pinrec_stream_events_per_s 6" in text
