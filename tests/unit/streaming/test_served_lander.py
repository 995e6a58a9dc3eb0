"""The lander's size/time trigger (pure)."""
from __future__ import annotations

from pathlib import Path

from streaming.served_lander import LanderConfig, Pending, due

CFG = LanderConfig(bootstrap="127.0.0.1:1", lake=Path("/nonexistent"), max_records=3, max_wait_s=2.0)


def test_nothing_polled_is_never_due():
    assert not due(Pending(), CFG, 1e9)


def test_size_trigger_counts_good_and_dead_records():
    p = Pending(records=["a", "b"], offsets={"tp": 2}, since=100.0)
    assert not due(p, CFG, 100.5)
    p.dead.append((b"k", b"v", []))
    assert due(p, CFG, 100.5)


def test_time_trigger_from_the_first_pending_message():
    p = Pending(records=["a"], offsets={"tp": 1}, since=100.0)
    assert not due(p, CFG, 101.99)
    assert due(p, CFG, 102.0)

