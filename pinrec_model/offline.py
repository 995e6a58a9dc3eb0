"""Offline protocols over prepared sequences (pure given the data; the CLI is jobs/evaluate.py).

- leave-one-out: last pin = test target, the one before = validation; every item ranked,
  reported with and without the user's history items in the ranking.
- unordered (paper Eq. 6): users disjoint from training; each keeps its last `window` tokens
  as the target set; the model generates `num_embeddings` embeddings autoregressively (no
  teacher forcing) and a target counts when some embedding ranks it in the top k of an index
  of random items (all items when the catalog is smaller than the index size).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from pinrec_model.data import left_pad
from pinrec_model.metrics import (distinct_recall, diversity, hit_rate, history_state, ndcg, next_item_ranks,
                                  novel_recall, unordered_recall)

KS = (5, 10, 20)


def loo_split(seqs, catalog):
    """Users whose last two tokens are pins and who have >= 3 tokens -> (users, test positions)."""
    lens = seqs.lengths()
    users = np.flatnonzero(lens >= 3)
    last = seqs.offsets[users] + lens[users] - 1
    ok = (catalog.type_ids[seqs.rows[last]] == 1) & (catalog.type_ids[seqs.rows[last - 1]] == 1)
    return users[ok], last[ok]


def loo_metrics(ranks: np.ndarray, ranks_excl: np.ndarray) -> dict:
    out = {}
    for k in KS:
        out[f"recall@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
        out[f"recall@{k}_excl_history"] = hit_rate(ranks_excl, k)
        out[f"ndcg@{k}_excl_history"] = ndcg(ranks_excl, k)
    return out


def loo_eval_model(model, ct, seqs, users, test_pos, max_len: int) -> dict:
    hist = seqs.subset(users, keep_last=np.ones(len(users), np.int64))
    tr, ta = seqs.rows[test_pos], seqs.actions[test_pos]
    ranks = next_item_ranks(model, ct, hist, tr, ta, max_len)
    ranks_x = next_item_ranks(model, ct, hist, tr, ta, max_len, exclude_history=True)
    return {**loo_metrics(ranks, ranks_x), "users": int(len(users))}


def loo_eval_popularity(seqs, catalog, users, test_pos) -> dict:
    """Rank by training-time popularity (counts of every token before each user's last two)."""
    train = seqs.subset(np.arange(len(seqs.user_ids)), keep_last=np.full(len(seqs.user_ids), 2))
    counts = np.bincount(train.rows[train.rows >= 0], minlength=len(catalog)).astype(np.float64)
    counts[catalog.type_ids != 1] = -1  # queries are never recommended
    tgt = seqs.rows[test_pos]
    ranks = np.array([(counts >= counts[t]).sum() for t in tgt])
    ranks_x = []
    for u, t in zip(users, tgt):
        h = np.unique(seqs.rows[seqs.offsets[u]:seqs.offsets[u + 1] - 1])
        h = h[h != t]
        c = counts.copy()
        c[h] = -1
        ranks_x.append((c >= c[t]).sum())
    return {**loo_metrics(ranks, np.array(ranks_x)), "users": int(len(users))}


# ------------------------------------------------------------------------------------------
# Unordered protocol
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnorderedSplit:
    train_users: np.ndarray
    eval_users: np.ndarray
    window: int  # target tokens kept from each eval user's end


def unordered_split(seqs, window: int, eval_share: float = 0.1, min_history: int = 5, seed: int = 0,
                    max_eval_users: int = 2000) -> UnorderedSplit:
    """Disjoint users: a fixed random share is held out for evaluation (if long enough)."""
    rng = np.random.default_rng(seed + 7)
    n = len(seqs.user_ids)
    held = rng.random(n) < eval_share
    long_enough = seqs.lengths() >= window + min_history
    ev = np.flatnonzero(held & long_enough)[:max_eval_users]
    return UnorderedSplit(np.flatnonzero(~held), ev, window)


def eval_targets(seqs, catalog, split: UnorderedSplit):
    """Per eval user: history (all but the last `window` tokens) and the target pins."""
    hist = seqs.subset(split.eval_users, keep_last=np.full(len(split.eval_users), split.window))
    t_rows, t_acts = [], []
    for u in split.eval_users:
        sl = slice(seqs.offsets[u + 1] - split.window, seqs.offsets[u + 1])
        r, a = seqs.rows[sl], seqs.actions[sl]
        pin = catalog.type_ids[r] == 1
        t_rows.append(r[pin])
        t_acts.append(a[pin])
    return hist, t_rows, t_acts


def target_conditions(t_acts: list[np.ndarray], n_emb: int, fixed_action: int | None = None) -> np.ndarray:
    """[U, n_emb] action ids: a fixed action (controllability) or, as the paper does offline,
    the targets' own actions in proportion (largest remainder), interleaved."""
    from pinrec_model.api import condition_order
    from pinrec.core.budgets import largest_remainder

    out = np.zeros((len(t_acts), n_emb), np.int64)
    for u, acts in enumerate(t_acts):
        if fixed_action is not None:
            out[u] = fixed_action
            continue
        a, c = np.unique(acts, return_counts=True) if len(acts) else (np.array([1]), np.array([1]))
        alloc = largest_remainder(c, n_emb)
        out[u] = condition_order({int(x): int(y) for x, y in zip(a, alloc)})
    return out


@torch.no_grad()
def generate_for_users(model, ct, hist, cond: np.ndarray, tokens_per_step: int, batch_size: int = 512,
                       with_decode_time: bool = False, item_table: torch.Tensor | None = None):
    """-> (embeddings [U, n_emb, D] numpy, seconds spent generating[, seconds after prefill]).
    `item_table`: every catalog row's embedding on the device (see metrics.history_state)."""
    model.eval()
    dev = ct.ids.device
    hist_len = min(model.cfg.max_len, model.cfg.max_positions - cond.shape[1] - 1)
    out, secs, dec = [], 0.0, 0.0
    for s in range(0, len(hist.user_ids), batch_size):
        idx = np.arange(s, min(s + batch_size, len(hist.user_ids)))
        arr = left_pad(hist.subset(idx), hist_len)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        st = history_state(model, ct, arr, dev, item_table)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        e = model.generate(st, torch.as_tensor(cond[idx], device=dev), tokens_per_step)  # [U, n_emb, D]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs += time.perf_counter() - t0
        dec += time.perf_counter() - t1
        out.append(e.float().cpu().numpy())
    return (np.concatenate(out), secs, dec) if with_decode_time else (np.concatenate(out), secs)


def index_rows(catalog, size: int, seed: int = 0) -> np.ndarray:
    pins = catalog.pin_rows
    if len(pins) <= size:
        return pins
    return np.sort(np.random.default_rng(seed).choice(pins, size, replace=False))


def unordered_scores(gen: np.ndarray, item_emb: np.ndarray, index: np.ndarray, t_rows, k: int = 10):
    """-> (per-user recall, per-user hit flags per target, retrieved rows per user)."""
    idx_emb = item_emb[index]
    rec, hits = unordered_recall(gen, t_rows, idx_emb, [item_emb[r] for r in t_rows], k)
    retrieved = []
    for u in range(len(gen)):
        s = gen[u] @ idx_emb.T
        top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        retrieved.append(np.unique(index[top]))
    return rec, hits, retrieved


def history_rows(hist) -> list[np.ndarray]:
    """Each user's history catalogue rows, from a UserSeqs."""
    return [hist.rows[hist.offsets[u]:hist.offsets[u + 1]] for u in range(len(hist.user_ids))]


def unordered_summary(rec, retrieved, t_rows=None, hits=None, histories=None) -> dict:
    """Eq. 6 over target tokens (`recall@10`, a repeated item counts once per repeat) and, given the
    targets and hit flags, over each window's distinct items (`recall@10_distinct`) and, given
    the histories, over the targets new to the user (`recall@10_new`)."""
    out = {"recall@10": float(np.nanmean(rec)), "diversity": diversity(retrieved),
           "users": int(np.sum(~np.isnan(rec)))}
    if hits is not None:
        out["recall@10_distinct"] = float(np.nanmean(distinct_recall(t_rows, hits)))
    if hits is not None and histories is not None:
        new = novel_recall(t_rows, hits, histories)
        out["recall@10_new"] = float(np.nanmean(new)) if np.isfinite(new).any() else float("nan")
        out["users_new"] = int(np.isfinite(new).sum())
    return out


def controllability_matrix(hits_by_desired: dict, hits_uc, t_acts, names: dict) -> dict:
    """lift[desired][actual] = recall_OC(desired | true action) / recall_UC(true action) - 1,
    pooled over targets (micro-average)."""
    acts = np.concatenate(t_acts) if t_acts else np.zeros(0, np.int64)
    uc = np.concatenate(hits_uc) if hits_uc else np.zeros(0, bool)
    out = {}
    for a, hits in hits_by_desired.items():
        h = np.concatenate(hits)
        row = {}
        for b in sorted(set(acts.tolist())):
            if b not in names:
                continue
            sel = acts == b
            base = uc[sel].mean() if sel.any() else np.nan
            row[names[b]] = float(h[sel].mean() / base - 1) if base and base > 0 else float("nan")
        out[names[a]] = row
    return out
