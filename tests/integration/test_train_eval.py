"""`pinrec train` and `pinrec eval` end to end on a real Delta lake of synthetic events.

The learning test: a `small` model trained for well under a minute on CPU must beat the
popularity baseline by a clear margin on leave-one-out HR@10 — a test that learning works,
not that the code runs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pinrec.cli import main
from pinrec.core.layout import Lake, current

SMALL = ["--set", "d_model=32", "--set", "d_ff=128", "--set", "emb_dim=32", "--set", "id_dim=32",
         "--set", "max_len=20", "--set", "id_buckets=8192", "--batch-size", "64", "--val-users", "200", "--warmup", "10", "--lr", "3e-3",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake") / "lake"
    assert main(["data", "synth", "--users", "1000", "--days", "20", "--items", "1000", "--seed", "3",
                 "--lake", str(root)]) == 0
    return root


def _eval(lake, tmp_path, *extra) -> dict:
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", "--lake", str(lake), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_small_model_beats_popularity_on_loo(lake, tmp_path):
    pop = _eval(lake, tmp_path, "--variant", "pop", "--protocol", "loo")
    # fixed epochs, no wall-clock cap: the result must not depend on the machine's load. 8, not
    # 4: at 4 the result swung 0.13-0.27 with the random stream (the threshold is ~0.15); at 8
    # seeds 0/1/2 give 0.23/0.17/0.18, and training still takes ~20 s on 2 cores
    # --rules off: this test's fixed small settings, as before the default rules (issue 15). Under
    # the rules (full softmax, dropout 0.5 on this data's 28 events per item) 8 epochs gave UC
    # recall@10 0.076 = popularity's: the rules are for training to convergence, not 8 epochs
    uc = _eval(lake, tmp_path, "--variant", "uc", "--protocol", "loo", "--epochs", "8", "--patience", "8",
               "--rules", "off", *SMALL)
    for r in (pop, uc):
        for key in ("recall@10", "ndcg@10", "recall@10_excl_history", "ndcg@10_excl_history", "diversity"):
            assert key in r
    assert 0 < pop["recall@10"] < 0.2
    # a clear margin, not noise: twice the popularity baseline, on both metrics
    assert uc["recall@10"] >= 2 * pop["recall@10"], (uc["recall@10"], pop["recall@10"])
    assert uc["ndcg@10"] >= 2 * pop["ndcg@10"]
    assert uc["recall@20"] >= uc["recall@10"] >= uc["recall@5"]
    assert (tmp_path / "eval-1.training.png").exists()


@pytest.mark.slow
def test_train_writes_immutable_version_and_publishes(lake):
    args = ["train", "--lake", str(lake), "--variant", "mt_oc", "--epochs", "1", "--max-seconds", "15",
            "--version", "v-test", *SMALL]
    assert main(args) == 0
    vdir = Lake.at(lake).version_dir("models", "v-test")
    assert {p.name for p in vdir.iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    cfg = json.loads((vdir / "config.json").read_text())
    assert cfg["variant"] == "mt_oc" and cfg["model"]["d_model"] == 32
    assert current(Lake.at(lake), "models") is None  # not published without --publish
    # versions are immutable: the same name again is refused with a clear error (exit 2)
    assert main(args) == 2
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--epochs", "1", "--max-seconds", "10",
                 "--version", "v-pub", "--publish", *SMALL]) == 0
    assert current(Lake.at(lake), "models").name == "v-pub"
    # Warm start (the DAG's non-full days): from the serving model, so its first epoch starts
    # where the published model ended, and the lineage is recorded.
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--epochs", "1", "--max-seconds", "10",
                 "--version", "v-warm", "--warm-start-from", "current", *SMALL]) == 0
    metrics = lambda v: json.loads((Lake.at(lake).version_dir("models", v) / "metrics.json").read_text())
    warm, scratch = metrics("v-warm"), metrics("v-pub")
    assert warm["warm_start_from"] == "v-pub" and scratch["warm_start_from"] is None
    assert warm["history"][0]["loss"] < scratch["history"][0]["loss"], (warm["history"], scratch["history"])
    # A warm start across configs is refused with a clear error, before any training.
    assert main(["train", "--lake", str(lake), "--variant", "mt_oc", "--epochs", "1",
                 "--version", "v-bad", "--warm-start-from", "current", *SMALL]) == 2
    assert not Lake.at(lake).version_dir("models", "v-bad").exists()
    # A wider feature hash: the version records it, and its catalog was featurised at that width
    # (serving then needs `pinrec items --feature-dim 64`; ItemFeatures.from_table checks the pair).
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--epochs", "1", "--max-seconds", "5",
                 "--version", "v-wide", *SMALL, "--set", "feature_dim=64"]) == 0
    assert json.loads((Lake.at(lake).version_dir("models", "v-wide") / "config.json").read_text())["model"]["feature_dim"] == 64
    # --refit: the version is the model trained again on every token for the kept epoch count
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--epochs", "2", "--patience", "2",
                 "--version", "v-refit", "--refit", *SMALL]) == 0
    m = metrics("v-refit")
    assert m["refit_epochs"] in (1, 2)
    assert [h["epoch"] for h in m["history"] if h.get("refit")] == list(range(1, m["refit_epochs"] + 1))
    # The day after a gap: the named previous model does not exist -> from scratch, recorded.
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--epochs", "1", "--max-seconds", "5",
                 "--version", "v-gap", "--warm-start-from", "d20250101-uc-small", *SMALL]) == 0
    assert metrics("v-gap")["warm_start_from"] is None


@pytest.mark.slow
def test_eval_unordered_with_a_trained_model_controllability_and_tokens_per_step(lake, tmp_path):
    vdir = Lake.at(lake).version_dir("models", "v-oc")
    assert main(["train", "--lake", str(lake), "--variant", "oc", "--epochs", "1", "--max-seconds", "10",
                 "--version", "v-oc", *SMALL]) == 0
    r = _eval(lake, tmp_path, "--variant", "oc", "--protocol", "unordered", "--model", str(vdir),
              "--window", "6", "--tokens-per-step", "1,4", "--controllability", "--epochs", "1",
              "--max-seconds", "10", *SMALL)
    assert 0 <= r["recall@10"] <= 1 and 0 < r["diversity"] <= 1
    assert 0 <= r["recall@10_distinct"] <= 1 and 0 <= r["uc_recall@10_distinct"] <= 1
    assert r["lift_over_uc_distinct"] == r["recall@10_distinct"] / r["uc_recall@10_distinct"] - 1
    assert set(r["tokens_per_step"]) == {"1", "4"}
    for v in r["tokens_per_step"].values():
        assert v["embeddings"] == 16 and v["latency_s"] > 0
        assert len(v["latency_runs"]) == 7 and min(v["latency_runs"]) <= v["latency_s"] <= max(v["latency_runs"])
    m = r["controllability"]
    assert set(m) <= {"repin", "grid_click", "long_grid_click", "outbound_click", "other"} and len(m) >= 3
    assert all(np.isfinite(v) or np.isnan(v) for row in m.values() for v in row.values())
    assert (tmp_path / f"eval-0.controllability.png").exists()


@pytest.mark.slow
def test_loo_refit_trains_again_for_the_kept_epoch_count(lake, tmp_path):
    """--refit: the early-stopped run picks N epochs, a second model trains N epochs on the
    validation items too (no validation of its own: it would be the test item)."""
    r = _eval(lake, tmp_path, "--variant", "uc", "--protocol", "loo", "--epochs", "3", "--patience", "3",
              "--refit", *SMALL)
    hist = r["training"][0]
    first = [h for h in hist if not h.get("refit")]
    refit = [h for h in hist if h.get("refit")]
    kept = max(first, key=lambda h: (h["val_ndcg@10"], -h["epoch"]))["epoch"]  # the epoch picked on NDCG@10
    assert len(first) == 3 and [h["epoch"] for h in refit] == list(range(1, kept + 1))
    assert all(np.isnan(h["val_recall@10"]) for h in refit)
    assert 0 < r["recall@10"] <= 1 and r["recall@20"] >= r["recall@10"]


def test_eval_needs_events(tmp_path):
    assert main(["eval", "--lake", str(tmp_path / "empty"), "--variant", "pop"]) == 2


def test_print_config_shows_the_rules_config_grouped_and_trains_nothing(lake, tmp_path, capsys):
    """`pinrec train --print-config` and `pinrec eval --print-config` derive the same effective
    config from the same data (the daily DAG gets what the benchmark measures), print it grouped
    and exit without writing a model version."""
    assert main(["train", "--lake", str(lake), "--variant", "uc", "--version", "v-print", "--print-config",
                 "--set", "dropout=0.3", "--device", "cpu"]) == 0
    train_out = capsys.readouterr().out
    assert not Lake.at(lake).version_dir("models", "v-print").exists()
    assert main(["eval", "--lake", str(lake), "--variant", "uc", "--print-config", "--set", "dropout=0.3",
                 "--device", "cpu"]) == 0
    eval_out = capsys.readouterr().out
    grouped = lambda out: out[out.index("effective configuration"):].split("\n\n")[0]
    assert grouped(train_out) == grouped(eval_out)
    for group in ("[item tower]", "[sequence model]", "[head]", "[objective]", "[training]"):
        assert group in train_out
    assert "  dropout = 0.3  # given explicitly (the rule would give" in train_out
    # 1,000 users: 4 steps an epoch at batch 256, so the 2,000-step schedule is capped at 400 epochs,
    # run to its end (patience = the schedule)
    assert "  epochs = 400  # rule: " in train_out and "  patience = 400  # rule: " in train_out
    assert "  d_model = 128  # rule: " in train_out and "  max_len = " in train_out
