"""The training loop: batches of windows -> targets (next-token or windowed multi-token) ->
sampled/full softmax -> AdamW with warm-up, gradient clipping, bf16 autocast on GPU, optional
torch.compile, validation recall each epoch with early stopping. Deterministic for a seed.
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
from pinrec_model.data import Catalog, Examples
from pinrec_model.losses import CountMinSketch, full_softmax_loss, sampled_softmax_loss
from pinrec_model.negatives import SampledSoftmaxLoss, Targets, logq_correction, negatives_sampler
from pinrec_model.blocks import time_features
from pinrec_model.config import PinRecConfig
from pinrec_model.model import PinRec


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


class CatalogTensors:
    """The catalog on the training device."""

    def __init__(self, cat: Catalog, device):
        self.ids = torch.as_tensor(cat.ids, device=device)
        self.type_ids = torch.as_tensor(cat.type_ids, device=device)
        self.features = torch.as_tensor(cat.features, device=device)
        self.pin_rows = torch.as_tensor(cat.pin_rows, device=device)

    def embed(self, model: PinRec, rows: torch.Tensor) -> torch.Tensor:
        """[N] catalog rows (>= 0) -> [N, D]."""
        return model.embed_items(self.ids[rows], self.type_ids[rows], self.features[rows])


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def lookahead(cfg: PinRecConfig) -> int:
    if not cfg.multi_token:
        return 1
    w = cfg.window + 1 if cfg.window_unit == "steps" else cfg.window_max_tokens
    return (cfg.t_lim if cfg.t_lim_unit == "steps" else cfg.lookahead_tokens) + w


def embed_tokens(model: PinRec, ct: CatalogTensors, rows, actions, surfaces, ts_s, item_emb=None,
                 now=None, compiled: bool = False, token_emb=None):
    """Token arrays [B, T] -> transformer inputs [B, T, d] and validity [B, T]. `now` [B]: the
    time the ages count from (default: the last column, the newest token of left-padded rows).
    Item embeddings: `token_emb` [B, T, D] as given, else rows of `item_emb` [N, D], else the tower."""
    valid = rows >= 0
    r = rows.clamp(min=0)
    if token_emb is not None:
        emb = token_emb
    elif item_emb is None:
        uniq, inv = torch.unique(r, return_inverse=True)
        emb = ct.embed(model, uniq)[inv]  # [B, T, D]
    else:
        emb = item_emb[r]
    now = ts_s[:, -1] if now is None else now
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    tokens = _maybe_compiled(_input_tokens, compiled)
    return tokens(model, emb, ct.type_ids[r] * valid, actions, surfaces, ts_s, valid, now, pos), valid


def _input_tokens(model: PinRec, emb, type_ids, actions, surfaces, ts_s, valid, now, pos):
    # One region for torch.compile: six embedding sums and the time features are element-wise
    # passes over [B, T, d] that fuse into a few kernels.
    return model.input_tokens(emb, type_ids, actions, surfaces, time_features(ts_s, valid, now), pos)


_COMPILED: dict = {}


def _maybe_compiled(fn, on: bool):
    """`fn` itself, or its torch.compile'd twin (made once per process; static shapes first, and
    one recompile with dynamic ones once the number of loss rows changes between batches)."""
    if not on:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def right_align(rows, actions, surfaces, ts_s, L: int):
    """Windows [B, L + E] laid out [pad.., inputs.., lookahead.., pad..] -> the same tokens
    shifted left so every row starts with its first real token, and n_in [B] (real inputs).

    With padding only at the end, plain causal attention (flash, no mask) gives every real
    token exactly the keys the padding mask would: the earlier real tokens. Lookahead tokens
    that move into the input slots are only ever keys of later slots, and those slots are not
    trained on (the caller masks rows i >= n_in)."""
    B, width = rows.shape
    lead = (rows[:, :L] < 0).sum(dim=1)  # make_examples pads inputs on the left only
    src = torch.arange(width, device=rows.device)[None, :] + lead[:, None]
    inside = src < width
    src = src.clamp(max=width - 1)

    def take(a, fill):
        return torch.where(inside, a.gather(1, src), torch.full_like(a, fill))

    return take(rows, -1), take(actions, 0), take(surfaces, 0), take(ts_s, 0), L - lead


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


def time_offsets(ts_s, tok_valid, L: int, u, t_lim_s: int, n_buckets: int, reach: int):
    """t' in time for input positions i < L of windows [B, width]: t' is the first valid token
    j in (i, i + reach] with ts(j) >= ts(i) + u * t_lim_s (u [B, L] in [0, 1)); when the goal
    lies beyond the tokens in reach (a burst), the farthest valid one in reach. Where no token
    falls within t_lim_s (the session ended), t' is the next token and its bucket the farthest.
    -> (steps t' - i [B, L], >= 1; time bucket [B, L] in [1, n_buckets])."""
    B, width = ts_s.shape
    dev = ts_s.device
    j = torch.arange(L, device=dev)[:, None] + torch.arange(1, reach + 1, device=dev)[None, :]  # [L, K]
    jc = j.clamp(max=width - 1)
    ts_j, ok = ts_s[:, jc], tok_valid[:, jc] & (j < width)[None]  # [B, L, K]
    goal = ts_s[:, :L].double() + u.double() * t_lim_s
    hit = ok & (ts_j.double() >= goal[..., None])
    k = torch.arange(1, reach + 1, device=dev)
    first = torch.where(hit, k, reach + 1).min(dim=-1).values
    farthest = torch.where(ok, k, 0).max(dim=-1).values.clamp(min=1)
    steps = torch.where(first <= reach, first, farthest)
    dt = ts_s.gather(1, (torch.arange(L, device=dev)[None] + steps).clamp(max=width - 1)) - ts_s[:, :L]
    bucket = torch.ceil(dt.double() * n_buckets / t_lim_s).long().clamp(1, n_buckets)
    return steps, bucket


def sample_targets(cfg: PinRecConfig, rows, actions, ts_s, is_pin, L: int, gen: torch.Generator,
                   part: D.BatchPart | None = None):
    """Targets for each input position i < L of windows [B, L + E].

    Next-token: t' = i + 1. Multi-token (Eq. 5): t' - i ~ uniform on [1, min(t_lim, tokens
    left)] steps, or t' in time (t_lim_unit seconds, see time_offsets), and every pin in
    [t', t' + Delta] (steps or seconds) is a target.
    Returns (target positions [B, L, W], valid [B, L, W], offset condition [B, L] (the step
    offset, or the time bucket), primary action [B, L], row valid [B, L]). `part`: these rows'
    place in a data-parallel global batch (the uniform draws are the global batch's rows)."""
    B, width = rows.shape
    dev = rows.device
    i = torch.arange(L, device=dev)[None, :].expand(B, L)
    tok_valid = rows >= 0
    last = torch.where(tok_valid, torch.arange(width, device=dev)[None, :], -1).max(dim=1).values  # [B]
    left = (last[:, None] - i).clamp(min=0)  # tokens after i
    if cfg.multi_token and cfg.t_lim_unit == "seconds":
        u = D.host_to_device(D.rows_rand(gen, B, L, part), dev)
        step, offset = time_offsets(ts_s, tok_valid, L, u, cfg.t_lim_s, cfg.t_lim, cfg.lookahead_tokens)
    elif cfg.multi_token:
        u = D.host_to_device(D.rows_rand(gen, B, L, part), dev)
        span = left.clamp(max=cfg.t_lim).clamp(min=1)
        offset = 1 + (u * span).long().clamp(max=cfg.t_lim - 1)
        offset = step = torch.minimum(offset, span)
    else:
        offset = step = torch.ones(B, L, dtype=torch.long, device=dev)
    tprime = (i + step).clamp(max=width - 1)
    if not cfg.multi_token:
        wpos = tprime[..., None]
    elif cfg.window_unit == "steps":
        wpos = tprime[..., None] + torch.arange(cfg.window + 1, device=dev)
    else:
        wpos = tprime[..., None] + torch.arange(cfg.window_max_tokens, device=dev)
    inside = wpos < width
    wpos = wpos.clamp(max=width - 1)
    gather = lambda a: a.gather(1, wpos.reshape(B, -1)).reshape(wpos.shape)
    wvalid = inside & gather(tok_valid) & gather(is_pin)
    if cfg.multi_token and cfg.window_unit == "seconds":
        t0 = ts_s.gather(1, tprime)
        wvalid &= (gather(ts_s) - t0[..., None]) <= cfg.window
    prim_valid = tok_valid.gather(1, tprime) & is_pin.gather(1, tprime)
    row_valid = tok_valid[:, :L] & (left > 0) & prim_valid & wvalid[..., 0]
    return wpos, wvalid, offset, actions.gather(1, tprime), row_valid


def training_loss(model: PinRec, cms: CountMinSketch, ct: CatalogTensors, batch: dict,
                  gen: torch.Generator, L: int, compiled: bool = False,
                  part: D.BatchPart | None = None) -> torch.Tensor:
    """The mean training loss of a batch of windows [B, L + E]. `compiled`: run the parts
    of the step through torch.compile region by region (same function, fused kernels).

    `part` (data-parallel training, inside an initialised process group): these rows are rows
    [start, start + B) of a global batch. In-batch negatives and the sketch's counts then come
    from every rank, and the value returned is this rank's share of the global mean times the
    world size, so DDP's gradient average is the gradient of the global batch's mean loss."""
    cfg = model.cfg
    rows, actions, surfaces, ts, n_in = right_align(batch["rows"], batch["actions"], batch["surfaces"],
                                                    batch["ts_s"], L)
    is_pin = ct.type_ids[rows.clamp(min=0)] == 1
    wpos, wvalid, offset, tact, row_valid = sample_targets(cfg, rows, actions, ts, is_pin, L, gen, part)
    row_valid &= torch.arange(L, device=rows.device)[None, :] < n_in[:, None]  # see right_align
    now = ts.gather(1, (n_in - 1).clamp(min=0)[:, None])[:, 0]  # the newest input token's time
    all_emb = ct.embed(model, ct.pin_rows) if cfg.full_softmax else None
    if all_emb is not None:
        # Every catalog row gets an embedding; queries (not candidates) go through the tower here.
        full = torch.zeros(len(ct.ids), cfg.emb_dim, device=rows.device, dtype=all_emb.dtype)
        qrows = torch.nonzero(ct.type_ids != 1).squeeze(1)
        full[ct.pin_rows] = all_emb
        if len(qrows):
            full[qrows] = ct.embed(model, qrows).to(full.dtype)
        x, valid = embed_tokens(model, ct, rows[:, :L], actions[:, :L], surfaces[:, :L], ts[:, :L], full,
                                now, compiled)
    else:
        # Sampled softmax: every random draw and the step's one item-tower pass come before the
        # transformer, so nothing after it waits on the host (the GPU would idle meanwhile).
        # Targets and in-batch negatives are window tokens; the sampler's own rows (random
        # negatives) are embedded in the same pass.
        B, width = rows.shape
        sampler = negatives_sampler(cfg, cms, ct.ids, ct.pin_rows)
        sampler.draw(gen, B, L, part, rows.device)
        extra = sampler.extra_rows
        uniq, inv = torch.unique(torch.cat([rows.clamp(min=0).reshape(-1), extra]), return_inverse=True)
        emb = ct.embed(model, uniq)
        tok_emb = emb[inv[: rows.numel()]].reshape(B, width, -1)  # [B, L + E, D]
        extra_emb = emb[inv[rows.numel():]]  # [R, D]
        x, valid = embed_tokens(model, ct, rows[:, :L], actions[:, :L], surfaces[:, :L], ts[:, :L],
                                now=now, compiled=compiled, token_emb=tok_emb[:, :L])
    h = hidden_states(model, x, compiled)  # right-aligned: causal attention needs no padding mask
    sel = row_valid.nonzero(as_tuple=True)  # one host sync for every row selection below
    query = _maybe_compiled(_output, compiled)(model, h[sel], tact[sel], offset[sel])  # [M, D]
    B = rows.shape[0]
    trow = rows.gather(1, wpos.reshape(B, -1)).reshape(wpos.shape)[sel]  # [M, W] catalog rows
    tvalid = wvalid[sel]
    counts = [len(trow)] if part is None else D.gather_counts(len(trow), rows.device)
    if sum(counts) == 0:  # a batch without one pin target (e.g. a last batch of search queries)
        return h.sum() * 0.0
    reduction, norm = ("mean", 1.0) if part is None else ("sum", len(counts) / sum(counts))
    if cfg.full_softmax:
        # full-softmax positions index pins only: map catalog rows -> pin positions
        pin_pos = torch.full((len(ct.ids),), 0, dtype=torch.long, device=rows.device)
        pin_pos[ct.pin_rows] = torch.arange(len(ct.pin_rows), device=rows.device)
        loss_fn = _maybe_compiled(full_softmax_loss, compiled)
        loss = loss_fn(query, all_emb, pin_pos[trow.clamp(min=0)], tvalid, cfg.loss_scale, cfg.window_loss,
                       reduction)
        return loss if part is None else loss * norm
    pos = tok_emb[sel[0][:, None], wpos[sel]]  # [M, W, D]: the targets' window tokens
    loss_fn = SampledSoftmaxLoss(sampler, logq_correction(cfg), ct.ids, cfg.loss_scale, cfg.window_loss,
                                 _maybe_compiled(sampled_softmax_loss, compiled))
    loss = loss_fn(query, pos, trow, tvalid, Targets(trow[:, 0], pos[:, 0], sel, counts, part), extra_emb,
                   reduction)
    return loss if part is None else loss * norm


def hidden_states(model: PinRec, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """model.encode(x, None)[0] for training: the same blocks and final LayerNorm, without
    returning each layer's keys and values. As outputs of a compiled block those would get
    zero-filled gradients in backward (two extra [B, H, T, hd] tensors written and read per layer)."""
    block = _maybe_compiled(_block_hidden, compiled)
    for b in model.blocks:
        x = block(b, x)
    return model.ln_f(x)


def _block_hidden(block, x):
    return block(x, None, None)[0]


def _output(model: PinRec, h, actions, offsets):
    return model.output(h, actions, offsets)


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


class TrainingObjective(torch.nn.Module):
    """training_loss as a module whose forward is the whole loss, so DDP can wrap it: DDP syncs
    the gradients of what runs inside its forward. The sketch and the catalog ride along
    unregistered (the sketch is kept equal on every rank by its updates, not by broadcasts)."""

    def __init__(self, model: PinRec, cms: CountMinSketch, ct: CatalogTensors, L: int, compiled: bool):
        super().__init__()
        self.model = model
        self._aux = (cms, ct, L, compiled)

    def forward(self, batch: dict, gen: torch.Generator, part: D.BatchPart) -> torch.Tensor:
        cms, ct, L, compiled = self._aux
        return training_loss(self.model, cms, ct, batch, gen, L, compiled, part)


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
