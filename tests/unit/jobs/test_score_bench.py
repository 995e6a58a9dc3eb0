"""`pinrec bench score` on CPU, tiny: the benchmark the H100 figure comes from must keep working
on both retrieval paths and account for every user and candidate row."""
from __future__ import annotations

import json

import pytest

from pinrec.cli import main


@pytest.mark.parametrize("retrieval", ["exact", "faiss"])
def test_bench_score_runs_and_accounts_for_every_row(tmp_path, retrieval):
    out = tmp_path / "score.json"
    assert main(["bench", "score", "--preset", "small", "--users", "96", "--batch-size", "32",
                 "--items", "500", "--hist-len", "40", "--n", "20", "--device", "cpu",
                 "--retrieval", retrieval, "--index", "flat", "--profile-batches", "1",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["users"] == 96 and r["candidate_rows"] == 96 * 20
    assert r["index"] == ("exact" if retrieval == "exact" else "flat")
    assert r["users_per_s"] > 0 and r["compiled_prefill"] is False
    assert all(v >= 0 for v in r["per_user_us"].values()) and r["per_user_us"]["prefill"] > 0
