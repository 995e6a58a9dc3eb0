"""Item representations (paper 4.1): the ID hash family, the per-type MLP embedder f_t, and the
item tower that maps (id, type, content features) into the shared item / output space."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pinrec_model.config import PinRecConfig

_P = 2147483647  # 2^31 - 1, the modulus of the ID hash family


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
