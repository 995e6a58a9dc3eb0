"""kill -9 of the consumer mid-stream (a small version of `pinrec bench crash`): every produced
event ends up in RocksDB exactly once, by count and by key set."""
from __future__ import annotations

import pytest

from bench.crash_bench import crash_run
from streaming.broker import Tansu


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_dash_nine_twice_loses_and_duplicates_nothing(tmp_path):
    broker = Tansu.start(log=tmp_path / "tansu.log")
    try:
        r = crash_run(broker.bootstrap, tmp_path, events=20_000, kills=2, rate=2000,
                      partitions=4, seed=1, log=lambda *_: None)
    finally:
        broker.stop()
    assert r["produced"] == 20_000 and r["kills"] == 2
    assert r["kills_mid_stream"] >= 1, r["kill_points"]
    assert (r["stored_once"], r["duplicates"], r["missing"], r["unexpected"]) == (20_000, 0, 0, 0)
    assert r["stored_keys"] == 20_000
