"""`pinrec score --nproc 2` (two torchrun workers on CPU) against real Delta tables: the same
rows as one process, published by ONE commit; a rank killed mid-run leaves the partition as it
was. The lake is written without Spark: sequences and items through the lake adapter, a real
(randomly initialised) model, the day's Faiss index."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bench.score_bench import synthetic_sequences
from pinrec.core.lake import DeltaRsTables
from jobs.score import ScoreConfig
from jobs.score import run_job as run_score
from jobs.score_shards import shard_batches, shard_sizes
from pinrec.core.layout import Lake

REPO = Path(__file__).resolve().parents[2]
DS = "2026-01-14"
USERS, ITEMS, HIST = 240, 300, 24
ARGS = ["--ds", DS, "--model-version", "m1", "--n", "8", "--batch-size", "16", "--device", "cpu",
        "--retrieval", "exact"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    import torch

    from jobs.index import IndexConfig
    from jobs.index import run_job as run_index
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.api import save_model
    from pinrec_model.config import preset
    from pinrec_model.model import PinRec

    root = tmp_path_factory.mktemp("sharded") / "lake"
    lake = Lake.at(root)
    tables = DeltaRsTables(lake)
    seq = synthetic_sequences(USERS, HIST, ITEMS, seed=1)
    tables.replace_partitions("sequences", seq.append_column("ds", pa.array([DS] * USERS)), [DS])
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(ITEMS, 32)).astype(np.float32)
    items = pa.table({"item_id": np.arange(1, ITEMS + 1, dtype=np.int64), "item_type": ["pin"] * ITEMS,
                      "features": list(feats), "first_seen": pa.nulls(ITEMS, pa.timestamp("us", tz="UTC")),
                      "last_seen": pa.nulls(ITEMS, pa.timestamp("us", tz="UTC")),
                      "engagements": np.ones(ITEMS, np.int64), "ds": [DS] * ITEMS})
    tables.replace_partitions("items", items, [DS])
    torch.manual_seed(0)
    save_model(lake.version_dir("models", "m1"), PinRec(preset("small", variant="mt_oc", feature_dim=32)),
               None, PINTEREST_ACTIONS, {"note": "random init: the test checks plumbing"})
    run_index(IndexConfig(ds=DS, lake=str(root), model_version="m1", publish=False, device="cpu"))
    return lake


def _rows(lake) -> list[dict]:
    t = DeltaRsTables(lake).read("candidates", [DS])
    return sorted(t.to_pylist(), key=lambda r: (r["user_id"], r["arm"], r["rank"]))


def _sharded(lake, nproc=2, **kw):
    cmd = [sys.executable, "-m", "pinrec.cli", "score", "--lake", str(lake.root), *ARGS, "--nproc", str(nproc)]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_shard_batches_split_users_without_overlap_in_full_batches():
    seq = synthetic_sequences(100, 4, 50, seed=0)
    parts = [list(shard_batches(seq.to_batches(max_chunksize=7), r, 3, 8)) for r in range(3)]
    users = [np.concatenate([b.column("user_id").to_numpy() for b in p]) for p in parts]
    assert sorted(np.concatenate(users).tolist()) == list(range(1, 101))  # each user once
    assert [len(u) for u in users] == shard_sizes(np.arange(1, 101), 3)
    for p in parts:  # every batch but the last has exactly batch_size rows
        assert all(b.num_rows == 8 for b in p[:-1]) and 0 < p[-1].num_rows <= 8


def test_two_ranks_write_the_rows_of_one_process_in_one_commit(lake):
    tables = DeltaRsTables(lake)
    single = run_score(ScoreConfig(lake=str(lake.root), ds=DS, model_version="m1", n=8, batch_size=16,
                                   device="cpu", retrieval="exact"), progress=False)
    one = _rows(lake)
    assert single["users"] == USERS and len(one) == single["rows"] > 0
    before = tables.version("candidates")

    p = _sharded(lake)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["nproc"] == 2 and stats["users"] == USERS
    assert _rows(lake) == one  # every column, scores included, row for row
    assert tables.version("candidates") == before + 1  # all shards published by one commit
    files = [Path(f).name for f in tables.live_files("candidates", [DS])]
    assert {f.split("-")[0] for f in files} == {"rank000", "rank001"}
    assert not list((lake.table("candidates") / f"ds={DS}").glob("run-*/_rank*"))  # notes gone


def test_a_killed_rank_leaves_the_partition_as_it_was(lake):
    import psutil

    tables = DeltaRsTables(lake)
    run_score(ScoreConfig(lake=str(lake.root), ds=DS, model_version="m1", n=8, batch_size=16,
                          device="cpu", retrieval="exact"), progress=False)
    before_rows, before_version = _rows(lake), tables.version("candidates")
    part = lake.table("candidates") / f"ds={DS}"
    before_dirs = {d.name for d in part.iterdir()}

    p = _sharded(lake)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline and p.poll() is None:
        # rank 1, once it has opened its first output file (it is mid-run)
        if list(part.glob("run-*/rank001-part-*.parquet")):
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    if c.environ().get("RANK") == "1" and "pinrec.cli" in " ".join(c.cmdline()):
                        victim = c
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.02)
    assert victim is not None, "rank 1 never started writing"
    victim.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "nothing was committed" in err
    assert tables.version("candidates") == before_version
    assert _rows(lake) == before_rows
    assert {d.name for d in part.iterdir()} == before_dirs  # the shards' staging folder is gone
