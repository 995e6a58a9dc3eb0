"""The rehearsal's invariants are pure functions of what the runner reads: each must fail on
the situation it exists to catch."""
from __future__ import annotations

from pinrec.rehearsal import invariants as inv
from pinrec.rehearsal.faults import BadMessages, error_lines

DS = "2026-01-05"
HEALTH = {"candidates_ds": DS, "model_version": "d20260105-mt_oc-small",
          "index_version": f"{DS}.d20260105-mt_oc-small",
          "candidates_model_version": "d20260105-mt_oc-small"}


def test_served_consistency_holds_for_one_ds_and_names_each_mismatch():
    assert inv.served_consistency(HEALTH, DS, {DS}).ok
    stale_index = {**HEALTH, "index_version": "2026-01-04.d20260104-mt_oc-small"}
    c = inv.served_consistency(stale_index, DS, {DS})
    assert not c.ok and "index" in c.detail
    other_model = {**HEALTH, "model_version": "d20260104-mt_oc-small"}
    c = inv.served_consistency(other_model, DS, {DS})
    assert not c.ok and "is not of ds" in c.detail and "scored by" in c.detail
    assert not inv.served_consistency(HEALTH, "2026-01-06", {DS}).ok  # the wrong day serves
    assert not inv.served_consistency(HEALTH, DS, {DS, "2026-01-04"}).ok  # a response disagrees


def test_model_ds_reads_the_dag_version_name():
    assert inv.model_ds("d20260105-mt_oc-small") == DS
    assert inv.model_ds("latest") is None and inv.model_ds(None) is None


def test_answers_need_every_user_answered_and_p99_under_the_bound():
    # nearest rank: of 100 latencies, p99 is the 99th smallest, so two slow ones set it
    probe = [(u, 200, 10, 5.0) for u in range(98)] + [(98, 200, 10, 40.0), (99, 200, 10, 40.0)]
    held = inv.answers(probe, 50)
    assert all(c.ok for c in held)
    assert not inv.answers(probe, 30)[1].ok  # p99 = 40 ms > 30 ms
    assert not inv.answers(probe[:-1] + [(99, 200, 0, 1.0)], 50)[0].ok  # an empty answer
    assert not inv.answers(probe[:-1] + [(99, 503, 0, 1.0)], 50)[0].ok
    assert not inv.answers([], 50)[0].ok  # no sample is not a pass


def test_stored_once_catches_a_missing_and_a_duplicate_event():
    assert all(c.ok for c in inv.stored_once({"a", "b"}, ["a", "b", "c"]))
    missing, dup = inv.stored_once({"a", "b"}, ["a", "c"])
    assert not missing.ok and dup.ok
    missing, dup = inv.stored_once({"a"}, ["a", "a"])
    assert missing.ok and not dup.ok


def test_retention_and_coverage_and_dlq():
    assert inv.retention(100, 100, 3).ok and not inv.retention(99, 100, 3).ok
    assert inv.retention(None, 100, 0).ok  # an empty store holds nothing old
    assert inv.candidates_cover({1, 2}, {"a": {1, 2, 3}, "b": {1, 2}}, DS).ok
    assert not inv.candidates_cover({1, 2}, {"a": {1, 2}, "b": {1}}, DS).ok
    assert not inv.candidates_cover({1}, {}, DS).ok
    assert inv.dead_lettered(["t-0", "t-1"], [b"x t-0", b'{"m":"t-1"}', b"other"], 2).ok
    # copies of one message (a crash loop re-dead-letters it) do not stand in for another
    assert not inv.dead_lettered(["t-0", "t-1"], [b"x t-0", b"x t-0", b"x t-0"], 2).ok


def test_outcome_of_a_published_and_of_a_refused_day():
    assert inv.outcome(True, "success", DS, DS, "2026-01-04", "success").ok
    assert not inv.outcome(True, "failed", "2026-01-04", DS, "2026-01-04", "upstream_failed").ok
    assert inv.outcome(False, "failed", "2026-01-04", DS, "2026-01-04", "upstream_failed").ok
    assert not inv.outcome(False, "success", DS, DS, "2026-01-04", "success").ok


def test_traffic_counts_unanswered_requests():
    ok = [(0.0, 3.0, "ok", 0.0), (1.0, 4.0, "ok", 2.5)]
    c = inv.traffic(ok)
    assert c.ok and "after client retries" in c.detail
    assert not inv.traffic(ok + [(2.0, None, "unanswered", 90.0)]).ok


def test_bad_messages_are_inserted_mid_replay_with_one_oversized_event():
    class Ctx:
        fresh_start_us = 1_767_571_200_000_000
        bad_markers: list = []
        bad_sent = 0

    ctx = Ctx()
    msgs = [(b"k", b"v%d" % i, f"e{i}") for i in range(10)]
    out = BadMessages().messages(ctx, msgs)
    assert len(out) == 14 and out[:5] == msgs[:5] and out[-5:] == msgs[5:]
    sizes = sorted(len(v) for _, v, _ in out[5:9])
    assert sizes[-1] == 2_000_370 and ctx.bad_sent == 4 == len(set(ctx.bad_markers))
    assert all(m.encode() in v[:4096] for m, (_, v, _) in zip(ctx.bad_markers, out[5:9]))


def test_error_lines_keeps_the_error_lines_of_a_log():
    log = "starting\nValueError: column user_id has type string, want int64\nexited 1\n"
    assert "user_id" in error_lines(log)
    assert error_lines("") == "(empty log)"


def test_landing_schema_check_names_each_bad_column():
    import pyarrow as pa

    from jobs.landing_check import schema_problems
    from pinrec.core.contracts import EVENTS_SCHEMA

    good = pa.schema([f for f in EVENTS_SCHEMA if f.name != "ds"])
    assert schema_problems(good, EVENTS_SCHEMA) == []
    bad = good.set(good.get_field_index("user_id"), pa.field("user_id", pa.string()))
    bad = bad.remove(bad.get_field_index("surface"))
    assert schema_problems(bad, EVENTS_SCHEMA) == ["column user_id is string, want int64",
                                                   "column surface is missing (want string)"]


def test_report_counts_expectations_apart_from_invariants(tmp_path):
    from pinrec.rehearsal.report import is_expectation, write_report

    refused_healthy = inv.outcome(True, "failed", "2026-01-04", DS, "2026-01-04", "upstream_failed")
    assert is_expectation(refused_healthy.as_dict(), "none")
    leaked = inv.outcome(False, "success", DS, DS, "2026-01-04", "success")
    assert not leaked.ok and not is_expectation(leaked.as_dict(), "broken_model")
    day = {"ds": DS, "fault": "late_landing", "description": "d", "run_id": "r", "run_state": "failed",
           "seconds": 1.0, "notes": ["n"], "gate": {"passed": False}, "tasks": {},
           "checks": [refused_healthy.as_dict(), inv.retention(1, 2, 1).as_dict()]}
    result = {"config": {"users": 1, "items": 1, "start": DS, "dag_conf": {}, "p99_ms": 500},
              "bootstrap": None, "days": [day], "wall_s": 1.0}
    _, md = write_report(result, tmp_path)
    text = md.read_text()
    assert "1 invariant check(s) broke; 1 expectation(s) not met" in text
    assert "not met (expectation)" in text and "**NO**" in text


def test_error_lines_prefers_the_commands_own_error_in_an_airflow_json_log():
    log = ('{"event":"pinrec gate: error: events partition ds=2026-01-05 landed with files that do '
           'not fit: column user_id is string, want int64","level":"info"}\n'
           '{"event":"pinrec_daily FAILED: task wait_for_landing","level":"error"}\n')
    assert error_lines(log).startswith("pinrec gate: error: events partition")
