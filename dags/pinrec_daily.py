"""pinrec_daily: the batch layer for one day, wiring only.

Every task runs one `pinrec` sub-command with `--ds <ds> --lake <lake>`, the same entry
points ops and tests run by hand. The chain and each command are defined once, in
pinrec/core/pipeline.py (which `pinrec demo` runs too); this file adds Airflow's part: the sensor,
pools, retries, branching. Nothing heavy is imported here, so the file parses in milliseconds.

What `ds` means (once, for the whole project): the UTC calendar day whose events are complete.
The run for ds=D covers the data interval [D 00:00, D+1 00:00) UTC, starts after D+1 00:00,
and every job sees the events with ts < D+1 00:00 UTC. (The DAG uses
CronDataIntervalTimetable, so logical date = data_interval_start = D.)

    wait_for_landing ─┐
    validate_params ──┴> sequences > items > train > index > score > quality_gate > publish
                                                                            publish > serving_health
                                                                            publish > maintenance_day > maintenance
    wait_for_landing > outcomes   (what each arm earned on ds - attribution_days: its window is complete)

A failed quality gate stops the run before `publish`: the previous model, index and
candidates keep serving. train and score share the one-slot `gpu` pool (one slot per GPU
host): the `gpus` param is how many of that host's GPUs each of them uses (`--nproc`).
"""
from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

from pinrec.core import pipeline  # stdlib only: the one definition of the daily steps

log = logging.getLogger(__name__)

DAG_ID = "pinrec_daily"
GPU_POOL = "gpu"
# Endpoints come from the environment (or Airflow Variables of the same name, which win).
DEFAULT_BIN = os.environ.get("PINREC_BIN") or str(Path(sys.executable).with_name("pinrec"))
DEFAULT_LAKE = os.environ.get("PINREC_LAKE", "/opt/pinrec/lake")
# How often the landing sensor looks again. `pinrec rehearse` shortens it: its days last minutes.
LANDING_POKE_S = int(os.environ.get("PINREC_LANDING_POKE_S", "300"))
DEFAULTS = pipeline.DEFAULT_PARAMS


def step_command(name: str, ds: str, params, lake: str, pinrec_bin: str) -> str:
    """The task's shell command, built at render time from the pipeline's step `name` with the
    run's real ds, params and endpoints (see it in the UI under Rendered Template)."""
    given = {k: params[k] for k in params}
    return pipeline.shell_command(pipeline.STEPS[name], pipeline.RunContext(ds, lake, given), pinrec_bin)


def command(name: str) -> str:
    return ("{{ step_command(%r, ds, params, var.value.get('PINREC_LAKE', %r), "
            "var.value.get('PINREC_BIN', %r)) }}" % (name, DEFAULT_LAKE, DEFAULT_BIN))


def on_task_failure(context) -> None:
    """Say what failed and how to re-run it, in the task log and the scheduler's."""
    ti = context["ti"]
    ds = context["ds"]
    step = pipeline.STEPS.get(ti.task_id)
    cmd = "(python task)"
    if step is not None:
        given = dict(context.get("params") or {})
        cmd = pipeline.shell_command(step, pipeline.RunContext(ds, DEFAULT_LAKE, given), DEFAULT_BIN)
    log.error(
        "pinrec_daily FAILED: task %s for ds=%s (try %s). Log: %s\n"
        "  re-run from the UI: Grid > run %s > task %s > Clear (downstream included), or\n"
        "  airflow tasks clear %s -t '^%s$' -s %s -e %s --downstream --yes\n"
        "  the same step by hand: %s",
        ti.task_id, ds, ti.try_number, getattr(ti, "log_url", "-"), context.get("run_id"),
        ti.task_id, DAG_ID, ti.task_id, ds, ds, cmd,
    )


default_args = {
    "owner": "pinrec",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": on_task_failure,
}

params = {
    "arms": Param(DEFAULTS["arms"], type="object", minProperties=1,
                  # the form rejects negative weights; `validate_params` also checks each sum is 1
                  additionalProperties={"type": "object", "minProperties": 1,
                                        "additionalProperties": {"type": "number", "minimum": 0}},
                  description="Arms: name -> budget over actions (repin, grid_click, "
                              "long_grid_click, outbound_click, other); each budget's weights "
                              "are non-negative and sum to 1."),
    "window_days": Param(DEFAULTS["window_days"], type="integer", minimum=1, maximum=365,
                         description="Days of history in each user's sequence (`--window-days` of "
                                     "sequences and items; `lookback_days`, its old name, is still "
                                     "accepted in a run's conf, with a note in validate_params' log)."),
    "variant": Param(DEFAULTS["variant"], type="string", enum=list(pipeline.VARIANTS),
                     description="Model variant: unconditioned, outcome-conditioned, or "
                                 "multi-token + outcome-conditioned."),
    "preset": Param(DEFAULTS["preset"], type="string", enum=list(pipeline.PRESETS),
                    description="Model size preset."),
    "full_retrain_every_days": Param(DEFAULTS["full_retrain_every_days"], type="integer", minimum=1,
                                     description="Full retrain cadence; other days warm-start "
                                                 "from the serving model."),
    "gpus": Param(DEFAULTS["gpus"], type="integer", minimum=1, maximum=8,
                  description="GPUs of the GPU host that train and score use (`--nproc`: one "
                              "process per GPU; DDP training, users sharded by hash for scoring). "
                              "Both still take the host's one `gpu` pool slot."),
    "train_max_seconds": Param(DEFAULTS["train_max_seconds"], type="integer", minimum=10,
                               description="Wall-clock cap on one training run."),
    "feature_dim": Param(DEFAULTS["feature_dim"], type="integer", minimum=1, maximum=4096,
                         description="Width of the item feature vectors, the same for the items "
                                     "table and the model (hashed attributes collide less when "
                                     "wider: Beauty's best is 256). A change needs a full-retrain "
                                     "day: a warm start across widths is refused."),
    "model_set": Param(DEFAULTS["model_set"], type="object",
                       additionalProperties={"type": ["string", "number", "boolean"]},
                       description="Model config overrides, field -> value, passed to `pinrec "
                                   "train` as --set (e.g. {\"t_lim\": 8} for trivago; fields in "
                                   "docs/model.md). Checked by validate_params. A change needs a "
                                   "full-retrain day: a warm start across configs is refused."),
    "train_refit": Param(DEFAULTS["train_refit"], type="boolean",
                         description="After early stopping picks the epoch count, train once more "
                                     "on every token, each user's newest engagement included "
                                     "(about twice the training time; +14 % HR@10 on Beauty)."),
    "max_recall_drop": Param(DEFAULTS["max_recall_drop"], type="number", minimum=0, maximum=1,
                             description="Quality gate: fail when the new model's unordered "
                                         "recall@10 on the held-out users is more than this "
                                         "fraction below the serving model's and the 95 % "
                                         "paired-bootstrap interval of the difference excludes "
                                         "zero (1 turns the recall rule off; the hard checks "
                                         "always apply)."),
    "attribution_days": Param(DEFAULTS["attribution_days"], type="integer", minimum=1, maximum=30,
                              description="Days after an impression whose engagements it earns; "
                                          "the outcomes task measures ds minus this many days."),
    "maintenance_weekday": Param(DEFAULTS["maintenance_weekday"], type="integer", minimum=0, maximum=6,
                                 description="Weekday of ds (0 = Monday) on which compaction "
                                             "and vacuum run."),
}

with DAG(
    dag_id=DAG_ID,
    description="PinRec batch layer: sequences, items, train, index, score, quality gate, publish",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    params=params,
    render_template_as_native_obj=False,
    user_defined_macros={"step_command": step_command},
    tags=["pinrec", "batch"],
    doc_md=__doc__,
) as dag:
    wait_for_landing = BashSensor(
        task_id="wait_for_landing",
        bash_command=command("wait_for_landing"),
        retry_exit_code=99,  # `pinrec gate landing` exits 99 while the partition is missing
        mode="reschedule",
        poke_interval=LANDING_POKE_S,
        timeout=12 * 3600,
    )
    # One BashOperator per step of the chain, its command from the pipeline's definition.
    # Decisions are not retried: a bad parameter or a failed gate does not improve by waiting.
    no_retry = {"validate_params", "quality_gate"}
    chain = [BashOperator(task_id=step.name, bash_command=command(step.name),
                          pool=GPU_POOL if step.gpu else "default_pool",
                          **({"retries": 0} if step.name in no_retry else {}))
             for step in pipeline.DAILY[1:]]
    validate_params, sequences, *_, score, quality_gate, publish = chain

    @task.short_circuit(task_id="maintenance_day", ignore_downstream_trigger_rules=False)
    def maintenance_day(ds=None, params=None) -> bool:
        return datetime.strptime(ds, "%Y-%m-%d").weekday() == int(params["maintenance_weekday"])

    # Weekly: compact the partitions the last 7 runs wrote, then vacuum (safe retention).
    # Only the ds-partitioned tables: `--ds` does not apply to the unpartitioned item_features.
    maintenance = BashOperator(task_id="maintenance", bash_command=command("maintenance"))

    @task(task_id="serving_health", retries=1)
    def serving_health() -> str:
        """Read the serving API's health after publishing (it reloads the release on its own);
        skipped when no PINREC_SERVING_URL is configured (a batch-only deployment)."""
        import json
        import urllib.request

        from airflow.exceptions import AirflowSkipException
        from airflow.sdk import Variable

        url = Variable.get("PINREC_SERVING_URL", default=os.environ.get("PINREC_SERVING_URL"))
        if not url:
            raise AirflowSkipException("PINREC_SERVING_URL is not set: no serving API to check")
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=10) as r:
            body = r.read().decode()
        log.info("serving health: %s", body)
        return json.loads(body).get("status", "unknown") if body.startswith("{") else body

    outcomes = BashOperator(
        task_id="outcomes",
        bash_command=command("outcomes"),
        # `pinrec outcomes` exits 99 when nothing was served or scored that day (the first days)
        skip_on_exit_code=99,
    )

    wait_for_landing >> outcomes
    [wait_for_landing, validate_params] >> sequences
    for upstream, downstream in zip(chain[1:], chain[2:]):  # sequences > ... > publish
        upstream >> downstream
    publish >> serving_health()
    publish >> maintenance_day() >> maintenance
