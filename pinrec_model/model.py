"""The PinRec model (paper §4.2–4.3): a GPT-2-style causal decoder with a KV cache over item
tokens, and the conditioned output head of Eq. 1. The configuration lives in config.py and the
item embedders (4.1) in item_tower.py. Read bottom-up: attention -> block -> PinRec.
`forward`-style methods take tensors and return tensors: no I/O, no logging, no clock.

Padding convention: sequences are LEFT-padded (the newest token is always at index T-1), so a
batch of histories prefills together and every decode step appends at the same index.
Index 0 of the type/action/surface/offset tables means "padding" or "none".
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pinrec_model.blocks import AGE_OFF, KV, KVBuffer
from pinrec_model.config import PinRecConfig
from pinrec_model.item_tower import ItemTower

N_TIME_FEATURES = 6


# ------------------------------------------------------------------------------------------
# Causal transformer (4.2)
# ------------------------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: PinRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: KV | KVBuffer | None):
        """x: [B, Tn, d]; mask: [B, 1, Tn, Tpast+Tn] bool (True = may attend) or None (plain
        causal, no padding, no past: the flash-attention path). `past` is a (k, v) pair
        (concatenated) or a KVBuffer (written in place). Returns the output and the cache."""
        B, Tn, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [B, Tn, d] -> [B, H, Tn, hd]
        q, k, v = (t.view(B, Tn, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        cache: KV | KVBuffer
        if isinstance(past, KVBuffer):
            # Attend over the whole (contiguous) buffer, the unfilled tail masked by encode: a
            # [:length] slice is strided, and SDPA would copy all of it every decode step.
            past.append(k, v)
            k, v, cache = past.k, past.v, past
            if mask is not None and not self.training:
                # A few queries against a long cache: two batched matmuls read K and V once.
                # The fused kernels tile 64+ queries and idle on the empty rows (profiled on
                # the H100: cuDNN flash 16 ms per decode step at B=2048 vs ~1 ms per layer here).
                att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
                att = att.float().masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
                y = torch.matmul(att, v)
                return self.proj(y.transpose(1, 2).reshape(B, Tn, d)), cache
        elif past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            cache = (k, v)
        else:
            cache = (k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, Tn, d)), cache


class Block(nn.Module):
    """GPT-2 pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: PinRecConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.d_ff, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, mask, past):
        a, kv = self.attn(self.ln_1(x), mask, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


def attention_mask(key_valid: torch.Tensor, n_new: int) -> torch.Tensor:
    """key_valid: [B, Ttot] bool -> [B, 1, n_new, Ttot] bool for the last n_new queries.

    Causal, no attention to padding keys; each query may always see itself so that padding rows
    have one key and softmax never sees an all-masked row (NaN)."""
    t_tot = key_valid.shape[1]
    q_pos = torch.arange(t_tot - n_new, t_tot, device=key_valid.device)[:, None]  # [n_new, 1]
    k_pos = torch.arange(t_tot, device=key_valid.device)[None, :]  # [1, Ttot]
    causal = k_pos <= q_pos
    allowed = causal[None] & (key_valid[:, None, :] | (k_pos == q_pos)[None])
    return allowed[:, None]


class PinRec(nn.Module):
    def __init__(self, cfg: PinRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.items = ItemTower(cfg)
        self.in_proj = nn.Linear(cfg.emb_dim, d)
        self.action_in = nn.Embedding(cfg.n_actions + 1, d)
        self.surface_in = nn.Embedding(cfg.n_surfaces + 2, d)  # + padding + generated
        self.type_in = nn.Embedding(cfg.n_item_types + 1, d)
        self.time_in = nn.Linear(N_TIME_FEATURES, d)
        self.pos = nn.Embedding(cfg.max_positions, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        # Output head O([h, Phi]) (Eq. 1): Phi is empty (UC), the action (OC) or offset + action.
        d_cond = 0
        if cfg.action_conditioned:
            self.action_head = nn.Embedding(cfg.n_actions + 1, d)
            d_cond += d
        if cfg.offset_conditioned:
            self.offset_head = nn.Embedding(cfg.t_lim + 1, d)
            d_cond += d
        if cfg.head == "mlp":
            self.head = nn.Sequential(nn.Linear(d + d_cond, 2 * d), nn.GELU(), nn.LayerNorm(2 * d),
                                      nn.Linear(2 * d, cfg.emb_dim))
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))  # GPT-2 residual init
        if cfg.item_tower == "id_mlp":
            # The feature MLP's last layer starts at zero: the model starts as a plain ID model
            # and learns what the features add. At the default init its output (~0.3 per dim)
            # dwarfs the ID vectors (0.02) and items sharing attributes start out identical
            # (initial loss ~25 instead of ~log N on Beauty).
            for emb in self.items.embedders:
                nn.init.zeros_(emb.net[-1].weight)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding) and m.weight.shape[0] < (1 << 16):
            nn.init.normal_(m.weight, std=0.02)

    def embed_items(self, ids, type_ids, feats) -> torch.Tensor:
        """[N], [N], [N, F] -> [N, D] item representations (L2-normalised for cosine logits)."""
        return self.items(ids, type_ids, feats)

    def input_tokens(self, item_emb, type_ids, action_ids, surface_ids, time_feats, pos_ids):
        """Sum of the token's parts: [B, T, D], [B, T] x4, [B, T, 6] -> [B, T, d]."""
        dt = self.time_in.weight.dtype  # float inputs follow the weights (bf16 for inference)
        item_emb, time_feats = item_emb.to(dt), time_feats.to(dt)
        if self.cfg.input_proj:
            item = self.in_proj(item_emb)
        else:
            # SASRec's tied input: the output-space vector itself, scaled so it outweighs the
            # small positional/feature embeddings at initialisation as in SASRec.
            item = item_emb * math.sqrt(self.cfg.d_model)
        if not self.cfg.time_age:
            time_feats = time_feats * AGE_OFF.to(time_feats.device, time_feats.dtype)
        x = (item + self.type_in(type_ids) + self.action_in(action_ids)
             + self.surface_in(surface_ids) + self.time_in(time_feats) + self.pos(pos_ids))
        return self.drop(x)

    def encode(self, x: torch.Tensor, key_valid: torch.Tensor | None,
               past: list | None = None) -> tuple[torch.Tensor, list]:
        """x: [B, Tn, d] new tokens; key_valid: [B, Tpast+Tn] or None when nothing is padded
        and there is no past -> hidden states [B, Tn, d] and the updated KV cache (a list of
        (k, v) per layer, or the same KVBuffers when those are the past)."""
        mask = None if key_valid is None else attention_mask(key_valid, x.shape[1])
        if mask is not None and past is not None and isinstance(past[0], KVBuffer):
            pad = past[0].k.shape[2] - mask.shape[-1]  # preallocated: mask the unfilled tail
            mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], pad)], dim=-1)
        cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if past is None else past[i])
            cache.append(kv)
        return self.ln_f(x), cache

    def prefill(self, emb, type_ids, actions, surfaces, ts_s, valid, capacity: int | None = None):
        """Left-padded histories -> the decode state (generation.DecodeState): emb [B, T, D]
        float, the rest [B, T] (int64 ids, int64 seconds, bool valid). `capacity` preallocates
        the KV cache so that `generate` can run once per arm from one prefill."""
        from pinrec_model.generation import prefill  # generation builds on this module

        return prefill(self, emb, type_ids, actions, surfaces, ts_s, valid, capacity)

    def generate(self, state, cond_actions: torch.Tensor, tokens_per_step: int) -> torch.Tensor:
        """The one generation: state from `prefill`, cond_actions [B, n] int64 (the action each
        embedding is conditioned on, in generation order; 0 = none) -> [B, n, D] float output
        embeddings, `tokens_per_step` per decode step (multi-token, offset-conditioned models;
        1 otherwise). The batch job, request-time regeneration and offline evaluation all call it."""
        from pinrec_model.generation import generate

        return generate(self, state, cond_actions, tokens_per_step)

    def output(self, h: torch.Tensor, action_ids: torch.Tensor | None = None,
               offsets: torch.Tensor | None = None) -> torch.Tensor:
        """O(h, Phi): h [..., d], action_ids / offsets [...] -> [..., D], L2-normalised for
        cosine logits. head=none returns h (SASRec: the hidden state is the query)."""
        if self.cfg.head != "mlp":
            out = h
            if self.cfg.head == "add" and self.cfg.action_conditioned:
                out = out + self.action_head(action_ids)
            if self.cfg.head == "add" and self.cfg.offset_conditioned:
                out = out + self.offset_head(offsets.clamp(1, self.cfg.t_lim))
            return F.normalize(out, dim=-1) if self.cfg.normalised else out
        parts = [h]
        if self.cfg.action_conditioned:
            parts.append(self.action_head(action_ids))
        if self.cfg.offset_conditioned:
            parts.append(self.offset_head(offsets.clamp(1, self.cfg.t_lim)))
        out = self.head(torch.cat(parts, dim=-1))
        return F.normalize(out, dim=-1) if self.cfg.normalised else out
