"""The serve-time merge (pure): engaged items removed, budget respected, fallbacks marked."""
from __future__ import annotations

from collections import Counter

from pinrec.core.budgets import Budget
from serving.candidates import CandidateStore, Rec
from serving.merge import blend, sources_of

BUDGET = Budget((("repin", 0.5), ("grid_click", 0.3), ("outbound_click", 0.2)))


def recs(source: str, start: int, per: dict[str, int]) -> list[Rec]:
    out, i = [], start
    for outcome, k in per.items():
        for _ in range(k):
            out.append(Rec(i, 1.0 / i, outcome, source))
            i += 1
    return out


PRE = recs("precomputed", 1, {"repin": 20, "grid_click": 20, "outbound_click": 20})
REG = recs("regenerated", 1000, {"repin": 10, "grid_click": 6, "outbound_click": 4})
POP = [Rec(5000 + i, -i, "popularity", "popularity") for i in range(50)]


def test_precomputed_only_minus_engaged_items():
    engaged = {PRE[0].item_id, PRE[1].item_id}
    out = blend(PRE, [], POP, engaged, BUDGET, 10, 0.5)
    # the arm's budget holds for precomputed lists too: 5 repin, 3 grid_click, 2 outbound_click,
    # each in rank order, the engaged repins skipped
    assert [r.item_id for r in out] == [3, 4, 5, 6, 7, 21, 22, 23, 41, 42]
    assert sources_of(out, engaged, True, None) == ["precomputed", "realtime_filter"]


def test_regenerated_blend_stays_under_the_arms_budget():
    out = blend(PRE, REG, POP, set(), BUDGET, 20, regen_share=0.5)
    assert len(out) == 20 and len({r.item_id for r in out}) == 20
    assert Counter(r.outcome for r in out) == {"repin": 10, "grid_click": 6, "outbound_click": 4}
    by = Counter((r.outcome, r.source) for r in out)
    assert by[("repin", "regenerated")] == 5 and by[("repin", "precomputed")] == 5
    assert by[("outbound_click", "regenerated")] == 2
    assert sources_of(out, {1}, True, "shoes") == ["precomputed", "regenerated", "realtime_filter",
                                                    "realtime_history", "query"]


def test_regen_share_zero_and_one():
    only_pre = blend(PRE, REG, POP, set(), BUDGET, 10, regen_share=0.0)
    assert {r.source for r in only_pre} == {"precomputed"}
    only_reg = blend(PRE, REG, POP, set(), BUDGET, 10, regen_share=1.0)
    assert {r.source for r in only_reg} == {"regenerated"}


def test_short_lists_are_filled_from_popularity_without_duplicates():
    engaged = {POP[0].item_id}
    out = blend(PRE[:3], [], POP, engaged, BUDGET, 10, 0.5)
    assert [r.source for r in out] == ["precomputed"] * 3 + ["popularity"] * 7
    assert POP[0].item_id not in {r.item_id for r in out}


def test_unconditioned_model_blends_totals():
    pre = [Rec(i, 1.0, "any", "precomputed") for i in range(1, 30)]
    reg = [Rec(i, 1.0, "any", "regenerated") for i in range(100, 130)]
    out = blend(pre, reg, [], set(), BUDGET, 10, 0.3)
    assert Counter(r.source for r in out) == {"regenerated": 3, "precomputed": 7}


def test_popularity_skips_excluded_items():
    store = CandidateStore.empty(popular=[5, 6, 7, 8])
    assert [r.item_id for r in store.popularity(2, {6})] == [5, 7]
    assert all(r.source == "popularity" for r in store.popularity(3, set()))


def test_popularity_is_needed_exactly_when_candidates_run_short():
    from serving.merge import needs_popularity

    engaged = {1, 2, 1000}
    for n in (10, 50, 76, 77, 78, 120):
        distinct = len({r.item_id for r in PRE + REG} - engaged)  # 77
        need = needs_popularity(PRE, REG, engaged, n)
        assert need == (distinct < n)
        full = blend(PRE, REG, POP, engaged, BUDGET, n, 0.5)
        without = blend(PRE, REG, [], engaged, BUDGET, n, 0.5)
        assert (full != without) == need  # skipping popularity changes nothing unless needed
