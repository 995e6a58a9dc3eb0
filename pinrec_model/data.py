"""Events / sequences -> training tensors. Pure numpy: no I/O (the jobs read the tables).

A `Catalog` maps raw item ids to dense rows with their type and feature vector; `UserSeqs`
holds every user's chronological tokens as catalog rows; `make_examples` cuts them into
fixed-length training windows (left-padded inputs plus a right look-ahead for the targets).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pinrec.core.contracts import ITEM_TYPES, SURFACES, ActionVocab
from pinrec.core.features import FEATURE_DIM, feature_matrix

PAD = -1


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray  # [N] int64 raw item ids, sorted
    type_ids: np.ndarray  # [N] int64: 1 pin, 2 query
    features: np.ndarray  # [N, F] float32

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Raw ids -> catalog rows, -1 for unknown ids."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, item_ids).clip(0, max(len(self.ids) - 1, 0))
        hit = (len(self.ids) > 0) & (self.ids[pos] == item_ids) if len(self.ids) else np.zeros(len(item_ids), bool)
        return np.where(hit, pos, PAD)

    @property
    def pin_rows(self) -> np.ndarray:
        return np.flatnonzero(self.type_ids == 1)

    def __len__(self) -> int:
        return len(self.ids)


def build_catalog(events: pa.Table, item_features: pa.Table | None = None,
                  feature_dim: int = FEATURE_DIM) -> Catalog:
    """Every item seen in `events`, with features from the `item_features` side table (content
    vector or attributes) or, for queries, the query text carried by the events. `feature_dim`
    is the width of the hashed attribute multi-hot: the items table (and so serving) uses
    FEATURE_DIM; offline evaluation may widen it so attributes stop colliding (Beauty: 637 values)."""
    ids = events.column("item_id").to_numpy()
    types = events.column("item_type").to_numpy(zero_copy_only=False)
    qtext = events.column("query_text").to_numpy(zero_copy_only=False) if "query_text" in events.column_names else None
    uniq, first = np.unique(ids, return_index=True)
    utypes = types[first]
    attrs = [None] * len(uniq)
    contents = [None] * len(uniq)
    if item_features is not None and item_features.num_rows:
        f_ids = item_features.column("item_id").to_numpy()
        order = np.argsort(f_ids)
        f_sorted = f_ids[order]
        pos = np.searchsorted(f_sorted, uniq).clip(0, len(f_sorted) - 1)
        hit = f_sorted[pos] == uniq
        a_col = item_features.column("attributes").to_pylist()
        c_col = item_features.column("content").to_pylist()
        for i in np.flatnonzero(hit):
            r = order[pos[i]]
            attrs[i], contents[i] = a_col[r], c_col[r]
    qt = qtext[first] if qtext is not None else None
    feats = feature_matrix(list(utypes), attrs, contents, list(qt) if qt is not None else None, feature_dim)
    type_ids = np.array([ITEM_TYPES.index(t) + 1 for t in utypes], dtype=np.int64)
    return Catalog(uniq.astype(np.int64), type_ids, feats.astype(np.float32))


@dataclass(frozen=True)
class UserSeqs:
    """Concatenated per-user token arrays (CSR layout): user u owns [offsets[u], offsets[u+1])."""

    user_ids: np.ndarray  # [U]
    offsets: np.ndarray  # [U + 1]
    rows: np.ndarray  # [E] catalog rows
    actions: np.ndarray  # [E] action ids 1..n_actions
    surfaces: np.ndarray  # [E] 1..3
    ts_s: np.ndarray  # [E] int64 seconds

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user(self, u: int) -> slice:
        return slice(self.offsets[u], self.offsets[u + 1])

    def subset(self, users: np.ndarray, keep_last: np.ndarray | None = None) -> "UserSeqs":
        """Users by index; `keep_last[i]` drops that many tokens from the end (0 = all)."""
        parts, offs = [], [0]
        for i, u in enumerate(users):
            s = self.user(u)
            end = s.stop - (int(keep_last[i]) if keep_last is not None else 0)
            parts.append(np.arange(s.start, max(end, s.start)))
            offs.append(offs[-1] + len(parts[-1]))
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return UserSeqs(self.user_ids[users], np.array(offs, dtype=np.int64), self.rows[idx],
                        self.actions[idx], self.surfaces[idx], self.ts_s[idx])


def build_user_seqs(events: pa.Table, catalog: Catalog, vocab: ActionVocab) -> UserSeqs:
    """Events (any order) -> chronological per-user sequences (ties keep the event order)."""
    users = events.column("user_id").to_numpy()
    ts = events.column("ts").cast(pa.int64()).to_numpy() // 1_000_000
    order = np.lexsort((ts, users))
    users, ts = users[order], ts[order]
    rows = catalog.rows(events.column("item_id").to_numpy()[order])
    act_names = events.column("action").to_numpy(zero_copy_only=False)[order]
    amap = {a: i + 1 for i, a in enumerate(vocab.actions)}
    actions = np.array([amap.get(a, len(amap)) for a in act_names], dtype=np.int64)
    smap = {s: i + 1 for i, s in enumerate(SURFACES)}
    surf = np.array([smap.get(s, 1) for s in events.column("surface").to_numpy(zero_copy_only=False)[order]],
                    dtype=np.int64)
    uniq, starts = np.unique(users, return_index=True)
    offsets = np.append(starts, len(users)).astype(np.int64)
    return UserSeqs(uniq.astype(np.int64), offsets, rows.astype(np.int64), actions, surf, ts.astype(np.int64))


@dataclass(frozen=True)
class Examples:
    """Fixed-size windows: [S, L + E] each; the first L positions are model inputs, the last E a
    look-ahead holding targets only. Padding has row == -1."""

    rows: np.ndarray
    actions: np.ndarray
    surfaces: np.ndarray
    ts_s: np.ndarray
    n_inputs: int


def make_examples(seqs: UserSeqs, max_len: int, lookahead: int) -> Examples:
    """Cut every user's sequence into windows whose inputs end at n-1, n-1-L, ... so every
    token (but the last) is an input once, and its next `lookahead` tokens ride along."""
    width = max_len + lookahead
    idx = []
    for u in range(len(seqs.user_ids)):
        s = seqs.user(u)
        n = s.stop - s.start
        e = n - 1
        while e > 0:
            j = np.arange(e - max_len, e - max_len + width)
            idx.append(np.where((j >= 0) & (j < n), s.start + j, -1))
            e -= max_len
    if not idx:
        raise ValueError("no training examples: every user has fewer than 2 events")
    idx = np.stack(idx)
    pad = idx < 0
    take = np.where(pad, 0, idx)

    def gather(a, fill):
        return np.where(pad, fill, a[take])

    return Examples(gather(seqs.rows, PAD), gather(seqs.actions, 0), gather(seqs.surfaces, 0),
                    gather(seqs.ts_s, 0), max_len)


def left_pad(seqs: UserSeqs, max_len: int) -> dict[str, np.ndarray]:
    """The last `max_len` tokens of each user, left-padded: arrays [U, max_len]."""
    U = len(seqs.user_ids)
    out = {k: np.zeros((U, max_len), np.int64) for k in ("actions", "surfaces", "ts_s")}
    out["rows"] = np.full((U, max_len), PAD, np.int64)
    for u in range(U):
        s = seqs.user(u)
        start = max(s.start, s.stop - max_len)
        n = s.stop - start
        if n <= 0:
            continue
        out["rows"][u, max_len - n:] = seqs.rows[start:s.stop]
        out["actions"][u, max_len - n:] = seqs.actions[start:s.stop]
        out["surfaces"][u, max_len - n:] = seqs.surfaces[start:s.stop]
        out["ts_s"][u, max_len - n:] = seqs.ts_s[start:s.stop]
    return out
