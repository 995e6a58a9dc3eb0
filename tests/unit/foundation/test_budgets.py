"""pinrec.core.budgets: one allocation rule and the value types a budget is parsed into, once."""
from __future__ import annotations

import json

import pytest

from pinrec.core.budgets import DEFAULT_ARMS, Arms, Budget, largest_remainder
from pinrec.core.contracts import PINTEREST_ACTIONS

ACTIONS = PINTEREST_ACTIONS.engagement_actions
FIG3 = {"repin": 0.4, "outbound_click": 0.1, "grid_click": 0.4, "long_grid_click": 0.05, "other": 0.05}


def test_largest_remainder_sums_and_is_proportional():
    assert largest_remainder([0.4, 0.1, 0.4, 0.05, 0.05], 20) == [8, 2, 8, 1, 1]
    assert sum(largest_remainder([1, 1, 1], 10)) == 10
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]  # ties go to the lower index
    assert largest_remainder([0.0, 0.0], 5) == [0, 0]
    assert largest_remainder([0.5, 0.5], 0) == [0, 0]
    for n in range(0, 40):
        q = largest_remainder([1 / 3, 1 / 3, 1 / 3], n)
        assert sum(q) == n and max(q) - min(q) <= 1


def test_budget_quotas_are_the_papers_expectation_made_integral():
    b = Budget.parse(FIG3, ACTIONS)
    # B(a)·N where it is whole (paper §4.3.1)
    assert b.quotas(100) == {"repin": 40, "outbound_click": 10, "grid_click": 40, "long_grid_click": 5, "other": 5}
    assert Budget.parse({"repin": 0.5, "grid_click": 0.3, "outbound_click": 0.2}, ACTIONS).quotas(10) == \
        {"repin": 5, "grid_click": 3, "outbound_click": 2}
    thirds = Budget.parse({"repin": 1 / 3, "grid_click": 1 / 3, "other": 1 / 3}, ACTIONS)
    assert sum(thirds.quotas(10).values()) == 10
    # zero weights get no slots and are not listed; the budget's order is kept
    z = Budget.parse({"grid_click": 0.0, "other": 0.25, "repin": 0.75}, ACTIONS)
    assert list(z.quotas(8)) == ["other", "repin"] and z.quotas(8) == {"other": 2, "repin": 6}


def test_budget_parse_names_the_bad_input():
    assert Budget.parse({"repin": 0.5, "grid_click": 0.5}, ACTIONS).as_dict() == {"repin": 0.5, "grid_click": 0.5}
    for raw, message in [({"repin": 0.5}, "sum to 1"), ({"repin": 1.5, "grid_click": -0.5}, "non-negative"),
                         ({"search": 1.0}, "unknown action 'search'"), ({}, "empty"),
                         ({"repin": True}, "non-negative number"), ([1], "must map actions")]:
        with pytest.raises(ValueError, match=message):
            Budget.parse(raw, ACTIONS, "arm 'x'")


def test_budget_round_trips_through_the_candidates_json():
    b = Budget.parse(FIG3, ACTIONS)
    assert json.loads(b.to_json()) == FIG3
    assert Budget.parse(json.loads(b.to_json()), ACTIONS).quotas(50) == b.quotas(50)
    assert not Budget(()) and b


def test_arms_parse_sorts_skips_traffic_keys_and_names_the_arm(tmp_path):
    arms = Arms.parse({"z": {"repin": 1.0}, "a": FIG3, "traffic": {"a": 1.0}, "salt": "s"}, ACTIONS)
    assert list(arms) == ["a", "z"] and len(arms) == 2 and arms["z"].as_dict() == {"repin": 1.0}
    assert Arms.parse(json.dumps({"a": FIG3}), ACTIONS).as_dict() == {"a": FIG3}
    with pytest.raises(ValueError, match="arm 'x'.*unknown action 'search'"):
        Arms.parse({"x": {"search": 1.0}}, ACTIONS)
    for raw in ({}, [1, 2], {"traffic": {"a": 1}}):
        with pytest.raises(ValueError, match="non-empty JSON object"):
            Arms.parse(raw, ACTIONS)
    with pytest.raises(ValueError, match="not valid JSON"):
        Arms.parse("{nope", ACTIONS)
    f = tmp_path / "arms.json"
    f.write_text(arms.to_json())
    assert Arms.load(f, ACTIONS).as_dict() == arms.as_dict()  # the file lists actions sorted
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Arms.load(tmp_path / "missing.json", ACTIONS)


def test_default_arms_are_valid_and_hold_the_closed_loops_pair():
    arms = Arms.parse(DEFAULT_ARMS, ACTIONS)
    assert list(arms) == ["balanced", "repin"]  # the demo's closed loop compares these two
    assert arms["balanced"].as_dict() == FIG3
