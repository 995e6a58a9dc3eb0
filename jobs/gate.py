"""`pinrec gate`: the small checks around the daily DAG, one sub-command each.

    landing   exit 0 when the day's `events` partition has landed, 99 while it has not (the
              Airflow sensor pokes again on 99 and fails on anything else)
    params    validate a run's parameters (arms budgets, window, variant, preset) and write
              the arms file `score` reads (pinrec.core.layout: Lake.arms_file); a bad value fails
              here with a message naming it
    check     the quality gate: evaluate the candidate model and the serving one on the same
              held-out users (never trained on) of the same ds, each with its own config, and
              fail (exit 1) on a hard check or when the candidate's unordered recall@10 is more
              than `--max-drop` below the serving one's and the paired 95 % interval excludes 0
    publish   publish this run's model, index and candidates as one release (layout.publish_release)

A failed gate publishes nothing, so the previous model, index and candidates keep serving.
The decision logic is pure (`decide`); the evaluation is jobs/gate_eval.py.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pinrec.core.budgets import Arms
from pinrec.core.cli_args import add_ds_arg, add_lake_arg
from pinrec.core.errors import UserError
from pinrec.core.contracts import HOLDOUT_MIN_USERS
from pinrec.core import pipeline
from pinrec.core.pipeline import DEFAULT_PARAMS, PRESETS, VARIANTS, set_pairs

EXIT_GATE_FAILED = 1
EXIT_NOT_LANDED = 99
RECALL_KEY = "recall@10"


# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunParams:
    """What ops may change per run from the Airflow form, validated before any job runs."""

    arms: Arms
    window_days: int = DEFAULT_PARAMS["window_days"]
    variant: str = DEFAULT_PARAMS["variant"]
    preset: str = DEFAULT_PARAMS["preset"]
    max_recall_drop: float = DEFAULT_PARAMS["max_recall_drop"]
    model_set: tuple = ()  # ("KEY=VALUE", ...): the `--set` flags `pinrec train` gets

    def to_json(self) -> str:
        d = dict(asdict(self), arms=self.arms.as_dict())
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


# Set by their own params (one width for the items table and the model) or by the DAG itself.
MODEL_SET_RESERVED = {"variant": "the 'variant' param", "feature_dim": "the 'feature_dim' param",
                      "n_actions": "the action vocabulary"}


def validate_model_set(raw, variant: str, preset_name: str) -> tuple:
    """The `model_set` param (PinRecConfig field -> value) -> ("KEY=VALUE", ...), checked by
    building the very config `pinrec train` will build, so a bad field or value fails here."""
    from jobs.train import parse_overrides
    from pinrec_model.config import preset

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
    pairs = set_pairs(raw)
    try:
        preset(preset_name, variant=variant, **parse_overrides(pairs))
    except (ValueError, TypeError) as e:
        raise UserError(f"param 'model_set': {e}") from None
    return pairs


def validate_params(raw: dict, notes: list | None = None) -> RunParams:
    """Check a run's parameters; the message names the parameter, the bad value and the fix.
    Defaults and renamed params as pinrec.core.pipeline.run_params gives them; what was renamed
    is appended to `notes`."""
    from pinrec.core.contracts import PINTEREST_ACTIONS

    model_set = raw.get("model_set", {})  # checked below, as given (it may be JSON text)
    try:
        raw, renamed = pipeline.run_params({k: v for k, v in raw.items() if k != "model_set"})
        arms = Arms.parse(raw.get("arms"), PINTEREST_ACTIONS.engagement_actions, "param 'arms'")
    except ValueError as e:
        raise UserError(str(e)) from None
    if notes is not None:
        notes.extend(renamed)
    window = raw["window_days"]
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 365:
        raise UserError(f"param 'window_days' must be an integer in 1..365, got {window!r}")
    variant = raw["variant"]
    if variant not in VARIANTS:
        raise UserError(f"param 'variant' must be one of {list(VARIANTS)}, got {variant!r}")
    preset = raw["preset"]
    if preset not in PRESETS:
        raise UserError(f"param 'preset' must be one of {list(PRESETS)}, got {preset!r}")
    drop = raw["max_recall_drop"]
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
        raise UserError(f"param 'max_recall_drop' must be a fraction in [0, 1] (1 turns the recall "
                        f"rule off), got {drop!r}")
    model_set = validate_model_set(model_set, variant, preset)
    return RunParams(arms, window, variant, preset, float(drop), model_set)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate_recall: float | None
    serving_recall: float | None
    difference: float | None  # candidate - serving, mean over the same held-out users
    ci_low: float | None  # 95 % paired-bootstrap interval of the difference
    ci_high: float | None
    n_users: int
    max_drop: float
    hard_failures: tuple = ()


KEEP_SERVING = "the previous model, index and candidates keep serving"


def decide(candidate: float | None, serving: float | None, ci: tuple | None, n_users: int,
           max_drop: float, hard_failures=(), no_serving_reason: str | None = None) -> GateDecision:
    """Fail on any hard check; otherwise fail only when the candidate's recall is more than
    `max_drop` (relative) below the serving model's AND the 95 % interval of the paired
    difference lies wholly below zero (a drop that is not noise). With nothing to compare with
    (`serving` None: the first run, or `no_serving_reason`) the hard checks alone decide."""
    diff = None if candidate is None or serving is None else candidate - serving
    lo, hi = ci if ci is not None else (None, None)
    d = dict(candidate_recall=candidate, serving_recall=serving, difference=diff, ci_low=lo,
             ci_high=hi, n_users=n_users, max_drop=max_drop, hard_failures=tuple(hard_failures))
    if hard_failures:
        return GateDecision(False, "hard check failed: " + "; ".join(hard_failures) + f": gate "
                            f"failed, {KEEP_SERVING}", **d)
    if serving is None:
        return GateDecision(True, no_serving_reason or "no serving model yet: the first model is "
                                                       "published", **d)
    floor = serving * (1.0 - max_drop)
    stats = (f"candidate recall@10 {candidate:.4f}, serving {serving:.4f}, difference {diff:+.4f} "
             f"(95 % CI {lo:+.4f} .. {hi:+.4f}, {n_users} held-out users), floor {floor:.4f} "
             f"(serving x (1 - {max_drop}))")
    below = candidate + 1e-12 < floor
    if below and hi < 0:
        return GateDecision(False, f"{stats}: below the floor and the interval excludes zero: gate "
                                   f"failed, {KEEP_SERVING}", **d)
    why = "at or above the floor" if not below else "below the floor, but the interval includes zero (noise)"
    return GateDecision(True, f"{stats}: {why}", **d)


def backfill_note(ds: str, serving_ds: str | None) -> str | None:
    """Why the recall rule does not decide a backfill of a day older than the one serving: its
    model is never published over the newer one (`should_publish`), and a model trained on less
    history is expected to trail the newer model; the hard checks still decide."""
    if serving_ds is None or should_publish(ds, serving_ds):
        return None
    return (f"a backfill of ds={ds}, older than the serving ds={serving_ds}: it will not be published "
            f"over the newer day, so its recall is reported, not compared; decided on the hard checks alone")


def should_publish(ds: str, serving_ds: str | None) -> bool:
    """Serving only moves forward in time: re-running today or a newer day publishes,
    backfilling an older day does not (its tables are rebuilt, serving stays on the newer day)."""
    return serving_ds is None or ds >= serving_ds


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
                        help="the run's params as one JSON object (arms, window_days, ...)")

    check = sub.add_parser("check", help="quality gate: candidate vs serving unordered recall@10 "
                                         "on the lake's held-out users, plus hard checks")
    add_ds_arg(check)
    add_lake_arg(check)
    from jobs.gate_eval import GateEvalConfig

    g = GateEvalConfig()
    check.add_argument("--candidate-model", required=True, help="model version under models/")
    check.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # ignored: each
    # model is evaluated with its own saved config (kept so older command lines still parse)
    check.add_argument("--max-drop", type=float, default=0.05,
                       help="fail when candidate recall@10 < serving x (1 - this) and the 95 %% "
                            "interval of the paired difference excludes zero")
    check.add_argument("--window", type=int, default=g.window, help="target tokens per held-out user")
    check.add_argument("--min-history", type=int, default=g.min_history)
    check.add_argument("--max-users", type=int, default=g.max_users, help="held-out users evaluated")
    check.add_argument("--bootstrap", type=int, default=g.bootstrap, help="paired bootstrap resamples")
    check.add_argument("--min-candidates", type=int, default=g.min_candidates,
                       help="a (user, arm) with fewer candidate rows is short")
    check.add_argument("--max-short-share", type=float, default=g.max_short_share,
                       help="fail when more than this share of users has a short candidate list")
    check.add_argument("--device", default=g.device, help="cpu | cuda | auto")

    pub = sub.add_parser("publish", help="publish the run's model, index and candidates")
    add_ds_arg(pub)
    add_lake_arg(pub)
    pub.add_argument("--model-version", required=True)
    pub.add_argument("--index-version", help="index version (default: the published one)")


def run(args: argparse.Namespace) -> int:
    return {"landing": run_landing, "params": run_params,
            "check": run_check, "publish": run_publish}[args.gate_cmd](args)


def run_landing(args) -> int:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.contracts import parse_ds
    from pinrec.core.layout import Lake

    parse_ds(args.ds)
    parts = DeltaRsTables(Lake.at(args.lake)).partitions("events")
    if args.ds in parts:
        from jobs.landing_check import check_events_partition

        if bad := check_events_partition(Lake.at(args.lake), args.ds):
            raise UserError(f"events partition ds={args.ds} landed with files that do not fit the "
                            f"events contract (pinrec/core/contracts.py EVENTS_SCHEMA): {' | '.join(bad)}. "
                            "Fix: land the partition again with the contract's types, then clear "
                            "wait_for_landing (downstream included)")
        print(f"events partition ds={args.ds} has landed")
        return 0
    newest = parts[-1] if parts else "none"
    print(f"events partition ds={args.ds} has not landed yet (newest: {newest}); waiting")
    return EXIT_NOT_LANDED


def run_params(args) -> int:
    from pinrec.core.contracts import parse_ds
    from pinrec.core.layout import Lake

    parse_ds(args.ds)
    try:
        raw = json.loads(args.params_json)
    except json.JSONDecodeError as e:
        raise UserError(f"--params-json is not valid JSON: {e}") from None
    notes: list[str] = []
    params = validate_params(raw, notes)
    for note in notes:
        print(f"note: {note}")
    lake = Lake.at(args.lake)
    out = lake.arms_file(args.ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(params.arms.to_json())
    (lake.params_dir(args.ds) / "params.json").write_text(params.to_json())
    print(f"params ok: {len(params.arms)} arm(s) {list(params.arms)}, window "
          f"{params.window_days} days, {params.variant}/{params.preset}"
          f"{' with ' + ' '.join(params.model_set) if params.model_set else ''}; arms file {out}")
    return 0


def run_check(args) -> int:
    from jobs.gate_eval import GateEvalConfig, compare, run_checks
    from pinrec.core.layout import Lake, current, gate_record_path, published_candidates
    from pinrec_model.training import resolve_device

    if not 0 <= args.max_drop <= 1:
        raise UserError(f"--max-drop must be a fraction in [0, 1] (1 turns the recall rule off), "
                        f"got {args.max_drop}")
    lake = Lake.at(args.lake)
    cand_dir = lake.version_dir("models", args.candidate_model)
    if not (cand_dir / "config.json").exists():
        raise UserError(f"candidate model {args.candidate_model!r} not found at {cand_dir}; "
                        "did `pinrec train` for this ds succeed?")
    cfg = GateEvalConfig(window=args.window, min_history=args.min_history, max_users=args.max_users,
                         bootstrap=args.bootstrap, min_candidates=args.min_candidates,
                         max_short_share=args.max_short_share, device=str(resolve_device(args.device)))
    serving_dir = current(lake, "models")
    ev = run_checks(lake, args.ds, cand_dir, serving_dir, cfg)
    cand_r, serv_r, ci, n, hard, note = compare(ev, cfg)
    backfill = backfill_note(args.ds, published_candidates(lake))
    if backfill and note is None and serv_r is not None:
        note, serv_r, ci = backfill, None, None  # the recall figures stay in the record below
    d = decide(cand_r, serv_r, ci, n, args.max_drop, hard, note)
    record = dict(asdict(d), ds=args.ds, candidate_model=cand_dir.name,
                  serving_model=serving_dir.name if serving_dir else None,
                  held_out_share=ev.lake_fraction, evaluated_users=int(len(ev.users)),
                  candidate_features=ev.candidate.features_from,
                  candidate_feature_dim=ev.candidate.feature_dim,
                  serving_feature_dim=ev.serving.feature_dim if ev.serving else None,
                  serving_recall_not_compared=(float(np.nanmean(ev.serving.recall)) if note and
                                               ev.serving.recall is not None else None),
                  notes=ev.notes)
    out = gate_record_path(lake, args.ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if len(ev.users) < HOLDOUT_MIN_USERS:
        print(f"note: only {len(ev.users)} held-out users could be evaluated (fewer than "
              f"{HOLDOUT_MIN_USERS}); the interval is wide accordingly")
    print(json.dumps(record, sort_keys=True))
    print(("PASSED: " if d.passed else "FAILED: ") + d.reason)
    if not d.passed:
        restore_serving_index(lake)
    return 0 if d.passed else EXIT_GATE_FAILED


def serving_record_path(lake) -> Path:
    return lake.runs / "gate" / "serving.json"


def restore_serving_index(lake) -> None:
    """`pinrec index` publishes the index it built for the candidate model; when the gate
    rejects that model, publish the index published with the serving one again."""
    from pinrec.core.layout import current, publish

    path = serving_record_path(lake)
    if not path.exists():
        return
    index = json.loads(path.read_text()).get("index")
    cur = current(lake, "index")
    if index and (cur is None or cur.name != index) and lake.version_dir("index", index).is_dir():
        publish(lake, "index", index)
        print(f"serving index restored to {index}, the index of the serving model")


def run_publish(args) -> int:
    from pinrec.core.layout import Lake, current, publish_release, published_candidates
    from pinrec.core.lake import DeltaRsTables

    lake = Lake.at(args.lake)
    if args.ds not in DeltaRsTables(lake).partitions("candidates"):
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
    # One step: one release names all three (local: RELEASE.json; remote: a `releases` row).
    publish_release(lake, args.ds, args.model_version, index_version)
    record = {"ds": args.ds, "model": args.model_version, "index": index_version}
    serving_record_path(lake).parent.mkdir(parents=True, exist_ok=True)
    serving_record_path(lake).write_text(json.dumps(record, indent=2) + "\n")
    print(f"published model {args.model_version}, index {index_version}, candidates ds={args.ds}")
    return 0
