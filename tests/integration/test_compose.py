"""docker-compose.yml, checked without a Docker engine (none runs here): a real Compose
implementation (Debian's docker-compose 1.29, `make sysdeps`) must accept and render it, and every
service's image, command, dependencies, volumes and ports must be consistent with each other, with
the `pinrec` CLI, with deploy/ (Dockerfile, Spark conf, env example) and with the Spark cluster the
tests start (jobs/spark_cluster.py)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
EXPECTED = {
    "postgres", "kafka", "kafka-init", "spark-master", "spark-worker", "airflow-init",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "stream-consumer", "served-lander", "serving", "gpu-scorer",
}
AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer"}


def argv(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def test_every_expected_service_has_an_image():
    assert EXPECTED <= set(SERVICES)
    for name, svc in SERVICES.items():
        assert svc.get("image"), f"{name} has no image"
        if svc["image"].startswith("pinrec"):
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name


def test_depends_on_targets_exist_and_conditions_make_sense():
    for name, svc in SERVICES.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            target = SERVICES[dep]
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is a one-shot job and must not restart"
    # the dependency graph has no cycle
    seen, stack = set(), set()

    def visit(n):
        assert n not in stack, f"dependency cycle through {n}"
        if n in seen:
            return
        stack.add(n)
        for d in SERVICES[n].get("depends_on") or {}:
            visit(d)
        stack.discard(n)
        seen.add(n)

    for n in SERVICES:
        visit(n)


def test_long_running_services_have_health_checks():
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, name


def test_volumes_are_named_and_declared():
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            assert not source.startswith((".", "/")), f"{name} mounts a host path {source}; use named volumes"
            assert source in declared, f"{name} mounts undeclared volume {source}"
            used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    for name in ("stream-consumer", "serving", "airflow-scheduler", "spark-worker", "gpu-scorer"):
        assert any(v.startswith("lake:/lake") for v in SERVICES[name]["volumes"]), name
    assert any(v.startswith("rocksdb:/rocksdb") for v in SERVICES["stream-consumer"]["volumes"])
    assert any(v.startswith("rocksdb:/rocksdb") for v in SERVICES["serving"]["volumes"])


def test_ports_bind_localhost_and_do_not_collide():
    host_ports = []
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            ip, host, container = p.split(":")
            assert ip == "127.0.0.1", f"{name} publishes {p} on every interface"
            host_ports.append(int(host))
    assert len(host_ports) == len(set(host_ports))


def test_pinrec_commands_parse_with_the_real_cli():
    from pinrec.cli import GROUPS, build_parser

    parser = build_parser()
    for name, svc in SERVICES.items():
        cmd = argv(svc)
        if cmd[:2] == ["bash", "-c"]:
            cmd = shlex.split(re.sub(r"\$\$\{(\w+)[^}]*\}", r"X\1", cmd[2]).replace("XPINREC_DS", "2026-01-31"))
        if not cmd or cmd[0] != "pinrec":
            continue
        assert cmd[1] in GROUPS, f"{name}: unknown pinrec group {cmd[1]}"
        args, extra = parser.parse_known_args(cmd[1:])
        assert not extra or getattr(args, "_stub", False), f"{name}: pinrec rejects {extra}"


def test_airflow_services():
    for name, svc in SERVICES.items():
        if not name.startswith("airflow-") or name == "airflow-init":
            continue
        cmd = argv(svc)
        assert cmd[0] == "airflow" and cmd[1] in AIRFLOW_COMMANDS, name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
        assert svc["env_file"] == ["deploy/secrets/pinrec.env"]
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    init = " ".join(argv(SERVICES["airflow-init"]))
    assert "airflow db migrate" in init and "pools set gpu 1" in init
    assert {c for c in (argv(SERVICES[s])[1] for s in SERVICES if s.startswith("airflow-")
                        and s != "airflow-init")} == AIRFLOW_COMMANDS
    serving_url = SERVICES["airflow-scheduler"]["environment"]["AIRFLOW_VAR_PINREC_SERVING_URL"]
    port = argv(SERVICES["serving"])[argv(SERVICES["serving"]).index("--port") + 1]
    assert serving_url == f"http://serving:{port}"


def test_kafka_is_kraft_and_topics_match_the_consumer():
    env = SERVICES["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "ZOOKEEPER" not in " ".join(env)
    created = set(re.findall(r"--topic (\S+)", " ".join(argv(SERVICES["kafka-init"]))))
    consumer = argv(SERVICES["stream-consumer"])
    lander = argv(SERVICES["served-lander"])
    assert {consumer[consumer.index("--topic") + 1], consumer[consumer.index("--dlq-topic") + 1],
            lander[lander.index("--topic") + 1], lander[lander.index("--dlq-topic") + 1]} == created
    assert consumer[consumer.index("--bootstrap") + 1] == env["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]


def test_spark_has_the_delta_jars_the_image_downloads():
    conf = (REPO / "deploy/spark/spark-defaults.conf").read_text()
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    jars = re.search(r"^spark\.jars\s+(\S+)", conf, re.M).group(1).split(",")
    version = re.search(r"ARG DELTA_VERSION=(\S+)", dockerfile).group(1)
    assert {Path(j).name for j in jars} == {f"delta-spark_2.13-{version}.jar", f"delta-storage-{version}.jar"}
    assert "io.delta.sql.DeltaSparkSessionExtension" in conf
    worker = argv(SERVICES["spark-worker"])
    master = argv(SERVICES["spark-master"])
    assert worker[2] == f"spark://spark-master:{master[master.index('--port') + 1]}"
    assert SERVICES["airflow-scheduler"]["environment"]["PINREC_SPARK_MASTER"] == worker[2]


def test_gpu_scorer_reserves_a_device():
    svc = SERVICES["gpu-scorer"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert svc["profiles"] == ["gpu"]


def test_secrets_come_from_files_outside_the_repo():
    text = (REPO / "docker-compose.yml").read_text()
    inline = re.findall(r"^\s*(\w*(?:PASSWORD|SECRET|TOKEN)\w*):\s*(\S+)", text, re.M)
    assert all(k.endswith("_FILE") for k, _ in inline), f"a secret value is inline: {inline}"
    ignore = (REPO / "deploy/secrets/.gitignore").read_text().split()
    assert "*" in ignore
    assert COMPOSE["secrets"]["airflow-passwords"]["file"].startswith("deploy/secrets/")
    example = (REPO / "deploy/env.example").read_text()
    keys = {line.split("=")[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert {"POSTGRES_PASSWORD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET",
            "PINREC_API_TOKEN"} <= keys
    for line in example.splitlines():
        if re.match(r"\w*(PASSWORD|SECRET|TOKEN)\w*=", line):
            assert "CHANGE-ME" in line, line


@pytest.mark.parametrize("path", ["requirements.txt", "constraints.txt", "pyproject.toml", "dags"])
def test_dockerfile_copies_what_exists(path):
    assert (REPO / path).exists()
    assert path.split("/")[0] in (REPO / "deploy/Dockerfile").read_text() or path == "dags"


# ------------------------------------------------------------------------------------------------
# A real Compose implementation: `docker-compose config` parses, validates against the Compose
# schema, resolves anchors/merge keys, env files, profiles and secrets -- no engine needed.
# ------------------------------------------------------------------------------------------------

def _compose_project(root: Path, text: str) -> Path:
    """A project folder holding `text` as docker-compose.yml, with the files it names: deploy/
    from the repo and the secrets made from deploy/env.example, as an operator would."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docker-compose.yml").write_text(text)
    shutil.copytree(REPO / "deploy", root / "deploy", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("secrets"))
    (root / "deploy/secrets").mkdir(exist_ok=True)
    shutil.copy(REPO / "deploy/env.example", root / "deploy/secrets/pinrec.env")
    (root / "deploy/secrets/airflow-passwords.json").write_text('{"ops": "x"}\n')
    return root


def _compose_config(project: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Compose 1.29) is not installed; `make sysdeps` installs it "
                    "(apt-get install docker-compose)")
    return subprocess.run([exe, "-p", "pinrec", "--profile", "gpu", "config"], cwd=project,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    project = _compose_project(tmp_path_factory.mktemp("compose"), (REPO / "docker-compose.yml").read_text())
    res = _compose_config(project)
    assert res.returncode == 0, f"docker-compose rejects docker-compose.yml: {res.stderr}"
    return yaml.safe_load(res.stdout)


def test_real_compose_renders_every_service_with_merge_keys_resolved(rendered):
    services = rendered["services"]
    assert set(services) == EXPECTED
    for name, svc in services.items():
        if svc["image"].startswith("pinrec"):
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert svc["environment"]["PINREC_LAKE"] == "/lake", name
    scheduler = services["airflow-scheduler"]["environment"]
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert scheduler["PINREC_SPARK_DRIVER_HOST"] == "airflow-scheduler"
    # env_file values arrive in the rendered environment: the secrets file is really read
    assert "CHANGE-ME" in scheduler["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert rendered["secrets"]["airflow-passwords"]["file"].endswith("deploy/secrets/airflow-passwords.json")


def test_compose_spark_services_run_the_cluster_the_tests_start(rendered):
    from jobs.spark_cluster import master_argv, worker_argv

    services = rendered["services"]
    master, worker = services["spark-master"]["command"], services["spark-worker"]["command"]
    port = int(master[master.index("--port") + 1])
    assert master == master_argv("spark-master", port, int(master[master.index("--webui-port") + 1]))
    url = f"spark://spark-master:{port}"
    assert worker == worker_argv(url, int(worker[worker.index("--cores") + 1]),
                                 worker[worker.index("--memory") + 1],
                                 int(worker[worker.index("--webui-port") + 1]))
    assert services["airflow-scheduler"]["environment"]["PINREC_SPARK_MASTER"] == url


@pytest.mark.parametrize("broken, error", [
    ("name: pinrec\n", "'name' does not match any of the regexes"),
    ("services:\n  extra:\n    image: busybox\n    depends_on: [nowhere]\n", "nowhere"),
    ("services:\n  extra:\n    image: busybox\n    ports: ['127.0.0.1:x:80']\n", "ports"),
])
def test_real_compose_rejects_broken_files(tmp_path, broken, error):
    """The validator can fail: the top-level `name:` key Compose 1.29 does not know (why this
    file gives the project name with -p), a dependency on an unknown service, a bad port."""
    text = (REPO / "docker-compose.yml").read_text()
    if broken.startswith("services:"):
        text = text.replace("services:\n", broken, 1)
    else:
        text = broken + text
    res = _compose_config(_compose_project(tmp_path, text))
    assert res.returncode != 0
    assert error in res.stderr, res.stderr


def test_no_top_level_name_key():
    assert "name" not in COMPOSE, "Compose 1.29 rejects a top-level name: use -p pinrec"
