"""A real Airflow 3 deployment on one machine: PostgreSQL 15 on a Unix socket in a temp dir,
`airflow db migrate`, the api-server on 127.0.0.1, the scheduler and the dag-processor, with the
simple auth manager and a passwords file generated at runtime. Everything started is stopped by
process id (process group), never by name.

Used by `pinrec rehearse` (pinrec/rehearsal/) and tests/integration/test_airflow_backfill.py;
`make demo` does not need it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
USERS = {"ops": "op", "analyst": "viewer"}  # username -> simple auth manager role


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user() -> list[str]:
    # PostgreSQL refuses to run as root; setpriv execs in place, so the pid we hold is the server's.
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


@dataclass
class AirflowStack:
    root: Path
    lake: Path
    port: int = field(default_factory=free_port)
    procs: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    passwords: dict = field(default_factory=dict)
    extra_env: dict = field(default_factory=dict)  # e.g. PINREC_SERVING_URL for the DAG's tasks

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- environment -------------------------------------------------------------------------
    def env(self) -> dict:
        sock = self.root / "pgsock"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                           "simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg2://airflow@/airflow?host={sock}&port=5432",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secret("api_secret"),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            # What the DAG's tasks see: the pinrec beside this interpreter and the test lake.
            "AIRFLOW_VAR_PINREC_BIN": os.environ.get("PINREC_BIN", str(VENV_BIN / "pinrec")),
            "AIRFLOW_VAR_PINREC_LAKE": str(self.lake),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "SPARK_LOCAL_IP": "127.0.0.1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        })
        env.update(self.extra_env)
        return env

    def _secret(self, name: str) -> str:
        path = self.root / name
        if not path.exists():
            path.write_text(secrets.token_hex(32))
        return path.read_text()

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        self.logs[name] = self.root / f"{name}.log"
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or self.env(),
                             cwd=self.root, start_new_session=True)
        self.procs[name] = p
        return p

    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        r = subprocess.run([str(VENV_BIN / "airflow"), *args], env=self.env(), cwd=self.root,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({r.returncode}):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def start_postgres(self) -> None:
        pgdata, sock = self.root / "pgdata", self.root / "pgsock"
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
        subprocess.run([*_as_postgres_user(), str(PG_BIN / "initdb"), "-D", str(pgdata), "-U",
                        "airflow", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd="/")
        self._spawn("postgres", [*_as_postgres_user(), str(PG_BIN / "postgres"), "-D", str(pgdata),
                                 "-k", str(sock), "-c", "listen_addresses=", "-p", "5432",
                                 "-c", "fsync=off", "-c", "max_connections=200"], env=dict(os.environ))
        deadline = time.time() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-h", str(sock), "-p", "5432"],
                             capture_output=True).returncode != 0:
            self._check_alive("postgres")
            if time.time() > deadline:
                raise RuntimeError("postgres did not become ready in 30 s")
            time.sleep(0.3)
        subprocess.run([str(PG_BIN / "createdb"), "-h", str(sock), "-p", "5432", "-U", "airflow",
                        "airflow"], check=True, capture_output=True)

    def write_passwords(self) -> None:
        """Passwords are generated here, at runtime, into the configured file: none in the repo."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.passwords = {u: secrets.token_urlsafe(16) for u in USERS}
        path = self.home / "passwords.json"
        path.write_text(json.dumps(self.passwords))
        path.chmod(0o600)

    def start(self) -> "AirflowStack":
        self.start_postgres()
        self.write_passwords()
        self.airflow("db", "migrate")
        self.airflow("pools", "set", "gpu", "1", "one GPU: train and score take turns")
        self._spawn("api-server", [str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1",
                                   "--port", str(self.port), "--workers", "1"])
        self.wait_http("/api/v2/monitor/health", 120, "api-server")
        self._spawn("scheduler", [str(VENV_BIN / "airflow"), "scheduler", "--skip-serve-logs"])
        self._spawn("dag-processor", [str(VENV_BIN / "airflow"), "dag-processor"])
        return self

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            tail = self.logs[name].read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")

    def wait_http(self, path: str, timeout: float, proc: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive(proc)
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.base_url}{path} not healthy after {timeout} s")

    def stop(self) -> None:
        """SIGTERM each process group we started (newest first), then SIGKILL what is left."""
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p in reversed(list(self.procs.items())):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)

    def cleanup(self, keep_logs_in: Path | None = None) -> None:
        """Copy the process and task logs out (test artifacts), then delete the temp dir."""
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for name, log in self.logs.items():
                if log.exists():
                    (keep_logs_in / f"{name}.log").write_bytes(log.read_bytes()[-500_000:])
            if (self.home / "logs").is_dir():
                shutil.copytree(self.home / "logs", keep_logs_in / "task-logs", dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- REST API, the way ops use it --------------------------------------------------------
    def token(self, user: str) -> str:
        return self.request("POST", "/auth/token",
                            {"username": user, "password": self.passwords[user]})["access_token"]

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None,
                attempts: int = 6, timeout: float = 60):
        """One REST call. A timeout or refused connection (a loaded api-server) is tried again:
        the calls made here are idempotent or answer a repeat with 409, which callers handle."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(1, attempts + 1):
            req = urllib.request.Request(self.base_url + path, data=data, method=method)
            req.add_header("Content-Type", "application/json")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    raw = r.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == attempts:
                    raise
                time.sleep(3 * attempt)

    def wait_for_dag(self, dag_id: str, token: str, timeout: float = 180) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}", token=token)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            time.sleep(2)
        raise TimeoutError(f"{dag_id} was not parsed by the dag-processor in {timeout} s")

    def task_instances(self, dag_id: str, run_id: str, token: str) -> dict[str, dict]:
        """task_id -> task instance (state, try_number, ...) of one run."""
        tis = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200",
                           token=token)["task_instances"]
        return {ti["task_id"]: ti for ti in tis}

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str], token: str,
                    downstream: bool = True) -> list:
        """What ops do after fixing an input: clear the task (and what follows) so it runs again."""
        body = {"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids,
                "include_downstream": downstream, "only_failed": False, "reset_dag_runs": True}
        return self.request("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", body,
                            token=token)["task_instances"]

    def task_log_tail(self, dag_id: str, run_id: str, task_id: str, chars: int = 4000) -> str:
        logs = sorted((self.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/*.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else "(no log file)"


def new_stack(lake: Path, extra_env: dict | None = None) -> AirflowStack:
    # Not pytest's tmp_path: PostgreSQL runs as the `postgres` user, who cannot enter
    # /tmp/pytest-of-root (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="pinrec-airflow-"))
    return AirflowStack(root=root, lake=lake, extra_env=dict(extra_env or {}))
