"""Offline metrics: leave-one-out ranks (HR/NDCG@k over every item), the paper's unordered
recall (Eq. 6) and diversity. Scoring runs on torch (CPU or GPU); metrics are numpy."""
from __future__ import annotations

import numpy as np
import torch

from pinrec_model.data import UserSeqs, left_pad
from pinrec_model.model import PinRec


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """ranks are 1-based positions of the target among all items."""
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    if not len(ranks):
        return float("nan")
    return float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))


@torch.no_grad()
def history_state(model: PinRec, ct, arrays: dict, dev, item_table: torch.Tensor | None = None):
    """Left-padded catalog-row arrays [B, T] -> decode state (prefill). With `item_table` (every
    catalog row's embedding, computed once) history items are looked up, as the scoring job takes
    catalog pins from its index, instead of going through the item tower again per batch."""
    rows = torch.as_tensor(arrays["rows"], device=dev)
    valid = rows >= 0
    valid[:, -1] = True  # never an empty history: prefill needs one last state
    r = rows.clamp(min=0)
    if item_table is not None:
        emb = item_table[r]
    else:
        uniq, inv = torch.unique(r, return_inverse=True)
        emb = ct.embed(model, uniq)[inv]
    t = lambda k: torch.as_tensor(arrays[k], device=dev)
    return model.prefill(emb, ct.type_ids[r], t("actions"), t("surfaces"), t("ts_s"), valid)


@torch.no_grad()
def next_item_ranks(model: PinRec, ct, seqs: UserSeqs, target_rows: np.ndarray, target_actions: np.ndarray,
                    max_len: int, exclude_history: bool = False, batch_size: int = 256) -> np.ndarray:
    """1-based rank of each user's target among every catalog pin (ties count against us).

    The query is the head at the last history position, conditioned on the target's action and
    offset 1 (the paper conditions on the target's action for OC variants)."""
    # padded a chunk of users at a time: [U, max_len] x 4 arrays for every user at once can be GBs
    chunk = 64 * batch_size
    out = [padded_ranks(model, ct, left_pad(seqs.subset(idx), max_len), target_rows[idx], target_actions[idx],
                        exclude_history, batch_size)
           for idx in (np.arange(s, min(s + chunk, len(seqs.user_ids))) for s in range(0, len(seqs.user_ids), chunk))]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@torch.no_grad()
def padded_ranks(model: PinRec, ct, arrays: dict, target_rows, target_actions, exclude_history: bool = False,
                 batch_size: int = 256) -> np.ndarray:
    """next_item_ranks on histories already left-padded (`left_pad`: arrays [U, max_len], numpy or
    tensors already on the model's device, as a validation set made once per run keeps them);
    target_rows, target_actions [U]. -> ranks [U] int."""
    model.eval()
    dev = ct.ids.device
    pin_emb = ct.embed(model, ct.pin_rows).float()  # [P, D]
    pin_pos = torch.full((len(ct.ids),), -1, dtype=torch.long, device=dev)
    pin_pos[ct.pin_rows] = torch.arange(len(ct.pin_rows), device=dev)
    target_rows = torch.as_tensor(target_rows, device=dev)
    target_actions = torch.as_tensor(target_actions, device=dev)
    out = []
    for s in range(0, len(arrays["rows"]), batch_size):
        arr = {k: v[s:s + batch_size] for k, v in arrays.items()}
        st = history_state(model, ct, arr, dev)
        ta = target_actions[s:s + batch_size]
        q = model.output(st.h_last, ta, torch.ones_like(ta)).float()
        scores = q @ pin_emb.T  # [b, P]
        tp = pin_pos[target_rows[s:s + batch_size]]
        tgt = scores.gather(1, tp.clamp(min=0)[:, None])
        if exclude_history:
            hr = torch.as_tensor(arr["rows"], device=dev)
            hp = torch.where(hr >= 0, pin_pos[hr.clamp(min=0)], -1)
            hp = torch.where(hp == tp[:, None], -1, hp)  # never exclude the target itself
            # padding scatters into a spare last column, so it can never clear a real item
            P = scores.shape[1]
            mask = torch.zeros(scores.shape[0], P + 1, dtype=torch.bool, device=dev)
            mask.scatter_(1, torch.where(hp >= 0, hp, P), True)
            scores = scores.masked_fill(mask[:, :P], -1e9)
        out.append((scores >= tgt).sum(1))  # kept on the device: one copy to the host at the end
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.int64)


def unordered_recall(gen: np.ndarray, targets: list[np.ndarray], index: np.ndarray, target_emb: list[np.ndarray],
                     k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Eq. 6 as the text defines it: for each user, the share of its targets z for which some
    generated embedding j ranks z within the top k of the index (rank = #index items scoring
    >= the target). gen [U, S, D]; index [N, D]; target_emb[u] [Z_u, D].
    Returns (per-user recall [U], per-user boolean hits per target)."""
    rec, hits_all = np.zeros(len(gen)), []
    for u in range(len(gen)):
        if len(targets[u]) == 0:
            rec[u] = np.nan
            hits_all.append(np.zeros(0, bool))
            continue
        s_idx = gen[u] @ index.T  # [S, N]
        kth = -np.partition(-s_idx, min(k, s_idx.shape[1]) - 1, axis=1)[:, min(k, s_idx.shape[1]) - 1]  # [S]
        s_t = gen[u] @ target_emb[u].T  # [S, Z]
        hits = (s_t >= kth[:, None]).any(axis=0)
        hits_all.append(hits)
        rec[u] = hits.mean()
    return rec, hits_all


def distinct_recall(targets: list[np.ndarray], hits: list[np.ndarray]) -> np.ndarray:
    """Eq. 6 over each window's distinct items: the "set of targets" reading of the text, where a
    hotel clicked four times in the window is one target, not four. `hits` from unordered_recall
    (one flag per target token; the flags of repeats of one item are equal). -> [U], nan when a
    user has no target."""
    out = np.full(len(targets), np.nan)
    for u, (t, h) in enumerate(zip(targets, hits)):
        if len(t):
            _, first = np.unique(t, return_index=True)
            out[u] = h[first].mean()
    return out


def novel_recall(targets: list[np.ndarray], hits: list[np.ndarray], histories: list[np.ndarray]) -> np.ndarray:
    """Eq. 6 restricted to novel targets: the share of each user's target tokens that are NOT in
    the user's history and were hit. What a retrieval that excludes the history (as `pinrec
    score` does) can reach at all; on trivago 73 % of targets are the last hotel again.
    -> [U], nan when a user has no novel target."""
    out = np.full(len(targets), np.nan)
    for u, (t, h, past) in enumerate(zip(targets, hits, histories)):
        new = ~np.isin(t, past)
        if new.any():
            out[u] = h[new].mean()
    return out


def diversity(retrieved: list[np.ndarray]) -> float:
    """Proportion of unique items among everything retrieved for the evaluation users."""
    allr = np.concatenate([r.ravel() for r in retrieved]) if retrieved else np.zeros(0)
    return float(len(np.unique(allr)) / len(allr)) if len(allr) else float("nan")
