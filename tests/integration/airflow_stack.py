"""A real Airflow 3 deployment for tests: PostgreSQL 15 on a Unix socket in a temp dir,
`airflow db migrate`, the api-server on 127.0.0.1, the scheduler and the dag-processor, with the
simple auth manager and a passwords file generated at runtime. Everything started is stopped by
process id (process group), never by name.

Used by tests/integration/test_airflow_backfill.py; `make demo` does not need it.
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

REPO = Path(__file__).resolve().parents[2]
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

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None


def new_stack(lake: Path) -> AirflowStack:
    # Not pytest's tmp_path: PostgreSQL runs as the `postgres` user, who cannot enter
    # /tmp/pytest-of-root (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="pinrec-airflow-"))
    return AirflowStack(root=root, lake=lake)


# -- a real browser, driven over the Chrome DevTools Protocol (no extra Python packages) ------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """Headless Debian `chromium` with one page, controlled through its DevTools websocket."""

    def __init__(self, root: Path, width: int = 1600, height: int = 1000):
        from websockets.sync.client import connect

        self.port = free_port()
        profile = root / "chromium-profile"
        self.log = open(root / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--remote-debugging-port={self.port}",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, pages = time.time() + 30, []
        while not pages:
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"javascript failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.js(expression):
                    return
            except RuntimeError:
                pass  # the page is navigating
            time.sleep(0.5)
        raise TimeoutError(f"page never satisfied {expression!r}; it shows: "
                           f"{(self.js('document.body && document.body.innerText') or '')[:1500]}")

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
