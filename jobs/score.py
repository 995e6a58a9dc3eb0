"""`pinrec score --ds D [--arms ARMS.json]`: outcome-conditioned candidates for every user and arm.

read (sequences@ds, items@ds, model version, its index) -> generate -> write candidates@ds.

An arm is a named budget over engagement actions (an experiment group). The arms are the run's
(`pinrec gate params` wrote them to the lake's params file of ds), else `--arms`, else
pinrec.core.budgets.DEFAULT_ARMS; they are parsed once, here, into `Arms`. For each batch of
users the model prefills their histories, generates conditioned embeddings per arm with
multi-token steps, allocates the budget and retrieves, excluding items already in the history:
exact search on the device, or the published Faiss index (which can also compress near-duplicate
embeddings), one interface chosen when the job is configured (`jobs.score_retrieval`). Users
stream through in batches (bounded memory) with a progress bar; rows are spooled as Parquet into
the table folder and committed in one transaction that replaces the partition, so a re-run leaves
exactly the rows one run leaves. `generated_at` is the data cutoff of ds (the as-of time of the
histories), not the wall clock, for the same reason. Publishing candidates to serving is not
this job's business: the quality gate does it (`pinrec gate publish`).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from pinrec.core.budgets import DEFAULT_ARMS, Arms
from pinrec.core.contracts import CANDIDATES_SCHEMA, TS_TYPE, ActionVocab, cutoff_us, parse_ds
from pinrec.core.layout import Lake

from jobs.score_retrieval import BatchRetrieval, build_retrieval, resolve_index

ROWS_PER_FILE = 2_000_000
FILE_SCHEMA = pa.schema([f for f in CANDIDATES_SCHEMA if f.name != "ds"])


@dataclass(frozen=True)
class ScoreConfig:
    ds: str
    lake: str
    arms: str | None = None  # ARMS.json; default: the run's params file of ds, else DEFAULT_ARMS
    model_version: str | None = None  # default: models/CURRENT
    index_version: str | None = None  # default: the index built for (ds, model), else CURRENT
    n: int = 50  # candidates per user and arm
    batch_size: int = 512
    device: str = "auto"
    tokens_per_step: int | None = None
    compression_threshold: float | None = None
    max_users: int | None = None  # for smoke runs and benchmarks
    bf16: bool = True  # bfloat16 weights on CUDA (inference; CPU stays fp32)
    # faiss: the published index, per-user selection. exact: one matmul per batch on the model's
    # device against the pins of items@ds embedded by the same model, vectorised selection (the
    # GPU path). auto: exact on CUDA up to 5M pins without compression, else faiss
    # (jobs.score_retrieval.build_retrieval).
    retrieval: str = "auto"
    compile: bool = True  # torch.compile the prefill on CUDA (fuses LayerNorm/GELU/residuals)

    def __post_init__(self):
        parse_ds(self.ds)
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("--n and --batch-size must be positive")
        if self.retrieval not in ("auto", "faiss", "exact"):
            raise ValueError(f"--retrieval {self.retrieval!r}: expected auto, faiss or exact")
        if self.retrieval == "exact" and self.compression_threshold is not None:
            raise ValueError("--retrieval exact does not compress; drop --compression-threshold "
                             "or use --retrieval faiss")


def inference_dtype(cfg: ScoreConfig) -> str | None:
    """bf16 weights on CUDA (`bf16`), the stored fp32 elsewhere."""
    import torch

    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    return "bfloat16" if cuda and cfg.bf16 else None


def compile_prefill(m, cfg: ScoreConfig) -> None:
    """On CUDA, give the model a compiled encode for the prefill (generation.prefill uses it).
    Shapes are static per batch (B, T): a job sees a handful (last batch, shorter histories)."""
    import torch

    if cfg.compile and str(m.device).startswith("cuda"):
        m.model.compiled_encode = torch.compile(m.model.encode, dynamic=False)


def resolve_arms(cfg: ScoreConfig, lake: Lake, vocab: ActionVocab) -> Arms:
    """The arms to score, parsed once: `--arms`, else the run's params file of ds (written by
    `pinrec gate params`), else DEFAULT_ARMS."""
    if cfg.arms is not None:
        return Arms.load(cfg.arms, vocab.engagement_actions)
    if lake.arms_file(cfg.ds).exists():
        return Arms.load(lake.arms_file(cfg.ds), vocab.engagement_actions)
    return Arms.parse(DEFAULT_ARMS, vocab.engagement_actions, "DEFAULT_ARMS")


def candidate_rows(user_ids: np.ndarray, res, arm: str, budget_json: str, model_version: str,
                   generated_at_us: int) -> pa.RecordBatch:
    """One arm's candidates for a batch of users -> rows of the candidates file (no per-row
    Python). user_ids [B] int64; res: a batch_generation.ArmResult on the host, [B, n], id -1 =
    no candidate: a user's rows are its candidates in order, ranked from 1."""
    B, n = res.item_ids.shape
    keep = res.item_ids.reshape(-1) >= 0
    rows = int(keep.sum())
    outcomes = pa.DictionaryArray.from_arrays(
        pa.array(res.outcome_codes.reshape(-1)[keep].astype(np.int32)),
        pa.array(res.outcomes, pa.string())).cast(pa.string())
    const = lambda v: pa.array([v], pa.string()).take(pa.array(np.zeros(rows, np.int32)))
    return pa.RecordBatch.from_arrays([
        pa.array(np.repeat(user_ids, n)[keep]), const(arm),
        pa.array(np.tile(np.arange(1, n + 1, dtype=np.int32), B)[keep]),
        pa.array(res.item_ids.reshape(-1)[keep]), pa.array(res.scores.reshape(-1)[keep], pa.float32()),
        outcomes, const(model_version), const(budget_json),
        pa.array(np.full(rows, generated_at_us, np.int64)).cast(TS_TYPE)], schema=FILE_SCHEMA)


class SpoolWriter:
    """Parquet files of FILE_SCHEMA in one folder, rolled every ROWS_PER_FILE rows, named
    <prefix>part-NNNNN.parquet (sharded scoring: one prefix per rank, one shared folder)."""

    def __init__(self, folder: Path, prefix: str = ""):
        self.folder, self.writer, self.rows_in_file, self.files, self.rows = folder, None, 0, 0, 0
        self.prefix = prefix
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        if self.writer is None or self.rows_in_file >= ROWS_PER_FILE:
            self.close()
            self.writer = pq.ParquetWriter(str(self.folder / f"{self.prefix}part-{self.files:05d}.parquet"),
                                           FILE_SCHEMA, compression="snappy")
            self.files += 1
            self.rows_in_file = 0
        self.writer.write_batch(batch)
        self.rows_in_file += batch.num_rows
        self.rows += batch.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Timings:
    """Seconds per phase of the scoring loop (the bench prints these)."""

    read: float = 0.0
    generate: float = 0.0
    write: float = 0.0
    users: int = 0


def score_batches(retrieval: BatchRetrieval, batches: Iterable[pa.RecordBatch], arms: Arms,
                  cfg: ScoreConfig, model_version: str, spool: SpoolWriter,
                  timings: Timings) -> Iterator[int]:
    """The scoring loop of the job and the bench, either retrieval: yields users done per batch.

    Three stages overlap: a prefetch thread prepares the next batches (`retrieval.prepare`),
    this thread generates, a writer thread waits for the results, makes rows and writes Parquet.
    Why threads: on CUDA the exact path launches a batch's device work and returns before it
    is done (results copy back into pinned memory behind a CUDA event); waiting for them here
    would idle the GPU while the host builds grids and writes rows. Overlapping them took the
    job past its 5k users/s bar on the H100 (772fe16). Arrow, numpy and Parquet release the GIL,
    so on the Faiss path the same stages overlap the host work with the search for free."""
    import contextlib
    import queue
    import threading

    import torch

    m = retrieval.model
    on_cuda = str(m.device).startswith("cuda")
    fp32_weights = next(m.model.parameters()).dtype == torch.float32
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda and cfg.bf16 and fp32_weights \
        else contextlib.nullcontext
    generated_at = cutoff_us(cfg.ds)
    budgets = {a: b.to_json() for a, b in arms.items()}
    prepared = _prefetch(retrieval.prepare(b) for b in batches)
    todo: queue.Queue = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def writer():
        while (item := todo.get()) is not None:
            try:
                user_ids, res = item
                t_w = time.perf_counter()
                for arm, r in res.items():
                    spool.write(candidate_rows(user_ids, r.host(), arm, budgets[arm], model_version,
                                               generated_at))
                timings.write += time.perf_counter() - t_w
            except BaseException as e:  # surfaced on the main thread; keep draining
                failed.append(e)

    w = threading.Thread(target=writer, daemon=True, name="score-writer")
    w.start()
    try:
        t0 = time.perf_counter()
        for batch in prepared:
            t1 = time.perf_counter()
            timings.read += t1 - t0
            with amp():
                user_ids, res = retrieval.generate(batch, arms, cfg.n, cfg.tokens_per_step)
            todo.put((user_ids, res))
            if failed:
                raise failed[0]
            t0 = time.perf_counter()
            timings.generate += t0 - t1
            timings.users += len(user_ids)
            yield len(user_ids)
    finally:
        todo.put(None)
        w.join()
    if failed:
        raise failed[0]


def _prefetch(it, depth: int = 2):
    """Run an iterator on a thread, `depth` items ahead (see score_batches for why)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for x in it:
                q.put(x)
            q.put(done)
        except BaseException as e:  # re-raised on the consumer's side
            q.put(e)

    threading.Thread(target=work, daemon=True, name="score-prefetch").start()
    while (x := q.get()) is not done:
        if isinstance(x, BaseException):
            raise x
        yield x


def run_job(cfg: ScoreConfig, progress: bool = True, shard=None) -> dict:
    """Score every user of sequences@ds for every arm and replace candidates@ds. With `shard`
    (a jobs.score_shards.Shard: one rank of `pinrec score --nproc N`), score this rank's users
    only, into the shared staging folder, and leave the commit to the launcher."""
    from tqdm import tqdm

    from jobs.index import resolve_model
    from pinrec.core.lake import DeltaRsTables
    from pinrec_model.api import ItemFeatures, load_model

    lake = Lake.at(cfg.lake)
    tables = DeltaRsTables(lake)
    from pinrec.core.sequences_store import sequences_dataset, sequences_partitions

    if cfg.ds not in sequences_partitions(tables):
        raise ValueError(f"no sequences for ds={cfg.ds}; run `pinrec sequences --ds {cfg.ds}` first")
    model_version, mdir = resolve_model(lake, cfg.model_version)
    t_load = time.perf_counter()
    m = load_model(mdir, device=cfg.device, dtype=inference_dtype(cfg))
    compile_prefill(m, cfg)
    arms = resolve_arms(cfg, lake, m.vocab)
    items = tables.read("items", [cfg.ds], columns=["item_id", "item_type", "features"])
    features = ItemFeatures.from_table(items, m.config.feature_dim)
    retrieval = build_retrieval(cfg, m, resolve_index(lake, cfg.ds, model_version, cfg.index_version),
                                items, features)
    load_s = time.perf_counter() - t_load

    seq = sequences_dataset(tables, cfg.ds)
    total = seq.count_rows()
    if cfg.max_users is not None:
        total = min(total, cfg.max_users)
    batches = _limit(seq.to_batches(columns=["user_id", "item_ids", "item_types", "actions",
                                             "surfaces", "ts"], batch_size=cfg.batch_size),
                     cfg.max_users)
    if shard is not None:
        batches, total = shard.batches(batches, cfg.batch_size), None
    staging = tables.staging_dir("candidates", cfg.ds) if shard is None else shard.staging
    spool, timings = SpoolWriter(staging, "" if shard is None else shard.file_prefix), Timings()
    t0 = time.perf_counter()
    try:
        with tqdm(total=total, unit="user", desc=f"score {cfg.ds}", disable=not progress or None) as bar:
            for done in score_batches(retrieval, batches, arms, cfg, model_version, spool, timings):
                bar.update(done)
        spool.close()
        t_commit = time.perf_counter()
        version = None if shard else tables.commit_partition_files("candidates", staging, cfg.ds)
        timings.write += time.perf_counter() - t_commit
    except BaseException:
        spool.close()
        import shutil

        if shard is None:  # a shard's files go with the whole staging folder (the launcher's)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    secs = time.perf_counter() - t0
    return {"ds": cfg.ds, "model_version": model_version, "arms": sorted(arms), "users": timings.users,
            "rows": spool.rows, "device": m.device, "seconds": round(secs, 3),
            "users_per_s": round(timings.users / max(secs, 1e-9), 1), "load_s": round(load_s, 3),
            "retrieval": retrieval.kind,
            "read_s": round(timings.read, 3), "generate_s": round(timings.generate, 3),
            "write_s": round(timings.write, 3), "table_version": version}


def _limit(batches, max_users):
    if max_users is None:
        yield from batches
        return
    left = max_users
    for b in batches:
        if left <= 0:
            return
        yield b.slice(0, left)
        left -= min(left, b.num_rows)


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_ds_arg, add_lake_arg

    d = ScoreConfig(ds="2000-01-01", lake="")
    add_lake_arg(p)
    add_ds_arg(p)
    p.add_argument("--arms", default=d.arms,
                   help="JSON file: arm name -> budget over actions (default: the run's arms, "
                        "written by `pinrec gate params`, else the default arms "
                        f"{sorted(DEFAULT_ARMS)})")
    p.add_argument("--model-version", help="model version (default: models/CURRENT)")
    p.add_argument("--index-version", help="Faiss index version (default: the one built for ds "
                                           "and the model, else index/CURRENT)")
    p.add_argument("--n", type=int, default=d.n, help="candidates per user and arm")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="users per batch")
    p.add_argument("--device", default=d.device, help="cpu | cuda | auto (CUDA when present)")
    p.add_argument("--tokens-per-step", type=int, help="multi-token generation: embeddings per step")
    p.add_argument("--compression-threshold", type=float, help="merge generated embeddings closer than this")
    p.add_argument("--max-users", type=int, help="score only the first N users (smoke runs)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="do not torch.compile the prefill on CUDA")
    p.add_argument("--retrieval", choices=("auto", "faiss", "exact"), default=d.retrieval,
                   help="faiss: the published index; exact: one matmul on the device (GPU path); "
                        "auto: exact on CUDA for catalogs up to 5M pins")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes, one per GPU: users split by a stable hash of user_id, each "
                        "rank writes its own files, one Delta commit publishes them all (torchrun)")
    p.add_argument("--shard-dir", help=argparse.SUPPRESS)  # set by --nproc for its workers


def run(args: argparse.Namespace) -> int:
    from jobs import score_shards

    cfg = ScoreConfig(ds=args.ds, lake=args.lake, arms=args.arms, model_version=args.model_version,
                      index_version=args.index_version, n=args.n, batch_size=args.batch_size,
                      device=args.device, tokens_per_step=args.tokens_per_step,
                      compression_threshold=args.compression_threshold, max_users=args.max_users,
                      retrieval=args.retrieval, compile=args.compile)
    if args.shard_dir or score_shards.launched_by_torchrun():
        print(json.dumps(score_shards.run_worker(cfg, args.shard_dir, run_job)))
        return 0
    if args.nproc > 1:
        return score_shards.launch(cfg, args.nproc)
    print(json.dumps(run_job(cfg)))
    return 0
