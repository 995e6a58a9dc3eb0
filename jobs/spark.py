"""The Spark session helper: one place that knows how PinRec talks to Spark.

Runs on `local[N]` here and on a cluster unchanged: the master and any Spark conf come from
`SparkConfig` (the `--master` / `--spark-conf` flags), never from code. `--master
spark://HOST:PORT` runs the job on a Spark standalone cluster (`jobs/spark_cluster.py` starts one
from the pyspark wheel; the compose stack runs the same daemons); executors then reach the driver
at `--driver-host`, which must be an address they can connect to (127.0.0.1 when the cluster
runs on this machine, the scheduler's host name in the compose stack). Defaults are tuned for a
small machine (DESIGN.md §4): few shuffle partitions, UI off, driver bound to 127.0.0.1.

Spark writes Parquet timestamps as TIMESTAMP_MICROS in UTC so delta-rs can commit the files as
they are (no INT96, no rewrite). The Delta Spark jars are optional: when `delta_jars` are given
(the compose stack mounts them) the session gets the Delta extension and catalog, and
`pinrec.core.lake_spark.delta_available(spark)` tells the lake adapter it may use the
delta-spark back end.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "pinrec"
    shuffle_partitions: int = 4
    driver_memory: str = "3g"
    # Must fit a worker's --memory, or a standalone cluster never grants an executor (the job waits).
    executor_memory: str = "1g"
    driver_host: str = "127.0.0.1"
    delta_jars: tuple[str, ...] = ()
    conf: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self):
        check_master(self.master)

    @staticmethod
    def from_args(args: argparse.Namespace) -> "SparkConfig":
        jars = tuple(j for j in (args.delta_jars or "").split(",") if j)
        return SparkConfig(master=args.master, shuffle_partitions=args.shuffle_partitions,
                           driver_memory=args.driver_memory, executor_memory=args.executor_memory,
                           driver_host=args.driver_host, delta_jars=jars,
                           conf=tuple(parse_conf(c) for c in args.spark_conf))


_MASTER = re.compile(r"^(local(\[(\d+|\*)(,\d+)?\])?|spark://[^\s:/]+:\d+(,[^\s:/]+:\d+)*"
                     r"|yarn|k8s://\S+)$")


def check_master(master: str) -> None:
    """Reject a master URL Spark would only fail on after a long start-up."""
    if not _MASTER.match(master):
        raise ValueError(f"--master {master!r} is not a Spark master URL; use local[N], "
                         f"spark://HOST:PORT (a standalone cluster), yarn or k8s://URL")


def parse_conf(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--spark-conf expects KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()


def add_spark_args(p: argparse.ArgumentParser) -> None:
    d = SparkConfig()
    p.add_argument("--master", default=os.environ.get("PINREC_SPARK_MASTER", d.master),
                   help=f"Spark master URL (default: $PINREC_SPARK_MASTER or {d.master})")
    p.add_argument("--shuffle-partitions", type=int, default=d.shuffle_partitions,
                   help="spark.sql.shuffle.partitions (raise it on a cluster)")
    p.add_argument("--driver-memory", default=d.driver_memory)
    p.add_argument("--executor-memory", default=d.executor_memory,
                   help="per executor on a cluster; must fit a worker's --memory")
    p.add_argument("--driver-host", default=os.environ.get("PINREC_SPARK_DRIVER_HOST", d.driver_host),
                   help="address executors use to reach this driver (default: "
                        f"$PINREC_SPARK_DRIVER_HOST or {d.driver_host})")
    p.add_argument("--delta-jars", default=os.environ.get("PINREC_DELTA_JARS", ""),
                   help="comma-separated Delta Spark jars; enables the delta-spark back end")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark conf, repeatable")


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    """The Spark conf for `cfg` (pure, so it can be tested without a JVM)."""
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.default.parallelism": str(cfg.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": cfg.driver_host,
        # Loopback stays loopback; any other host name must accept executors' connections.
        "spark.driver.bindAddress": cfg.driver_host if cfg.driver_host == "127.0.0.1" else "0.0.0.0",
        "spark.driver.memory": cfg.driver_memory,
        "spark.executor.memory": cfg.executor_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Spark's _SUCCESS markers are not Parquet; delta-rs must only ever see data files.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
        "spark.sql.adaptive.enabled": "true",
    }
    if cfg.delta_jars:
        conf["spark.jars"] = ",".join(cfg.delta_jars)
        conf["spark.sql.extensions"] = "io.delta.sql.DeltaSparkSessionExtension"
        conf["spark.sql.catalog.spark_catalog"] = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    conf.update(dict(cfg.conf))
    return conf


def get_session(cfg: SparkConfig = SparkConfig()):
    """Start (or reuse) the Spark session for `cfg`."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    for k, v in session_conf(cfg).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
