"""Pure pieces of the batch layer: no Spark, no JVM; each test asserts values."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from pinrec.core.lake_tables import RetryPolicy, ds_predicate, merge_predicate, with_retry
from jobs.sequences import shift_ds, window_bounds, window_partitions
from jobs.spark import SparkConfig, parse_conf, session_conf


def test_session_conf_small_machine_defaults_and_overrides():
    conf = session_conf(SparkConfig(shuffle_partitions=3, conf=(("spark.sql.shuffle.partitions", "64"),)))
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.shuffle.partitions"] == "64"  # --spark-conf wins over the default
    assert "spark.sql.extensions" not in conf
    with_delta = session_conf(SparkConfig(delta_jars=("/jars/delta-spark.jar", "/jars/delta-storage.jar")))
    assert with_delta["spark.jars"] == "/jars/delta-spark.jar,/jars/delta-storage.jar"
    assert with_delta["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_parse_conf():
    assert parse_conf("spark.executor.memory = 4g") == ("spark.executor.memory", "4g")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_conf("spark.executor.memory")


def test_window_is_365_days_before_the_cutoff():
    start, cutoff = window_bounds("2026-03-01", 365)
    assert cutoff == int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp()) * 1_000_000
    assert start == int(datetime(2025, 3, 2, tzinfo=timezone.utc).timestamp()) * 1_000_000
    parts = window_partitions("2026-03-01", 365)
    assert len(parts) == 365 and parts[0] == "2025-03-02" and parts[-1] == "2026-03-01"
    assert shift_ds("2024-03-01", -1) == "2024-02-29"


def test_partition_predicates_are_sorted_literals_and_refuse_quotes():
    assert ds_predicate(["2026-01-02", "2026-01-01", "2026-01-02"]) == "ds IN ('2026-01-01', '2026-01-02')"
    assert merge_predicate(["user_id", "arm"], ["2026-01-01"]) == (
        "t.ds IN ('2026-01-01') AND t.ds = s.ds AND t.user_id = s.user_id AND t.arm = s.arm")
    with pytest.raises(ValueError):
        ds_predicate(["x') OR (1=1"])
    with pytest.raises(ValueError):
        merge_predicate([], ["2026-01-01"])


def test_with_retry_retries_commit_conflicts_a_bounded_number_of_times():
    from deltalake.exceptions import CommitFailedError

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CommitFailedError("concurrent transaction")
        return "ok"

    policy = RetryPolicy(attempts=4, base_delay_s=0.0)
    assert with_retry(flaky, "test", policy) == "ok" and len(calls) == 3

    def always():
        calls.append(1)
        raise CommitFailedError("concurrent transaction")

    calls.clear()
    with pytest.raises(RuntimeError, match="gave up after 4 attempts"):
        with_retry(always, "test", policy)
    assert len(calls) == 4

    def other():
        raise KeyError("not a conflict")

    with pytest.raises(KeyError):  # only conflicts are retried
        with_retry(other, "test", policy)


def _seq_batch(rows):
    """rows: (user_id, [(ts, event_id), ...]) -> a sequences file batch."""
    from pinrec.core.sequences_arrow import FILE_SCHEMA

    cols = {n: [] for n in FILE_SCHEMA.names}
    for uid, evs in rows:
        cols["user_id"].append(uid)
        cols["event_ids"].append([e for _, e in evs])
        cols["item_ids"].append([int(e[1:]) for _, e in evs])
        cols["item_types"].append(["pin"] * len(evs))
        cols["actions"].append(["repin"] * len(evs))
        cols["surfaces"].append(["homefeed"] * len(evs))
        cols["ts"].append([t for t, _ in evs])
        cols["length"].append(len(evs))
        cols["cutoff_ts"].append(0)
    return pa.RecordBatch.from_pydict(cols, schema=FILE_SCHEMA)


def test_trim_drops_events_that_left_the_window_and_empty_users():
    from pinrec.core.sequences_arrow import trim_and_restamp

    batch = _seq_batch([(1, [(100, "e1"), (200, "e2")]), (2, [(50, "e3"), (300, "e4")]),
                        (3, [(60, "e5")])])
    out = trim_and_restamp(batch, start_us=100, cutoff_us=1000).to_pylist()
    assert [(r["user_id"], r["event_ids"], r["length"]) for r in out] == [
        (1, ["e1", "e2"], 2), (2, ["e4"], 1)]  # user 3 had nothing left
    assert out[0]["cutoff_ts"] == datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc)


def test_rebuild_users_dedups_orders_and_caps_like_the_contract():
    from pinrec.core.sequences_arrow import EVENT_ROW_SCHEMA, rebuild_users

    rows = [  # (user, ts, event_id, item)
        (1, 30, "c", 3), (1, 10, "a", 1), (1, 20, "b", 2), (1, 20, "b", 9),  # replay, bigger item
        (1, 20, "a2", 5), (1, 5, "old", 7),  # tie on ts broken by event_id; one out of window
        (2, 40, "z", 4)]
    t = pa.table({"user_id": [r[0] for r in rows], "ts": [r[1] for r in rows],
                  "event_id": [r[2] for r in rows], "item_id": [r[3] for r in rows],
                  "item_type": ["pin"] * len(rows), "action": ["repin"] * len(rows),
                  "surface": ["homefeed"] * len(rows)}).cast(EVENT_ROW_SCHEMA)
    out = rebuild_users(t, start_us=10, cutoff_us=40, max_len=3).to_pylist()
    assert [(r["user_id"], r["event_ids"], r["item_ids"], r["length"]) for r in out] == [
        (1, ["a2", "b", "c"], [5, 2, 3], 3)]  # user 2's only event is at the cutoff: no row


def test_candidate_rows_ranks_from_one_per_user():
    from jobs.score import FILE_SCHEMA, candidate_rows
    from jobs.score_retrieval import arrays_from_candidates
    from pinrec_model.api import Candidate

    res = [[Candidate(10, 0.9, "repin"), Candidate(11, 0.5, "other")], [Candidate(12, 0.7, "repin")]]
    b = candidate_rows(np.array([7, 8]), arrays_from_candidates(res, 3), "arm1", '{"repin": 1.0}', "m1",
                       1_000_000)
    assert b.schema == FILE_SCHEMA
    assert b.column("user_id").to_pylist() == [7, 7, 8]
    assert b.column("rank").to_pylist() == [1, 2, 1]
    assert b.column("item_id").to_pylist() == [10, 11, 12]
    assert b.column("outcome").to_pylist() == ["repin", "other", "repin"]
    assert b.column("generated_at").to_pylist()[0] == datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)


def _per_user_rows_oracle(user_ids, results, arm, budget_json, model_version, generated_at_us):
    """The per-user row builder the Faiss path used before the one scoring path (issue 14)."""
    from jobs.score import FILE_SCHEMA
    from pinrec.core.contracts import TS_TYPE

    cols = {k: [] for k in ("user_id", "rank", "item_id", "score", "outcome")}
    for u, cands in zip(user_ids, results):
        for r, c in enumerate(cands, start=1):
            for k, v in zip(cols, (int(u), r, c.item_id, c.score, c.outcome)):
                cols[k].append(v)
    n = len(cols["user_id"])
    return pa.RecordBatch.from_arrays([
        pa.array(cols["user_id"], pa.int64()), pa.array([arm] * n, pa.string()),
        pa.array(cols["rank"], pa.int32()), pa.array(cols["item_id"], pa.int64()),
        pa.array(cols["score"], pa.float32()), pa.array(cols["outcome"], pa.string()),
        pa.array([model_version] * n, pa.string()), pa.array([budget_json] * n, pa.string()),
        pa.array(np.full(n, generated_at_us, np.int64), pa.int64()).cast(TS_TYPE)], schema=FILE_SCHEMA)


def test_faiss_candidates_as_arrays_give_the_per_user_rows():
    """Per-user Candidate lists (the Faiss path) through arrays_from_candidates + candidate_rows
    equal the rows the per-user builder made: short and empty lists, several outcomes."""
    from jobs.score import candidate_rows
    from jobs.score_retrieval import arrays_from_candidates
    from pinrec_model.api import Candidate

    rng = np.random.default_rng(3)
    outcomes = ["repin", "grid_click", "outbound_click"]
    n = 6
    results = [[Candidate(int(rng.integers(1, 1 << 62)), float(np.float32(rng.normal())),
                          outcomes[rng.integers(0, 3)]) for _ in range(rng.integers(0, n + 1))]
               for _ in range(40)]
    users = rng.integers(1, 1 << 62, 40)
    args = ("arm", '{"repin": 1.0}', "m1", 1_767_225_600_000_000)
    got = candidate_rows(users, arrays_from_candidates(results, n), *args)
    assert got.num_rows == sum(map(len, results)) > 0
    assert got.equals(_per_user_rows_oracle(users, results, *args))


def test_recall_vs_exact_counts_overlap_with_brute_force():
    from jobs.index import recall_vs_exact

    class Half:
        """A fake index that returns the exact top-10's first 5 plus 5 wrong ids."""

        def __init__(self, emb, ids):
            self.emb, self.ids = emb, ids

        def search(self, q, k):
            top = np.argsort(-(q @ self.emb.T), axis=1)[:, :k]
            got = self.ids[top].copy()
            got[:, 5:] = -1
            return None, got

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(100, 8)).astype(np.float32)
    ids = np.arange(100, 200, dtype=np.int64)
    assert recall_vs_exact(Half(emb, ids), emb, ids, emb[:20], 10) == pytest.approx(0.5)


def test_items_stats_combine_partials_exactly():
    from jobs.items import combine_stats, partial_stats

    ts_type = pa.timestamp("us", tz="UTC")

    def chunk(rows):
        return pa.table({"item_id": pa.array([r[0] for r in rows], pa.int64()),
                         "item_type": [r[1] for r in rows],
                         "ts": pa.array([r[2] for r in rows], ts_type),
                         "query_text": pa.array([r[3] for r in rows], pa.string())})

    a = partial_stats(chunk([(1, "pin", 10, None), (2, "query", 5, "cats"), (1, "pin", 30, None)]))
    b = partial_stats(chunk([(1, "pin", 3, None), (2, "query", 50, "cats")]))
    got = combine_stats([a, b]).to_pylist()
    us = lambda x: datetime.fromtimestamp(x / 1e6, timezone.utc)
    assert [(r["item_id"], r["first_seen"], r["last_seen"], r["engagements"], r["query_text"])
            for r in got] == [(1, us(3), us(30), 3, None), (2, us(5), us(50), 2, "cats")]
    # the items partition carries features at the width asked for (the model's feature_dim)
    from jobs.items import build_items

    side = pa.table({"item_id": pa.array([1], pa.int64()), "attributes": pa.array([[7, 9]], pa.list_(pa.int64())),
                     "content": pa.array([None], pa.list_(pa.float32()))})
    for width in (32, 256):
        items = build_items(combine_stats([a, b]), side, "2026-01-07", width).to_pylist()
        assert [len(r["features"]) for r in items] == [width, width]
        assert all(abs(sum(x * x for x in r["features"]) - 1) < 1e-5 for r in items)  # unit vectors


def test_bench_dispatcher_lists_benchmarks_and_reports_missing_ones(capsys):
    import argparse

    from bench import cli

    p = argparse.ArgumentParser()
    cli.configure(p)
    args = p.parse_args(["sequences", "--sizes", "10,40", "--json", "x.json"])
    assert args.sizes == "10,40" and args.repeat == 3 and args.json == "x.json"
    assert args.bench == "sequences"
    assert "sequences" in cli.BENCHES and "score" in cli.BENCHES
