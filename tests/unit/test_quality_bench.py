"""`pinrec bench quality`'s summary: runs found by name (--from-runs), ratios to the reference
measured in the same suite, and bars judged on PinRec's variants only (never on the baselines)."""
import json

import pytest

from bench.quality_bench import runs_in, summarise


def _pinrec(path, r10, n10):
    path.write_text(json.dumps({"recall@10": r10, "ndcg@10": n10, "seconds": 10.0,
                                "per_seed": [{"epochs_run": 3, "best_epoch": 2}]}))


def _reference(path, r10, n10):
    metrics = {"HR@10": r10, "NDCG@10": n10, "HR@20": r10, "NDCG@20": n10}
    path.write_text(json.dumps({"test": {"all": metrics, "excl": metrics}, "epochs_run": 9, "best_epoch": 5,
                                "total_wall_s": 10.0, "stopped": "early_stop"}))


def test_from_runs_summarises_by_name_and_judges_pinrec_variants_only(tmp_path):
    for s, (uc, sas, ref) in enumerate([(0.105, 0.2, 0.1), (0.107, 0.2, 0.1)]):
        _pinrec(tmp_path / f"beauty_uc_s{s}.json", uc, uc / 2)
        _pinrec(tmp_path / f"beauty_sasrec_s{s}.json", sas, sas / 2)
        _reference(tmp_path / f"beauty_reference_s{s}.json", ref, ref / 2)
    (tmp_path / "notes.json").write_text("{}")  # not a run: ignored
    runs = runs_in(tmp_path)
    assert sorted((r.dataset, r.variant, r.seed) for r in runs) == sorted(
        (("beauty", v, s) for v in ("uc", "sasrec", "reference") for s in (0, 1)))
    out = summarise(runs, {r.name: {"rc": 0} for r in runs})
    uc = out["datasets"]["beauty"]["uc"]
    assert uc["recall@10"]["mean"] == pytest.approx(0.106) and uc["recall@10"]["min"] == pytest.approx(0.105)
    assert uc["ratio_to_reference"]["recall@10"] == pytest.approx(1.06)
    # the SASRec baseline is twice the reference, but the bar is PinRec's: UC at 1.06
    bar = out["bars"]["beauty"]
    assert bar["best_variant"] == "uc" and bar["met_1.05"] is True
    assert out["bars"]["uc_vs_sasrec"]["beauty"] == {"recall@10": False, "ndcg@10": False}


def test_from_runs_names_the_folder_when_it_holds_no_runs(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        runs_in(tmp_path)
