"""The training loop: batches of windows -> the training loss (training_loss.py: targets from
targets.py, sampled/full softmax) -> AdamW with warm-up, gradient clipping, bf16 autocast on GPU,
optional torch.compile, validation recall each epoch with early stopping. Deterministic for a seed.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pinrec_model import distributed as D
from pinrec_model.config import PinRecConfig
from pinrec_model.data import Catalog, Examples
from pinrec_model.losses import CountMinSketch
from pinrec_model.model import PinRec
from pinrec_model.training_loss import CatalogTensors, TrainingObjective, training_loss


# What a validation closure returns and every epoch's history records (`val_<metric>`);
# TrainConfig.select_metric picks the epoch among them.
VAL_METRICS = ("recall@10", "ndcg@10")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    decay_embeddings: bool = False  # also decay the hashed-ID table (regularises small catalogs)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    patience: int = 3  # epochs without a better validation metric before stopping
    # the validation metric that picks the epoch (the reference SASRec's choice, DESIGN §5)
    select_metric: str = "ndcg@10"
    max_seconds: float | None = None  # wall-clock cap (CI)
    progress: bool = True
    # stop after this many epochs, the learning-rate schedule still spanning `epochs`: a refit on
    # more data replays the validated run's first N epochs exactly as they were scheduled
    stop_after: int | None = None


@dataclass
class TrainResult:
    model: PinRec
    cms: CountMinSketch
    history: list[dict] = field(default_factory=list)
    best_val: float = float("nan")
    refit_epochs: int | None = None  # set by jobs.train.train_refit: the epochs the refit ran


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def lookahead(cfg: PinRecConfig) -> int:
    """Tokens past the inputs each training window carries (make_examples' `lookahead`): enough
    for the farthest target sample_targets (targets.py) may pick, t' and then its window."""
    if not cfg.multi_token:
        return 1
    w = cfg.window + 1 if cfg.window_unit == "steps" else cfg.window_max_tokens
    return (cfg.t_lim if cfg.t_lim_unit == "steps" else cfg.lookahead_tokens) + w


# Keep the training windows on the GPU when they take at most this share of its free memory
# (Beauty: tens of MB): one transfer per run instead of a pinned copy per step, the reference
# SASRec's way; larger sets fall back to copying each batch.
EXAMPLES_ON_DEVICE_SHARE = 0.25


def examples_on_device(ex: Examples, dev) -> dict[str, torch.Tensor]:
    """The windows' arrays [S, L + E] as tensors: on a CUDA `dev` when they fit (moved once),
    else where they are (host); the training loop indexes batches wherever they live."""
    arrays = {k: torch.as_tensor(getattr(ex, k)) for k in ("rows", "actions", "surfaces", "ts_s")}
    if torch.device(dev).type != "cuda":
        return arrays
    nbytes = sum(a.numel() * a.element_size() for a in arrays.values())
    free, _ = torch.cuda.mem_get_info(torch.device(dev))
    if nbytes > EXAMPLES_ON_DEVICE_SHARE * free:
        return arrays
    return {k: a.to(dev) for k, a in arrays.items()}


def lr_at(step: int, total: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    frac = (step - tc.warmup_steps) / max(1, total - tc.warmup_steps)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def make_optimizer(model: PinRec, tc: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices except the hashed-ID table (unless decay_embeddings).
    On CUDA the fused kernel: one launch per group instead of one pass per tensor and moment."""
    decayed = lambda n, p: p.dim() >= 2 and (tc.decay_embeddings or "id_table" not in n)
    decay = [p for n, p in model.named_parameters() if decayed(n, p)]
    rest = [p for n, p in model.named_parameters() if not decayed(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=tc.lr,
                             fused=torch.device(device).type == "cuda")


def data_parallel(model: PinRec, cms: CountMinSketch, ct: CatalogTensors, L: int, tc: TrainConfig,
                  device: str) -> torch.nn.parallel.DistributedDataParallel:
    """The model's objective under DDP (process group already initialised). Which parameters a
    step uses depends on its data (a batch without search queries leaves the query tower out),
    so DDP looks for unused ones each step; the gradients live in DDP's buckets (no copies)."""
    from torch.nn.parallel import DistributedDataParallel

    cuda = torch.device(device).type == "cuda"
    return DistributedDataParallel(TrainingObjective(model, cms, ct, L, tc.compile),
                                   device_ids=[torch.device(device)] if cuda else None,
                                   broadcast_buffers=False, gradient_as_bucket_view=True,
                                   find_unused_parameters=True)


def train_step(model: PinRec, cms: CountMinSketch, ct: CatalogTensors, opt: torch.optim.Optimizer,
               batch: dict, gen: torch.Generator, L: int, lr: float, tc: TrainConfig,
               ddp=None, part: D.BatchPart | None = None) -> torch.Tensor:
    """One optimisation step (bf16 autocast on CUDA, clipping, AdamW) -> the detached loss, left
    on the device: nothing here waits for the GPU, so the host queues the next step meanwhile.
    `pinrec train` and `pinrec bench model` both run exactly this. Data-parallel: `ddp` (from
    data_parallel, around the same model) and this rank's `part` of the global batch."""
    for g in opt.param_groups:
        g["lr"] = lr
    cuda = batch["rows"].device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        if ddp is None:
            loss = training_loss(model, cms, ct, batch, gen, L, compiled=tc.compile)
        else:
            loss = ddp(batch, gen, part)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    return loss.detach()


def fit(cfg: PinRecConfig, tc: TrainConfig, cat: Catalog, ex: Examples,
        validate: Callable[[PinRec, CatalogTensors], dict[str, float]] | None = None,
        init_state: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train on `ex`, from scratch or (warm start) from `init_state` (a saved version's model and
    count-min-sketch tensors); keep the weights of the best validation epoch.

    Inside a process group (a torchrun worker, see distributed.py) this is one rank of
    data-parallel training: `tc.batch_size` rows per rank, a global batch of batch_size x world,
    validation on rank 0 (its result broadcast, so every rank stops at the same epoch), and the
    same weights returned on every rank."""
    from tqdm import tqdm

    ctx = D.current_context()
    world, main = (1, True) if ctx is None else (ctx.world_size, ctx.is_main)
    torch.manual_seed(tc.seed)
    np_rng = np.random.default_rng(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)  # the same draws on every rank (see distributed.py)
    dev = resolve_device(tc.device) if ctx is None else D.rank_device(resolve_device(tc.device), ctx)
    model = PinRec(cfg).to(dev)
    cms = CountMinSketch(cfg.cms_width, cfg.cms_depth).to(dev)
    ct = CatalogTensors(cat, dev)
    if init_state is not None:
        # Hashed IDs make the tables catalog-independent, so yesterday's weights fit today's items.
        model.load_state_dict({k: v for k, v in init_state.items() if not k.startswith("cms.")})
        cms_state = {k[4:]: v for k, v in init_state.items() if k.startswith("cms.")}
        if cms_state:
            cms.load_state_dict(cms_state)
    n = len(ex.rows)
    ddp = None
    if ctx is not None:
        if n < world:
            raise ValueError(f"{n} training windows for {world} ranks: train with fewer processes")
        ddp = data_parallel(model, cms, ct, ex.n_inputs, tc, dev)
        torch.manual_seed(tc.seed + 7919 * (ctx.rank + 1))  # dropout masks: per rank, fixed by seed
    opt = make_optimizer(model, tc, dev)
    arrays = examples_on_device(ex, dev)
    # real input tokens per window, counted once on the host (no per-step copy or GPU sync)
    tokens_per_window = (ex.rows[:, : ex.n_inputs] >= 0).sum(axis=1)
    G = tc.batch_size * world
    steps_per_epoch = max(1, math.ceil(n / G))
    total = steps_per_epoch * tc.epochs
    res = TrainResult(model, cms)
    best, best_state, bad, step = -1.0, None, 0, 0
    t_start = time.perf_counter()
    for epoch in range(tc.epochs):
        model.train()
        perm = np_rng.permutation(n)
        perm_on = torch.as_tensor(perm).to(arrays["rows"].device)  # one copy per epoch; batches index on it
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not (tc.progress and main), leave=False)
        tokens, t0, losses = 0, time.perf_counter(), []
        for b in bar:
            idx, part = D.rank_rows(perm[b * G:(b + 1) * G], ctx)
            if idx is None:
                break
            first = b * G + (part.start if part is not None else 0)  # this rank's rows of perm
            batch = {k: D.host_to_device(v[perm_on[first:first + len(idx)]], dev) for k, v in arrays.items()}
            loss = train_step(model, cms, ct, opt, batch, gen, ex.n_inputs, lr_at(step, total, tc), tc, ddp, part)
            step += 1
            losses.append(loss)  # kept on the device: a float() here would wait for the GPU every step
            tokens += int(tokens_per_window[idx.numpy()].sum())
            if b % 50 == 0 and tc.progress and main:
                bar.set_postfix(loss=f"{float(loss):.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
            # data-parallel ranks agree on the clock every 16 steps (each check waits for the GPU)
            if tc.max_seconds and (ctx is None or b % 16 == 15) and D.out_of_time(t_start, tc.max_seconds, ctx, dev):
                break
        mean_loss, tokens = D.epoch_totals(losses, tokens, ctx, dev)
        scores = D.validate_on_main(validate, model, ct, ctx, dev, VAL_METRICS)
        val = scores.get(tc.select_metric, float("nan"))
        res.history.append({"epoch": epoch + 1, "loss": mean_loss,
                            **{f"val_{k}": scores.get(k, float("nan")) for k in VAL_METRICS},
                            "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)})
        if tc.progress and main:
            print(f"epoch {epoch + 1}: loss {mean_loss:.4f} val {tc.select_metric} {val:.4f}", flush=True)
        if validate is None or val > best:
            best, bad = val, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= tc.patience:
                break
        if tc.max_seconds and D.out_of_time(t_start, tc.max_seconds, ctx, dev):
            break
        if tc.stop_after and epoch + 1 >= tc.stop_after:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    res.best_val = best
    return res
