"""One rehearsal day: what faults act through (landing, the DAG run over the REST API) and the
edges the invariants read (the serving API, RocksDB, the DLQ topic, the lake)."""
from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pinrec.rehearsal.invariants import Check
from pinrec.rehearsal.services import DLQ, http_json, metric_sum, wait_until

DAG = "pinrec_daily"
FAILED = ("failed", "up_for_retry", "upstream_failed")


def next_day(ds: str, n: int = 1) -> str:
    return (datetime.strptime(ds, "%Y-%m-%d") + timedelta(days=n)).strftime("%Y-%m-%d")


@dataclass
class Day:
    cfg: object            # RehearsalConfig
    stack: object          # pinrec.airflow_stack.AirflowStack
    services: object       # runner.Services
    token: str             # the ops user's bearer token for the Airflow REST API
    ds: str
    notes: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    bad_markers: list = field(default_factory=list)
    bad_sent: int = 0

    # -- names -------------------------------------------------------------------------------
    @property
    def lake(self):
        from pinrec.core.layout import Lake

        return Lake.at(self.cfg.lake)

    @property
    def fresh_ds(self) -> str:
        return next_day(self.ds)

    @property
    def fresh_start_us(self) -> int:
        from pinrec.core.contracts import cutoff_us

        return cutoff_us(self.ds)

    @property
    def run(self):
        """The DAG run of this day as the pipeline sees it (version names, commands)."""
        from pinrec.core.pipeline import RunContext

        return RunContext(self.ds, str(self.cfg.lake), self.cfg.dag_conf)

    @property
    def model_version(self) -> str:
        return self.run.model_version

    def check(self, name: str, ok: bool, detail) -> None:
        self.checks.append(Check(name, bool(ok), str(detail)[:1000]))

    # -- landing -----------------------------------------------------------------------------
    def source_events(self, ds: str):
        from pinrec.core.lake import DeltaRsTables
        from pinrec.core.layout import Lake

        return DeltaRsTables(Lake.at(self.cfg.source_lake)).read("events", [ds])

    def land_events(self) -> None:
        """The day's events partition lands (atomically: one Delta commit replaces it)."""
        from pinrec.core.lake import DeltaRsTables

        DeltaRsTables(self.lake).replace_partitions("events", self.source_events(self.ds), [self.ds])

    def land_bad_schema_file(self) -> None:
        """A landing file whose user_id and ts are strings, committed as the day's partition
        the way a misconfigured exporter would (a Delta add action; nothing checks its schema)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pinrec.core.lake import DeltaRsTables

        t = self.source_events(self.ds)
        t = t.drop_columns([c for c in ("ds",) if c in t.column_names])
        t = t.set_column(t.schema.get_field_index("user_id"), "user_id",
                         t["user_id"].cast(pa.string()))
        t = t.set_column(t.schema.get_field_index("ts"), "ts", t["ts"].cast(pa.string()))
        files = self.lake.table("events") / f"ds={self.ds}" / f"landing-{uuid.uuid4().hex[:8]}"
        files.mkdir(parents=True)
        pq.write_table(t, files / "part-00000.parquet")
        DeltaRsTables(self.lake).commit_partition_files("events", files, self.ds)
        self.notes.append(f"landed events ds={self.ds} as a file with user_id and ts as strings")

    def serving_model_dir(self) -> Path:
        from pinrec.core.layout import current

        d = current(self.lake, "models")
        if d is None:
            raise RuntimeError("no serving model to copy: the broken-model fault needs a day before it")
        return d

    # -- the DAG run, as ops drive it ---------------------------------------------------------
    def stop_realtime_runs(self) -> None:
        """Unpausing creates today's scheduled run (wall-clock date, whose events never land
        here): it would poke for 12 h. The rehearsal's days are backfills; stop the other run."""
        runs = self.stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100", token=self.token)
        for r in runs["dag_runs"]:
            if r["run_type"] == "scheduled" and r["state"] in ("queued", "running"):
                self.stack.request("PATCH", f"/api/v2/dags/{DAG}/dagRuns/{r['dag_run_id']}",
                                   {"state": "failed"}, token=self.token)
                self.notes.append(f"stopped the wall-clock scheduled run {r['dag_run_id']}")

    def trigger(self) -> str:
        self.stop_realtime_runs()
        body = {"dag_id": DAG, "from_date": f"{self.ds}T00:00:00Z", "to_date": f"{self.ds}T00:00:00Z",
                "max_active_runs": 1, "reprocess_behavior": "completed",
                "dag_run_conf": self.cfg.dag_conf}
        def run_id():
            runs = self.stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=-start_date",
                                      token=self.token)["dag_runs"]
            mine = [r for r in runs if (r.get("logical_date") or "")[:10] == self.ds]
            return mine[0]["dag_run_id"] if mine else None

        for attempt in range(60):
            try:
                self.stack.request("POST", "/api/v2/backfills", body, token=self.token)
                break
            except urllib.error.HTTPError as e:
                # 409: a backfill of the DAG is still active. Ours (a timed-out first attempt
                # did create it)? Otherwise the previous day's, whose runs may all be finished
                # while the scheduler has not closed it yet (seen after a cleared run): wait,
                # then cancel it if it lingers, as ops would.
                if e.code != 409:
                    raise
                if run_id():
                    break
                if attempt >= 20:
                    self.cancel_finished_backfills()
                time.sleep(3)
        return wait_until(run_id, 180, f"the backfill run of {self.ds}")

    def cancel_finished_backfills(self) -> None:
        bfs = self.stack.request("GET", f"/api/v2/backfills?dag_id={DAG}&limit=100",
                                 token=self.token)["backfills"]
        for b in bfs:
            if b.get("completed_at"):
                continue
            self.stack.request("PUT", f"/api/v2/backfills/{b['id']}/cancel", token=self.token)
            self.notes.append(f"backfill {b['id']} stayed open after its runs finished; ops "
                              "cancelled it (PUT /api/v2/backfills/{id}/cancel)")

    def wait_run_state(self, run_id: str, states: tuple, timeout_s: float) -> str:
        def state():
            s = self.stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}", token=self.token)["state"]
            return s in states and s
        try:
            return wait_until(state, timeout_s, f"run {run_id} in {states}", every_s=2)
        except TimeoutError:
            return "timeout"

    def task_states(self, run_id: str) -> dict[str, str | None]:
        return {t: ti["state"] for t, ti in self.stack.task_instances(DAG, run_id, self.token).items()}

    def wait_task_state(self, run_id: str, task: str, states: tuple, timeout_s: float) -> str:
        return wait_until(lambda: (s := self.task_states(run_id).get(task)) in states and s,
                          timeout_s, f"task {task} in {states}", every_s=1)

    def wait_run(self, run_id: str, fault, timeout_s: float) -> tuple[str, dict]:
        """Wait for the run to finish; a failed try goes to the fault first (ops' reaction)."""
        seen, deadline, cleared = set(), time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline:
            tis = self.stack.task_instances(DAG, run_id, self.token)
            for t, ti in tis.items():
                key = (t, ti.get("try_number"), ti["state"])
                if ti["state"] in ("failed", "up_for_retry") and key not in seen:
                    seen.add(key)
                    if not fault.on_task_failed(self, run_id, ti):
                        self.notes.append(f"task {t} is {ti['state']} (try {ti.get('try_number')})")
                        if ti["state"] == "failed" and self.never_started(run_id, t) and cleared < 2:
                            # the executor lost the task before its command ran (a loaded
                            # api-server): nothing of the day's work failed; ops clear it
                            cleared += 1
                            self.stack.clear_tasks(DAG, run_id, [t], self.token)
                            self.notes.append(f"task {t} failed before its command ran "
                                              "(executor/api-server under load); ops cleared it")
            run = self.stack.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}", token=self.token)
            if run["state"] in ("success", "failed"):
                tis = self.stack.task_instances(DAG, run_id, self.token)
                if not any(ti["state"] in ("running", "queued", "scheduled", "up_for_retry")
                           for ti in tis.values()):
                    return run["state"], {t: ti["state"] for t, ti in tis.items()}
            time.sleep(3)
        raise TimeoutError(f"run {run_id} did not finish in {timeout_s:.0f} s: {self.task_states(run_id)}")

    def never_started(self, run_id: str, task: str) -> bool:
        log = self.stack.task_log_tail(DAG, run_id, task, 200_000)
        return not any(m in log for m in ("Running command", "Output:", "Tmp dir root location"))

    # -- edges read by the invariants ---------------------------------------------------------
    def consumer_handled(self) -> float:
        try:
            return metric_sum(self.services.metrics_port, ("pinrec_stream_events_stored_total",
                                                           "pinrec_stream_stale_skipped_total",
                                                           "pinrec_stream_dlq_total"))
        except OSError:
            return float("nan")

    def health(self) -> dict:
        return http_json(f"{self.services.serve_url}/healthz")[1]

    def wait_serving(self, ds: str | None, timeout_s: float) -> dict:
        """The API reloads published outputs on its own (every 60 s): wait for it to show `ds`."""
        try:
            return wait_until(lambda: (h := self.health()).get("candidates_ds") == ds and h,
                              timeout_s, f"the API serving ds {ds}", every_s=2)
        except TimeoutError:
            return self.health()

    def probe(self, users: list[int]) -> list[tuple]:
        out = []
        for u in users:
            t0 = time.perf_counter()
            try:
                status, body = http_json(f"{self.services.serve_url}/v1/recommendations/{u}?n=10",
                                         self.services.token)
                out.append((u, status, body.get("n", 0), (time.perf_counter() - t0) * 1e3,
                            body.get("candidates_ds")))
            except (urllib.error.HTTPError, OSError) as e:
                out.append((u, getattr(e, "code", repr(e)), 0, (time.perf_counter() - t0) * 1e3, None))
        return out

    def sample_users(self, ds: str, k: int) -> tuple[set[int], list[int]]:
        """Users active on `ds` (events that day, as landed), and a seeded sample of them."""
        from pinrec.core.lake import DeltaRsTables

        active = set(DeltaRsTables(self.lake).read("events", [ds], columns=["user_id"])["user_id"].to_pylist())
        return active, sorted(random.Random(ds).sample(sorted(active), min(k, len(active))))

    def candidate_users(self, ds: str) -> dict[str, set[int]]:
        from pinrec.core.lake import DeltaRsTables

        t = DeltaRsTables(self.lake).read("candidates", [ds], columns=["user_id", "arm"])
        out: dict[str, set[int]] = {}
        for u, a in zip(t["user_id"].to_pylist(), t["arm"].to_pylist()):
            out.setdefault(a, set()).add(u)
        return out

    def rocksdb(self) -> tuple[list[str], int | None]:
        """(event ids, oldest ts) of what the consumer's RocksDB holds now."""
        from streaming.events import decode, key_ts
        from streaming.store import RealtimeStore

        sec = Path(tempfile.mkdtemp(prefix="rehearse-reader-", dir=self.cfg.out))
        reader = RealtimeStore.open_secondary(self.services.db, sec)
        try:
            reader.catch_up()
            ids, oldest = [], None
            for k, v in reader.scan():
                ids.append(decode(k, v).event_id)
                ts = key_ts(k)
                oldest = ts if oldest is None else min(oldest, ts)
            return ids, oldest
        finally:
            reader.close()
            shutil.rmtree(sec, ignore_errors=True)

    def batch_cutoff_us(self) -> int | None:
        from pinrec.core.lake import DeltaRsTables
        from pinrec.core.contracts import cutoff_us

        from pinrec.core.sequences_store import latest_sequences_ds

        ds = latest_sequences_ds(DeltaRsTables(self.lake))
        return cutoff_us(ds) if ds else None

    def dlq_values(self) -> list[bytes]:
        from kafka import KafkaConsumer

        c = KafkaConsumer(DLQ, bootstrap_servers=self.services.bootstrap, group_id=None,
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          max_partition_fetch_bytes=32 << 20, fetch_max_bytes=64 << 20)
        out, idle_since = [], time.monotonic()
        try:
            while time.monotonic() - idle_since < 5:
                got = c.poll(1000)
                for recs in got.values():
                    out.extend(r.value for r in recs)
                    idle_since = time.monotonic()
        finally:
            c.close()
        return out

    def rerun_tables(self) -> tuple[set, set, int]:
        """(users in sequences ds, users with events before the cutoff, duplicate candidate keys)."""
        import pyarrow.compute as pc
        from pinrec.core.lake import DeltaRsTables
        from pinrec.core.contracts import cutoff_us

        t = DeltaRsTables(self.lake)
        from pinrec.core.sequences_store import read_sequences

        seq = set(read_sequences(t, self.ds, columns=["user_id"])["user_id"].to_pylist())
        ev = t.read("events", columns=["user_id", "ts"])
        before = pc.less(pc.cast(ev["ts"], "int64"), cutoff_us(self.ds))
        expected = set(pc.filter(ev["user_id"], before).to_pylist())
        cand = t.read("candidates", [self.ds], columns=["user_id", "arm", "rank"]) \
            if self.ds in t.partitions("candidates") else None
        keys = list(zip(*(cand[c].to_pylist() for c in ("user_id", "arm", "rank")))) if cand else []
        return seq, expected, len(keys) - len(set(keys))

    def gate_check(self, model_version: str) -> tuple[int, str]:
        """`pinrec gate check` as the DAG's quality_gate task runs it, by hand."""
        import subprocess

        from pinrec.demo import pinrec_bin
        from pinrec.core.pipeline import QUALITY_GATE

        argv = QUALITY_GATE.argv(self.run)
        argv[argv.index("--candidate-model") + 1] = model_version
        r = subprocess.run([pinrec_bin(), *argv], capture_output=True, text=True, timeout=900)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        return r.returncode, " | ".join(lines[-2:])[-600:]

    def gate_record(self) -> dict | None:
        p = self.lake.runs / "gate" / f"{self.ds}.json"
        return json.loads(p.read_text()) if p.exists() else None
