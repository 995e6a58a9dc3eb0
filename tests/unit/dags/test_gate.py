"""`pinrec gate`: the decision rule, params validation, the landing check and publishing,
on a real (tiny) Delta lake. The eval step is fed through its per-version cache files, which
is exactly what `pinrec eval --json` leaves behind; the real eval runs in the backfill test."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from jobs.gate import EXIT_NOT_LANDED, decide, should_publish, validate_params
from pinrec.cli import UserError, main as pinrec
from pinrec.contracts import CANDIDATES_SCHEMA
from pinrec.layout import Lake, current, publish, published_candidates


@pytest.mark.parametrize("cand,serving,drop,passed", [
    (0.20, None, 0.05, True),     # first model: nothing to protect
    (0.20, 0.20, 0.05, True),
    (0.19, 0.20, 0.05, True),     # 5 % below: exactly on the floor
    (0.189, 0.20, 0.05, False),   # just under the floor
    (0.30, 0.20, 0.0, True),
    (0.199, 0.20, 0.0, False),
    (0.0, 0.20, 1.0, True),     # max_drop 1 turns the gate off
])
def test_decide(cand, serving, drop, passed):
    d = decide(cand, serving, drop)
    assert d.passed is passed
    assert ("keep serving" in d.reason) is (not passed)


GOOD = {"arms": {"a": {"repin": 0.5, "grid_click": 0.5}}, "lookback_days": 30,
        "variant": "oc", "preset": "small", "max_recall_drop": 0.1}


@pytest.mark.parametrize("patch,message", [
    ({"arms": {"a": {"repin": 0.5, "grid_click": 0.6}}}, "sum to 1"),
    ({"arms": {"a": {"repin": -0.5, "grid_click": 1.5}}}, "non-negative"),
    ({"arms": {"a": {"like": 1.0}}}, "unknown action 'like'"),
    ({"arms": {}}, "non-empty"),
    ({"arms": "{not json"}, "not valid JSON"),
    ({"lookback_days": 0}, "lookback_days"),
    ({"variant": "gpt"}, "variant"),
    ({"max_recall_drop": 1.5}, "max_recall_drop"),
    ({"model_set": {"t_limit": 8}}, "t_limit: unknown config field"),
    ({"model_set": {"t_lim": "eight"}}, "t_lim=eight: t_lim takes an int"),
    ({"model_set": {"window_unit": "minutes"}}, "window_unit must be 'steps' or 'seconds'"),
    ({"model_set": {"feature_dim": 4096}}, "set by the 'feature_dim' param"),
    ({"model_set": {"t_lim": [8]}}, "number, string or boolean"),
    ({"model_set": "{t_lim: 8"}, "model_set' is not valid JSON"),
])
def test_validate_params_names_the_bad_input(patch, message):
    with pytest.raises(UserError, match=message):
        validate_params(GOOD | patch)


def test_model_set_becomes_the_set_flags_train_gets():
    p = validate_params(GOOD | {"model_set": {"t_lim": 8, "window_unit": "seconds", "window": 30,
                                              "time_age": False}})
    assert p.model_set == ("t_lim=8", "time_age=false", "window=30", "window_unit=seconds")
    from jobs.train import parse_overrides

    assert parse_overrides(p.model_set) == {"t_lim": 8, "time_age": False, "window": 30,
                                            "window_unit": "seconds"}
    assert validate_params(GOOD).model_set == ()
    assert validate_params(GOOD | {"model_set": '{"t_lim": 6}'}).model_set == ("t_lim=6",)


def test_validate_params_accepts_json_string_arms():
    p = validate_params(GOOD | {"arms": json.dumps(GOOD["arms"])})
    assert p.arms == {"a": {"repin": 0.5, "grid_click": 0.5}}
    assert (p.lookback_days, p.variant, p.max_recall_drop) == (30, "oc", 0.1)


def test_params_command_writes_arms_file_or_exits_2(lake_root, capsys):
    lake = str(lake_root)
    assert pinrec(["gate", "params", "--ds", "2026-01-02", "--lake", lake,
                   "--params-json", json.dumps(GOOD)]) == 0
    arms = json.loads((lake_root / "runs/params/2026-01-02/arms.json").read_text())
    assert arms == GOOD["arms"]
    bad = GOOD | {"arms": {"a": {"repin": 0.7}}}
    assert pinrec(["gate", "params", "--ds", "2026-01-03", "--lake", lake,
                   "--params-json", json.dumps(bad)]) == 2
    assert "arm 'a'" in capsys.readouterr().err
    assert not (lake_root / "runs/params/2026-01-03").exists()


@pytest.fixture(scope="module")
def synth_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate") / "lake"
    assert pinrec(["data", "synth", "--users", "30", "--days", "3", "--items", "100",
                   "--start", "2026-01-01", "--lake", str(root)]) == 0
    return root


def test_landing(synth_lake):
    assert pinrec(["gate", "landing", "--ds", "2026-01-03", "--lake", str(synth_lake)]) == 0
    assert pinrec(["gate", "landing", "--ds", "2026-01-04", "--lake", str(synth_lake)]) == EXIT_NOT_LANDED
    assert pinrec(["gate", "landing", "--ds", "2026-13-01", "--lake", str(synth_lake)]) == 2


def _model(lake: Lake, version: str, recall: float) -> None:
    d = lake.version_dir("models", version)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    cache = lake.runs / "gate" / "eval" / f"{version}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"recall@10": recall, "diversity": 0.5}))


def _candidates(lake: Lake, ds: str) -> None:
    from jobs.lake import LakeTables

    row = {"ds": ds, "user_id": 1, "arm": "a", "rank": 0, "item_id": 7, "score": 1.0,
           "outcome": "repin", "model_version": "m", "budget": "{}",
           "generated_at": datetime(2026, 1, 2, tzinfo=timezone.utc)}
    LakeTables(lake).replace_partitions(
        "candidates", pa.Table.from_pylist([row], schema=CANDIDATES_SCHEMA), [ds])


def test_gate_check_and_publish_keep_previous_on_failure(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    root = str(lake.root)
    _model(lake, "d20260101", 0.20)
    _model(lake, "d20260102", 0.15)  # 25 % worse
    _model(lake, "d20260103", 0.195)  # 2.5 % worse
    for v in ("i1", "i2"):
        lake.version_dir("index", v).mkdir(parents=True)
    for ds in ("2026-01-01", "2026-01-02", "2026-01-03"):
        _candidates(lake, ds)

    # day 1: no serving model, the gate passes and publish points everything at day 1
    assert pinrec(["gate", "check", "--ds", "2026-01-01", "--lake", root,
                   "--candidate-model", "d20260101"]) == 0
    publish(lake, "index", "i1")
    assert pinrec(["gate", "publish", "--ds", "2026-01-01", "--lake", root,
                   "--model-version", "d20260101"]) == 0
    assert current(lake, "models").name == "d20260101"
    assert published_candidates(lake) == "2026-01-01"

    # day 2: `pinrec index` publishes the index it built for the candidate model (i2) ...
    publish(lake, "index", "i2")
    # ... recall drops 25 % > 5 %: exit 1, decision recorded, nothing published, index restored
    assert pinrec(["gate", "check", "--ds", "2026-01-02", "--lake", root,
                   "--candidate-model", "d20260102", "--max-drop", "0.05"]) == 1
    record = json.loads((lake.runs / "gate" / "2026-01-02.json").read_text())
    assert record["passed"] is False and record["serving_model"] == "d20260101"
    assert current(lake, "models").name == "d20260101"
    assert current(lake, "index").name == "i1"
    assert published_candidates(lake) == "2026-01-01"

    # day 3: 2.5 % drop is within 5 %: passes and publishes with an explicit index version
    assert pinrec(["gate", "check", "--ds", "2026-01-03", "--lake", root,
                   "--candidate-model", "d20260103", "--max-drop", "0.05"]) == 0
    assert pinrec(["gate", "publish", "--ds", "2026-01-03", "--lake", root,
                   "--model-version", "d20260103", "--index-version", "i2"]) == 0
    assert (current(lake, "models").name, current(lake, "index").name) == ("d20260103", "i2")
    assert published_candidates(lake) == "2026-01-03"


def test_publish_refuses_without_candidates_and_check_without_model(tmp_path, capsys):
    lake = Lake.at(tmp_path / "lake")
    _model(lake, "d1", 0.1)
    assert pinrec(["gate", "publish", "--ds", "2026-01-05", "--lake", str(lake.root),
                   "--model-version", "d1"]) == 2
    assert "pinrec score --ds 2026-01-05" in capsys.readouterr().err
    assert current(lake, "models") is None
    assert pinrec(["gate", "check", "--ds", "2026-01-05", "--lake", str(lake.root),
                   "--candidate-model", "nope"]) == 2


def test_publish_never_rolls_serving_back_to_an_older_day(tmp_path, capsys):
    assert should_publish("2026-01-02", None)
    assert should_publish("2026-01-02", "2026-01-02")  # re-running the serving day
    assert not should_publish("2026-01-01", "2026-01-02")
    lake = Lake.at(tmp_path / "lake")
    for v, ds in (("d1", "2026-01-01"), ("d2", "2026-01-02")):
        _model(lake, v, 0.1)
        _candidates(lake, ds)
    root = str(lake.root)
    assert pinrec(["gate", "publish", "--ds", "2026-01-02", "--lake", root, "--model-version", "d2"]) == 0
    assert pinrec(["gate", "publish", "--ds", "2026-01-01", "--lake", root, "--model-version", "d1"]) == 0
    assert "newer ds=2026-01-02" in capsys.readouterr().out
    assert (current(lake, "models").name, published_candidates(lake)) == ("d2", "2026-01-02")
