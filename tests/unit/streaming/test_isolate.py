"""Bisection finds exactly the failing items, keeps the rest, and lets the caller stop it."""
from __future__ import annotations

import pytest

from streaming.isolate import isolate


def attempt_failing_on(bad, calls):
    def attempt(items):
        calls.append(list(items))
        if any(i in bad for i in items):
            raise ValueError(f"bad among {len(items)}")
        return list(items)
    return attempt


@pytest.mark.parametrize("n,bad", [(1, set()), (1, {0}), (500, {0}), (500, {499}),
                                   (500, {7, 250, 251}), (7, set(range(7)))])
def test_every_good_item_succeeds_once_and_only_the_bad_ones_fail(n, bad):
    calls = []
    done, failed = isolate(list(range(n)), attempt_failing_on(bad, calls))
    ok = sorted(i for chunk in done for i in chunk)
    assert ok == [i for i in range(n) if i not in bad]
    assert sorted(i for i, _ in failed) == sorted(bad)
    assert all(isinstance(e, ValueError) for _, e in failed)


def test_one_bad_item_in_500_costs_about_two_log2_n_attempts():
    calls = []
    isolate(list(range(500)), attempt_failing_on({123}, calls))
    assert len(calls) == 1 + 2 * 9  # the whole batch, then two halves per level (500 -> 1)


def test_empty_batch_attempts_nothing():
    calls = []
    assert isolate([], attempt_failing_on(set(), calls)) == ([], [])
    assert calls == []


def test_leaf_hook_can_stop_the_bisection_when_the_failure_is_not_the_items_fault():
    calls, seen = [], []

    class Down(RuntimeError):
        pass

    def hook(item, exc):
        seen.append(item)
        raise Down("store is down")

    with pytest.raises(Down):
        isolate(list(range(64)), attempt_failing_on(set(range(64)), calls), hook)
    assert seen == [0]  # stopped at the first leaf: 64 -> 32 -> ... -> 1
    assert len(calls) == 7
