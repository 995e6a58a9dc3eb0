"""`pinrec gate`: the held-out rule, the decision rule, params validation, the landing check and
publishing, on real (small) Delta lakes; `gate check` runs the real evaluation of real models
trained, indexed and scored by the real jobs, with a non-default feature width (16)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

import numpy as np

from jobs.gate import EXIT_NOT_LANDED, decide, should_publish, validate_params
from jobs.gate_eval import paired_bootstrap, short_candidate_share
from pinrec.cli import main as pinrec
from pinrec.core.errors import UserError
from pinrec.core.contracts import CANDIDATES_SCHEMA, held_out_users, holdout_fraction_for, user_unit_hash
from pinrec.core.layout import (Lake, current, fix_holdout_fraction, publish, published_candidates,
                                read_holdout_fraction)


@pytest.mark.parametrize("cand,serving,ci,passed,why", [
    (0.20, None, None, True, "first model"),
    (0.20, 0.20, (-0.01, 0.01), True, "at or above the floor"),
    (0.19, 0.20, (-0.02, -0.001), True, "at or above the floor"),  # 5 % below: on the floor
    (0.15, 0.20, (-0.07, -0.03), False, "interval excludes zero"),  # 25 % below, not noise
    (0.15, 0.20, (-0.11, 0.01), True, "includes zero (noise)"),  # 25 % below, but noise
    (0.15, 0.20, (-0.07, 0.0), True, "includes zero (noise)"),  # an interval touching 0
])
def test_decide_fails_only_on_a_drop_beyond_the_floor_that_is_not_noise(cand, serving, ci, passed, why):
    d = decide(cand, serving, ci, 500, 0.05)
    assert d.passed is passed and why in d.reason
    assert ("keep serving" in d.reason) is (not passed)
    if serving is not None:
        assert d.difference == pytest.approx(cand - serving)


def test_decide_hard_checks_fail_regardless_and_max_drop_1_turns_the_recall_rule_off():
    assert not decide(0.5, 0.1, (0.3, 0.5), 500, 0.05, ["non-finite weights"]).passed
    assert not decide(None, None, None, 0, 1.0, ["the candidate cannot be evaluated"]).passed
    assert decide(0.0, 0.2, (-0.25, -0.15), 500, 1.0).passed
    d = decide(0.1, None, None, 0, 0.05, no_serving_reason="serving predates the rule")
    assert d.passed and d.reason == "serving predates the rule"


def test_held_out_rule_is_stable_and_independent_of_other_users(tmp_path):
    ids = np.arange(1, 100_001, dtype=np.int64) * 7919
    mask = held_out_users(ids, 0.02)
    assert abs(mask.mean() - 0.02) < 0.0025  # 5 binomial standard deviations
    assert (held_out_users(ids[::3], 0.02) == mask[::3]).all()  # membership: the id alone
    assert (held_out_users(ids[::-1], 0.02) == mask[::-1]).all()
    assert (held_out_users(ids, 0.02) <= held_out_users(ids, 0.05)).all()  # nested shares
    assert (user_unit_hash(ids[:5]) == user_unit_hash(ids[:5].tolist())).all()
    # the share: 2 %, raised to reach 500 users, never above half
    assert holdout_fraction_for(100_000) == 0.02
    assert holdout_fraction_for(10_000) == pytest.approx(0.05)
    assert holdout_fraction_for(400) == 0.5 and holdout_fraction_for(0) == 0.02
    with pytest.raises(ValueError, match="held-out fraction"):
        holdout_fraction_for(1000, 0.9)
    # fixed once per lake: later values do not replace it
    lake = Lake.at(tmp_path / "lake")
    assert read_holdout_fraction(lake) is None
    assert fix_holdout_fraction(lake, 0.25) == 0.25
    assert fix_holdout_fraction(lake, 0.02) == 0.25 and read_holdout_fraction(lake) == 0.25


def test_paired_bootstrap_and_short_candidate_share():
    rng = np.random.default_rng(1)
    a = rng.random(400)
    assert paired_bootstrap(a, a, 500, 0) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_bootstrap(a, a - 0.1, 500, 0)  # a constant shift has no spread
    assert diff == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    b = a + rng.normal(0, 0.2, 400)
    diff, lo, hi = paired_bootstrap(b, a, 2000, 0)
    se = (b - a).std(ddof=1) / 20
    assert lo < diff < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    users = np.array([1, 2, 3, 4])
    cu = np.array([1] * 10 + [1] * 10 + [2] * 10 + [2] * 3 + [3] * 10)
    ca = np.array(["a"] * 10 + ["b"] * 10 + ["a"] * 10 + ["b"] * 3 + ["a"] * 10, dtype=object)
    # user 1 full; 2 short on b; 3 missing b; 4 has nothing
    assert short_candidate_share(cu, ca, users, ["a", "b"], 10) == 0.75
    assert short_candidate_share(cu, ca, users, ["a"], 10) == 0.25


GOOD = {"arms": {"a": {"repin": 0.5, "grid_click": 0.5}}, "window_days": 30,
        "variant": "oc", "preset": "small", "max_recall_drop": 0.1}


@pytest.mark.parametrize("patch,message", [
    ({"arms": {"a": {"repin": 0.5, "grid_click": 0.6}}}, "sum to 1"),
    ({"arms": {"a": {"repin": -0.5, "grid_click": 1.5}}}, "non-negative"),
    ({"arms": {"a": {"like": 1.0}}}, "unknown action 'like'"),
    ({"arms": {}}, "non-empty"),
    ({"arms": "{not json"}, "not valid JSON"),
    ({"window_days": 0}, "window_days"),
    ({"window_days": 366}, "window_days"),
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
    assert p.arms.as_dict() == {"a": {"repin": 0.5, "grid_click": 0.5}}
    assert (p.window_days, p.variant, p.max_recall_drop) == (30, "oc", 0.1)


def test_lookback_days_is_still_accepted_as_window_days_with_a_note():
    notes = []
    old = {k: v for k, v in GOOD.items() if k != "window_days"} | {"lookback_days": 12}
    assert validate_params(old, notes).window_days == 12
    assert len(notes) == 1 and "'lookback_days' is deprecated" in notes[0] and "window_days" in notes[0]
    notes = []  # Airflow fills window_days in: a changed window wins over the old name
    assert validate_params(GOOD | {"lookback_days": 12}, notes).window_days == 30
    assert "ignored" in notes[0]
    with pytest.raises(UserError, match="window_days"):
        validate_params(old | {"lookback_days": 0})


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


def _model(lake: Lake, version: str) -> None:
    d = lake.version_dir("models", version)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")


def _candidates(lake: Lake, ds: str) -> None:
    from pinrec.core.lake import DeltaRsTables

    row = {"ds": ds, "user_id": 1, "arm": "a", "rank": 0, "item_id": 7, "score": 1.0,
           "outcome": "repin", "model_version": "m", "budget": "{}",
           "generated_at": datetime(2026, 1, 2, tzinfo=timezone.utc)}
    DeltaRsTables(lake).replace_partitions(
        "candidates", pa.Table.from_pylist([row], schema=CANDIDATES_SCHEMA), [ds])


def test_publish_refuses_without_candidates_and_check_without_model(tmp_path, capsys):
    lake = Lake.at(tmp_path / "lake")
    _model(lake, "d1")
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
        _model(lake, v)
        _candidates(lake, ds)
    root = str(lake.root)
    assert pinrec(["gate", "publish", "--ds", "2026-01-02", "--lake", root, "--model-version", "d2"]) == 0
    assert pinrec(["gate", "publish", "--ds", "2026-01-01", "--lake", root, "--model-version", "d1"]) == 0
    assert "newer ds=2026-01-02" in capsys.readouterr().out
    assert (current(lake, "models").name, published_candidates(lake)) == ("d2", "2026-01-02")


# ------------------------------------------------------------------------------------------
# The real gate evaluation: models trained, indexed and scored by the real jobs at width 16
# ------------------------------------------------------------------------------------------

DS = "2026-01-20"
WIDTH = "16"  # not the default feature_dim (32): the gate must read each model's own width
TRAIN = ["--variant", "mt_oc", "--max-seconds", "8", "--epochs", "3", "--quiet",
         "--set", f"feature_dim={WIDTH}"]


def _run(*argv) -> None:
    assert pinrec([*argv]) == 0, argv


def _break(lake: Lake, good: str, broken: str) -> None:
    """A checkpoint whose decoder diverged: `good` with every `blocks.*` weight NaN."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst = lake.version_dir("models", broken)
    shutil.copytree(lake.version_dir("models", good), dst)
    state = load_file(str(dst / "model.safetensors"))
    save_file({k: torch.full_like(t, float("nan")) if k.startswith("blocks.") else t
               for k, t in state.items()}, str(dst / "model.safetensors"))


@pytest.fixture(scope="module")
def real_lake(tmp_path_factory):
    """400 users over 20 days: sequences, items at width 16, model v1 trained, indexed, scored."""
    lake = Lake.at(tmp_path_factory.mktemp("gate_real") / "lake")
    root = str(lake.root)
    common = ["--ds", DS, "--lake", root]
    _run("data", "synth", "--users", "400", "--days", "20", "--items", "200", "--start", "2026-01-01",
         "--seed", "5", "--lake", root)
    _run("gate", "params", *common, "--params-json", json.dumps(GOOD))
    _run("sequences", *common)
    _run("items", *common, "--feature-dim", WIDTH)
    _run("train", *common, *TRAIN, "--version", "v1")
    _run("index", *common, "--model-version", "v1", "--no-publish")
    _run("score", *common, "--model-version", "v1", "--index-version", f"{DS}.v1",
         "--arms", str(lake.runs / "params" / DS / "arms.json"))
    return lake


def _gate(lake: Lake, model: str, *extra) -> tuple[int, dict]:
    rc = pinrec(["gate", "check", "--ds", DS, "--lake", str(lake.root), "--candidate-model", model,
                 *extra])
    return rc, json.loads((lake.runs / "gate" / f"{DS}.json").read_text())


def _expected_eval_users(lake: Lake) -> tuple[int, int]:
    """(held-out users, of them those with >= 15 tokens and a pin among the last 10), counted
    from the sequences table directly."""
    from pinrec.core.lake import DeltaRsTables

    from pinrec.core.sequences_store import read_sequences

    seq = read_sequences(DeltaRsTables(lake), DS).to_pylist()
    held = held_out_users([r["user_id"] for r in seq], read_holdout_fraction(lake))
    ok = [h and r["length"] >= 15 and "pin" in r["item_types"][-10:] for h, r in zip(held, seq)]
    return int(held.sum()), int(sum(ok))


def test_gate_check_runs_the_real_evaluation_of_a_width_16_model_on_held_out_users(real_lake, capsys):
    lake = real_lake
    # train fixed the lake's share on its first run (400 users: raised to half, for 500 max)
    assert read_holdout_fraction(lake) == 0.5
    held, evaluable = _expected_eval_users(lake)
    metrics = json.loads((lake.version_dir("models", "v1") / "metrics.json").read_text())
    assert metrics["holdout"] == {"fraction": 0.5, "users": held}  # none of them trained on
    rc, rec = _gate(lake, "v1")
    assert rc == 0 and rec["passed"] and rec["serving_model"] is None, rec
    assert rec["candidate_feature_dim"] == 16 and "width 16" in rec["candidate_features"]
    assert rec["evaluated_users"] == evaluable > 100 and not rec["hard_failures"]
    assert 0 < rec["candidate_recall"] < 1
    assert "PASSED: no serving model yet" in capsys.readouterr().out
    # `pinrec eval --model` evaluates on the same held-out users, at the model's own width
    out = lake.runs / "eval_v1.json"
    _run("eval", "--lake", str(lake.root), "--protocol", "unordered", "--variant", "mt_oc",
         "--model", str(lake.version_dir("models", "v1")), "--device", "cpu", "--json", str(out))
    assert json.loads(out.read_text())["users"] == evaluable


def test_gate_compares_with_the_serving_model_on_the_same_users_without_a_cache(real_lake):
    lake = real_lake
    root = str(lake.root)
    _run("gate", "publish", "--ds", DS, "--lake", root, "--model-version", "v1",
         "--index-version", f"{DS}.v1")
    _, first = _gate(lake, "v1")  # re-running the serving day: compared with itself
    assert first["passed"] and first["difference"] == 0.0 and first["ci_low"] == first["ci_high"] == 0.0
    _run("train", "--ds", DS, "--lake", root, *TRAIN, "--version", "v2", "--seed", "1",
         "--warm-start-from", "v1")
    _run("index", "--ds", DS, "--lake", root, "--model-version", "v2", "--no-publish")
    rc, rec = _gate(lake, "v2")
    assert rec["serving_model"] == "v1" and rec["serving_feature_dim"] == 16
    # the serving model's recall is measured again, on the same users: it equals the figure
    # the gate measured for it as a candidate
    assert rec["serving_recall"] == pytest.approx(first["candidate_recall"], abs=1e-9)
    assert rec["n_users"] == rec["evaluated_users"] == first["evaluated_users"]
    assert rec["difference"] == pytest.approx(rec["candidate_recall"] - rec["serving_recall"])
    assert rec["ci_low"] <= rec["difference"] <= rec["ci_high"]
    again = decide(rec["candidate_recall"], rec["serving_recall"], (rec["ci_low"], rec["ci_high"]),
                   rec["n_users"], 0.05)
    assert (rc == 0) is rec["passed"] is again.passed


def test_gate_fails_a_nan_checkpoint_and_restores_the_serving_index(real_lake, capsys):
    lake = real_lake
    root = str(lake.root)
    if current(lake, "models") is None or current(lake, "models").name != "v1":
        _run("gate", "publish", "--ds", DS, "--lake", root, "--model-version", "v1",
             "--index-version", f"{DS}.v1")
    _break(lake, "v1", "v-nan")
    _run("index", "--ds", DS, "--lake", root, "--model-version", "v-nan")  # publishes it, as ad hoc runs do
    assert current(lake, "index").name == f"{DS}.v-nan"
    rc, rec = _gate(lake, "v-nan", "--max-drop", "1")  # hard checks apply even with the rule off
    assert rc == 1 and not rec["passed"]
    assert any("non-finite weights in 24 tensor(s): blocks.0" in h for h in rec["hard_failures"]), rec
    assert any("cannot be evaluated" in h for h in rec["hard_failures"]), rec
    assert "FAILED: hard check failed" in capsys.readouterr().out
    assert current(lake, "index").name == f"{DS}.v1" and current(lake, "models").name == "v1"


def test_compare_pairs_users_and_falls_back_to_hard_checks_when_serving_is_not_comparable():
    from jobs.gate_eval import Evidence, GateEvalConfig, ModelEval, compare

    cfg = GateEvalConfig(bootstrap=200)
    cand = ModelEval("c", np.array([0.5, 0.2, np.nan, 0.4]), holdout_fraction=0.02)
    serv = ModelEval("s", np.array([0.3, np.nan, 0.1, 0.4]), holdout_fraction=0.02)
    c, s, ci, n, hard, note = compare(Evidence(np.arange(4), cand, serv, 0.02), cfg)
    assert (n, hard, note) == (2, [], None)  # users 0 and 3: both models have a recall
    assert c == pytest.approx(0.45) and s == pytest.approx(0.35) and ci[0] <= 0.1 <= ci[1]
    old = ModelEval("old", np.array([0.9, 0.9, 0.9, 0.9]), holdout_fraction=None)
    *_, n, hard, note = compare(Evidence(np.arange(4), cand, old, 0.02), cfg)
    assert n == 0 and "predates the held-out rule" in note
    broken = ModelEval("gone", error="FileNotFoundError: model.safetensors")
    *_, note = compare(Evidence(np.arange(4), cand, broken, 0.02), cfg)
    assert "cannot be evaluated (FileNotFoundError" in note
    c, s, ci, n, hard, note = compare(Evidence(np.arange(4), cand, None, 0.02), cfg)
    assert s is None and ci is None and note is None and c == pytest.approx(1.1 / 3)


def test_train_keeps_the_held_out_users_out_and_never_warm_starts_across_shares(tmp_path, capsys):
    from jobs.train import trainable_users, warm_start_keeps_holdout

    lake = Lake.at(tmp_path / "lake")
    ids = np.arange(10_000, 30_000, dtype=np.int64)
    users, rec = trainable_users(lake, ids)  # the first training fixes the share: 500 / 20,000
    held = held_out_users(ids, 0.025)
    assert rec == {"fraction": 0.025, "users": int(held.sum())} and read_holdout_fraction(lake) == 0.025
    assert (np.sort(users) == np.flatnonzero(~held)).all()  # every user but the held-out ones
    # later days: fewer users would raise a recomputed share; the fixed one keeps membership
    users2, rec2 = trainable_users(lake, ids[:5_000], requested=0.3)
    assert rec2["fraction"] == 0.025 and (held_out_users(ids[:5_000][users2], 0.025) == 0).all()
    assert "--holdout-fraction 0.3 ignored" in capsys.readouterr().out
    for version, holdout in (("old", None), ("other", {"fraction": 0.01}), ("same", rec)):
        d = lake.version_dir("models", version)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"holdout": holdout}))
    assert warm_start_keeps_holdout(lake, "same", 0.025) and warm_start_keeps_holdout(lake, None, 0.025)
    assert not warm_start_keeps_holdout(lake, "old", 0.025)
    assert not warm_start_keeps_holdout(lake, "other", 0.025)
    assert "training from scratch so that they stay unseen" in capsys.readouterr().out


def test_compare_reports_the_serving_recall_when_the_candidate_cannot_run():
    from jobs.gate_eval import Evidence, GateEvalConfig, ModelEval, compare

    nan_model = ModelEval("c", error="the model's embeddings are not finite (NaN or inf)")
    serv = ModelEval("s", np.array([0.3, 0.1]), holdout_fraction=0.02)
    c, s, ci, n, hard, note = compare(Evidence(np.arange(2), nan_model, serv, 0.02,
                                               ["non-finite weights"]), GateEvalConfig())
    assert c is None and s == pytest.approx(0.2) and ci is None and n == 0
    assert hard == ["non-finite weights"] and note is None
    assert not decide(c, s, ci, n, 0.05, hard, note).passed


def test_a_backfill_of_an_older_day_is_decided_on_the_hard_checks_alone():
    from jobs.gate import backfill_note, decide

    assert backfill_note("2026-01-03", None) is None  # nothing serving yet
    assert backfill_note("2026-01-03", "2026-01-03") is None  # a re-run of the serving day compares
    assert backfill_note("2026-01-04", "2026-01-03") is None  # a newer day compares
    note = backfill_note("2026-01-02", "2026-01-03")
    assert "older than the serving ds=2026-01-03" in note
    assert decide(0.08, None, None, 400, 0.05, (), note).passed
    assert not decide(0.08, None, None, 400, 0.05, ("weights not finite",), note).passed


def test_a_warm_start_never_continues_a_model_its_gate_refused_but_what_kept_serving(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from pinrec.core.layout import gate_record_path
    from jobs.train import warm_start_state
    from pinrec_model.config import PinRecConfig
    from pinrec_model.model import PinRec

    lake = Lake.at(tmp_path / "lake")
    cfg = PinRecConfig(d_model=16, n_layers=1, n_heads=2)
    state = {k: v.contiguous() for k, v in PinRec(cfg).state_dict().items()}
    for version in ("d20260103-uc-small", "d20260104-uc-small", "d20260105-uc-small"):
        d = lake.version_dir("models", version)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model": cfg.to_json()}))
        save_file(state, str(d / "model.safetensors"))
    for ds, version, passed in (("2026-01-03", "d20260103-uc-small", True),
                                ("2026-01-04", "d20260104-uc-small", False)):
        path = gate_record_path(lake, ds)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"candidate_model": version, "passed": passed,
                                    "serving_model": "d20260103-uc-small" if not passed else None,
                                    "reason": "hard check failed: non-finite weights"}))
    name, weights, _ = warm_start_state(lake, "d20260103-uc-small", cfg)  # passed: continued
    assert name == "d20260103-uc-small" and all(torch.equal(weights[k], state[k]) for k in state)
    # refused: continue from what kept serving (it passed its gate), never from the refused one
    name, _, _ = warm_start_state(lake, "d20260104-uc-small", cfg)
    assert name == "d20260103-uc-small"
    out = capsys.readouterr().out
    assert "refused by its gate (hard check failed: non-finite weights)" in out and "d20260103" in out
    from pinrec.core.layout import gate_fallback
    # a backfill of an older day must not continue from a model of a later day: scratch
    path = gate_record_path(lake, "2026-01-02")
    path.write_text(json.dumps({"candidate_model": "d20260102-uc-small", "passed": False,
                                "serving_model": "d20260103-uc-small", "reason": "x"}))
    assert gate_fallback(lake, "d20260102-uc-small") is None
    assert warm_start_state(lake, "d20260102-uc-small", cfg) == (None, None, cfg)
    assert gate_fallback(lake, "d20260103-uc-small") is None  # not refused: no fallback needed
    name, _, _ = warm_start_state(lake, "d20260105-uc-small", cfg)  # never judged (trained by hand)
    assert name == "d20260105-uc-small"
