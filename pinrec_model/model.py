"""The PinRec model (paper §4.1–4.3): item embedders, a GPT-2-style causal decoder with a KV
cache, and the conditioned output head of Eq. 1. Read bottom-up: hashing -> item embedder ->
attention -> block -> config -> PinRec. `forward`-style methods take tensors and return tensors:
no I/O, no logging, no clock.

Padding convention: sequences are LEFT-padded (the newest token is always at index T-1), so a
batch of histories prefills together and every decode step appends at the same index.
Index 0 of the type/action/surface/offset tables means "padding" or "none".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from pinrec_model.blocks import AGE_OFF, GENERATED_SURFACE, KV, KVBuffer, time_features  # noqa: F401 (re-exported)

VARIANTS = ("uc", "oc", "mt_oc", "pinnerformer", "sasrec")
ITEM_TOWERS = ("hashed_mlp", "id", "id_mlp")
ID_HASHES = ("universal", "direct")
LOGITS = ("cosine", "dot")
HEADS = ("mlp", "none", "add")
N_TIME_FEATURES = 6
_P = 2147483647  # 2^31 - 1, the modulus of the ID hash family


@dataclass(frozen=True)
class PinRecConfig:
    variant: str = "uc"  # uc | oc | mt_oc | pinnerformer | sasrec (the last two are baselines)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    emb_dim: int = 64  # D: the shared item / output representation space
    max_len: int = 50  # history tokens the model reads
    max_positions: int = 128  # history + generated tokens
    feature_dim: int = 32
    use_features: bool = True
    id_dim: int = 64
    id_buckets: int = 1 << 16  # rows of the shared hashed-ID table
    id_hashes: int = 2  # k hash functions into that table, summed
    n_actions: int = 6  # engagement actions + search (ids are 1..n_actions, 0 = none)
    n_item_types: int = 2  # pin, query
    n_surfaces: int = 3
    logit_scale: float = 20.0  # lambda in s = lambda * <i_hat, i> - Q(i)
    full_softmax: bool = False  # score against every catalog item instead of sampled negatives
    logq_correction: bool = True
    # Eq. 2 read literally also subtracts Q from the positive. With accidental hits masked that
    # over-rates popular items (losses.py, tests/unit/model/test_losses.py), so it is opt-in.
    logq_on_positive: bool = False
    n_random_negatives: int = 256
    max_in_batch_negatives: int = 1024
    cms_width: int = 1 << 16
    cms_depth: int = 4
    # t_lim 4 and window 2 beat 8/4 and 16/4 on synthetic unordered recall (docs/model.md)
    t_lim: int = 4  # multi-token: target offsets t' - t are drawn from [1, t_lim] steps
    window: int = 2  # Delta: the target window [t', t' + Delta]
    window_unit: str = "steps"  # steps | seconds (coarse real timestamps need steps)
    window_max_tokens: int = 16  # cap on targets per window when window_unit == seconds
    # t' in time (4.3.2: "t_lim in steps or in time"): with t_lim_unit "seconds", t' is the first
    # token at or after t's time + U(0, t_lim_s) seconds, seen within lookahead_tokens; the offset
    # condition is then the time bucket ceil(t_lim * (ts(t') - ts(t)) / t_lim_s) in [1, t_lim].
    t_lim_unit: str = "steps"  # steps | seconds
    t_lim_s: int = 300
    lookahead_tokens: int = 32
    # min: Eq. 5, the loss of the easiest target in the window. mean: the mean over the window's
    # distinct items -- NOT the paper, an ablation (on trivago the min always picks the current hotel)
    window_loss: str = "min"
    tokens_per_step: int = 4  # default embeddings per generation step (MT variants)
    num_embeddings: int = 16  # default embeddings generated per user
    # Recipe options (docs/model.md, Beauty). The defaults are the first recipe, unchanged.
    # item_tower: hashed_mlp = f_T([features, hashed ID]) (paper 4.1); id = the ID embedding
    # alone (SASRec); id_mlp = ID embedding + f_T(features), the ID part kept outside the MLP.
    item_tower: str = "hashed_mlp"
    id_hash: str = "universal"  # universal (k hashes) | direct (row = id % id_buckets: exact for dense ids)
    logits: str = "cosine"  # cosine: lambda * <unit, unit> | dot: plain inner product, no normalisation
    # head: mlp = MLP([h, Phi]) | none = h itself (unconditioned only) | add = h + E_a + E_t',
    # a linear O([h, Phi]); none and add need d_model == emb_dim
    head: str = "mlp"
    input_proj: bool = True  # False: the item embedding * sqrt(d) is the token (tied, SASRec-style)
    # The age feature (time since the NEWEST history token) is not causal in training: at input
    # position i it tells how many tokens of the window come after i, and the age-0 regime of
    # serving is seen at one position per window only. False zeroes it (gap + phases remain).
    time_age: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.window_loss not in ("min", "mean"):
            raise ValueError(f"window_loss must be 'min' (Eq. 5) or 'mean', got {self.window_loss!r}")
        for name in ("window_unit", "t_lim_unit"):
            if getattr(self, name) not in ("steps", "seconds"):
                raise ValueError(f"{name} must be 'steps' or 'seconds', got {getattr(self, name)!r}")
        if self.t_lim_unit == "seconds" and (self.t_lim_s < 1 or self.lookahead_tokens < 1):
            raise ValueError(f"t_lim_unit=seconds needs t_lim_s >= 1 and lookahead_tokens >= 1, "
                             f"got {self.t_lim_s} and {self.lookahead_tokens}")
        for name, allowed in (("item_tower", ITEM_TOWERS), ("id_hash", ID_HASHES), ("logits", LOGITS),
                              ("head", HEADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.item_tower != "hashed_mlp" and self.id_dim != self.emb_dim:
            raise ValueError(f"item_tower={self.item_tower} adds the ID embedding to the output space: "
                             f"id_dim ({self.id_dim}) must equal emb_dim ({self.emb_dim})")
        if self.item_tower == "id_mlp" and not self.use_features:
            raise ValueError("item_tower=id_mlp needs use_features (use item_tower=id without features)")
        if self.head == "none" and (self.action_conditioned or self.offset_conditioned):
            raise ValueError(f"head=none has no input for Phi: variant {self.variant} needs head=mlp")
        if (self.head != "mlp" or not self.input_proj) and self.d_model != self.emb_dim:
            raise ValueError(f"head={self.head} / input_proj=False tie the token and item spaces: "
                             f"d_model ({self.d_model}) must equal emb_dim ({self.emb_dim})")

    @property
    def normalised(self) -> bool:
        """Unit item and output vectors (cosine logits) or raw ones (dot logits)."""
        return self.logits == "cosine"

    @property
    def loss_scale(self) -> float:
        """The factor on <i_hat, i> in the softmax: lambda for cosine logits, 1 for dot."""
        return self.logit_scale if self.normalised else 1.0

    @property
    def multi_token(self) -> bool:
        return self.variant in ("mt_oc", "pinnerformer")

    @property
    def action_conditioned(self) -> bool:
        return self.variant in ("oc", "mt_oc")

    @property
    def offset_conditioned(self) -> bool:
        return self.variant == "mt_oc"

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "PinRecConfig":
        known = PinRecConfig.__dataclass_fields__
        return PinRecConfig(**{k: v for k, v in d.items() if k in known})


PRESETS = {
    "small": PinRecConfig(),
    # The paper's size: GPT-2 small (12 layers, 768 hidden, 12 heads), 256-token histories.
    "paper": PinRecConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072, emb_dim=256,
                          max_len=256, max_positions=512, id_dim=256, id_buckets=1 << 20,
                          n_random_negatives=1024, max_in_batch_negatives=4096),
}


def preset(name: str, **overrides) -> PinRecConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# ------------------------------------------------------------------------------------------
# Item representations (4.1)
# ------------------------------------------------------------------------------------------

def hash_ids(ids: torch.Tensor, n_hashes: int, buckets: int) -> torch.Tensor:
    """[N] int64 item ids (any 63-bit value) -> [N, k] bucket indices.

    Universal hashing ((a*lo + b*hi + c) mod p) on the id split into 31 + 32 bits, so every
    product stays below 2^62 and int64 never overflows, on CPU and CUDA alike.
    """
    lo = ids & 0x7FFFFFFF
    hi = ids >> 31
    out = []
    for k in range(n_hashes):
        a, b, c = 1_000_003 + 7919 * k, 998_244_353 % (1 << 29) + 104_729 * k, 12_345 + 31 * k
        out.append(((lo * a + hi * b + c) % _P) % buckets)
    return torch.stack(out, dim=-1)


class MLPEmbedder(nn.Module):
    """One item type's f_t: 3 linear layers with ReLU and LayerNorm, L2-normalised output
    unless `normalise` is off (dot-product logits)."""

    def __init__(self, d_in: int, d_out: int, normalise: bool = True):
        super().__init__()
        self.normalise = normalise
        h = max(d_out * 2, 64)
        self.net = nn.Sequential(
            nn.Linear(d_in, h), nn.ReLU(), nn.LayerNorm(h),
            nn.Linear(h, h), nn.ReLU(), nn.LayerNorm(h),
            nn.Linear(h, d_out),
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.net(v)
        return F.normalize(out, dim=-1) if self.normalise else out


class ItemTower(nn.Module):
    """i = f_{T(i)}([content features, hashed ID embedding]) for pins and queries (hashed_mlp);
    or the ID embedding alone (id); or ID embedding + f_{T(i)}(features) (id_mlp)."""

    def __init__(self, cfg: PinRecConfig):
        super().__init__()
        self.cfg = cfg
        self.id_table = nn.Embedding(cfg.id_buckets, cfg.id_dim)
        nn.init.normal_(self.id_table.weight, std=0.02)
        if cfg.item_tower == "hashed_mlp":
            d_in = cfg.id_dim + (cfg.feature_dim if cfg.use_features else 0)
        else:
            d_in = cfg.feature_dim
        n_mlp = 0 if cfg.item_tower == "id" else cfg.n_item_types
        self.embedders = nn.ModuleList([MLPEmbedder(d_in, cfg.emb_dim, normalise=cfg.item_tower == "hashed_mlp"
                                                    and cfg.normalised) for _ in range(n_mlp)])

    def id_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] raw ids -> [N, id_dim]: the sum of k hashed rows, or the row id % buckets."""
        if self.cfg.id_hash == "direct":
            return self.id_table(torch.remainder(ids, self.cfg.id_buckets))
        return self.id_table(hash_ids(ids, self.cfg.id_hashes, self.cfg.id_buckets)).sum(dim=1)

    def forward(self, ids: torch.Tensor, type_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """ids, type_ids: [N] (type 1 = pin, 2 = query); feats: [N, F] -> [N, D]."""
        v = self.id_vectors(ids)
        if self.cfg.item_tower == "id":
            return F.normalize(v, dim=-1) if self.cfg.normalised else v
        if self.cfg.item_tower == "hashed_mlp":
            x = torch.cat([feats.to(v.dtype), v], dim=-1) if self.cfg.use_features else v
        else:
            x = feats.to(v.dtype)
        out = torch.zeros(len(ids), self.cfg.emb_dim, device=ids.device, dtype=v.dtype)
        for t, emb in enumerate(self.embedders, start=1):
            sel = type_ids == t
            if t == 1:
                sel = sel | (type_ids == 0)  # padding rows: embedded as pins, masked later
            if sel.any():
                out[sel] = emb(x[sel]).to(out.dtype)
        if self.cfg.item_tower == "id_mlp":
            out = out + v.to(out.dtype)  # the ID part stays a plain learned vector per item
            return F.normalize(out, dim=-1) if self.cfg.normalised else out
        return out


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
