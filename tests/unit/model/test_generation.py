"""Compression, condition offsets, retrieval and generate_candidates on a tiny random model
(the budget rule itself: tests/unit/foundation/test_budgets.py)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pinrec.core.budgets import Budget
from pinrec.core.contracts import PINTEREST_ACTIONS
from pinrec_model.api import Candidate, History, ItemFeatures, LoadedModel, embed_items, generate_candidates, \
    load_model, save_model
from pinrec_model.config import preset
from pinrec_model.generation import compress, condition_offsets
from pinrec_model.model import PinRec
from pinrec_model.retrieval import Retriever


def test_compress_merges_near_duplicates_in_generation_order():
    e = np.array([[1, 0], [0.999, 0.0447], [0, 1], [0.0447, 0.999], [1, 0]], dtype=np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    kept, counts = compress(e, 0.99)
    assert kept.tolist() == [0, 2] and counts.tolist() == [3, 2]
    kept, counts = compress(e, None)
    assert kept.tolist() == [0, 1, 2, 3, 4]


def test_condition_offsets_keep_a_steps_conditions_distinct():
    # 16 slots over two interleaved actions, t_lim 4: by slot position alone only 8 pairs differed
    acts = torch.tensor([[1, 2] * 8, [3] * 4 + [5] * 12])
    offs = condition_offsets(acts, 4)
    assert offs.min() >= 1 and offs.max() <= 4
    for a, o in zip(acts.tolist(), offs.tolist()):
        pairs = list(zip(a, o))
        per_action = {x: a.count(x) for x in a}
        # distinct up to t_lim per action; beyond that each offset is used evenly
        assert len(set(pairs)) == sum(min(c, 4) for c in per_action.values())
        for x, c in per_action.items():
            used = [oo for aa, oo in pairs if aa == x]
            assert max(used.count(v) for v in set(used)) == -(-c // 4)
    # one action: k slots spread evenly over [1, t_lim]
    assert condition_offsets(torch.full((1, 8), 2), 8).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert condition_offsets(torch.full((1, 4), 2), 8).tolist() == [[1, 3, 5, 7]]
    assert condition_offsets(torch.full((1, 1), 2), 8).tolist() == [[1]]


def test_retriever_flat_and_ivf_agree_on_easy_data(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 1000 + 7
    flat = Retriever.build(ids, emb, "flat")
    s, i = flat.search(emb[:5], 3)
    assert (i[:, 0] == ids[:5]).all() and np.allclose(s[:, 0], 1.0, atol=1e-5)
    ivf = Retriever.build(ids, emb, "ivf_hnsw", nprobe=64)
    _, i2 = ivf.search(emb[:50], 1)
    assert (i2[:, 0] == ids[:50]).mean() >= 0.9
    flat.save(tmp_path / "idx")
    _, i3 = Retriever.load(tmp_path / "idx").search(emb[:5], 3)
    assert (i3 == i).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("small", variant="mt_oc", d_model=32, n_heads=2, emb_dim=16, id_buckets=4096,
                 n_actions=len(PINTEREST_ACTIONS.actions), dropout=0.0)
    vdir = save_model(tmp_path_factory.mktemp("m") / "v1", PinRec(cfg).eval(), None, PINTEREST_ACTIONS,
                      {"val": 0.0})
    m = load_model(vdir)
    ids = np.arange(1, 401, dtype=np.int64)
    feats = ItemFeatures.from_arrays(ids, np.random.default_rng(0).normal(size=(400, 32)).astype(np.float32))
    emb = embed_items(m, ids, ["pin"] * 400, feats.lookup(ids))
    return m, feats, Retriever.build(ids, emb), vdir


def _hist(u, n=12, seed=0):
    rng = np.random.default_rng(seed + u)
    return History(u, rng.integers(1, 401, n).astype(np.int64), ["pin"] * n,
                   list(rng.choice(["repin", "grid_click"], n)), ["homefeed"] * n,
                   (1_767_225_600_000_000 + np.arange(n) * 60_000_000).astype(np.int64))


def test_model_version_is_immutable_and_round_trips(tiny):
    m, feats, _, vdir = tiny
    assert {p.name for p in vdir.iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    with pytest.raises(FileExistsError):
        save_model(vdir, m.model, None, PINTEREST_ACTIONS, {})
    assert m.variant == "mt_oc" and m.vocab == PINTEREST_ACTIONS


def test_generate_candidates_respects_budget_history_and_dedup(tiny):
    m, feats, retr, _ = tiny
    hs = [_hist(u) for u in range(4)]
    budget = Budget.parse({"repin": 0.5, "grid_click": 0.3, "outbound_click": 0.2}, m.vocab.engagement_actions)
    out = generate_candidates(m, hs, feats, budget, 30, retr, compression_threshold=0.98)
    assert len(out) == 4
    for h, cands in zip(hs, out):
        assert len(cands) == 30
        ids = [c.item_id for c in cands]
        assert len(set(ids)) == 30  # de-duplicated
        assert not set(ids) & set(h.item_ids.tolist())  # history excluded
        assert Counter(c.outcome for c in cands) == {"repin": 15, "grid_click": 9, "outbound_click": 6}
        assert [c.score for c in cands] == sorted([c.score for c in cands], reverse=True)
    # batched equals one-by-one (left padding does not leak between users)
    one = generate_candidates(m, hs[1:2], feats, budget, 30, retr, compression_threshold=0.98)
    assert [c.item_id for c in one[0]] == [c.item_id for c in out[1]]


def test_generate_candidates_multi_token_and_empty_history(tiny):
    m, feats, retr, _ = tiny
    hs = [_hist(0), History(9, np.zeros(0, np.int64), [], [], [], np.zeros(0, np.int64))]
    for k in (1, 4, 16):
        out = generate_candidates(m, hs, feats, Budget((("repin", 1.0),)), 10, retr, tokens_per_step=k)
        assert [len(c) for c in out] == [10, 10]
        assert all(c.outcome == "repin" for c in out[0])

