"""The default rules produce the documented configuration for a given data shape (docs/model.md,
"Default rules"), and explicit flags win over them."""
import argparse

import numpy as np
import pytest

from pinrec_model.defaults import DataShape, data_shape, default_rules, max_len_rule


def shape(users=22_363, items=12_101, events=198_502, p50=6.0, p90=15.0):
    return DataShape(users, items, events, p50, p90)


def test_beauty_shape_gets_the_documented_config():
    r = default_rules(shape())  # Amazon Beauty 5-core
    assert r.model == {"max_len": 50, "max_positions": 114, "full_softmax": True, "dropout": 0.5}
    assert r.train == {"epochs": 200, "patience": 10, "max_seconds": 540.0, "warmup_steps": 175}


def test_long_dense_large_catalogue_gets_sampled_softmax_and_long_context():
    r = default_rules(shape(users=1_000_000, items=5_000_000, events=400_000_000, p50=180, p90=420),
                      batch_size=512)
    assert r.model["max_len"] == 200 and r.model["max_positions"] == 264
    assert r.model["full_softmax"] is False  # 5M items: sampled softmax with logQ
    assert r.model["dropout"] == 0.2  # 80 events per item: dense
    assert r.train["warmup_steps"] == 1000  # one epoch is 1954 steps: capped


@pytest.mark.parametrize("p90,expected", [(0, 50), (49, 50), (51, 60), (123, 130), (199.5, 200), (5000, 200)])
def test_max_len_is_p90_rounded_up_to_ten_within_bounds(p90, expected):
    assert max_len_rule(shape(p90=p90)) == expected


def test_data_shape_from_lengths():
    s = data_shape(np.array([1, 2, 3, 4, 10]), 7)
    assert (s.users, s.items, s.events, s.p50_len) == (5, 7, 20, 3.0)
    assert s.p90_len == pytest.approx(7.6)


def _args(*argv):
    from jobs.train import add_model_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(list(argv))


def test_explicit_flags_and_set_win_over_the_rules():
    from jobs.train import model_config, train_config
    from pinrec.contracts import PINTEREST_ACTIONS

    rules = default_rules(shape())
    a = _args("--epochs", "3", "--set", "dropout=0.1", "--no-full-softmax")
    cfg, tc = model_config(a, PINTEREST_ACTIONS, rules), train_config(a, rules)
    assert (cfg.dropout, cfg.full_softmax, cfg.max_len) == (0.1, False, 50)  # max_len from the rules
    assert (tc.epochs, tc.patience, tc.max_seconds, tc.warmup_steps) == (3, 10, 540.0, 175)
    off = _args()
    cfg0, tc0 = model_config(off, PINTEREST_ACTIONS), train_config(off)
    assert (cfg0.dropout, cfg0.full_softmax, tc0.epochs, tc0.patience, tc0.max_seconds) == (0.1, False, 20, 5, None)
    assert train_config(_args("--max-seconds", "0"), rules).max_seconds is None  # 0 = no time budget
