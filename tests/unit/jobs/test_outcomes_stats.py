"""The outcomes job's statistics: ratio of sums with a bootstrap over users, and the difference
of two arms. Seeds are fixed, so these checks are deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.outcomes import arm_seed, bootstrap_difference, bootstrap_ratios


def users(rng, n, rate, impressions=20):
    """[n] impressions and [n] engagements of users with the same true engagement rate."""
    imp = rng.integers(5, 2 * impressions, n)
    return imp, rng.binomial(imp, rate)


def test_identical_users_give_a_point_interval_and_zero_denominators_give_nan():
    num = np.array([[2, 0], [2, 0], [2, 0]])
    den = np.array([[10, 0], [10, 0], [10, 0]])
    point, lo, hi = bootstrap_ratios(num, den, 200, np.random.default_rng(0))
    assert point[0] == lo[0] == hi[0] == pytest.approx(0.2)
    assert np.isnan(point[1]) and np.isnan(lo[1]) and np.isnan(hi[1])


def test_the_95_percent_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        imp, eng = users(rng, 150, 0.3)
        _, lo, hi = bootstrap_ratios(eng[:, None], imp[:, None], 400, rng)
        covered += lo[0] <= 0.3 <= hi[0]
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_the_interval_narrows_with_more_users():
    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 800):
        imp, eng = users(rng, n, 0.2)
        _, lo, hi = bootstrap_ratios(eng[:, None], imp[:, None], 500, rng)
        widths.append(hi[0] - lo[0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(16) = 1/4


def test_the_difference_of_two_arms_excludes_zero_only_when_they_differ():
    rng = np.random.default_rng(3)
    ia, ea = users(rng, 300, 0.30)
    ib, eb = users(rng, 300, 0.40)
    d, lo, hi = bootstrap_difference(ea, ia, eb, ib, 1000, rng)
    assert d == pytest.approx(eb.sum() / ib.sum() - ea.sum() / ia.sum())
    assert 0 < lo < d < hi
    false_alarms = 0
    for _ in range(100):  # same rate in both arms: the interval includes 0 about 95 % of the time
        ia, ea = users(rng, 200, 0.3)
        ib, eb = users(rng, 200, 0.3)
        _, lo, hi = bootstrap_difference(ea, ia, eb, ib, 300, rng)
        false_alarms += not (lo <= 0 <= hi)
    assert false_alarms <= 10, false_alarms


def test_seeds_are_stable_per_day_and_arm():
    assert arm_seed(0, "2026-01-01", "a") == arm_seed(0, "2026-01-01", "a")
    assert len({arm_seed(0, "2026-01-01", "a"), arm_seed(0, "2026-01-02", "a"),
                arm_seed(0, "2026-01-01", "b"), arm_seed(1, "2026-01-01", "a")}) == 4
