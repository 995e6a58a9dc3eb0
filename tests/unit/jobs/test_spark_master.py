"""The --master / --driver-host options and the standalone daemons' argv (no JVM needed)."""
from __future__ import annotations

import argparse

import pytest

from jobs.spark import SparkConfig, add_spark_args, session_conf
from jobs.spark_cluster import ClusterConfig, master_argv, worker_argv


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_spark_args(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local[4,2]",
                                    "spark://127.0.0.1:7077", "spark://spark-master:7077",
                                    "spark://a:7077,b:7077", "yarn", "k8s://https://k:443"])
def test_master_urls_spark_accepts(master):
    assert SparkConfig.from_args(_args("--master", master)).master == master


@pytest.mark.parametrize("master", ["spark://nohost", "spark://h:p", "local[two]", "mesos", ""])
def test_bad_master_urls_name_the_fix(master):
    with pytest.raises(ValueError, match=r"not a Spark master URL; use local\[N\], spark://HOST:PORT"):
        SparkConfig.from_args(_args("--master", master))


def test_the_master_flag_reaches_the_session_conf_and_driver_host_binds_where_it_must():
    cfg = SparkConfig.from_args(_args("--master", "spark://10.0.0.5:7077", "--driver-host",
                                      "airflow-scheduler", "--executor-memory", "2g"))
    conf = session_conf(cfg)
    assert (cfg.master, conf["spark.driver.host"]) == ("spark://10.0.0.5:7077", "airflow-scheduler")
    assert conf["spark.driver.bindAddress"] == "0.0.0.0" and conf["spark.executor.memory"] == "2g"
    local = session_conf(SparkConfig())
    assert local["spark.driver.host"] == local["spark.driver.bindAddress"] == "127.0.0.1"


def test_driver_host_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PINREC_SPARK_DRIVER_HOST", "airflow-scheduler")
    assert SparkConfig.from_args(_args()).driver_host == "airflow-scheduler"


def test_daemon_argv_is_what_the_compose_stack_runs():
    assert master_argv("spark-master", 7077, 8081) == [
        "spark-class", "org.apache.spark.deploy.master.Master", "--host", "spark-master",
        "--port", "7077", "--webui-port", "8081"]
    assert worker_argv("spark://spark-master:7077", 4, "8g", 8082) == [
        "spark-class", "org.apache.spark.deploy.worker.Worker", "spark://spark-master:7077",
        "--cores", "4", "--memory", "8g", "--webui-port", "8082"]
    with pytest.raises(ValueError, match="at least one worker"):
        ClusterConfig(workers=0)
