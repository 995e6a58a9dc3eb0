"""DagBag tests for dags/: imports, tasks and edges, params schema, pools, parse-time budget,
and the commands each task renders (the contract between the DAG and the `pinrec` CLI)."""
from __future__ import annotations

import copy
import json
import os
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DAGS = REPO / "dags"

EXPECTED_EDGES = {
    "wait_for_landing": {"sequences", "outcomes"},
    "outcomes": set(),
    "validate_params": {"sequences"},
    "sequences": {"items"},
    "items": {"train"},
    "train": {"index"},
    "index": {"score"},
    "score": {"quality_gate"},
    "quality_gate": {"publish"},
    "publish": {"serving_health", "maintenance_day"},
    "maintenance_day": {"maintenance"},
    "maintenance": set(),
    "serving_health": set(),
}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["pinrec_daily"]


def test_no_import_errors_and_expected_dags(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"pinrec_daily"}


def test_each_dag_file_parses_under_one_second(dagbag):
    stats = {s.file: s.duration.total_seconds() for s in dagbag.dagbag_stats}
    assert stats, "DagBag recorded no files"
    for file, seconds in stats.items():
        assert seconds < 1.0, f"{file} took {seconds:.2f}s to parse (budget 1s)"


def test_tasks_and_edges(dag):
    edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert edges == EXPECTED_EDGES


def test_schedule_catchup_pools_and_retries(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    pools = {t.task_id: t.pool for t in dag.tasks}
    assert pools["train"] == pools["score"] == "gpu"
    assert {t for t, p in pools.items() if p == "gpu"} == {"train", "score"}
    for t in dag.tasks:
        assert t.execution_timeout is not None, t.task_id
        assert t.on_failure_callback, t.task_id
    assert dag.get_task("sequences").retries == 2
    assert dag.get_task("sequences").retry_exponential_backoff
    # decisions are not retried: a bad param or a failed gate does not improve by waiting
    assert dag.get_task("quality_gate").retries == 0
    assert dag.get_task("validate_params").retries == 0


def test_params_schema(dag):
    from jobs.gate import validate_params

    p = dag.params
    assert set(p.keys()) == {"arms", "window_days", "variant", "preset",
                             "full_retrain_every_days", "max_recall_drop", "maintenance_weekday",
                             "train_max_seconds", "train_refit", "feature_dim", "model_set",
                             "attribution_days", "gpus"}
    defaults = {k: p[k] for k in p.keys()}
    checked = validate_params(defaults)  # the defaults must pass the gate's own validation
    assert set(checked.arms) == {"balanced", "repin"}
    assert p.get_param("variant").schema["enum"] == ["uc", "oc", "mt_oc"]
    assert p.get_param("arms").schema["type"] == "object"
    from airflow.sdk.exceptions import ParamValidationError

    # Param.resolve keeps the value it resolved: try values on copies, the DAG's defaults stay
    param = lambda k: copy.deepcopy(p.get_param(k))  # noqa: E731

    with pytest.raises(ParamValidationError):
        param("window_days").resolve(0)
    with pytest.raises(ParamValidationError):
        param("variant").resolve("gpt")
    with pytest.raises(ParamValidationError):
        param("arms").resolve({"a": {"repin": -0.5, "other": 1.5}})
    with pytest.raises(ParamValidationError):
        param("arms").resolve({})
    with pytest.raises(ParamValidationError):
        param("model_set").resolve({"t_lim": [8]})
    assert param("model_set").resolve({"t_lim": 8}) == {"t_lim": 8} and p["model_set"] == {}
    assert param("arms").resolve({"a": {"repin": 1}}) == {"a": {"repin": 1}}


class _Vars:
    """The `var` template object with no Variables set: every lookup takes its default."""

    class value:
        @staticmethod
        def get(key, default=None):
            return default


def render(dag, task_id: str, ds: str = "2026-01-07", **param_overrides) -> str:
    task = dag.get_task(task_id)
    params = {k: dag.params[k] for k in dag.params.keys()} | param_overrides
    ctx = {"ds": ds, "ds_nodash": ds.replace("-", ""), "params": params, "var": _Vars}
    return task.render_template(task.bash_command, ctx, jinja_env=dag.get_template_env())


def pinrec_argv(command: str) -> list[str]:
    """The `pinrec ...` invocation inside a rendered command (train wraps it in a guard)."""
    argv = shlex.split(command.split("; else ")[-1].removesuffix("; fi"))
    return argv[next(i for i, a in enumerate(argv) if Path(a).name == "pinrec"):]


def test_rendered_commands(dag):
    from pinrec.cli import GROUPS

    for task_id in ("wait_for_landing", "validate_params", "sequences", "items", "train",
                    "index", "score", "quality_gate", "publish", "maintenance"):
        argv = pinrec_argv(render(dag, task_id))
        assert argv[1] in GROUPS, argv
        assert argv[argv.index("--ds") + 1] == "2026-01-07"
        assert "--lake" in argv
    train = pinrec_argv(render(dag, "train"))
    assert train[train.index("--version") + 1] == "d20260107-mt_oc-small"
    assert train[train.index("--max-seconds") + 1] == "3600"
    assert "--refit" not in train and "--refit" in pinrec_argv(render(dag, "train", train_refit=True))
    score = pinrec_argv(render(dag, "score"))
    assert score[score.index("--model-version") + 1] == "d20260107-mt_oc-small"
    assert "--arms" not in score  # score reads the run's arms file through the layout
    assert score[score.index("--index-version") + 1] == "2026-01-07.d20260107-mt_oc-small"
    pub = pinrec_argv(render(dag, "publish"))
    from jobs.index import index_version

    assert pub[pub.index("--index-version") + 1] == index_version("2026-01-07", "d20260107-mt_oc-small")
    # the commands are the pipeline's, rendered with the run's ds, params and lake
    from pinrec.core.pipeline import STEPS, RunContext

    ctx = RunContext("2026-01-07", "/opt/pinrec/lake", {k: dag.params[k] for k in dag.params.keys()})
    for task_id in ("sequences", "items", "train", "index", "score", "quality_gate", "publish"):
        assert pinrec_argv(render(dag, task_id))[1:] == STEPS[task_id].argv(ctx), task_id
    maint = pinrec_argv(render(dag, "maintenance"))
    assert [maint[i + 1] for i, a in enumerate(maint) if a == "--ds"] == [
        f"2026-01-{d:02d}" for d in range(7, 0, -1)]
    from pinrec.core.contracts import PARTITION_COLUMNS

    tables = maint[maint.index("--tables") + 1].split(",")
    assert sorted(tables) == sorted(t for t, cols in PARTITION_COLUMNS.items() if cols == ["ds"])
    # one width for the items table and the model, or scoring refuses the pair
    items = pinrec_argv(render(dag, "items", feature_dim=256))
    assert items[items.index("--feature-dim") + 1] == "256"
    assert "feature_dim=256" in pinrec_argv(render(dag, "train", feature_dim=256))
    # model_set reaches train as --set flags, quoted, and nothing when it is empty
    train = pinrec_argv(render(dag, "train", model_set={"t_lim": 8, "window_unit": "seconds", "time_age": False}))
    sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
    assert sets == ["feature_dim=32", "t_lim=8", "time_age=false", "window_unit=seconds"]
    from jobs.gate import validate_params

    assert tuple(sets[1:]) == validate_params(
        {k: dag.params[k] for k in dag.params.keys()}
        | {"model_set": {"t_lim": 8, "window_unit": "seconds", "time_age": False}}).model_set
    assert [a for a in pinrec_argv(render(dag, "train")) if a == "--set"] == ["--set"]
    seq = pinrec_argv(render(dag, "sequences", window_days=30))
    assert seq[seq.index("--window-days") + 1] == "30"
    # a run triggered with the old name still gets its window (validate_params notes the rename)
    seq = pinrec_argv(render(dag, "sequences", lookback_days=30))
    assert seq[seq.index("--window-days") + 1] == "30"
    # outcomes measure the day whose attribution window today's landing completes
    out = pinrec_argv(render(dag, "outcomes"))
    assert out[1] == "outcomes" and "--lake" in out
    assert (out[out.index("--ds") + 1], out[out.index("--attribution-days") + 1]) == ("2026-01-06", "1")
    out = pinrec_argv(render(dag, "outcomes", attribution_days=3))
    assert (out[out.index("--ds") + 1], out[out.index("--attribution-days") + 1]) == ("2026-01-04", "3")


def test_train_reuses_an_existing_version_of_the_same_ds(dag, tmp_path):
    """Re-running a ds must not fail on the immutable model version it already wrote."""
    import subprocess

    cmd = render(dag, "train", variant="oc").replace("/opt/pinrec/lake", str(tmp_path))
    vdir = tmp_path / "models" / "d20260107-oc-small"
    vdir.mkdir(parents=True)
    (vdir / "config.json").write_text("{}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert r.returncode == 0 and "reusing it" in r.stdout


def test_params_reach_the_validator_as_json(dag):
    arms = {"odd 'quoted' arm": {"repin": 0.25, "other": 0.75}}
    argv = shlex.split(render(dag, "validate_params", arms=arms))
    sent = json.loads(argv[argv.index("--params-json") + 1])
    assert sent["arms"] == arms
    assert sent["window_days"] == 365


def test_train_mode_full_on_cadence_warm_otherwise(dag):
    from pinrec.core.pipeline import RunContext, days_since_epoch, train_mode

    def warm_start_flags(ds, full_every, variant, preset):
        ctx = RunContext(ds, "/lake", {"full_retrain_every_days": full_every, "variant": variant,
                                       "preset": preset})
        warm = ctx.warm_start_from()
        assert pinrec_argv(render(dag, "train", ds, full_retrain_every_days=full_every)).count(
            "--warm-start-from") == (warm is not None)  # the DAG renders what the pipeline says
        return f"--warm-start-from {warm}" if warm else ""

    full_days = [d for d in range(1, 29) if train_mode(f"2026-02-{d:02d}", 7) == "full"]
    assert len(full_days) == 4 and all(b - a == 7 for a, b in zip(full_days, full_days[1:]))
    ds = f"2026-02-{full_days[0]:02d}"
    assert days_since_epoch(ds) % 7 == 0
    assert train_mode("2026-02-03", 1) == "full"
    # warm days start from the previous day's model of the same kind, named by ds
    warm = next(f"2026-02-{d:02d}" for d in range(2, 29) if d not in full_days)
    prev = int(warm[-2:]) - 1
    assert warm_start_flags(warm, 7, "mt_oc", "small") == f"--warm-start-from d202602{prev:02d}-mt_oc-small"
    assert warm_start_flags(ds, 7, "mt_oc", "small") == ""


def test_failure_callback_says_what_failed_and_how_to_rerun(dag, caplog):
    from types import SimpleNamespace

    task = dag.get_task("score")
    cb = task.on_failure_callback
    cb = cb[0] if isinstance(cb, list) else cb
    ti = SimpleNamespace(task_id="score", try_number=3, log_url="http://ui/log")
    with caplog.at_level("ERROR"):
        cb({"ti": ti, "ds": "2026-01-03", "task": task, "run_id": "backfill__2026-01-04",
            "params": {k: dag.params[k] for k in dag.params.keys()}})
    text = caplog.text
    assert "task score for ds=2026-01-03 (try 3)" in text
    assert "airflow tasks clear pinrec_daily -t '^score$' -s 2026-01-03 -e 2026-01-03" in text
    assert "pinrec score --ds 2026-01-03 --lake" in text  # the task's own command, to run by hand


def test_gpus_param_sets_nproc_of_train_and_score_only(dag):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    assert dag.params["gpus"] == 1
    with pytest.raises(ParamValidationError):
        copy.deepcopy(dag.params.get_param("gpus")).resolve(0)
    for gpus in (1, 4):
        for task_id in ("train", "score"):
            argv = pinrec_argv(render(dag, task_id, gpus=gpus))
            assert argv[argv.index("--nproc") + 1] == str(gpus)
        assert "--nproc" not in pinrec_argv(render(dag, "index", gpus=gpus))
    assert dag.get_task("train").pool == dag.get_task("score").pool == "gpu"
