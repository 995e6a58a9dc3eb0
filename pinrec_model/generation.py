"""Autoregressive generation (paper 4.3.1, 4.4.3): prefill a batch of histories into a KV
cache, then decode steps that emit k embeddings per step (one per (offset, action) condition)
and feed them back as tokens. Plus compression of near-duplicate embeddings; the budget's
allocation over actions (largest remainder) is pinrec.core.budgets, one rule for every layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
import torch

from pinrec_model.blocks import GENERATED_SURFACE, KVBuffer, time_features

if TYPE_CHECKING:  # a type only: the model's generate() imports this module
    from pinrec_model.model import PinRec


@dataclass
class DecodeState:
    cache: list  # per layer: (k, v) [B, H, T, hd] each, or a KVBuffer (preallocated, in place)
    key_valid: torch.Tensor  # [B, T] bool
    next_pos: torch.Tensor  # [B] position id of the next token
    last_ts: torch.Tensor  # [B] seconds of the newest history token
    h_last: torch.Tensor  # [B, d] hidden state of the newest token


@torch.no_grad()
def prefill(model: PinRec, emb, type_ids, actions, surfaces, ts_s, valid,
            capacity: int | None = None) -> DecodeState:
    """Left-padded histories: emb [B, T, D], the rest [B, T] -> the decode state.

    With `capacity` (history + tokens to be generated) the KV cache is preallocated and decode
    steps write into it; `generate` can then run several times from one prefill (once per arm).
    A `compiled_encode` attribute on the model (torch.compile of encode, set by the GPU scoring
    job) is used for the prefill: plain tensors in and out, one graph per batch shape."""
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    x = model.input_tokens(emb, type_ids * valid, actions * valid, surfaces * valid,
                           time_features(ts_s, valid, ts_s[:, -1]), pos)
    encode = getattr(model, "compiled_encode", None) or model.encode
    h, cache = encode(x, None if bool(valid.all()) else valid)
    if capacity is not None:
        cache = [KVBuffer(k, v, capacity) for k, v in cache]
    return DecodeState(cache, valid, valid.sum(1), ts_s[:, -1], h[:, -1])


@torch.no_grad()
def decode(model: PinRec, st: DecodeState, gen: torch.Tensor, gen_actions: torch.Tensor) -> DecodeState:
    """Feed k generated embeddings back as tokens: gen [B, k, D], gen_actions [B, k]."""
    B, k, _ = gen.shape
    dev = gen.device
    ones = torch.ones(B, k, dtype=torch.long, device=dev)
    ts = st.last_ts[:, None].expand(B, k)
    vk = torch.ones(B, k, dtype=torch.bool, device=dev)
    pos = (st.next_pos[:, None] + torch.arange(k, device=dev)[None]).clamp(max=model.cfg.max_positions - 1)
    x = model.input_tokens(gen, ones, gen_actions, ones * GENERATED_SURFACE,
                           time_features(ts, vk, st.last_ts), pos)
    key_valid = torch.cat([st.key_valid, vk], dim=1)
    h, cache = model.encode(x, key_valid, st.cache)
    return DecodeState(cache, key_valid, st.next_pos + k, st.last_ts, h[:, -1])


def condition_offsets(acts: torch.Tensor, t_lim: int) -> torch.Tensor:
    """Offsets for one step's slots, acts [B, k] -> [B, k] in [1, t_lim].

    Each action's slots spread over [1, t_lim] on their own (slot j of c: 1 + j*t_lim // c), so a
    step's (offset, action) conditions are distinct while no action has more than t_lim slots.
    Spreading by slot position alone repeated pairs: with t_lim 4 and 16 slots over two actions,
    only 8 of 16 embeddings differed, which is what cost 16-per-step its recall against 1-per-step.
    With a single action and k slots: [1 + j*t_lim // k for j in range(k)]."""
    same = acts[:, :, None] == acts[:, None, :]  # [B, k, k]
    rank = torch.tril(same, diagonal=-1).sum(-1)  # earlier slots of the same action
    count = same.sum(-1)
    return 1 + (rank * t_lim) // count


@torch.no_grad()
def generate(model: PinRec, st: DecodeState, cond_actions: torch.Tensor, tokens_per_step: int):
    """cond_actions [B, n] (action id of each embedding, generation order) -> [B, n, D].

    ceil(n / k) steps: step s emits embeddings s*k .. s*k+k-1 from the newest hidden state, each
    under its own (offset, action) condition, then feeds them back (no teacher forcing)."""
    cfg = model.cfg
    B, n = cond_actions.shape
    k = tokens_per_step if cfg.offset_conditioned else 1
    for buf in st.cache:  # a preallocated cache may hold an earlier generation: drop it
        if isinstance(buf, KVBuffer):
            buf.length = st.key_valid.shape[1]
    out = []
    for s in range(math.ceil(n / k)):
        acts = cond_actions[:, s * k:(s + 1) * k]
        kk = acts.shape[1]
        h = st.h_last[:, None, :].expand(B, kk, -1)
        e = model.output(h, acts, condition_offsets(acts, cfg.t_lim))  # [B, kk, D]
        out.append(e)
        if s < math.ceil(n / k) - 1:
            st = decode(model, st, e, acts)
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------------------------
# Compression (pure numpy); budget allocation is pinrec.core.budgets.Budget.quotas
# ------------------------------------------------------------------------------------------

def compress(emb: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold each embedding, in generation order, into the first earlier kept embedding whose
    cosine similarity exceeds `threshold`. emb [S, D] -> (kept indices, counts). Rows are
    normalised here: dot-product models (`logits=dot`) generate raw, non-unit vectors."""
    if threshold is None or len(emb) == 0:
        return np.arange(len(emb)), np.ones(len(emb), dtype=np.int64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    kept, counts = [], []
    for i, e in enumerate(emb):
        if kept:
            sims = emb[kept] @ e
            j = int(np.argmax(sims))
            if sims[j] > threshold:
                counts[j] += 1
                continue
        kept.append(i)
        counts.append(1)
    return np.array(kept), np.array(counts, dtype=np.int64)
