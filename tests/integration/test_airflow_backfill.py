"""The real scheduler test and the browser test (issue 6, items 6 and 7).

PostgreSQL 15 + api-server + scheduler + dag-processor (tests/integration/airflow_stack.py);
ops create a 3-day backfill of pinrec_daily through the REST API with a token; every task runs
the real `pinrec` chain on a tiny synthetic lake. Then a second backfill of the same days must
leave the tables identical, and headless Chromium logs in as ops and screenshots the grid view.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import urllib.error
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness module beside this file
from airflow_stack import REPO, Chromium, chromium_binary, new_stack  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DAG = "pinrec_daily"
DAYS = ["2026-01-02", "2026-01-03", "2026-01-04"]
JOBS = ("sequences", "items", "train", "index", "score", "eval", "maintenance")
# Small enough for 2 shared cores; large enough that every table has rows for every day.
SYNTH = ["--users", "80", "--days", "4", "--items", "300", "--start", "2026-01-01", "--seed", "3"]
# On an 80-user lake recall@10 of held-out users is noise (0.0 vs 0.2 between two days was
# seen), so the gate is off here; tests/unit/dags/test_gate.py covers its decisions.
CONF = {"train_max_seconds": 10, "max_recall_drop": 1.0,
        "arms": {"balanced": {"repin": 0.5, "grid_click": 0.5}, "repin": {"repin": 1.0}}}
ARTIFACTS = Path(os.environ.get("PINREC_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


def missing_jobs() -> list[str]:
    from pinrec.cli import GROUPS

    return [g for g in JOBS if importlib.util.find_spec(GROUPS[g][0]) is None]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # PINREC_BIN (an executable with pinrec's interface) replaces the real chain on request.
    if (missing := missing_jobs()) and not os.environ.get("PINREC_BIN"):
        pytest.skip(f"the backfill runs the real pinrec chain; not implemented yet: {missing}")
    from pinrec.cli import main as pinrec

    lake = tmp_path_factory.mktemp("backfill") / "lake"
    assert pinrec(["data", "synth", *SYNTH, "--lake", str(lake)]) == 0
    s = new_stack(lake)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        s.cleanup(keep_logs_in=ARTIFACTS / "airflow")


def wait_for_dag(s, token: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return s.request("GET", f"/api/v2/dags/{DAG}", token=token)
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        time.sleep(2)
    raise TimeoutError(f"{DAG} was not parsed by the dag-processor in {timeout} s")


def task_log_tail(s, run_id: str, task_id: str) -> str:
    logs = sorted((s.home / "logs").glob(f"dag_id={DAG}/run_id={run_id}/task_id={task_id}/*.log"))
    return logs[-1].read_text(errors="replace")[-4000:] if logs else "(no log file)"


def run_backfill(s, token: str, reprocess: str, max_active_runs: int,
                 timeout: float = 600) -> list[dict]:
    """Create the backfill like ops do and wait for it; fail fast with the failing task's log."""
    body = {"dag_id": DAG, "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[-1]}T00:00:00Z",
            "max_active_runs": max_active_runs, "reprocess_behavior": reprocess,
            "dag_run_conf": CONF}
    backfill = s.request("POST", "/api/v2/backfills", body, token=token)
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [r for r in s.request("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100",
                                     token=token)["dag_runs"] if r["run_type"] == "backfill"]
        tis = s.request("GET", f"/api/v2/dags/{DAG}/dagRuns/~/taskInstances?limit=500",
                        token=token)["task_instances"]
        for ti in tis:
            if ti["state"] in ("failed", "up_for_retry", "upstream_failed"):
                pytest.fail(f"task {ti['task_id']} of {ti['dag_run_id']} is {ti['state']}:\n"
                            + task_log_tail(s, ti["dag_run_id"], ti["task_id"]))
        b = s.request("GET", f"/api/v2/backfills/{backfill['id']}", token=token)
        if b["completed_at"] and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(3)
    raise TimeoutError(f"backfill {backfill['id']} did not finish in {timeout} s")


def snapshot(lake: Path) -> dict:
    """Every table's rows, sorted, as Python values (generated_at is a wall-clock stamp)."""
    from jobs.lake import LakeTables
    from pinrec.layout import Lake

    import pyarrow as pa

    from jobs.sequences_store import read_sequences, sequences_partitions

    t = LakeTables(Lake.at(lake))
    out = {}
    for name in ("sequences", "items", "candidates"):
        if name == "sequences":  # as readers see it: every ds, assembled (ADR 0002)
            parts = sequences_partitions(t)
            if not parts:
                continue
            table = pa.concat_tables([read_sequences(t, ds) for ds in parts])
        elif not t.exists(name):
            continue
        else:
            table = t.read(name)
        if "generated_at" in table.column_names:
            table = table.drop_columns(["generated_at"])
        out[name] = sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())
    return out


def expected_sequence_users(lake: Path, ds: str) -> set[int]:
    from jobs.lake import LakeTables
    from pinrec.contracts import cutoff_us
    from pinrec.layout import Lake
    import pyarrow.compute as pc

    ev = LakeTables(Lake.at(lake)).read("events", columns=["user_id", "ts"])
    ts = pc.cast(ev["ts"], "int64")
    return set(pc.filter(ev["user_id"], pc.less(ts, cutoff_us(ds))).to_pylist())


def test_backfill_three_days_from_the_rest_api_then_rerun_is_identical(stack):
    from jobs.lake import LakeTables
    from pinrec.layout import Lake, current, published_candidates

    ops, analyst = stack.token("ops"), stack.token("analyst")
    dag = wait_for_dag(stack, ops)
    assert dag["is_paused"], "DAGs start paused; the ops guide tells ops to unpause first"

    # a viewer may look but not backfill
    with pytest.raises(urllib.error.HTTPError) as denied:
        stack.request("POST", "/api/v2/backfills", {"dag_id": DAG, "from_date": f"{DAYS[0]}T00:00:00Z",
                                                    "to_date": f"{DAYS[0]}T00:00:00Z"}, token=analyst)
    assert denied.value.code == 403

    # the params schema guards the REST API (and the UI form) too: a negative weight is refused
    with pytest.raises(urllib.error.HTTPError) as bad:
        stack.request("POST", f"/api/v2/dags/{DAG}/dagRuns",
                      {"logical_date": None, "conf": {"arms": {"a": {"repin": -1.0, "other": 2.0}}}},
                      token=ops)
    assert bad.value.code == 400, bad.value.read()

    # a backfill of a paused DAG waits forever: unpause first, as docs/ops.md says
    stack.request("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False}, token=ops)
    t0 = time.time()
    # one day at a time: each day's sequences build incrementally on the day before
    runs = run_backfill(stack, ops, "none", max_active_runs=1)
    first_s = time.time() - t0
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert all(r["state"] == "success" for r in runs), [(r["run_id"], r["state"]) for r in runs]

    lake = LakeTables(Lake.at(stack.lake))
    from jobs.sequences_store import read_sequences, sequences_partitions

    assert sequences_partitions(lake) == DAYS
    assert lake.partitions("candidates") == DAYS
    for ds in DAYS:
        seq = read_sequences(lake, ds)
        assert set(seq["user_id"].to_pylist()) == expected_sequence_users(stack.lake, ds), ds
        cand = lake.read("candidates", ds=[ds]).to_pylist()
        assert {r["arm"] for r in cand} == set(CONF["arms"]), ds
        keys = [(r["user_id"], r["arm"], r["rank"]) for r in cand]
        assert len(keys) == len(set(keys)), f"duplicate candidate rows for {ds}"
        assert {r["model_version"] for r in cand} == {f"d{ds.replace('-', '')}-mt_oc-small"}
        assert {u for u, _, _ in keys} <= set(seq["user_id"].to_pylist())
    assert published_candidates(Lake.at(stack.lake)) == DAYS[-1]
    assert current(Lake.at(stack.lake), "models").name == "d20260104-mt_oc-small"
    before = snapshot(stack.lake)

    t0 = time.time()
    # every partition exists now, so the days may overlap; publish never moves serving back
    again = run_backfill(stack, ops, "completed", max_active_runs=3)
    assert sorted(r["logical_date"][:10] for r in again) == DAYS
    assert all(r["state"] == "success" for r in again)
    assert lake.partitions("candidates") == DAYS
    assert snapshot(stack.lake) == before
    assert published_candidates(Lake.at(stack.lake)) == DAYS[-1]
    print(f"\nbackfill of 3 days: {first_s:.0f} s; re-run: {time.time() - t0:.0f} s")


@pytest.mark.skipif(chromium_binary() is None,
                    reason="Debian chromium is not installed (`make sysdeps` installs it)")
def test_ui_grid_in_a_real_browser_shows_three_successful_runs(stack):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "pinrec_daily_grid.png"
    b = Chromium(stack.root)
    try:
        b.goto(stack.base_url + "/")
        b.wait_for("!!document.querySelector('input[name=username]')")
        b.js("document.querySelector('input[name=username]').focus()")
        b.send("Input.insertText", text="ops")
        b.js("document.querySelector('input[name=password]').focus()")
        b.send("Input.insertText", text=stack.passwords["ops"])
        b.js("document.querySelector('button[type=submit]').click()")
        b.wait_for("!document.querySelector('input[name=password]')")
        b.goto(f"{stack.base_url}/dags/{DAG}")  # the DAG page opens on the grid view
        bars = ("[...document.querySelectorAll('a[href*=\"/runs/backfill__\"]')]"
                ".filter(a => !a.getAttribute('href').includes('/tasks/'))")
        b.wait_for(f"{bars}.length >= 3", 90)
        time.sleep(3)  # let the grid finish painting before the screenshot
        b.screenshot(shot)
        found = b.js(f"{bars}.map(a => [a.getAttribute('href'), "
                     "getComputedStyle(a.firstElementChild).backgroundColor])")
        ticks = b.js("[...document.querySelectorAll('a[href*=\"/runs/backfill__\"][href*=\"/tasks/\"]')].length")
    finally:
        b.close()
    assert shot.stat().st_size > 20_000, "the screenshot is (nearly) empty"
    runs = {href.split("/runs/")[1].strip("/"): color for href, color in found}
    assert len(runs) == 3, runs
    # the run ids name the end of each day's interval: ds + 1
    assert sorted(r[len("backfill__"):][:10] for r in runs) == ["2026-01-03", "2026-01-04", "2026-01-05"]
    assert all(is_green(c) for c in runs.values()), f"not every backfill run is green (success): {runs}"
    assert ticks >= 3 * 10, f"expected a task cell per task and run in the grid, found {ticks}"
    print(f"\nscreenshot: {shot}; runs: {runs}")


def is_green(css_color: str) -> bool:
    """Airflow's UI paints successful runs green; the computed colour is oklch() or rgb()."""
    import re

    if m := re.match(r"oklch\(([\d.]+) ([\d.]+) ([\d.]+)", css_color):
        return float(m.group(2)) > 0.05 and 120 <= float(m.group(3)) <= 170
    if m := re.match(r"rgba?\((\d+), (\d+), (\d+)", css_color):
        r, g, b = map(int, m.groups())
        return g > 1.3 * r and g > 1.3 * b
    return False
