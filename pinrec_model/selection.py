"""Selecting N candidates from per-entry search results: the one implementation, used by the
batch job's exact path (`batch_generation.generate_arrays`) and by `api.generate_candidates`
(Faiss, per-user plans). Pure torch; imports nothing of ours, so both can import it."""
from __future__ import annotations

import torch


def select_candidates(scores: torch.Tensor, ids: torch.Tensor, quotas, n: int):
    """The one selection of candidates from search results, vectorised over users.

    scores [B, E, K] float, ids [B, E, K] int64: each plan entry's ranked results, items to
    exclude (the history) already -1; quotas: [E] ints (one plan for every user) or [B, E]
    int64 (per-user plans, padded with quota-0 entries whose ids are all -1).

    Entry by entry, take its best `quota` results not already chosen; then fill what
    de-duplication took away from the over-fetched tails (results after each walk's stop), best
    score first, each item once; finally order by score (stable). -> (ids [B, n] int64, scores
    [B, n] float, plan entry [B, n] int64); unfilled slots have id -1. The per-user walk this
    replaced is kept as the test oracle (tests/unit/model/walk_oracle.py)."""
    B, E, K = ids.shape
    dev = ids.device
    chosen = torch.full((B, n + 1), -1, dtype=torch.long, device=dev)  # column n: discard
    c_score = torch.full((B, n + 1), float("-inf"), device=dev)
    c_entry = torch.full((B, n + 1), -1, dtype=torch.long, device=dev)
    count = torch.zeros(B, dtype=torch.long, device=dev)
    stop = torch.full((B, E), K, dtype=torch.long, device=dev)
    ar = torch.arange(K, device=dev)

    def put(take, rank, row_ids, row_scores, row_entry):
        dest = torch.where(take, count[:, None] + rank - 1, n).clamp(max=n)
        chosen.scatter_(1, dest, torch.where(take, row_ids, -1))
        c_score.scatter_(1, dest, torch.where(take, row_scores, float("-inf")))
        c_entry.scatter_(1, dest, torch.where(take, row_entry, -1))

    q_all = torch.as_tensor(quotas, dtype=torch.long, device=dev).expand(B, E)  # [B, E]
    for j in range(E):
        row, q = ids[:, j], q_all[:, j]
        ok = (row >= 0) & ~(row[:, :, None] == chosen[:, None, :n]).any(-1)
        rank = ok.cumsum(1)
        take = ok & (rank <= q[:, None])
        got = take.sum(1)
        last = torch.where(take, ar, -1).max(1).values
        stop[:, j] = torch.where(got >= q, last + 1, K)
        put(take, rank, row, scores[:, j], torch.full_like(row, j))
        chosen[:, n], c_score[:, n], c_entry[:, n] = -1, float("-inf"), -1
        count += got
    # Fill from the tails: best score first, each item once, never one already chosen.
    tail = (ar[None, None, :] >= stop[:, :, None]) & (ids >= 0)
    flat_ids = ids.reshape(B, -1)
    tail = tail.reshape(B, -1) & ~(flat_ids[:, :, None] == chosen[:, None, :n]).any(-1)
    flat_s = torch.where(tail, scores.reshape(B, -1), float("-inf"))
    s_sorted, order = flat_s.sort(dim=1, descending=True, stable=True)
    i_sorted = flat_ids.gather(1, order)
    ok = ~torch.isinf(s_sorted)
    by_id, perm = torch.where(ok, i_sorted, -1).sort(dim=1, stable=True)
    dup = torch.zeros_like(ok)
    dup.scatter_(1, perm[:, 1:], (by_id[:, 1:] == by_id[:, :-1]) & (by_id[:, 1:] >= 0))
    ok &= ~dup
    rank = ok.cumsum(1)
    put(ok & (rank <= (n - count)[:, None]), rank, i_sorted, s_sorted, order // K)
    s_final, o = c_score[:, :n].sort(dim=1, descending=True, stable=True)
    return chosen[:, :n].gather(1, o), s_final, c_entry[:, :n].gather(1, o)
