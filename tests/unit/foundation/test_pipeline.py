"""pinrec.core.pipeline: the one definition of the daily steps (rendered by the DAG, run by the demo)."""
from __future__ import annotations

import subprocess
import sys

from pinrec.core import pipeline
from pinrec.core.pipeline import DAILY, STEPS, RunContext, run_params, set_pairs, shell_command


def test_the_module_stays_light_for_the_dag_parser():
    heavy = ("numpy", "torch", "pyspark", "pyarrow", "deltalake", "pandas", "faiss")
    code = ("import sys, pinrec.core.pipeline; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_feature_dim_default_is_the_items_default():
    from pinrec.core.features import FEATURE_DIM

    assert pipeline.FEATURE_DIM == FEATURE_DIM == pipeline.DEFAULT_PARAMS["feature_dim"]


def test_daily_chain_order_and_version_names():
    assert [s.name for s in DAILY] == ["wait_for_landing", "validate_params", "sequences", "items", "train",
                                       "index", "score", "quality_gate", "publish"]
    assert {s.name for s in DAILY if s.gpu} == {"train", "score"}
    ctx = RunContext("2026-01-07", "/lake", {"variant": "oc"})
    assert ctx.model_version == "d20260107-oc-small" and ctx.index_version == "2026-01-07.d20260107-oc-small"
    argv = STEPS["score"].argv(ctx)
    assert argv[:5] == ["score", "--ds", "2026-01-07", "--lake", "/lake"] and "--arms" not in argv


def test_renamed_param_and_set_formatting():
    params, notes = run_params({"lookback_days": 30})
    assert params["window_days"] == 30 and "lookback_days" not in params and "deprecated" in notes[0]
    assert run_params({})[0] == pipeline.DEFAULT_PARAMS and run_params({})[1] == []
    assert set_pairs({"time_age": False, "t_lim": 8}) == ("t_lim=8", "time_age=false")
    assert run_params({"model_set": '{"t_lim": 8}'})[0]["model_set"] == {"t_lim": 8}


def test_train_reuses_an_existing_version_in_the_shell_command():
    cmd = shell_command(STEPS["train"], RunContext("2026-01-07", "/my lake", {}), "/bin/pinrec")
    assert cmd.startswith("if [ -f '/my lake/models/d20260107-mt_oc-small/config.json' ]; then echo ")
    assert "else /bin/pinrec train --ds 2026-01-07 --lake '/my lake' " in cmd and cmd.endswith("; fi")
