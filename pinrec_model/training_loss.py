"""The training loss of one batch of windows: right-align the windows, draw the targets
(targets.py) and the negatives (negatives.py), embed the tokens, run the transformer and score
the outputs with the sampled or full softmax (losses.py). `training_loss` is the function;
`TrainingObjective` wraps it as a module for DDP. `compiled` runs the parts region by region
through torch.compile (same function, fused kernels)."""
from __future__ import annotations

import torch

from pinrec_model import distributed as D
from pinrec_model.blocks import time_features
from pinrec_model.data import Catalog
from pinrec_model.losses import CountMinSketch, full_softmax_loss, sampled_softmax_loss
from pinrec_model.model import PinRec
from pinrec_model.negatives import SampledSoftmaxLoss, Targets, logq_correction, negatives_sampler
from pinrec_model.targets import sample_targets


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
