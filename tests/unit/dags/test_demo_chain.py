"""`make demo` runs the chain pinrec_daily runs (pinrec.core.pipeline.DAILY): same sub-commands, same
order, same model version naming, so the demo shows what production runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import pinrec.demo as demo

DAG_FILE = Path(__file__).resolve().parents[3] / "dags" / "pinrec_daily.py"


def test_batch_day_runs_the_dag_chain_in_order(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "step", lambda timings, name, argv, logs: calls.append(argv))
    cfg = demo.DemoConfig(out=tmp_path, days=10, start="2026-01-01")
    demo.batch_day(cfg, demo.Timings())
    groups = [a[0] if a[0] != "gate" else f"gate {a[1]}" for a in calls]
    assert groups == ["gate landing", "gate params", "sequences", "items", "train", "index",
                      "score", "gate check", "gate publish"]
    for argv in calls:
        assert argv[argv.index("--ds") + 1] == "2026-01-09" == cfg.ds
    assert cfg.fresh_ds == "2026-01-10"
    train = calls[4]
    assert train[train.index("--version") + 1] == cfg.model_version == "d20260109-mt_oc-small"
    # training fitted to the demo's size, never a warm start; the demo's arms reach the gate
    assert train[train.index("--epochs") + 1] == "4" and "--warm-start-from" not in train
    assert json.loads(calls[1][calls[1].index("--params-json") + 1])["arms"] == demo.ARMS
    # a re-run reuses the immutable model version it trained, as the DAG's train task does
    (cfg.lake / "models" / cfg.model_version).mkdir(parents=True)
    (cfg.lake / "models" / cfg.model_version / "config.json").write_text("{}")
    calls.clear()
    demo.batch_day(cfg, demo.Timings())
    assert [a[0] for a in calls].count("train") == 0 and len(calls) == 8


def test_dag_runs_the_pipelines_steps_in_order(tmp_path_factory):
    """The DAG's chain is pipeline.DAILY (the demo runs the same tuple): same tasks, same order."""
    import os

    from pinrec.core.pipeline import DAILY

    # keep Airflow's home (config, sqlite) out of ~/airflow when this test runs alone
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAG_FILE)).dags["pinrec_daily"]
    order = [t.task_id for t in dag.topological_sort()]
    chain = [t for t in order if t in {s.name for s in DAILY}]
    assert sorted(chain[:2]) == sorted(s.name for s in DAILY[:2])  # landing and params run side by side
    assert chain[2:] == [s.name for s in DAILY[2:]]


@pytest.mark.parametrize("days,ds", [(2, "2026-01-01"), (30, "2026-01-29")])
def test_batch_day_is_the_day_before_the_last(days, ds):
    assert demo.DemoConfig(out=Path("x"), days=days).ds == ds


def test_batch_and_fresh_day_come_from_the_lake(tmp_path):
    from pinrec.cli import main as pinrec

    lake = tmp_path / "out" / "lake"
    assert pinrec(["data", "synth", "--users", "20", "--days", "3", "--items", "200",
                   "--start", "2026-03-01", "--lake", str(lake)]) == 0
    assert demo.last_two_days(lake) == ("2026-03-02", "2026-03-03")
    cfg = demo.load_data(demo.DemoConfig(out=tmp_path / "out", days=99), demo.Timings())
    assert (cfg.ds, cfg.fresh_ds) == ("2026-03-02", "2026-03-03")  # the lake wins over --days
    one_day = tmp_path / "one" / "lake"
    assert pinrec(["data", "synth", "--users", "5", "--days", "1", "--items", "200",
                   "--lake", str(one_day)]) == 0
    with pytest.raises(SystemExit, match="needs two"):
        demo.last_two_days(one_day)
