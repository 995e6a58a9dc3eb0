"""The served message (pinrec/core/served.py), the traffic flag, and the served log's bounded buffer."""
from __future__ import annotations

import json

import pytest

from pinrec.core.contracts import Rejection, cutoff_us
from pinrec.core.experiments import SERVED_SCHEMA, TrafficSplit
from pinrec.core.served import NO_ARM, ServedRecord, encode, first_per_request, parse, rows
from serving.served_log import ServedLog, ServedLogConfig, metrics_text

T = cutoff_us("2026-03-01") + 5_000_000  # 2026-03-02 00:00:05 UTC
FAR = T + 10**12


def response(rid="r1", arm="balanced", items=((7, "repin", "precomputed"), (9, None, "popularity"))):
    return {"request_id": rid, "user_id": 42, "arm": arm, "arm_source": "assigned",
            "candidates_ds": "2026-03-01", "sequences_ds": "2026-02-28", "took_ms": 1.0,
            "items": [{"item_id": i, "score": 0.5, "outcome": o, "source": s} for i, o, s in items]}


def test_encode_parse_round_trip_and_rows():
    key, value = encode(response(), T)
    assert key == b"r1"
    rec = parse(value, FAR)
    assert rec == ServedRecord("r1", 42, "balanced", "assigned", "2026-03-01", "2026-02-28", T,
                               ((7, "repin", "precomputed"), (9, None, "popularity")))
    t = rows([rec])
    assert t.schema == SERVED_SCHEMA
    assert t.column("rank").to_pylist() == [0, 1]
    assert t.column("item_id").to_pylist() == [7, 9]
    assert t.column("ds").to_pylist() == ["2026-03-02"] * 2
    assert t.column("served_at").cast("int64").to_pylist() == [T, T]


def test_no_arm_is_named_and_empty_lists_land_no_rows():
    _, value = encode(response(arm=None, items=()), T)
    rec = parse(value, FAR)
    assert rec.arm == NO_ARM and rec.items == ()
    assert rows([rec]).num_rows == 0


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d.pop("request_id"), "request_id"),
    (lambda d: d.update(user_id="42"), "user_id"),
    (lambda d: d.update(user_id=True), "user_id"),
    (lambda d: d.update(arm_source="named"), "arm_source"),
    (lambda d: d.update(candidates_ds="yesterday"), "candidates_ds"),
    (lambda d: d.update(served_at_us=T // 1000), "served_at_us"),   # milliseconds
    (lambda d: d.update(served_at_us=FAR + 1), "in the future"),
    (lambda d: d.update(item_ids={"item_id": 1}), "must be lists of one length"),
    (lambda d: d["outcomes"].append("repin"), "must be lists of one length"),
    (lambda d: d["sources"].__setitem__(1, "cache"), "sources[1]"),
    (lambda d: d["item_ids"].__setitem__(0, 1.5), "item_ids[0]"),
    (lambda d: d["outcomes"].__setitem__(0, 3), "outcomes[0]"),
])
def test_malformed_records_are_rejected_with_the_field_named(mutate, reason):
    d = json.loads(encode(response(), T)[1])
    mutate(d)
    r = parse(json.dumps(d).encode(), FAR)
    assert isinstance(r, Rejection) and reason in r.reason


@pytest.mark.parametrize("raw,reason", [(None, "empty"), (b"\xff\xfe", "UTF-8"),
                                        (b"{nope", "not JSON"), (b"[1]", "not a JSON object"),
                                        (b"x" * 300_000, "oversized")])
def test_undecodable_messages_are_rejected(raw, reason):
    r = parse(raw, FAR)
    assert isinstance(r, Rejection) and reason in r.reason


def test_first_record_per_request_id_wins():
    a, b = parse(encode(response("a"), T)[1], FAR), parse(encode(response("b"), T)[1], FAR)
    a2 = parse(encode(response("a", items=((1, "repin", "regenerated"),)), T + 1)[1], FAR)
    assert first_per_request([a, b, a2, b]) == [a, b]


def test_traffic_flag_inline_and_file(tmp_path):
    from pinrec.core.errors import UserError
    from serving.serve_cmd import traffic_split

    assert traffic_split("balanced=0.5, repin=0.5", "s1") == TrafficSplit.of(
        {"balanced": 0.5, "repin": 0.5}, "s1")
    f = tmp_path / "arms.json"
    f.write_text(json.dumps({"repin": {"repin": 1.0}, "balanced": {"repin": 1.0},
                             "traffic": {"repin": 0.25, "balanced": 0.75}, "salt": "exp-7"}))
    assert traffic_split(str(f), None) == TrafficSplit.of({"repin": 0.25, "balanced": 0.75}, "exp-7")
    assert traffic_split(str(f), "other").salt == "other"
    assert traffic_split(None, None) is None
    with pytest.raises(UserError, match="sum to 1"):
        traffic_split("a=0.5,b=0.6", None)
    with pytest.raises(UserError, match="not ARM=SHARE"):
        traffic_split("a=half", None)
    with pytest.raises(UserError, match="needs --traffic"):
        traffic_split(None, "s")


def test_arms_file_with_traffic_keys_still_loads_as_arms(tmp_path):
    from pinrec.core.budgets import Arms
    from pinrec.core.contracts import PINTEREST_ACTIONS

    f = tmp_path / "arms.json"
    f.write_text(json.dumps({"repin": {"repin": 1.0}, "traffic": {"repin": 1.0}, "salt": "x"}))
    assert Arms.load(f, PINTEREST_ACTIONS.engagement_actions).as_dict() == {"repin": {"repin": 1.0}}


def test_full_buffer_drops_the_oldest_and_counts_it():
    log = ServedLog(ServedLogConfig(bootstrap="127.0.0.1:1", capacity=3))  # sender not started
    for i in range(5):
        log.log(response(f"r{i}"), T + i)
    assert log.stats() == {"logged": 5, "sent": 0, "dropped": 2, "send_errors": 0, "buffered": 3,
                           "broker_up": 0}
    assert [r["request_id"] for r, _ in log._take()] == ["r2", "r3", "r4"]
    assert "pinrec_served_log_dropped_total 2" in metrics_text(log)


def test_failed_batch_goes_back_in_order_and_overflow_drops_the_oldest():
    log = ServedLog(ServedLogConfig(bootstrap="127.0.0.1:1", capacity=4, batch=3))
    for i in range(4):
        log.log(response(f"r{i}"), T)
    batch = log._take()                                   # r0 r1 r2 in flight, r3 buffered
    log.log(response("r4"), T)
    log.log(response("r5"), T)                            # buffer: r3 r4 r5 (room for 1)
    log._put_back(batch)                                  # only the newest failed one fits
    assert [r["request_id"] for r, _ in log._take()] == ["r2", "r3", "r4"]
    assert log.dropped == 2


def test_assignment_follows_the_split_and_refuses_unpublished_arms():
    from serving.candidates import CandidateStore
    from serving.service import assign_arm, check_traffic

    store = CandidateStore.empty()
    store.arms = {"control": {"repin": 1.0}, "saves": {"repin": 1.0}}
    split = TrafficSplit.of({"control": 0.25, "saves": 0.75}, "s")
    arms = [assign_arm(split, store, u) for u in range(4000)]
    assert arms == [split.arm_of(u) for u in range(4000)]          # stable, by the contract
    assert 900 <= arms.count("control") <= 1100                    # 25 % of 4000 = 1000 ± 3.2 sd
    assert {assign_arm(None, store, u) for u in range(50)} == {"control"}  # no split: default
    check_traffic(split, store)
    with pytest.raises(ValueError, match=r"arms \['repin'\] that the published candidates"):
        check_traffic(TrafficSplit.of({"control": 0.5, "repin": 0.5}), store)
