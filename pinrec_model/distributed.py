"""Data parallelism on torch.distributed: the process group, which rows a rank owns, and the
collectives the sampled softmax needs. `pinrec train --nproc N` and `pinrec score --nproc N`
launch their workers with torchrun (`torch.distributed.run`), which sets RANK, WORLD_SIZE and
LOCAL_RANK and tears every worker down when one fails.

Training (DDP): every rank holds the same model, the same catalog and the same seeded
generator, so it draws the same permutation and the same random negatives. Step s takes the
global batch perm[s*G:(s+1)*G] (G = per-rank batch x world) and rank r trains on the r-th
contiguous slice of it; per-row random draws are made for the whole global batch and sliced, so
rank r sees exactly the numbers a single process would give those rows. In-batch negatives are
gathered across ranks with gradient (each rank's item-tower output receives the gradient every
rank's loss sends it), and each rank's loss is its rows' sum over the global row count times
the world size, so DDP's gradient average is the gradient of the global batch's mean loss.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class BatchPart:
    """This rank's rows of a global batch: rows [start, start + B) of `global_rows`."""

    start: int
    global_rows: int


def launched_by_torchrun() -> bool:
    """True inside a worker that torchrun started (it sets these; a plain process has none)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def context_from_env() -> DistContext:
    if not launched_by_torchrun():
        return DistContext()
    return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def rank_device(device: str, ctx: DistContext) -> str:
    """One GPU per rank: `cuda` (or `auto` with CUDA present) -> cuda:<local rank>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def init_process_group(device: str) -> DistContext:
    """Join the job torchrun started: NCCL on CUDA, gloo on CPU. -> this process's context."""
    ctx = context_from_env()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), ctx.local_rank)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo",
                            device_id=torch.device(device) if cuda else None)
    return ctx


def current_context() -> DistContext | None:
    """The context of an initialised process group, None in a plain process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def shard_bounds(global_rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rank r's contiguous slice [start, stop) of a global batch, as even as possible
    (np.array_split's rule: the first `global_rows % world` ranks get one row more)."""
    base, extra = divmod(global_rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def host_to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host tensor -> device without a stream sync: pinned memory and an async copy (a plain
    .to() from pageable memory waits for everything queued on the GPU first)."""
    if torch.device(device).type != "cuda" or t.is_cuda:  # nothing to copy from the host
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def rows_rand(gen: torch.Generator, B: int, cols: int, part: BatchPart | None) -> torch.Tensor:
    """uniform [B, cols] for this rank's rows: drawn for the whole global batch and sliced, so a
    row gets the same number whichever rank trains it (and the generator stays in step)."""
    if part is None:
        return torch.rand(B, cols, generator=gen)
    return torch.rand(part.global_rows, cols, generator=gen)[part.start:part.start + B]


def gather_counts(m: int, device) -> list[int]:
    """Every rank's local count (a small all_gather; one host sync)."""
    t = torch.tensor([m], dtype=torch.long, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in torch.cat(out).tolist()]


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[counts[rank], ...] on each rank -> [sum(counts), ...], rank-major, identical everywhere.
    Differentiable: the backward sums every rank's gradient for this rank's rows into it
    (torch.distributed.nn.functional.all_gather), which is the exact gradient of the sum of all
    ranks' losses. Rows are padded to the largest count, as all_gather needs equal shapes."""
    import torch.distributed.nn.functional as dnn

    x = x.contiguous()  # NCCL refuses strided views (e.g. a column of the targets)
    most = max(counts)
    pad = most - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    if x.requires_grad:
        parts = dnn.all_gather(x)
    else:
        parts = [torch.empty_like(x) for _ in counts]
        dist.all_gather(parts, x)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is True on any (a decision all ranks must share)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_float(v: float, device, src: int = 0) -> float:
    t = torch.tensor([v], dtype=torch.float64, device=device)
    dist.broadcast(t, src)
    return float(t.item())


def rank_rows(global_idx: np.ndarray, ctx: DistContext | None):
    """Example indices of one global batch -> (this rank's indices, its BatchPart); (None, None)
    for a last global batch with fewer rows than ranks (every rank skips it alike)."""
    if ctx is None:
        return torch.as_tensor(global_idx), None
    g = len(global_idx)
    if g < ctx.world_size:
        return None, None
    start, stop = shard_bounds(g, ctx.world_size, ctx.rank)
    return torch.as_tensor(global_idx[start:stop]), BatchPart(start, g)


def out_of_time(t_start: float, max_seconds: float, ctx, dev) -> bool:
    """Past the wall-clock cap? Data-parallel: if any rank is (all ranks stop together)."""
    over = time.perf_counter() - t_start > max_seconds
    return over if ctx is None else any_rank(over, dev)


def epoch_totals(losses: list, tokens: int, ctx, dev) -> tuple[float, int]:
    """(mean loss of the epoch's global batches, tokens trained on by all ranks)."""
    if ctx is None:
        return float(np.mean(torch.stack(losses).float().cpu().numpy())), tokens
    # a rank's loss is its share of the global batch's mean times the world size
    t = torch.tensor([float(torch.stack(losses).float().sum()), tokens], dtype=torch.float64, device=dev)
    t = all_reduce_sum(t)
    return float(t[0]) / ctx.world_size / len(losses), int(t[1])


def validate_on_main(validate, model, ct, ctx, dev, names: tuple[str, ...]) -> dict[str, float]:
    """Validation scores {metric: value} for the metrics `names`; data-parallel: rank 0's,
    broadcast (every rank takes the same decision). {} without a validation closure."""
    if validate is None:
        return {}
    if ctx is None:
        return {k: float(v) for k, v in validate(model, ct).items()}
    scores = validate(model, ct) if ctx.is_main else {}
    # every rank joins one broadcast per name, so the names are fixed in advance, not read from rank 0
    return {k: broadcast_float(float(scores.get(k, float("nan"))) if ctx.is_main else 0.0, dev) for k in names}


def user_shard(user_ids: np.ndarray, world: int) -> np.ndarray:
    """Stable shard in [0, world) of each user id: splitmix64 of the id, mod world. The same id
    lands on the same shard in every run, on every machine and in every Python (no hash()
    randomisation), and consecutive ids spread evenly."""
    with np.errstate(over="ignore"):
        z = np.asarray(user_ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(world)).astype(np.int64)


def torchrun(nproc: int, cli_args: list[str]) -> int:
    """Run `pinrec <cli_args>` as `nproc` workers on this host under torchrun (standalone
    rendezvous on a free port, no restarts: a failed worker stops the others) -> 0 when every
    worker succeeded, else 1. Workers see WORLD_SIZE in their environment and take the worker
    path, so the same flags (--nproc included) go through unchanged. Called in-process rather
    than as `torchrun ... -m pinrec.cli ARGS`: torchrun's own argument parser would reject
    our flags that abbreviate its options (`--n` could be its `--nnodes`)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected a positive number of processes (one per GPU)")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "pinrec.cli"])
    args.training_script_args = list(cli_args)
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"pinrec: {len(e.failures)} of {nproc} workers failed (first: rank {rank}, "
              f"exit code {failure.exitcode})", file=sys.stderr)
        return 1
    return 0
