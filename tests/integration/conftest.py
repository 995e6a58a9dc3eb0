"""Integration fixtures: ONE Spark session for the whole test run (start-up costs 8-15 s)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def spark():
    from jobs.spark import SparkConfig, get_session

    session = get_session(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g",
                                      app_name="pinrec-tests"))
    yield session
    session.stop()
