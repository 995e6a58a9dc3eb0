"""A Spark standalone cluster from the pyspark wheel: one master and N workers on 127.0.0.1.

The wheel carries `bin/spark-class` and the jars but not the `sbin/` start scripts, so the
daemons are started the way those scripts would (DESIGN.md §4):

    spark-class org.apache.spark.deploy.master.Master --host H --port P --webui-port W
    spark-class org.apache.spark.deploy.worker.Worker spark://H:P --cores C --memory M

The compose stack's `spark-master` / `spark-worker` services run exactly these argv
(`master_argv` / `worker_argv`; tests/integration/test_compose.py checks that), so the cluster a
test or `pinrec bench sequences --cluster N` starts here is the one production runs. Every
process is stopped by its own pid; readiness is read from the master's JSON status page
(`/json/`: alive workers and their cores), never from a sleep.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 2
    cores_per_worker: int = 1
    memory_per_worker: str = "1g"
    daemon_memory: str = "256m"       # heap of the master and worker daemons themselves
    host: str = "127.0.0.1"
    start_timeout_s: float = 120.0    # generous: JVM start-up on a loaded 2-core machine

    def __post_init__(self):
        if self.workers < 1 or self.cores_per_worker < 1:
            raise ValueError(f"a cluster needs at least one worker with one core, got "
                             f"workers={self.workers} cores_per_worker={self.cores_per_worker}")


def master_argv(host: str, port: int, webui_port: int) -> list[str]:
    return ["spark-class", MASTER_CLASS, "--host", host, "--port", str(port),
            "--webui-port", str(webui_port)]


def worker_argv(master_url: str, cores: int, memory: str, webui_port: int) -> list[str]:
    return ["spark-class", WORKER_CLASS, master_url, "--cores", str(cores), "--memory", memory,
            "--webui-port", str(webui_port)]


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    home = Path(_find_spark_home())
    if not (home / "bin" / "spark-class").is_file():
        raise FileNotFoundError(f"no bin/spark-class under SPARK_HOME={home}; install the pyspark "
                                f"wheel (requirements.txt) or point SPARK_HOME at a Spark install")
    return home


def master_status(webui_url: str, timeout_s: float = 5.0) -> dict:
    """The master's JSON status page: workers, alive workers, cores, running/completed apps."""
    with urllib.request.urlopen(f"{webui_url}/json/", timeout=timeout_s) as r:
        return json.loads(r.read())


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


@dataclass
class StandaloneCluster:
    """A running master and its workers; use as a context manager or call `stop()`."""

    cfg: ClusterConfig
    master_url: str
    webui_url: str
    work_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @staticmethod
    def start(cfg: ClusterConfig = ClusterConfig(), work_dir: Path | None = None) -> "StandaloneCluster":
        home = spark_home()
        work_dir = Path(work_dir or tempfile.mkdtemp(prefix="pinrec-spark-cluster-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"SPARK_HOME": str(home), "SPARK_LOCAL_IP": cfg.host,
                            "SPARK_DAEMON_MEMORY": cfg.daemon_memory,
                            "SPARK_LOG_DIR": str(work_dir), "SPARK_WORKER_DIR": str(work_dir / "work")}
        port, webui = _free_port(cfg.host), _free_port(cfg.host)
        cluster = StandaloneCluster(cfg, f"spark://{cfg.host}:{port}", f"http://{cfg.host}:{webui}",
                                    work_dir)
        try:
            cluster._spawn(home, master_argv(cfg.host, port, webui), env, "master")
            cluster._wait(lambda s: s.get("status") == "ALIVE", "the master to be ALIVE")
            for i in range(cfg.workers):
                argv = worker_argv(cluster.master_url, cfg.cores_per_worker, cfg.memory_per_worker,
                                   _free_port(cfg.host))
                cluster._spawn(home, argv + ["--host", cfg.host], env, f"worker-{i}")
            cluster._wait(lambda s: s.get("aliveworkers", 0) == cfg.workers,
                          f"{cfg.workers} workers to register")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, home: Path, argv: list[str], env: dict, name: str) -> None:
        log = open(self.work_dir / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen([str(home / "bin" / argv[0]), *argv[1:]], env=env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait(self, ready, what: str) -> dict:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"Spark daemon pid {dead[0].pid} exited with {dead[0].returncode} "
                                   f"while waiting for {what}; see the logs in {self.work_dir}")
            try:
                status = master_status(self.webui_url)
                if ready(status):
                    return status
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass  # the master's web UI is not up yet
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {self.cfg.start_timeout_s:.0f} s waiting for {what}; "
                           f"see the logs in {self.work_dir}")

    def status(self) -> dict:
        return master_status(self.webui_url)

    def stop(self) -> None:
        """Workers first (so the master does not log them as lost), then the master."""
        for proc in reversed(self.procs):
            _stop(proc)

    def __enter__(self) -> "StandaloneCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def add_cluster_arg(p) -> None:
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="start a Spark standalone master and N one-core workers on 127.0.0.1 for "
                        "this run (from the pyspark wheel) and use it as --master")


def run_on_cluster(args, run) -> int:
    """`run(args)` against a fresh standalone cluster of `args.cluster` workers, stopped after."""
    mem = getattr(args, "executor_memory", ClusterConfig.memory_per_worker)
    with StandaloneCluster.start(ClusterConfig(workers=args.cluster, memory_per_worker=mem)) as cluster:
        print(f"Spark standalone cluster {cluster.master_url}: {args.cluster} workers "
              f"(logs in {cluster.work_dir})")
        args.master, args.cluster = cluster.master_url, 0
        try:
            return run(args)
        finally:
            from pyspark.sql import SparkSession

            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()  # before the workers go, so the driver does not log lost executors
