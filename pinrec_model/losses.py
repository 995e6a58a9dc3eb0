"""Losses (paper Eq. 2, 3, 5) as separate, swappable parts: a count-min sketch for item
frequencies, negative sampling, and the (sampled or full) softmax with logQ correction.

s(i_hat, i_c) = lambda * <i_hat, i_c> - Q(i_c), where Q is the log of the expected number of
times i_c appears among the sampled negatives: log(M * p(i_c)) for in-batch candidates (p from
the sketch) and log(R / N) for R uniform random negatives out of N items.

Which candidates get the correction: every NEGATIVE does. Negatives equal to a positive are
masked (accidental hits), so the positive's own mass enters the partition exactly once, through
the positive term: correcting that term as well would divide it by M * p(pos) and over-rate
popular items (a toy catalogue with a 50 % item: 0.87 learned vs 0.53 this way;
tests/unit/model/test_losses.py). With masking, "correct negatives, not the positive" is the
consistent estimator of the full softmax; the paper's s() applied to every candidate is
consistent only without masking. Callers pass pos_q = 0 for that reason.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pinrec_model.distributed import BatchPart, gather_rows
from pinrec_model.item_tower import hash_ids

NEG_INF = -1e9


class CountMinSketch(nn.Module):
    """depth x width counters, one hash per row; estimate = min over rows (never undercounts)."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.width, self.depth = width, depth
        self.register_buffer("table", torch.zeros(depth, width, dtype=torch.float64))
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))

    def _cols(self, ids: torch.Tensor) -> torch.Tensor:
        # Different constants from the ID-embedding hash (seed offset), so the two collide apart.
        return hash_ids(ids * 7 + 3, self.depth, self.width)  # [N, depth]

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        cols = self._cols(ids.to(self.table.device))
        for r in range(self.depth):
            self.table[r].index_add_(0, cols[:, r], torch.ones(len(ids), dtype=torch.float64, device=self.table.device))
        self.total += len(ids)

    @torch.no_grad()
    def count(self, ids: torch.Tensor) -> torch.Tensor:
        cols = self._cols(ids.to(self.table.device))
        rows = torch.arange(self.depth, device=self.table.device)[None, :]
        return self.table[rows, cols].min(dim=1).values

    @torch.no_grad()
    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        """log p(id) with add-one smoothing (items not yet seen get a small, finite p)."""
        return torch.log((self.count(ids) + 1.0) / (self.total + self.width)).float()


def sampled_softmax_loss(
    query: torch.Tensor,  # [M, D] output representations i_hat
    pos: torch.Tensor,  # [M, W, D] window targets (W = 1 for next-token)
    pos_ids: torch.Tensor,  # [M, W] raw item ids
    pos_valid: torch.Tensor,  # [M, W] bool, at least one True per row
    pos_q: torch.Tensor,  # [M, W] Q(i) of each positive
    neg: torch.Tensor,  # [K, D] in-batch + random negatives
    neg_ids: torch.Tensor,  # [K]
    neg_q: torch.Tensor,  # [K] Q(i) of each negative
    scale: float,
    window_loss: str = "min",
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean over rows of min_w L_s(i_hat, i_w) (Eq. 5; Eq. 2 when W = 1); `reduction="sum"`:
    the sum over rows (data-parallel training divides by the global row count itself).

    With the negatives shared by all positives of a row, L_s is decreasing in the positive's
    score, so the minimum over the window is L_s of the best-scoring positive.
    `window_loss="mean"` averages L_s over the window's distinct items instead (see window_mean)."""
    with torch.autocast(query.device.type, enabled=False):  # fp32 logits (see full_softmax_loss)
        query, pos, neg = query.float(), pos.float(), neg.float()
        pos_s = scale * torch.einsum("md,mwd->mw", query, pos) - pos_q
        neg_s = scale * (query @ neg.T) - neg_q[None, :]  # [M, K]
    pos_s = pos_s.masked_fill(~pos_valid, NEG_INF)
    best = pos_s.max(dim=1).values  # [M]
    # A negative that IS one of the row's targets is not a negative: mask it.
    same = torch.zeros_like(neg_s, dtype=torch.bool)
    for w in range(pos_ids.shape[1]):
        same |= (neg_ids[None, :] == pos_ids[:, w:w + 1]) & pos_valid[:, w:w + 1]
    neg_s = neg_s.masked_fill(same, NEG_INF)
    if window_loss == "mean":
        return window_mean(pos_s, torch.logsumexp(neg_s, dim=1), first_of_each(pos_ids, pos_valid), reduction)
    lse = torch.logsumexp(torch.cat([best[:, None], neg_s], dim=1), dim=1)
    return _reduce(lse - best, reduction)


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.mean()
    raise ValueError(f"reduction {reduction!r}: expected 'mean' or 'sum'")


def first_of_each(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[M, W] valid and not a repeat of an earlier valid id in its row: a hotel seen six times in
    a window counts once, so the mean is over distinct items, not over repeats."""
    W = ids.shape[1]
    same = (ids[:, :, None] == ids[:, None, :]) & valid[:, None, :]  # [M, w, earlier w']
    earlier = torch.tril(torch.ones(W, W, dtype=torch.bool, device=ids.device), diagonal=-1)
    return valid & ~(same & earlier).any(dim=2)


def window_mean(pos_s: torch.Tensor, other_lse: torch.Tensor, keep: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
    """Mean over rows of the mean over kept positives w of L_s(w) = log(e^s_w + sum e^s_neg) - s_w,
    where the other positives of the window are not negatives of w. Not the paper's Eq. 5 (its
    min rewards only the easiest target): an ablation that makes every distinct item of the
    window count. pos_s [M, W]; other_lse [M] the log-sum-exp of the negatives; keep [M, W]."""
    s = torch.where(keep, pos_s, torch.zeros_like(pos_s))
    per = torch.logaddexp(s, other_lse[:, None]) - s
    per = torch.where(keep, per, torch.zeros_like(per))
    return _reduce(per.sum(dim=1) / keep.sum(dim=1).clamp(min=1), reduction)


def full_softmax_loss(
    query: torch.Tensor,  # [M, D]
    catalog: torch.Tensor,  # [N, D] every candidate item
    pos_rows: torch.Tensor,  # [M, W] catalog rows of the window targets
    pos_valid: torch.Tensor,  # [M, W]
    scale: float,
    window_loss: str = "min",
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over every catalog item, min over the window of positives
    (`window_loss="mean"`: the mean over the window's distinct items, see window_mean).

    The logits are computed in fp32 even under bf16 autocast: raw dot-product logits reach
    tens, where bf16's 8-bit mantissa rounds them by ~0.1 and blurs the ranking the loss learns."""
    with torch.autocast(query.device.type, enabled=False):
        logits = scale * (query.float() @ catalog.float().T)  # [M, N]
    pos_s = logits.gather(1, pos_rows.clamp(min=0)).masked_fill(~pos_valid, NEG_INF)
    if window_loss == "mean":
        keep = first_of_each(pos_rows, pos_valid)
        # the negatives of each positive: every catalog item but the window's targets (a count,
        # not a bool scatter: padded slots point at row 0 too, and must not mask it)
        hit = torch.zeros_like(logits).scatter_add(1, pos_rows.clamp(min=0), pos_valid.float()) > 0
        return window_mean(pos_s, torch.logsumexp(logits.masked_fill(hit, NEG_INF), dim=1), keep, reduction)
    best = pos_s.max(dim=1).values
    return _reduce(torch.logsumexp(logits, dim=1) - best, reduction)


def random_negatives(n_items: int, k: int, generator: torch.Generator, device) -> torch.Tensor:
    """k uniform catalog positions (with replacement): Q = log(k / n_items) for each."""
    return torch.randint(0, n_items, (k,), generator=generator, device="cpu").to(device)


def in_batch_negatives(prim: torch.Tensor, emb: torch.Tensor, keys: torch.Tensor, k: int,
                       counts: list[int], part: BatchPart | None):
    """The in-batch negatives: of the primary targets prim [M] (embeddings emb [M, D]), those
    whose uniform keys [M] are the k largest (all of them when there are at most k): a uniform
    subset without replacement (a CPU randperm of every row took ~6 ms a step at 65k rows, with
    the GPU waiting on it). Data-parallel (`part`): the same subset of the global batch's rows,
    from every rank, with gradient flowing back to each rank's rows -- the global top k lie
    inside the union of the ranks' local top k, so each rank sends at most k rows.
    -> (catalog rows [K], embeddings [K, D])."""
    def top(rows, e, kk):
        if len(rows) <= k:
            return rows, e, kk
        pick = kk.topk(k, sorted=False).indices
        return rows[pick], e[pick], kk[pick]

    rows, e, kk = top(prim, emb, keys)
    if part is None:
        return rows, e
    sent = [min(c, k) for c in counts]
    # catalog rows (< 2^53) and float32 keys are exact in float64: one collective for both
    both = gather_rows(torch.stack([rows.double(), kk.double()], dim=1), sent)
    rows, e, _ = top(both[:, 0].long(), gather_rows(e, sent), both[:, 1])
    return rows, e
