"""`pinrec gate`: the small checks around the daily DAG, one sub-command each.

    landing   exit 0 when the day's `events` partition has landed, 99 while it has not (the
              Airflow sensor pokes again on 99 and fails on anything else)
    params    validate a run's parameters (arms budgets, lookback, variant, preset) and write
              the arms file `score` reads; a bad value fails here with a message naming it
    check     the quality gate: evaluate the candidate model and the serving one with
              `pinrec eval --protocol unordered` and fail (exit 1) when the candidate's
              unordered recall@10 falls more than `--max-drop` (a fraction) below the serving one's
    publish   point models/CURRENT, index/CURRENT and candidates/CURRENT at this run's outputs

A failed gate publishes nothing, so the previous model, index and candidates keep serving.
The decision logic is pure (`decide`); the edges read the lake and run `pinrec eval`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from pinrec.cli import UserError, add_ds_arg, add_lake_arg

EXIT_GATE_FAILED = 1
EXIT_NOT_LANDED = 99
VARIANTS = ("uc", "oc", "mt_oc")
PRESETS = ("small", "paper")
RECALL_KEY = "recall@10"


# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunParams:
    """What ops may change per run from the Airflow form, validated before any job runs."""

    arms: dict
    lookback_days: int = 365
    variant: str = "mt_oc"
    preset: str = "small"
    max_recall_drop: float = 0.05
    model_set: tuple = ()  # ("KEY=VALUE", ...): the `--set` flags `pinrec train` gets


# Set by their own params (one width for the items table and the model) or by the DAG itself.
MODEL_SET_RESERVED = {"variant": "the 'variant' param", "feature_dim": "the 'feature_dim' param",
                      "n_actions": "the action vocabulary"}


def validate_model_set(raw, variant: str, preset_name: str) -> tuple:
    """The `model_set` param (PinRecConfig field -> value) -> ("KEY=VALUE", ...), checked by
    building the very config `pinrec train` will build, so a bad field or value fails here."""
    from jobs.train import parse_overrides
    from pinrec_model.model import preset

    if isinstance(raw, str):
        try:
            raw = json.loads(raw or "{}")
        except json.JSONDecodeError as e:
            raise UserError(f"param 'model_set' is not valid JSON ({e}); give e.g. "
                            '{"t_lim": 8, "window": 2}') from None
    if not isinstance(raw, dict):
        raise UserError(f"param 'model_set' must be a JSON object of model config fields, e.g. "
                        f'{{"t_lim": 8}}, got {raw!r}')
    for k, v in raw.items():
        if k in MODEL_SET_RESERVED:
            raise UserError(f"param 'model_set': {k!r} is set by {MODEL_SET_RESERVED[k]}, not here")
        if not isinstance(v, (str, int, float, bool)):
            raise UserError(f"param 'model_set': {k!r} must be a number, string or boolean, got {v!r}")
    pairs = tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(raw.items()))
    try:
        preset(preset_name, variant=variant, **parse_overrides(pairs))
    except (ValueError, TypeError) as e:
        raise UserError(f"param 'model_set': {e}") from None
    return pairs


def validate_params(raw: dict) -> RunParams:
    """Check a run's parameters; the message names the parameter, the bad value and the fix."""
    from pinrec.contracts import PINTEREST_ACTIONS, validate_budget

    arms = raw.get("arms")
    if isinstance(arms, str):
        try:
            arms = json.loads(arms)
        except json.JSONDecodeError as e:
            raise UserError(f"param 'arms' is not valid JSON ({e}); give e.g. "
                            '{"default": {"repin": 1.0}}') from None
    if not isinstance(arms, dict) or not arms:
        raise UserError("param 'arms' must be a non-empty JSON object: arm name -> budget, "
                        'e.g. {"default": {"repin": 0.5, "grid_click": 0.5}}')
    checked = {}
    for name, budget in arms.items():
        if not isinstance(budget, dict):
            raise UserError(f"param 'arms': arm {name!r} must map actions to weights, got {budget!r}")
        try:
            checked[name] = validate_budget(budget, PINTEREST_ACTIONS)
        except ValueError as e:
            raise UserError(f"param 'arms': arm {name!r}: {e}") from None
    lookback = raw.get("lookback_days", 365)
    if not isinstance(lookback, int) or isinstance(lookback, bool) or not 1 <= lookback <= 365:
        raise UserError(f"param 'lookback_days' must be an integer in 1..365, got {lookback!r}")
    variant = raw.get("variant", "mt_oc")
    if variant not in VARIANTS:
        raise UserError(f"param 'variant' must be one of {list(VARIANTS)}, got {variant!r}")
    preset = raw.get("preset", "small")
    if preset not in PRESETS:
        raise UserError(f"param 'preset' must be one of {list(PRESETS)}, got {preset!r}")
    drop = raw.get("max_recall_drop", 0.05)
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
        raise UserError(f"param 'max_recall_drop' must be a fraction in [0, 1] (1 turns the gate "
                        f"off), got {drop!r}")
    model_set = validate_model_set(raw.get("model_set", {}), variant, preset)
    return RunParams(checked, lookback, variant, preset, float(drop), model_set)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate_recall: float
    serving_recall: float | None
    max_drop: float
    reason: str


def decide(candidate_recall: float, serving_recall: float | None, max_drop: float) -> GateDecision:
    """Pass unless the candidate is more than `max_drop` (relative) below the serving model.

    With no serving model yet (the first run) the candidate passes: there is nothing to protect.
    """
    if serving_recall is None:
        return GateDecision(True, candidate_recall, None, max_drop,
                            "no serving model yet: the first model is published")
    floor = serving_recall * (1.0 - max_drop)
    if candidate_recall + 1e-12 >= floor:
        return GateDecision(True, candidate_recall, serving_recall, max_drop,
                            f"candidate recall@10 {candidate_recall:.4f} >= floor {floor:.4f} "
                            f"(serving {serving_recall:.4f} x (1 - {max_drop}))")
    return GateDecision(False, candidate_recall, serving_recall, max_drop,
                        f"candidate recall@10 {candidate_recall:.4f} < floor {floor:.4f} "
                        f"(serving {serving_recall:.4f} x (1 - {max_drop})): gate failed, the "
                        "previous model, index and candidates keep serving")


def should_publish(ds: str, serving_ds: str | None) -> bool:
    """Serving only moves forward in time: re-running today or a newer day publishes,
    backfilling an older day does not (its tables are rebuilt, serving stays on the newer day)."""
    return serving_ds is None or ds >= serving_ds


def recall_from_eval_json(path: Path) -> float:
    data = json.loads(Path(path).read_text())
    if RECALL_KEY not in data:
        raise UserError(f"{path}: `pinrec eval` JSON has no {RECALL_KEY!r} key; keys: {sorted(data)}")
    return float(data[RECALL_KEY])


# ------------------------------------------------------------------------------------------
# Edges
# ------------------------------------------------------------------------------------------

def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="gate_cmd", metavar="{landing,params,check,publish}", required=True)
    landing = sub.add_parser("landing", help="exit 0 when the events partition for --ds exists, "
                                             f"{EXIT_NOT_LANDED} while it does not")
    add_ds_arg(landing)
    add_lake_arg(landing)

    params = sub.add_parser("params", help="validate run parameters and write the arms file")
    add_ds_arg(params)
    add_lake_arg(params)
    params.add_argument("--params-json", required=True,
                        help="the run's params as one JSON object (arms, lookback_days, ...)")

    check = sub.add_parser("check", help="quality gate: candidate vs serving unordered recall@10")
    add_ds_arg(check)
    add_lake_arg(check)
    check.add_argument("--candidate-model", required=True, help="model version under models/")
    check.add_argument("--variant", default="mt_oc", choices=VARIANTS)
    check.add_argument("--max-drop", type=float, default=0.05,
                       help="fail when candidate recall@10 < serving x (1 - this)")
    check.add_argument("--eval-arg", action="append", default=[],
                       help="extra argument passed to `pinrec eval` (repeatable)")

    pub = sub.add_parser("publish", help="publish the run's model, index and candidates")
    add_ds_arg(pub)
    add_lake_arg(pub)
    pub.add_argument("--model-version", required=True)
    pub.add_argument("--index-version", help="index version (default: the one index/CURRENT names)")


def run(args: argparse.Namespace) -> int:
    return {"landing": run_landing, "params": run_params,
            "check": run_check, "publish": run_publish}[args.gate_cmd](args)


def arms_path(lake_root: str | Path, ds: str) -> Path:
    """Where `params` writes the run's validated arms, for `pinrec score --arms`."""
    return Path(lake_root).resolve() / "runs" / "params" / ds / "arms.json"


def run_landing(args) -> int:
    from jobs.lake import LakeTables
    from pinrec.contracts import parse_ds
    from pinrec.layout import Lake

    parse_ds(args.ds)
    parts = LakeTables(Lake.at(args.lake)).partitions("events")
    if args.ds in parts:
        print(f"events partition ds={args.ds} has landed")
        return 0
    newest = parts[-1] if parts else "none"
    print(f"events partition ds={args.ds} has not landed yet (newest: {newest}); waiting")
    return EXIT_NOT_LANDED


def run_params(args) -> int:
    from pinrec.contracts import parse_ds

    parse_ds(args.ds)
    try:
        raw = json.loads(args.params_json)
    except json.JSONDecodeError as e:
        raise UserError(f"--params-json is not valid JSON: {e}") from None
    params = validate_params(raw)
    out = arms_path(args.lake, args.ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params.arms, indent=2, sort_keys=True) + "\n")
    (out.parent / "params.json").write_text(json.dumps(asdict(params), indent=2, sort_keys=True) + "\n")
    print(f"params ok: {len(params.arms)} arm(s) {sorted(params.arms)}, lookback "
          f"{params.lookback_days} days, {params.variant}/{params.preset}"
          f"{' with ' + ' '.join(params.model_set) if params.model_set else ''}; arms file {out}")
    return 0


def _evaluate(lake_root: Path, model_dir: Path, variant: str, out: Path, extra: list[str]) -> float:
    """Run `pinrec eval` on held-out users for one model version and return its recall@10."""
    if out.exists():  # versions are immutable, so one evaluation per version is enough
        return recall_from_eval_json(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pinrec.cli", "eval", "--lake", str(lake_root), "--variant",
           variant, "--protocol", "unordered", "--model", str(model_dir), "--json", str(out), *extra]
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise UserError(f"`pinrec eval` exited {rc} for model {model_dir}; re-run the command above")
    return recall_from_eval_json(out)


def run_check(args) -> int:
    from pinrec.layout import Lake, current

    lake = Lake.at(args.lake)
    cand_dir = lake.version_dir("models", args.candidate_model)
    if not cand_dir.is_dir():
        raise UserError(f"candidate model {args.candidate_model!r} not found at {cand_dir}; "
                        "did `pinrec train` for this ds succeed?")
    evals = lake.runs / "gate" / "eval"
    cand = _evaluate(lake.root, cand_dir, args.variant, evals / f"{cand_dir.name}.json", args.eval_arg)
    serving_dir = current(lake, "models")
    serving = None
    if serving_dir is not None and serving_dir.name != cand_dir.name:
        serving = _evaluate(lake.root, serving_dir, args.variant,
                            evals / f"{serving_dir.name}.json", args.eval_arg)
    elif serving_dir is not None:
        serving = cand  # re-running a ds whose candidate already serves
    d = decide(cand, serving, args.max_drop)
    record = dict(asdict(d), ds=args.ds, candidate_model=cand_dir.name,
                  serving_model=serving_dir.name if serving_dir else None)
    out = lake.runs / "gate" / f"{args.ds}.json"
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(("PASSED: " if d.passed else "FAILED: ") + d.reason)
    if not d.passed:
        restore_serving_index(lake)
    return 0 if d.passed else EXIT_GATE_FAILED


def serving_record_path(lake) -> Path:
    return lake.runs / "gate" / "serving.json"


def restore_serving_index(lake) -> None:
    """`pinrec index` publishes the index it built for the candidate model; when the gate
    rejects that model, point index/CURRENT back at the index published with the serving one."""
    from pinrec.layout import current, publish

    path = serving_record_path(lake)
    if not path.exists():
        return
    index = json.loads(path.read_text()).get("index")
    cur = current(lake, "index")
    if index and (cur is None or cur.name != index) and lake.version_dir("index", index).is_dir():
        publish(lake, "index", index)
        print(f"index/CURRENT restored to {index}, the index of the serving model")


def run_publish(args) -> int:
    from pinrec.layout import Lake, current, publish_release, published_candidates
    from jobs.lake import LakeTables

    lake = Lake.at(args.lake)
    if args.ds not in LakeTables(lake).partitions("candidates"):
        raise UserError(f"no candidates partition ds={args.ds}; run `pinrec score --ds {args.ds}` first")
    serving_ds = published_candidates(lake)
    if not should_publish(args.ds, serving_ds):
        # A backfill of past days rebuilds their partitions but must not roll serving back.
        print(f"not publishing ds={args.ds}: serving already uses the newer ds={serving_ds}")
        return 0
    index_version = args.index_version
    if index_version is None:
        cur = current(lake, "index")
        index_version = cur.name if cur else None
    # One step: on a remote lake one `releases` row names all three (pinrec/lake_releases.py).
    publish_release(lake, args.ds, args.model_version, index_version)
    record = {"ds": args.ds, "model": args.model_version, "index": index_version}
    serving_record_path(lake).parent.mkdir(parents=True, exist_ok=True)
    serving_record_path(lake).write_text(json.dumps(record, indent=2) + "\n")
    print(f"published model {args.model_version}, index {index_version}, candidates ds={args.ds}")
    return 0
