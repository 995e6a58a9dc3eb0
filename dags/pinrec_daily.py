"""pinrec_daily: the batch layer for one day, wiring only.

Every task runs one `pinrec` sub-command with `--ds {{ ds }} --lake <lake>`, the same entry
points ops and tests run by hand; nothing heavy is imported here, so the file parses in
milliseconds.

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

import json
import logging
import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

log = logging.getLogger(__name__)

DAG_ID = "pinrec_daily"
GPU_POOL = "gpu"
DEFAULT_ARMS = {
    # The paper's Figure 3 example budget, and a repin-only arm to compare against.
    "balanced": {"repin": 0.4, "grid_click": 0.4, "outbound_click": 0.1,
                 "long_grid_click": 0.05, "other": 0.05},
    "repin": {"repin": 1.0},
}
# Endpoints come from the environment (or Airflow Variables of the same name, which win).
DEFAULT_BIN = os.environ.get("PINREC_BIN") or str(Path(sys.executable).with_name("pinrec"))
DEFAULT_LAKE = os.environ.get("PINREC_LAKE", "/opt/pinrec/lake")

PINREC = "{{ var.value.get('PINREC_BIN', %s) }}" % repr(DEFAULT_BIN)
LAKE = "{{ var.value.get('PINREC_LAKE', %s) }}" % repr(DEFAULT_LAKE)
COMMON = "--ds {{ ds }} --lake " + LAKE
MODEL_VERSION = "d{{ ds_nodash }}-{{ params.variant }}-{{ params.preset }}"  # one per ds and model kind
INDEX_VERSION = "{{ ds }}." + MODEL_VERSION  # how `pinrec index` names the index it builds
# partitioned by ds; sequences is stored as days + checkpoints + runs (ADR 0002; `sequences`
# itself only in lakes from before it)
DS_TABLES = ("events", "sequences", "sequence_days", "sequence_checkpoints", "sequence_runs",
             "items", "candidates", "served", "arm_outcomes")
ARMS_FILE = LAKE + "/runs/params/{{ ds }}/arms.json"  # written by `pinrec gate params`
# How often the landing sensor looks again. `pinrec rehearse` shortens it: its days last minutes.
LANDING_POKE_S = int(os.environ.get("PINREC_LANDING_POKE_S", "300"))


def days_since_epoch(ds: str) -> int:
    return (datetime.strptime(ds, "%Y-%m-%d") - datetime(1970, 1, 1)).days


def train_mode(ds: str, full_every_days: int) -> str:
    """Full retrain every `full_every_days` days (counted from 1970-01-01), warm start otherwise;
    a function of ds alone, so a backfill picks the same mode as the original run."""
    return "full" if days_since_epoch(ds) % max(1, int(full_every_days)) == 0 else "warm"


def shell_quote(value) -> str:
    # str() first: `tojson` returns markupsafe.Markup, whose `+` would HTML-escape the quotes.
    return shlex.quote(str(value))


def model_set_flags(model_set) -> str:
    """The `model_set` param ({field: value}) as `pinrec train --set KEY=VALUE` flags, quoted
    (the gate's `validate_params` has checked the fields and values before `train` runs). Formatted
    as `jobs.gate.validate_model_set` formats them, not imported from it: this file stays light
    (tests/unit/dags/test_pinrec_daily_dagbag.py holds the two equal)."""
    if isinstance(model_set, str):  # a form may hand the object over as JSON text
        model_set = json.loads(model_set or "{}")
    return " ".join(f"--set {shlex.quote(f'{k}={str(v).lower() if isinstance(v, bool) else v}')}"
                    for k, v in sorted((model_set or {}).items()))


def last_days(ds: str, n: int) -> list[str]:
    """ds and the n-1 days before it, newest first."""
    day = datetime.strptime(ds, "%Y-%m-%d")
    return [(day - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(n)]


def days_before(ds: str, n) -> str:
    return (datetime.strptime(ds, "%Y-%m-%d") - timedelta(days=int(n))).strftime("%Y-%m-%d")


def warm_start_flags(ds: str, full_every_days: int, variant: str, preset: str) -> str:
    """Flags `pinrec train` gets: none on full-retrain days, otherwise a warm start from the
    previous day's model of the same kind, named by ds (never "latest": a backfill of an old
    day must not start from a model that saw later data). `pinrec train` trains from scratch
    when that version does not exist or its quality gate refused it."""
    if train_mode(ds, full_every_days) == "full":
        return ""
    prev = (datetime.strptime(ds, "%Y-%m-%d") - timedelta(days=1)).strftime("%Y%m%d")
    return f"--warm-start-from d{prev}-{variant}-{preset}"


def on_task_failure(context) -> None:
    """Say what failed and how to re-run it, in the task log and the scheduler's."""
    ti = context["ti"]
    ds = context["ds"]
    cmd = getattr(context.get("task"), "bash_command", None)
    log.error(
        "pinrec_daily FAILED: task %s for ds=%s (try %s). Log: %s\n"
        "  re-run from the UI: Grid > run %s > task %s > Clear (downstream included), or\n"
        "  airflow tasks clear %s -t '^%s$' -s %s -e %s --downstream --yes\n"
        "  the same step by hand: %s",
        ti.task_id, ds, ti.try_number, getattr(ti, "log_url", "-"), context.get("run_id"),
        ti.task_id, DAG_ID, ti.task_id, ds, ds, cmd or "(python task)",
    )


def pinrec(sub: str, extra: str = "") -> str:
    return f"{PINREC} {sub} {COMMON} {extra}".rstrip()


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
    "arms": Param(DEFAULT_ARMS, type="object", minProperties=1,
                  # the form rejects negative weights; `validate_params` also checks each sum is 1
                  additionalProperties={"type": "object", "minProperties": 1,
                                        "additionalProperties": {"type": "number", "minimum": 0}},
                  description="Arms: name -> budget over actions (repin, grid_click, "
                              "long_grid_click, outbound_click, other); each budget's weights "
                              "are non-negative and sum to 1."),
    "lookback_days": Param(365, type="integer", minimum=1, maximum=365,
                           description="Days of history in each user's sequence."),
    "variant": Param("mt_oc", type="string", enum=["uc", "oc", "mt_oc"],
                     description="Model variant: unconditioned, outcome-conditioned, or "
                                 "multi-token + outcome-conditioned."),
    "preset": Param("small", type="string", enum=["small", "paper"],
                    description="Model size preset."),
    "full_retrain_every_days": Param(7, type="integer", minimum=1,
                                     description="Full retrain cadence; other days warm-start "
                                                 "from the serving model."),
    "gpus": Param(1, type="integer", minimum=1, maximum=8,
                  description="GPUs of the GPU host that train and score use (`--nproc`: one "
                              "process per GPU; DDP training, users sharded by hash for scoring). "
                              "Both still take the host's one `gpu` pool slot."),
    "train_max_seconds": Param(3600, type="integer", minimum=10,
                               description="Wall-clock cap on one training run."),
    "feature_dim": Param(32, type="integer", minimum=1, maximum=4096,
                         description="Width of the item feature vectors, the same for the items "
                                     "table and the model (hashed attributes collide less when "
                                     "wider: Beauty's best is 256). A change needs a full-retrain "
                                     "day: a warm start across widths is refused."),
    "model_set": Param({}, type="object",
                       additionalProperties={"type": ["string", "number", "boolean"]},
                       description="Model config overrides, field -> value, passed to `pinrec "
                                   "train` as --set (e.g. {\"t_lim\": 8} for trivago; fields in "
                                   "docs/model.md). Checked by validate_params. A change needs a "
                                   "full-retrain day: a warm start across configs is refused."),
    "train_refit": Param(False, type="boolean",
                         description="After early stopping picks the epoch count, train once more "
                                     "on every token, each user's newest engagement included "
                                     "(about twice the training time; +14 % HR@10 on Beauty)."),
    "max_recall_drop": Param(0.05, type="number", minimum=0, maximum=1,
                             description="Quality gate: fail when the new model's unordered "
                                         "recall@10 on the held-out users is more than this "
                                         "fraction below the serving model's and the 95 % "
                                         "paired-bootstrap interval of the difference excludes "
                                         "zero (1 turns the recall rule off; the hard checks "
                                         "always apply)."),
    "attribution_days": Param(1, type="integer", minimum=1, maximum=30,
                              description="Days after an impression whose engagements it earns; "
                                          "the outcomes task measures ds minus this many days."),
    "maintenance_weekday": Param(6, type="integer", minimum=0, maximum=6,
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
    user_defined_macros={"train_mode": train_mode, "warm_start_flags": warm_start_flags,
                         "model_set_flags": model_set_flags,
                         "last_days": last_days, "days_before": days_before},
    user_defined_filters={"shquote": shell_quote},
    tags=["pinrec", "batch"],
    doc_md=__doc__,
) as dag:
    wait_for_landing = BashSensor(
        task_id="wait_for_landing",
        bash_command=pinrec("gate landing"),
        retry_exit_code=99,  # `pinrec gate landing` exits 99 while the partition is missing
        mode="reschedule",
        poke_interval=LANDING_POKE_S,
        timeout=12 * 3600,
    )
    validate_params = BashOperator(
        task_id="validate_params",
        bash_command=pinrec("gate params", "--params-json {{ params | tojson | shquote }}"),
        retries=0,  # a bad parameter does not get better by waiting
    )
    sequences = BashOperator(
        task_id="sequences",
        bash_command=pinrec("sequences", "--window-days {{ params.lookback_days }}"),
    )
    items = BashOperator(task_id="items",
                         bash_command=pinrec("items", "--window-days {{ params.lookback_days }} "
                                                     "--feature-dim {{ params.feature_dim }}"))
    # Model versions are immutable and named by ds, variant and preset, so a re-run of a ds
    # reuses the version it trained (identical downstream tables) instead of failing on it.
    train = BashOperator(
        task_id="train",
        bash_command=(
            f"if [ -f {LAKE}/models/{MODEL_VERSION}/config.json ]; then "
            f"echo 'model {MODEL_VERSION} exists (versions are immutable): reusing it'; else "
            + pinrec("train", "--variant {{ params.variant }} --preset {{ params.preset }} "
                              f"--version {MODEL_VERSION} "
                              "--max-seconds {{ params.train_max_seconds }} --quiet --nproc {{ params.gpus }} "
                              "--set feature_dim={{ params.feature_dim }} "
                              "{{ model_set_flags(params.model_set) }} "
                              "{{ '--refit' if params.train_refit else '' }} "
                              "{{ warm_start_flags(ds, params.full_retrain_every_days, params.variant, params.preset) }}")
            + "; fi"
        ),
        pool=GPU_POOL,
    )
    index = BashOperator(task_id="index", bash_command=pinrec("index", f"--model-version {MODEL_VERSION} --no-publish"))
    score = BashOperator(
        task_id="score",
        # the index of this run by name, not index/CURRENT: runs of a parallel backfill each
        # publish their own index, and a model must be scored against its own item embeddings
        bash_command=pinrec("score", f"--model-version {MODEL_VERSION} --index-version {INDEX_VERSION} "
                                     f"--arms {ARMS_FILE} " "--nproc {{ params.gpus }}"),
        pool=GPU_POOL,
    )
    quality_gate = BashOperator(
        task_id="quality_gate",
        # both models on the lake's held-out users of this ds, each with its own saved config
        bash_command=pinrec("gate check", f"--candidate-model {MODEL_VERSION} "
                                          "--max-drop {{ params.max_recall_drop }}"),
        retries=0,  # a failed gate is a decision, not a transient error
    )
    publish = BashOperator(task_id="publish",
                           bash_command=pinrec("gate publish", f"--model-version {MODEL_VERSION} "
                                                   f"--index-version {INDEX_VERSION}"))

    @task.short_circuit(task_id="maintenance_day", ignore_downstream_trigger_rules=False)
    def maintenance_day(ds=None, params=None) -> bool:
        return datetime.strptime(ds, "%Y-%m-%d").weekday() == int(params["maintenance_weekday"])

    # Weekly: compact the partitions the last 7 runs wrote, then vacuum (safe retention).
    # Only the ds-partitioned tables: `--ds` does not apply to the unpartitioned item_features.
    maintenance = BashOperator(
        task_id="maintenance",
        bash_command=f"{PINREC} maintenance --lake {LAKE} --tables {','.join(DS_TABLES)} "
                     "{% for d in last_days(ds, 7) %}--ds {{ d }} {% endfor %}",
    )

    @task(task_id="serving_health", retries=1)
    def serving_health() -> str:
        """Read the serving API's health after publishing (it reloads CURRENT on its own);
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

    # What the arms earned on ds - attribution_days: today's landing completes its window.
    # Independent of the batch chain: a failed gate does not hold the measurement back.
    outcomes = BashOperator(
        task_id="outcomes",
        bash_command=f"{PINREC} outcomes --ds {{{{ days_before(ds, params.attribution_days) }}}} "
                     f"--lake {LAKE} --attribution-days {{{{ params.attribution_days }}}}",
        # `pinrec outcomes` exits 99 when nothing was served or scored that day (the first days)
        skip_on_exit_code=99,
    )

    wait_for_landing >> outcomes
    [wait_for_landing, validate_params] >> sequences >> items >> train >> index >> score
    score >> quality_gate >> publish
    publish >> serving_health()
    publish >> maintenance_day() >> maintenance
