"""`pinrec sequences --master spark://HOST:PORT` on a real Spark standalone cluster: a master and
two workers started from the pyspark wheel (jobs/spark_cluster.py, the compose stack's command),
checked against the same job on local[2], and checked to have really run on both workers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.sequences import SequencesConfig, run_job
from jobs.spark_cluster import ClusterConfig, StandaloneCluster
from pinrec.core.layout import Lake

REPO = Path(__file__).resolve().parents[2]
DS = "2026-01-12"
KW = dict(max_len=7, window_days=6)  # the window edge and the cap both bite


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: a Spark standalone cluster needs Java 17 (apt install openjdk-17-jre)")
    c = StandaloneCluster.start(ClusterConfig(workers=2, cores_per_worker=1, memory_per_worker="1g"),
                                tmp_path_factory.mktemp("spark-cluster"))
    yield c
    c.stop()
    assert all(p.poll() is not None for p in c.procs), "a Spark daemon outlived stop()"


def _synth(lake_root: Path) -> None:
    from jobs.data_cli import run_synth
    from jobs.synth import SynthConfig

    run_synth(SynthConfig(users=300, days=12, seed=5, items=400, clusters=8, p_active=0.5,
                          events_per_session=4.0, start="2026-01-01"), str(lake_root))


def _pinrec(*argv: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "pinrec.cli", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sequences_on_a_standalone_cluster_equal_the_local_run(spark, cluster, tmp_path):
    local, remote = Lake.at(tmp_path / "local"), Lake.at(tmp_path / "cluster")
    _synth(local.root)
    shutil.copytree(local.root, remote.root)  # the very same events table for both runs

    run_job(spark, SequencesConfig(ds=DS, lake=str(local.root), mode="full", **KW))
    apps_before = len(cluster.status()["completedapps"])
    res = _pinrec("sequences", "--lake", str(remote.root), "--ds", DS, "--mode", "full",
                  "--max-len", str(KW["max_len"]), "--window-days", str(KW["window_days"]),
                  "--master", cluster.master_url, "--shuffle-partitions", "4",
                  "--driver-memory", "1g", "--executor-memory", "1g")
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"sequences ds={DS} mode=full" in res.stdout

    # It ran on the cluster, on both workers: one finished application, one executor folder
    # per worker (a local[N] driver would leave the master's list empty).
    apps = cluster.status()["completedapps"]
    assert len(apps) == apps_before + 1 and "pinrec" in {a["name"] for a in apps}
    executors = sorted(p.parent.name for p in (cluster.work_dir / "work").glob("app-*/*/stderr"))
    assert len(executors) == 2, f"expected one executor per worker, found {executors}"

    from pinrec.core.sequences_store import read_sequences  # sequences as of DS (day rows + checkpoints)

    want = read_sequences(DeltaRsTables(local), DS).sort_by("user_id").combine_chunks()
    got = read_sequences(DeltaRsTables(remote), DS).sort_by("user_id").combine_chunks()
    assert want.num_rows > 200
    assert got.schema == want.schema
    assert got.equals(want)


def test_a_bad_master_url_is_refused_before_spark_starts(tmp_path):
    res = _pinrec("sequences", "--lake", str(tmp_path), "--ds", DS, "--master", "spark://nohost")
    assert res.returncode == 2
    assert "--master 'spark://nohost' is not a Spark master URL" in res.stderr
    assert "spark://HOST:PORT" in res.stderr
