"""`pinrec rehearse` for three days through the real Airflow scheduler (PostgreSQL, api-server,
scheduler, dag-processor), with Tansu on its s3 engine over moto, the consumer and the serving
API running throughout: a bad-schema landing file that ops fix and clear through the REST API,
a kill -9 of the consumer mid-replay, and a broken (NaN) model that must not reach users. The
quality gate runs at its default threshold. Every invariant of every day must hold; a healthy
day the gate refuses is an expectation not met (reported), not a broken invariant."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pinrec.airflow_stack import REPO
from pinrec.rehearsal.report import is_expectation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ARTIFACTS = Path(os.environ.get("PINREC_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
FAULTS = "bad_schema,consumer_kill9,broken_model"


def test_rehearse_three_days_with_faults(tmp_path):
    from pinrec.cli import main as pinrec

    out = tmp_path / "out"
    rc = pinrec(["rehearse", "--days", "3", "--faults", FAULTS, "--lake", str(tmp_path / "lake"),
                 "--out", str(out), "--users", "600", "--items", "800"])
    report = json.loads((out / "report.json").read_text())
    (ARTIFACTS / "rehearsal").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "rehearsal" / "report.md").write_text((out / "report.md").read_text())
    days = report["days"]
    assert [d["fault"] for d in days] == FAULTS.split(",")
    broken = [(d["ds"], c["name"], c["detail"]) for d in [report["bootstrap"], *days]
              for c in d["checks"] if not c["ok"] and not is_expectation(c, d["fault"])]
    assert broken == [] and rc == 0, broken
    # each day's checks include the invariants the issue names
    names = {c["name"] for c in days[0]["checks"]}
    for want in ("served model, index and candidates are of one ds", "every sampled user gets an answer",
                 "no acknowledged event missing from RocksDB", "no event stored twice",
                 "candidates for every active user of the published ds",
                 "RocksDB holds only events after the batch cutoff"):
        assert want in names, (want, names)
    bad_schema, killed, broken_model = days
    assert any("cleared" in n for n in bad_schema["notes"]), bad_schema["notes"]
    held = {c["name"] for c in bad_schema["checks"] if c["ok"]}
    assert "bad schema: the re-run after the fix is idempotent" in held
    assert bad_schema["tasks"]["score"] == "success"  # the cleared re-run got through the chain
    assert any("killed (-9)" in n for n in killed["notes"])
    # the broken model never reaches users: the run stops before publish, the gate refuses it,
    # and the API keeps serving the day before (checked through /healthz and every response)
    assert broken_model["run_state"] == "failed" and broken_model["tasks"]["publish"] != "success"
    assert {"the refused day is not published; the previous day keeps serving",
            "the quality gate refuses the broken model",
            "served model, index and candidates are of one ds"} <= {c["name"] for c in broken_model["checks"] if c["ok"]}
    # what the gate decided on each day is in the report
    assert all(d["gate"] is not None for d in days if d["tasks"].get("quality_gate") not in (None, "upstream_failed"))
