"""`pinrec score --nproc N`: one scoring process per GPU, one Delta commit for all of them.

The launcher makes one staging folder inside candidates/ds=D/, runs N workers with torchrun
(which stops every worker when one fails), and each worker scores the users whose stable hash
(splitmix64 of user_id, mod N) is its rank, through the same array path as one process, into
rank-prefixed Parquet files plus a `_rankNNN.json` note written last. Only when torchrun
exits 0 and all N notes are there does the launcher commit every file in ONE transaction that
replaces the partition; otherwise it deletes the staging folder, so a failed rank leaves the
partition exactly as it was (files never committed are invisible to Delta readers anyway).

The workers need no process group: scoring a user depends on nobody else's users.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from pinrec_model.distributed import context_from_env, launched_by_torchrun, rank_device, torchrun, user_shard

__all__ = ["Shard", "ShardFailed", "launch", "run_worker", "shard_batches", "launched_by_torchrun"]


class ShardFailed(RuntimeError):
    """A scoring rank failed: nothing was committed."""


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world` scoring processes, writing into the launcher's `staging` folder."""

    rank: int
    world: int
    staging: Path

    @property
    def file_prefix(self) -> str:
        return f"rank{self.rank:03d}-"

    @property
    def note(self) -> Path:
        return self.staging / f"_rank{self.rank:03d}.json"

    def batches(self, batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
        return shard_batches(batches, self.rank, self.world, batch_size)


def shard_batches(batches: Iterable[pa.RecordBatch], rank: int, world: int,
                  batch_size: int) -> Iterator[pa.RecordBatch]:
    """The rows of `batches` whose user hashes to `rank`, re-cut into batches of exactly
    `batch_size` rows (the last one shorter): the device sees the batch shapes a single
    process sees, so the compiled prefill does not recompile for every ragged shard batch."""
    buf: list[pa.RecordBatch] = []
    have = 0
    for b in batches:
        mine = b.filter(pa.array(user_shard(b.column("user_id").to_numpy(), world) == rank))
        if mine.num_rows == 0:
            continue
        buf.append(mine)
        have += mine.num_rows
        while have >= batch_size:
            t = pa.Table.from_batches(buf).combine_chunks()
            yield t.slice(0, batch_size).to_batches()[0]
            rest = t.slice(batch_size)
            buf, have = rest.to_batches(), rest.num_rows
    if have:
        yield pa.Table.from_batches(buf).combine_chunks().to_batches()[0]


def run_worker(cfg, shard_dir: str | None, run_job) -> dict:
    """One rank (inside torchrun): score this rank's users into the shared staging folder with
    `run_job` (jobs.score's, handed in: that module imports this one)."""
    if not launched_by_torchrun():
        raise ValueError("--shard-dir is set by `pinrec score --nproc N` for its workers; run that instead")
    if not shard_dir:
        raise ValueError("pinrec score under torchrun: use `pinrec score --nproc N` (it starts torchrun "
                         "and commits every rank's files in one transaction)")
    ctx = context_from_env()
    shard = Shard(ctx.rank, ctx.world_size, Path(shard_dir))
    stats = run_job(replace(cfg, device=rank_device(cfg.device, ctx)), progress=ctx.is_main, shard=shard)
    stats |= {"rank": shard.rank, "world": shard.world}
    tmp = shard.note.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    tmp.rename(shard.note)  # last: a rank without its note did not finish
    return stats


def launch(cfg, nproc: int, cli_args: list[str] | None = None) -> int:
    """Run `pinrec score` as nproc torchrun workers, then commit all their files at once."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    from pinrec.core.sequences_store import sequences_partitions

    tables = DeltaRsTables(Lake.at(cfg.lake))
    if cfg.ds not in sequences_partitions(tables):
        raise ValueError(f"no sequences for ds={cfg.ds}; run `pinrec sequences --ds {cfg.ds}` first")
    staging = tables.staging_dir("candidates", cfg.ds)
    staging.mkdir(parents=True)
    args = list(sys.argv[1:] if cli_args is None else cli_args)
    t0 = time.perf_counter()
    try:
        rc = torchrun(nproc, [*args, "--shard-dir", str(staging)])
        notes = sorted(staging.glob("_rank*.json"))
        if rc != 0 or len(notes) != nproc:
            raise ShardFailed(f"pinrec score --nproc {nproc}: torchrun exited {rc} with {len(notes)} of "
                              f"{nproc} ranks finished; nothing was committed, candidates@{cfg.ds} is "
                              f"unchanged (the rank's error is above); re-run the task")
        ranks = [json.loads(n.read_text()) for n in notes]
        version = tables.commit_partition_files("candidates", staging, cfg.ds)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, ShardFailed):
            print(str(e), file=sys.stderr)
            return 1
        raise
    secs = time.perf_counter() - t0
    users = sum(r["users"] for r in ranks)
    print(json.dumps({"ds": cfg.ds, "nproc": nproc, "users": users, "rows": sum(r["rows"] for r in ranks),
                      "seconds": round(secs, 3), "users_per_s": round(users / max(secs, 1e-9), 1),
                      "rank_users_per_s": [r["users_per_s"] for r in ranks],
                      "model_version": ranks[0]["model_version"], "table_version": version}))
    return 0


def shard_sizes(user_ids: np.ndarray, world: int) -> list[int]:
    """Users per rank (for capacity planning and tests)."""
    return np.bincount(user_shard(user_ids, world), minlength=world).tolist()
