"""Events / sequences -> training tensors, and the multi-token target sampler."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.train_data import events_from_sequences
from pinrec.core.contracts import PINTEREST_ACTIONS, SEQUENCES_SCHEMA
from pinrec_model.api import ItemFeatures
from pinrec_model.config import preset
from pinrec_model.data import PAD, build_catalog, build_user_seqs, make_examples
from pinrec_model.targets import sample_targets

T0 = 1_767_225_600_000_000


def _events():
    rows = [  # user, item, type, action, minute (out of order on purpose)
        (2, 11, "pin", "repin", 3), (1, 10, "pin", "grid_click", 0), (1, 99, "query", "search", 1),
        (1, 11, "pin", "outbound_click", 2), (2, 10, "pin", "repin", 1), (1, 12, "pin", "repin", 5),
    ]
    return pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "item_type": [r[2] for r in rows],
        "query_text": ["cats" if r[2] == "query" else None for r in rows], "action": [r[3] for r in rows],
        "surface": ["search" if r[2] == "query" else "homefeed" for r in rows],
        "ts": pa.array([T0 + r[4] * 60_000_000 for r in rows], pa.timestamp("us", tz="UTC")),
    })


def test_catalog_and_sequences_are_chronological_with_features():
    feats = pa.table({"item_id": [10, 12], "item_type": ["pin", "pin"], "attributes": [[1, 2], None],
                      "content": [None, [0.5] * 32]},
                     schema=pa.schema([("item_id", pa.int64()), ("item_type", pa.string()),
                                       ("attributes", pa.list_(pa.int64())), ("content", pa.list_(pa.float32()))]))
    ev = _events()
    cat = build_catalog(ev, feats)
    assert cat.ids.tolist() == [10, 11, 12, 99] and cat.type_ids.tolist() == [1, 1, 1, 2]
    assert np.abs(cat.features[0]).sum() > 0 and np.allclose(np.linalg.norm(cat.features[2]), 1)
    assert np.abs(cat.features[1]).sum() == 0  # no side features: relies on its ID embedding
    assert np.abs(cat.features[3]).sum() > 0  # query trigrams
    s = build_user_seqs(ev, cat, PINTEREST_ACTIONS)
    assert s.user_ids.tolist() == [1, 2]
    assert cat.ids[s.rows[s.user(0)]].tolist() == [10, 99, 11, 12]
    assert cat.ids[s.rows[s.user(1)]].tolist() == [10, 11]
    amap = {a: i + 1 for i, a in enumerate(PINTEREST_ACTIONS.actions)}
    assert s.actions[s.user(0)].tolist() == [amap[a] for a in ("grid_click", "search", "outbound_click", "repin")]
    assert cat.rows(np.array([12, 5])).tolist() == [2, PAD]


def test_events_from_sequences_round_trip():
    seq = pa.table({
        "user_id": [7], "event_ids": [["a", "b"]], "item_ids": [[10, 11]], "item_types": [["pin", "pin"]],
        "actions": [["repin", "grid_click"]], "surfaces": [["homefeed", "search"]],
        "ts": [[T0, T0 + 1]], "length": [2], "cutoff_ts": [T0 + 10], "ds": ["2026-01-01"],
    }, schema=SEQUENCES_SCHEMA)
    ev = events_from_sequences(seq)
    assert ev.column("user_id").to_pylist() == [7, 7]
    assert ev.column("item_id").to_pylist() == [10, 11]
    assert ev.column("surface").to_pylist() == ["homefeed", "search"]


def test_examples_cover_every_input_once_with_lookahead():
    ev = _events()
    cat = build_catalog(ev)
    s = build_user_seqs(ev, cat, PINTEREST_ACTIONS)
    ex = make_examples(s, max_len=2, lookahead=3)
    # user 1 (4 tokens): inputs end at 3 then 1 -> two windows; user 2 (2 tokens): one window
    assert ex.rows.shape == (3, 5)
    inputs = ex.rows[:, :2]
    assert sorted(cat.ids[inputs[inputs >= 0]].tolist()) == sorted([10, 99, 11, 10])  # all but last tokens


def test_multi_token_targets_stay_in_window_and_skip_queries():
    cfg = preset("small", variant="mt_oc", t_lim=3, window=1)
    B, L, width = 1, 4, 9
    rows = torch.tensor([[0, 1, 2, 3, 4, 5, 6, PAD, PAD]])
    is_pin = torch.tensor([[True, True, False, True, True, True, True, False, False]])
    ts = torch.arange(width)[None] * 60
    acts = torch.arange(width)[None] + 1
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        wpos, wvalid, off, tact, row_valid = sample_targets(cfg, rows, acts, ts, is_pin, L, g)
        assert ((off >= 1) & (off <= 3)).all()
        i = torch.arange(L)[None]
        assert (wpos[..., 0] == i + off).all()  # the window starts at t'
        assert ((wpos - wpos[..., :1]) <= cfg.window).all()
        assert not (wvalid & ~is_pin.gather(1, wpos.reshape(1, -1)).reshape(wpos.shape)).any()
        assert (tact == acts.gather(1, i + off)).all()  # conditioned on the action at t'
        assert not (row_valid & ~is_pin.gather(1, i + off)).any()  # a query at t' is no target
    # windows in seconds: only tokens within Delta seconds of t'
    cfg_s = replace(cfg, window_unit="seconds", window=60, window_max_tokens=4)
    wpos, wvalid, *_ = sample_targets(cfg_s, rows, acts, ts, is_pin, L, g)
    span = ts.gather(1, wpos.reshape(1, -1)).reshape(wpos.shape) - ts.gather(1, wpos[..., :1].reshape(1, -1)).reshape(wpos[..., :1].shape)
    assert (span[wvalid] <= 60).all()


def test_t_prime_in_time_is_the_first_token_past_the_drawn_time():
    from pinrec_model.targets import time_offsets

    # a burst (0, 0, 0, 1 s), a pause, then 100 s and an hour later; t_lim_s 200 in 4 buckets of 50 s
    ts = torch.tensor([[0, 0, 0, 1, 100, 3600, 0]])
    valid = torch.tensor([[True] * 6 + [False]])
    u = torch.tensor([[0.0, 0.004, 0.4, 0.9, 0.5, 0.5]])  # goals 0, 0.8, 80, 181 s after ts(i)
    steps, bucket = time_offsets(ts, valid, 6, u, t_lim_s=200, n_buckets=4, reach=3)
    # i=0, goal 0 s: the next token (same second), bucket 1. i=1, goal 0.8 s: the 1 s token (2 on).
    # i=2, goal 80 s: the 100 s token, bucket ceil(100 / 50) = 2. i=3, goal 182 s: nothing in
    # reach lies before it, the first past it is the hour-later token: farthest bucket.
    # i=4: only the hour-later token ahead. i=5: no token ahead (the row is dropped elsewhere).
    assert steps[0, :5].tolist() == [1, 2, 2, 2, 1]
    assert bucket[0, :5].tolist() == [1, 1, 2, 4, 4]
    # a burst longer than the reach: the farthest token in reach, never past it
    steps, bucket = time_offsets(torch.tensor([[0, 0, 0, 0, 0, 500]]), torch.ones(1, 6, dtype=torch.bool),
                                 1, torch.tensor([[0.5]]), t_lim_s=200, n_buckets=4, reach=3)
    assert steps.tolist() == [[3]] and bucket.tolist() == [[1]]


def test_multi_token_targets_in_time_condition_on_the_time_bucket():
    cfg = preset("small", variant="mt_oc", t_lim=4, window=1, t_lim_unit="seconds", t_lim_s=120,
                 lookahead_tokens=5)
    B, L, width = 1, 4, 4 + 5 + 2
    rows = torch.arange(width)[None]
    is_pin = torch.ones(1, width, dtype=torch.bool)
    ts = (torch.arange(width)[None] * 30)  # a token every 30 s: bucket = ceil(4 * 30 * steps / 120)
    acts = torch.ones(1, width, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        wpos, wvalid, off, tact, row_valid = sample_targets(cfg, rows, acts, ts, is_pin, L, g)
        step = wpos[..., 0] - torch.arange(L)[None]
        assert ((step >= 1) & (step <= 4)).all() and (off == step).all()
        seen |= set(step.flatten().tolist())
    assert seen == {1, 2, 3, 4}  # t' uniform in time reaches every offset within t_lim_s


def test_item_features_from_items_table_and_unknown_ids():
    t = pa.table({"item_id": [5, 3], "features": [[1.0] * 32, [2.0] * 32]})
    f = ItemFeatures.from_table(t)
    out = f.lookup(np.array([3, 4, 5]))
    assert out.shape == (3, 32) and out[0, 0] == 2.0 and out[1].sum() == 0 and out[2, 0] == 1.0


def test_an_unknown_query_is_featurised_from_its_text():
    from pinrec.core.features import query_features

    f = ItemFeatures.from_table(pa.table({"item_id": [5, 3], "features": [[1.0] * 32, [2.0] * 32]}))
    out = f.lookup(np.array([3, 77, 78, 5]), ["ignored: 3 is known", "red shoes", None, None])
    assert out[0, 0] == 2.0 and out[3, 0] == 1.0  # the items table wins for known ids
    assert np.allclose(out[1], query_features("red shoes", 32))  # as training featurises it
    assert out[2].sum() == 0  # unknown and no text: zeros, the ID embedding alone


def test_item_features_from_table_must_match_the_models_width():
    import pytest

    t = pa.table({"item_id": [5, 3], "features": [[1.0] * 256, None]})
    assert ItemFeatures.from_table(t, 256).lookup(np.array([5])).shape == (1, 256)
    with pytest.raises(ValueError, match=r"pinrec items --feature-dim 32"):
        ItemFeatures.from_table(t)  # a 32-dim model over a 256-wide items table


def test_wider_feature_dim_keeps_attributes_apart():
    """Beauty's 637 attribute values in 32 signed buckets collide ~20 to a bucket; at 1024 the
    multi-hot separates them (what `--set feature_dim=1024` gives offline evaluation)."""
    n = 637
    feats = pa.table({"item_id": list(range(1, n + 1)), "item_type": ["pin"] * n,
                      "attributes": [[i] for i in range(n)], "content": [None] * n},
                     schema=pa.schema([("item_id", pa.int64()), ("item_type", pa.string()),
                                       ("attributes", pa.list_(pa.int64())), ("content", pa.list_(pa.float32()))]))
    ev = pa.table({"user_id": [1] * n, "item_id": list(range(1, n + 1)), "item_type": ["pin"] * n,
                   "action": ["repin"] * n, "surface": ["homefeed"] * n,
                   "ts": pa.array([T0 + i for i in range(n)], pa.timestamp("us", tz="UTC"))})
    narrow, wide = build_catalog(ev, feats), build_catalog(ev, feats, feature_dim=1024)
    assert narrow.features.shape == (n, 32) and wide.features.shape == (n, 1024)

    def distinct(f):
        return len({tuple(np.flatnonzero(r)) + tuple(np.sign(r[np.flatnonzero(r)])) for r in f})
    assert distinct(narrow.features) <= 64  # one signed bucket each: at most 2 x 32 patterns
    assert distinct(wide.features) > 0.7 * n


def test_training_takes_the_items_tables_vectors_so_queries_match_serving():
    from jobs.train_data import use_items_features
    from pinrec.core.features import query_features

    seq = pa.table({
        "user_id": [7], "event_ids": [["a", "b", "c"]], "item_ids": [[10, 99, 11]],
        "item_types": [["pin", "query", "pin"]], "actions": [["repin", "search", "grid_click"]],
        "surfaces": [["homefeed", "search", "search"]], "ts": [[T0, T0 + 1, T0 + 2]], "length": [3],
        "cutoff_ts": [T0 + 10], "ds": ["2026-01-01"],
    }, schema=SEQUENCES_SCHEMA)
    cat = build_catalog(events_from_sequences(seq), None, 16)
    pin10, pin11, query = cat.rows(np.array([10, 11, 99]))
    empty = query_features(None, 16)
    assert np.allclose(cat.features[query], empty)  # the sequences contract has no query text
    served = query_features("red shoes", 16)
    items = pa.table({"item_id": [99, 10, 555], "features": [served.tolist(), [0.5] * 16, [1.0] * 16]})
    assert use_items_features(cat, items, 16) == 2  # 555 is not in the training catalog
    assert np.allclose(cat.features[query], served) and not np.allclose(served, empty)
    assert np.allclose(cat.features[pin10], 0.5) and np.abs(cat.features[pin11]).sum() == 0  # untouched
    with pytest.raises(ValueError, match="pinrec items --feature-dim 8"):
        use_items_features(cat, items, 8)
