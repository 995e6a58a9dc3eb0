"""The serve-time merge: precomputed candidates + fresh signals -> one ranked list. Pure.

Rule:
  * items the user engaged with since the batch cutoff are removed (they were just seen);
  * each outcome `a` of the arm's budget gets its quota q(a) = B(a)·n (Budget.quotas: the
    largest-remainder rule generation uses too);
    when regenerated candidates exist (the user has fresh events or a query), up to
    round(regen_share·q(a)) of it comes from the regenerated list, the rest from the
    precomputed one (in rank order) — so the blend stays under the arm's budget;
  * slots left empty (an outcome without enough candidates) are filled by the remaining
    candidates, regenerated first, then by popularity, each item at most once;
  * a user with no candidates at all gets the popularity list, marked as a fallback.
"""
from __future__ import annotations

from typing import Sequence

from pinrec.core.budgets import Budget
from serving.candidates import POPULARITY, Rec


def needs_popularity(precomputed: Sequence[Rec], regenerated: Sequence[Rec], engaged: set[int],
                     n: int) -> bool:
    """Whether `blend` could reach the popularity list: only when fewer than n distinct,
    not-engaged items are candidates (the hot path then skips building it)."""
    ids = {r.item_id for r in precomputed}
    ids.update(r.item_id for r in regenerated)
    return len(ids - engaged) < n


def blend(precomputed: Sequence[Rec], regenerated: Sequence[Rec], popular: Sequence[Rec],
          engaged: set[int], budget: Budget, n: int, regen_share: float) -> list[Rec]:
    pre = [r for r in precomputed if r.item_id not in engaged]
    reg = [r for r in regenerated if r.item_id not in engaged]
    popular = [r for r in popular if r.item_id not in engaged]
    out: list[Rec] = []
    seen: set[int] = set()

    def take(pool, outcome, k):
        for r in pool:
            if k <= 0 or len(out) >= n:
                return
            if r.item_id not in seen and (outcome is None or r.outcome == outcome):
                out.append(r)
                seen.add(r.item_id)
                k -= 1

    # Every response follows the arm's budget, with or without regenerated candidates.
    q = budget.quotas(n)
    if any(r.outcome in q for r in pre + reg):
        for a, qa in q.items():
            before = len(out)
            take(reg, a, int(round(regen_share * qa)))
            take(pre, a, qa - (len(out) - before))
    elif reg:  # an unconditioned model labels every candidate "any": blend the totals
        take(reg, None, int(round(regen_share * n)))
        take(pre, None, n - len(out))
    take(reg, None, n - len(out))
    take(pre, None, n - len(out))
    take(popular, None, n - len(out))
    return out


def sources_of(items: Sequence[Rec], engaged: set[int], history_used: bool,
               query: str | None) -> list[str]:
    used = {r.source for r in items}
    order = ["precomputed", "regenerated", POPULARITY]
    out = [s for s in order if s in used]
    if engaged:
        out.append("realtime_filter")
    if history_used and "regenerated" in used:
        out.append("realtime_history")
    if query and "regenerated" in used:
        out.append("query")
    return out
