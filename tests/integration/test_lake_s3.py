"""The lake on object storage: the batch chain for two days against `s3://` on a local
moto_server, with two concurrent writers, a failed publish and `pinrec sql` reading it back.

Each step is the `pinrec` sub-command an Airflow task runs (`pinrec.cli.main`, in this process
to spare CI a torch import per step); the two concurrent writers are separate processes with
separate working folders, as two Airflow workers would be (docs/adr/0003-lake-on-object-storage.md)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streaming.broker import free_port

from . import moto_s3

REPO = Path(__file__).resolve().parents[2]
BUCKET = "pinrec-lake"
LAKE = f"s3://{BUCKET}/prod"
DAYS = ("2026-01-09", "2026-01-10")


def _version(ds: str) -> str:
    return f"d{ds.replace('-', '')}-sasrec-small"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto_server with the lake's bucket; the AWS environment delta-rs and pyarrow read."""
    work = tmp_path_factory.mktemp("s3lake")
    server = moto_s3.start(free_port(), log=work / "moto.log")
    server.bucket = BUCKET
    server._create_bucket()
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ALLOW_HTTP": "true",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "PINREC_LAKE_CACHE": str(work / "cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env | {"work": work}
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    server.stop()


def _cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "pinrec.cli", *argv]


def _env(s3: dict, cache: str = "cache") -> dict:
    # Every process gets its own working folder, as separate Airflow workers would.
    return os.environ | {"PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1",
                         "PINREC_LAKE_CACHE": str(s3["work"] / cache)}


def pinrec(s3: dict, *argv: str) -> int:
    from pinrec.cli import main

    rc = main(list(argv))
    assert rc == 0, f"pinrec {' '.join(argv)} exited {rc}"
    return rc


def batch_day(s3: dict, ds: str, concurrent_rerun: str | None = None) -> None:
    common = ["--ds", ds, "--lake", LAKE]
    pinrec(s3, "sequences", *common, "--max-len", "32", "--window-days", "7",
           "--shuffle-partitions", "2", "--driver-memory", "1g")
    if concurrent_rerun:
        # Two writers on the same table at once, from two processes with separate working
        # folders: today's items and a re-run of an earlier day's items.
        procs = [subprocess.Popen(_cmd("items", "--ds", d, "--lake", LAKE), env=_env(s3, f"w{i}"),
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, d in enumerate((ds, concurrent_rerun))]
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-4000:]
    else:
        pinrec(s3, "items", *common)
    v = _version(ds)
    pinrec(s3, "train", *common, "--variant", "sasrec", "--preset", "small", "--version", v,
           "--epochs", "1", "--max-seconds", "5", "--quiet", "--device", "cpu")
    pinrec(s3, "index", *common, "--model-version", v, "--no-publish", "--kind", "flat")
    pinrec(s3, "score", *common, "--model-version", v, "--index-version", f"{ds}.{v}",
           "--device", "cpu", "--n", "10")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_batch_chain_on_s3_two_days_concurrent_writers_failed_publish_and_sql(s3, capsys):
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.lake_releases import append_release, latest_release
    from pinrec.core.layout import Lake, current, current_release, published_candidates

    lake = Lake.at(LAKE)
    pinrec(s3, "data", "synth", "--users", "150", "--days", "10", "--items", "300",
           "--start", "2026-01-01", "--lake", LAKE)

    # Day 1, published.
    batch_day(s3, DAYS[0])
    pinrec(s3, "gate", "publish", "--ds", DAYS[0], "--lake", LAKE, "--model-version", _version(DAYS[0]),
           "--index-version", f"{DAYS[0]}.{_version(DAYS[0])}")
    first = latest_release(lake)
    assert (first.model, first.index, first.candidates_ds) == (
        _version(DAYS[0]), f"{DAYS[0]}.{_version(DAYS[0])}", DAYS[0])

    tables = DeltaRsTables(lake)
    items_day1 = tables.read("items", [DAYS[0]]).sort_by("item_id")
    items_version = tables.version("items")

    # Day 2 with two concurrent writers on `items`.
    batch_day(s3, DAYS[1], concurrent_rerun=DAYS[0])
    assert tables.partitions("items") == list(DAYS)
    assert tables.version("items") == items_version + 2  # both commits landed, neither lost
    assert tables.read("items", [DAYS[0]]).sort_by("item_id").equals(items_day1)  # idempotent re-run

    # A failed publish (the model version does not exist) leaves the release as it was.
    from pinrec.cli import main

    capsys.readouterr()
    rc = main(["gate", "publish", "--ds", DAYS[1], "--lake", LAKE, "--model-version", "no-such-model",
               "--index-version", f"{DAYS[1]}.{_version(DAYS[1])}"])
    assert rc == 2 and "version 'no-such-model'" in capsys.readouterr().err
    assert latest_release(lake) == first

    pinrec(s3, "gate", "publish", "--ds", DAYS[1], "--lake", LAKE, "--model-version", _version(DAYS[1]),
           "--index-version", f"{DAYS[1]}.{_version(DAYS[1])}")
    second = latest_release(lake)
    assert second.seq == first.seq + 1
    assert (second.model, second.index, second.candidates_ds) == (
        _version(DAYS[1]), f"{DAYS[1]}.{_version(DAYS[1])}", DAYS[1])
    assert published_candidates(lake) == DAYS[1]
    assert current_release(lake) == second
    assert current(lake, "models").name == _version(DAYS[1])
    assert (current(lake, "index") / "_COMPLETE").is_file()

    # Versions are immutable: a published version is never uploaded over.
    with pytest.raises(FileExistsError, match="versions are immutable"):
        lake.push_version("models", _version(DAYS[1]))

    # Two concurrent publishers: each release gets its own seq, none is lost.
    results: list = []
    threads = [threading.Thread(target=lambda ds=ds: results.append(append_release(lake, candidates_ds=ds)))
               for ds in DAYS]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert sorted(r.seq for r in results) == [second.seq + 1, second.seq + 2]
    assert latest_release(lake).seq == second.seq + 2

    # Analysts: `pinrec sql` over the s3:// lake sees both days, as the adapter does.
    out = s3["work"] / "per_day.parquet"
    pinrec(s3, "sql", "--lake", LAKE, "--out", str(out),
           "SELECT ds, count(*) AS n FROM candidates GROUP BY ds ORDER BY ds")
    rows = pq.read_table(out).to_pylist()
    want = [{"ds": d, "n": tables.dataset("candidates", [d]).count_rows()} for d in DAYS]
    assert rows == want and all(r["n"] > 0 for r in rows)

    # Nothing of the lake itself was written to local disk: the tables live in S3 only.
    cache = s3["work"] / "cache" / BUCKET / "prod"
    assert not (cache / "tables" / "events" / "_delta_log").exists()
    from pinrec.core.sequences_store import sequences_partitions

    assert sequences_partitions(tables) == ["2026-01-09", "2026-01-10"]  # day rows + checkpoints on S3
