"""The serving store: the published `candidates` partition, loaded once into memory by user.

Reading a Delta table per request is far too slow for a 5 ms budget, so the partition the
lake's release names is read once at start (and on reload) into flat numpy arrays with a
(user, arm) -> row-range index. A production deployment would bulk-load the same rows into a
key-value store; the lookup interface stays the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pinrec.core.budgets import Budget

POPULARITY = "popularity"


class Rec(NamedTuple):  # a tuple, not a dataclass: thousands are built per second on the hot path
    item_id: int
    score: float
    outcome: str
    source: str  # precomputed | regenerated | popularity


@dataclass
class CandidateStore:
    ds: str | None
    arms: dict[str, Budget]                    # arm -> budget
    model_version: str | None
    index: dict[tuple[int, str], dict[str, tuple[int, int]]]   # (user, arm) -> outcome -> rows
    item_ids: np.ndarray
    scores: np.ndarray
    outcomes: np.ndarray
    popular: list[int] = field(default_factory=list)
    _popular_recs: list[Rec] = field(default_factory=list, repr=False)

    @staticmethod
    def empty(popular: list[int] | None = None) -> "CandidateStore":
        return CandidateStore(None, {}, None, {}, np.zeros(0, np.int64), np.zeros(0, np.float32),
                              np.zeros(0, object), popular or [])

    @staticmethod
    def from_table(table, ds: str, popular: list[int] | None = None) -> "CandidateStore":
        """`table`: one candidates partition (CANDIDATES_SCHEMA columns)."""
        t = table.sort_by([("user_id", "ascending"), ("arm", "ascending"),
                           ("outcome", "ascending"), ("rank", "ascending")])
        users = t.column("user_id").to_numpy()
        arms = np.asarray(t.column("arm").to_pylist(), dtype=object)
        outs = np.asarray(t.column("outcome").fill_null("any").to_pylist(), dtype=object)
        budgets = t.column("budget").to_pylist()
        arm_budget: dict[str, Budget] = {}
        index: dict[tuple[int, str], dict[str, tuple[int, int]]] = {}
        start = 0
        for i in range(1, len(users) + 1):
            if (i == len(users) or users[i] != users[start] or arms[i] != arms[start]
                    or outs[i] != outs[start]):
                key = (int(users[start]), str(arms[start]))
                index.setdefault(key, {})[str(outs[start])] = (start, i)
                if arms[start] not in arm_budget:
                    arm_budget[str(arms[start])] = Budget.from_json(budgets[start])
                start = i
        versions = t.column("model_version").unique().to_pylist()
        return CandidateStore(
            ds=ds, arms=arm_budget, model_version=versions[0] if len(versions) == 1 else None,
            index=index, item_ids=t.column("item_id").to_numpy(),
            scores=t.column("score").fill_null(0.0).to_numpy(),
            outcomes=outs,
            popular=popular if popular is not None else most_frequent(t.column("item_id").to_numpy()))

    def get(self, user_id: int, arm: str, limits: dict[str, int] | None = None,
            default_limit: int | None = None) -> list[Rec]:
        """The user's candidates for the arm, per outcome in rank order; at most `limits[outcome]`
        (else `default_limit`) per outcome: the hot path builds only what a response can use."""
        spans = self.index.get((user_id, arm))
        if spans is None:
            return []
        out = []
        for outcome, (a, b) in spans.items():
            lim = (limits or {}).get(outcome, default_limit)
            b = b if lim is None else min(b, a + lim)
            ids, scores = self.item_ids[a:b].tolist(), self.scores[a:b].tolist()
            out += [Rec(i, s, outcome, "precomputed") for i, s in zip(ids, scores)]
        return out

    def popularity(self, n: int, exclude: set[int]) -> list[Rec]:
        if len(self._popular_recs) != len(self.popular):
            self._popular_recs = [Rec(item, float(-r), POPULARITY, POPULARITY)
                                  for r, item in enumerate(self.popular)]
        out = []
        for rec in self._popular_recs:
            if rec.item_id not in exclude:
                out.append(rec)
                if len(out) >= n:
                    break
        return out


def most_frequent(item_ids: np.ndarray, k: int = 1000) -> list[int]:
    if len(item_ids) == 0:
        return []
    ids, counts = np.unique(item_ids, return_counts=True)
    order = np.lexsort((ids, -counts))[:k]
    return [int(x) for x in ids[order]]


def popular_items(tables, k: int = 1000) -> list[int] | None:
    """Most engaged pins of the newest `items` partition, or None when there is no items table."""
    ds = tables.latest_partition("items")
    if ds is None:
        return None
    t = tables.read("items", [ds], columns=["item_id", "item_type", "engagements"])
    t = t.filter(t.column("item_type").to_numpy(zero_copy_only=False) == "pin")
    if t.num_rows == 0:
        return None
    ids = t.column("item_id").to_numpy()
    eng = t.column("engagements").fill_null(0).to_numpy()
    order = np.lexsort((ids, -eng))[:k]
    return [int(x) for x in ids[order]]


def load_candidate_store(lake_root, ds: str | None) -> CandidateStore:
    """The candidates partition `ds` -- the one the release being loaded names (serving reads
    the release once: pinrec.core.layout.current_release) -- or, when None or not written, an
    empty store: everyone gets popularity."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    tables = DeltaRsTables(Lake.at(lake_root))
    popular = popular_items(tables)
    if ds is None or not tables.exists("candidates"):
        return CandidateStore.empty(popular)
    cols = ["user_id", "arm", "rank", "item_id", "score", "outcome", "model_version", "budget"]
    return CandidateStore.from_table(tables.read("candidates", [ds], columns=cols), ds, popular)
