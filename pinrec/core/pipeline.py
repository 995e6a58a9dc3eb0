"""The daily pipeline, defined once: the ordered steps of one day and the `pinrec` command of each.

    gate landing > gate params > sequences > items > train > index > score > gate check > gate publish
    beside the chain: outcomes (an earlier day), maintenance (weekly)

`dags/pinrec_daily.py` renders each of its tasks' commands from these steps (Airflow adds the
sensor, pools, retries and branching), `pinrec demo` runs DAILY in order as subprocesses, and
`pinrec rehearse` drives the DAG. A new step is added here, once.

A step's command is built from a RunContext: the day, the lake and the run's params (the DAG's
params, with defaults from DEFAULT_PARAMS). Version names come from pinrec.core.layout.

Stdlib only (and pinrec.core.layout / pinrec.core.budgets, which are too): the DAG imports this module at
parse time, and Airflow parses DAG files every few seconds.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from pinrec.core.budgets import DEFAULT_ARMS
from pinrec.core.layout import index_version_name, model_version_name

VARIANTS = ("uc", "oc", "mt_oc")  # the daily model kinds (baselines train by hand only)
PRESETS = ("small", "paper")
FEATURE_DIM = 32  # = pinrec.core.features.FEATURE_DIM (numpy-bound, so not imported here; a test holds them equal)

# What ops may set per run (the DAG's params form); a run's params are these overlaid with its own.
DEFAULT_PARAMS: dict[str, Any] = {
    "arms": DEFAULT_ARMS,
    "window_days": 365,            # `--window-days` of sequences and items
    "variant": "mt_oc",
    "preset": "small",
    "full_retrain_every_days": 7,
    "gpus": 1,
    "train_max_seconds": 3600,
    "feature_dim": FEATURE_DIM,
    "model_set": {},
    "train_refit": False,
    "max_recall_drop": 0.05,
    "attribution_days": 1,
    "maintenance_weekday": 6,
}
RENAMED_PARAMS = {"lookback_days": "window_days"}  # old name -> new name, still accepted
# partitioned by ds, compacted weekly; sequences is stored as days + checkpoints + runs (ADR 0002;
# `sequences` itself only in lakes from before it)
DS_TABLES = ("events", "sequences", "sequence_days", "sequence_checkpoints", "sequence_runs",
             "items", "candidates", "served", "arm_outcomes")


def run_params(given: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """DEFAULT_PARAMS overlaid with `given`, renamed params mapped to their new names ->
    (params, notes for the log). An old name counts only where the new one is at its default
    (Airflow always fills the new one in)."""
    params = {**DEFAULT_PARAMS, **{k: v for k, v in given.items() if k not in RENAMED_PARAMS}}
    notes = []
    for old, new in RENAMED_PARAMS.items():
        if old not in given:
            continue
        if given.get(new, DEFAULT_PARAMS[new]) == DEFAULT_PARAMS[new]:
            params[new] = given[old]
            notes.append(f"param {old!r} is deprecated: it is now {new!r} (the same value, named "
                         f"after `--{new.replace('_', '-')}`); {new}={given[old]!r} taken from it")
        else:
            notes.append(f"param {old!r} is deprecated and ignored: {new!r} is set")
    if isinstance(params["model_set"], str):  # a form may hand the object over as JSON text
        params["model_set"] = json.loads(params["model_set"] or "{}")
    return params, notes


def set_pairs(model_set: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The `model_set` param ({field: value}) as `pinrec train --set` values: KEY=VALUE, sorted,
    booleans as true/false (what `pinrec gate params` checks is exactly what train gets)."""
    return tuple(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in sorted((model_set or {}).items()))


def days_since_epoch(ds: str) -> int:
    return (datetime.strptime(ds, "%Y-%m-%d") - datetime(1970, 1, 1)).days


def days_before(ds: str, n) -> str:
    return (datetime.strptime(ds, "%Y-%m-%d") - timedelta(days=int(n))).strftime("%Y-%m-%d")


def last_days(ds: str, n: int) -> list[str]:
    """ds and the n-1 days before it, newest first."""
    return [days_before(ds, i) for i in range(n)]


def train_mode(ds: str, full_every_days: int) -> str:
    """Full retrain every `full_every_days` days (counted from 1970-01-01), warm start otherwise;
    a function of ds alone, so a backfill picks the same mode as the original run."""
    return "full" if days_since_epoch(ds) % max(1, int(full_every_days)) == 0 else "warm"


@dataclass(frozen=True)
class RunContext:
    """What a step's command is built from: the day, the lake, and the params given to the run
    (the DAG's params; any subset elsewhere: the rest take DEFAULT_PARAMS)."""

    ds: str
    lake: str
    given: Mapping[str, Any]
    train_args: tuple[str, ...] = ()  # extra `pinrec train` flags (the demo fits training to its size)

    @cached_property
    def params(self) -> dict[str, Any]:
        return run_params(self.given)[0]

    @property
    def model_version(self) -> str:
        return model_version_name(self.ds, self.params["variant"], self.params["preset"])

    @property
    def index_version(self) -> str:
        return index_version_name(self.ds, self.model_version)

    def warm_start_from(self) -> str | None:
        """None on full-retrain days; otherwise the previous day's model of the same kind, named
        by ds (never "latest": a backfill of an old day must not start from a model that saw
        later data). `pinrec train` trains from scratch when that version does not exist or
        its quality gate refused it."""
        if train_mode(self.ds, self.params["full_retrain_every_days"]) == "full":
            return None
        return model_version_name(days_before(self.ds, 1), self.params["variant"], self.params["preset"])


def _on_day(c: RunContext) -> list[str]:
    return ["--ds", c.ds, "--lake", c.lake]


def _train(c: RunContext) -> list[str]:
    p = c.params
    warm = c.warm_start_from()
    return ["train", *_on_day(c), "--variant", p["variant"], "--preset", p["preset"],
            "--version", c.model_version, "--max-seconds", str(p["train_max_seconds"]), "--quiet",
            "--nproc", str(p["gpus"]), "--set", f"feature_dim={p['feature_dim']}",
            *[a for kv in set_pairs(p["model_set"]) for a in ("--set", kv)],
            *(["--refit"] if p["train_refit"] else []),
            *(["--warm-start-from", warm] if warm else []), *c.train_args]


@dataclass(frozen=True)
class Step:
    name: str  # the Airflow task id
    argv: Callable[[RunContext], list[str]]  # the `pinrec` arguments
    gpu: bool = False  # takes the GPU host's one pool slot
    # A file whose existence means the step's immutable output is there already: a re-run of
    # the ds reuses it instead of failing on it.
    reuse_if: Callable[[RunContext], str] | None = None


WAIT_FOR_LANDING = Step("wait_for_landing", lambda c: ["gate", "landing", *_on_day(c)])
# the params as given: the gate checks them, says what a renamed one became, writes the arms file
VALIDATE_PARAMS = Step("validate_params", lambda c: ["gate", "params", *_on_day(c),
                                                     "--params-json", json.dumps(dict(c.given), sort_keys=True)])
SEQUENCES = Step("sequences", lambda c: ["sequences", *_on_day(c), "--window-days", str(c.params["window_days"])])
ITEMS = Step("items", lambda c: ["items", *_on_day(c), "--window-days", str(c.params["window_days"]),
                                 "--feature-dim", str(c.params["feature_dim"])])
TRAIN = Step("train", _train, gpu=True,
             reuse_if=lambda c: f"{c.lake}/models/{c.model_version}/config.json")
INDEX = Step("index", lambda c: ["index", *_on_day(c), "--model-version", c.model_version, "--no-publish"])
# The index of this run by name, not the published one: runs of a parallel backfill each build their
# own, and a model is scored against its own item embeddings. The arms: the run's params file.
SCORE = Step("score", lambda c: ["score", *_on_day(c), "--model-version", c.model_version,
                                 "--index-version", c.index_version, "--nproc", str(c.params["gpus"])],
             gpu=True)
QUALITY_GATE = Step("quality_gate", lambda c: ["gate", "check", *_on_day(c), "--candidate-model",
                                               c.model_version, "--max-drop", str(c.params["max_recall_drop"])])
PUBLISH = Step("publish", lambda c: ["gate", "publish", *_on_day(c), "--model-version", c.model_version,
                                     "--index-version", c.index_version])
DAILY = (WAIT_FOR_LANDING, VALIDATE_PARAMS, SEQUENCES, ITEMS, TRAIN, INDEX, SCORE, QUALITY_GATE, PUBLISH)

# Beside the chain. What the arms earned on ds - attribution_days (today's landing completes its
# window); weekly compaction of the partitions the last 7 runs wrote (only the ds-partitioned tables).
OUTCOMES = Step("outcomes", lambda c: ["outcomes", "--ds", days_before(c.ds, c.params["attribution_days"]),
                                       "--lake", c.lake, "--attribution-days", str(c.params["attribution_days"])])
MAINTENANCE = Step("maintenance", lambda c: ["maintenance", "--lake", c.lake, "--tables", ",".join(DS_TABLES),
                                             *[a for d in last_days(c.ds, 7) for a in ("--ds", d)]])
STEPS = {s.name: s for s in (*DAILY, OUTCOMES, MAINTENANCE)}


def shell_command(step: Step, ctx: RunContext, pinrec_bin: str = "pinrec") -> str:
    """The step as one shell command line (what an Airflow task runs), quoted."""
    cmd = shlex.join([pinrec_bin, *step.argv(ctx)])
    if step.reuse_if is None:
        return cmd
    marker = shlex.quote(step.reuse_if(ctx))
    return (f"if [ -f {marker} ]; then echo {shlex.quote(f'{step.name}: {marker} exists (versions are immutable): reusing it')}; "
            f"else {cmd}; fi")
