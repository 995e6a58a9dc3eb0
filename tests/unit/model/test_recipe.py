"""The recipe options (docs/model.md, Beauty): item tower (hashed_mlp | id | id_mlp), direct or
hashed IDs, cosine or dot logits, head mlp | none, projected or tied input. Defaults unchanged,
options round-trip through config.json, invalid combinations are refused, and each option does
what it says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pinrec.core.budgets import Budget
from pinrec_model.config import PinRecConfig, preset
from pinrec_model.item_tower import hash_ids
from pinrec_model.losses import full_softmax_loss, sampled_softmax_loss
from pinrec_model.model import PinRec

SASREC = dict(item_tower="id", id_hash="direct", logits="dot", head="none", input_proj=False)
SMALL = dict(d_model=16, n_heads=2, d_ff=32, emb_dim=16, id_dim=16, id_buckets=256, dropout=0.0)


def _ids(n=6):
    ids = torch.arange(1, n + 1)
    return ids, torch.ones(n, dtype=torch.long), torch.randn(n, 32, generator=torch.Generator().manual_seed(0))


def test_defaults_are_the_first_recipe_and_options_round_trip():
    d = PinRecConfig()
    assert (d.item_tower, d.id_hash, d.logits, d.head, d.input_proj) == ("hashed_mlp", "universal", "cosine", "mlp", True)
    assert d.loss_scale == d.logit_scale == 20.0
    cfg = preset("small", variant="uc", **SASREC, **SMALL)
    assert cfg.loss_scale == 1.0 and not cfg.normalised
    assert PinRecConfig.from_json(cfg.to_json()) == cfg
    # a config.json written before these fields existed loads with the old behaviour
    old = {k: v for k, v in d.to_json().items() if k not in SASREC}
    assert PinRecConfig.from_json(old) == d


@pytest.mark.parametrize("bad, msg", [
    (dict(item_tower="mlp"), "item_tower"),
    (dict(logits="l2"), "logits"),
    (dict(item_tower="id", id_dim=8), "id_dim"),
    (dict(variant="oc", head="none"), "head=none"),
    (dict(input_proj=False, d_model=32), "d_model"),
    (dict(item_tower="id_mlp", use_features=False), "use_features"),
])
def test_invalid_combinations_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        preset("small", **{**dict(variant="uc", **SMALL), **bad})


def test_direct_id_tower_is_a_plain_table_with_raw_dot_vectors():
    torch.manual_seed(0)
    m = PinRec(preset("small", variant="uc", **SASREC, **SMALL)).eval()
    ids, types, feats = _ids()
    e = m.embed_items(ids, types, feats)
    torch.testing.assert_close(e, m.items.id_table.weight[ids])  # row = id: no collisions, no MLP
    assert not torch.allclose(e.norm(dim=-1), torch.ones(len(ids)))  # dot logits: not normalised
    assert len(m.items.embedders) == 0
    # features are ignored by the id tower
    torch.testing.assert_close(m.embed_items(ids, types, feats * 5), e)
    # tied input: the token is the item vector * sqrt(d) (plus the other parts, zero here)
    z = torch.zeros(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        for emb in (m.type_in, m.action_in, m.surface_in, m.pos):
            emb.weight.zero_()
        m.time_in.weight.zero_()
        m.time_in.bias.zero_()
    x = m.input_tokens(e[None], z, z, z, torch.zeros(1, len(ids), 6), z)
    torch.testing.assert_close(x[0], e * 4.0)
    # head none: the hidden state is the query
    h = torch.randn(3, 16)
    torch.testing.assert_close(m.output(h), h)


def test_cosine_option_normalises_items_and_queries_for_every_tower():
    torch.manual_seed(0)
    ids, types, feats = _ids()
    for tower in ("hashed_mlp", "id", "id_mlp"):
        m = PinRec(preset("small", variant="uc", item_tower=tower, logits="cosine", **SMALL)).eval()
        torch.testing.assert_close(m.embed_items(ids, types, feats).norm(dim=-1), torch.ones(len(ids)))
        torch.testing.assert_close(m.output(torch.randn(3, 16)).norm(dim=-1), torch.ones(3))


def test_id_mlp_starts_as_the_id_model_and_learns_from_features():
    torch.manual_seed(0)
    m = PinRec(preset("small", variant="uc", item_tower="id_mlp", id_hash="direct", logits="dot", **SMALL))
    ids, types, feats = _ids()
    torch.testing.assert_close(m.embed_items(ids, types, feats), m.items.id_table.weight[ids])
    # one gradient step on a feature-dependent loss moves the last MLP layer off zero
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    (m.embed_items(ids, types, feats)[:, 0] * feats[:, 0]).sum().backward()
    opt.step()
    e = m.embed_items(ids, types, feats)
    assert not torch.allclose(e, m.items.id_table.weight[ids])
    # ... and now two items with the same ID row but different features differ
    same_id = torch.tensor([1, 1])
    e2 = m.embed_items(same_id, torch.ones(2, dtype=torch.long), feats[:2])
    assert not torch.allclose(e2[0], e2[1])


def test_direct_ids_never_collide_below_the_bucket_count_while_hashing_may():
    m = PinRec(preset("small", variant="uc", **SASREC, **{**SMALL, "id_buckets": 64}))
    ids = torch.arange(64)
    rows = torch.remainder(ids, 64)
    assert len(torch.unique(rows)) == 64
    big = torch.randint(1 << 40, 1 << 62, (64,), generator=torch.Generator().manual_seed(0))
    assert len(torch.unique(hash_ids(big, 1, 64))) < 64  # 64 random ids in 64 buckets collide
    e = m.embed_items(ids, torch.ones(64, dtype=torch.long), torch.zeros(64, 32))
    assert len(torch.unique(e, dim=0)) == 64


def test_softmax_logits_are_fp32_under_bf16_autocast():
    """Raw dot logits reach tens; bf16 rounds them by ~0.1. The losses compute them in fp32, so
    under CPU bf16 autocast they equal the fp32 losses, which a bf16 matmul would not."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 32, generator=g) * 2
    cat = torch.randn(500, 32, generator=g) * 2
    rows = torch.randint(0, 500, (64, 1), generator=g)
    valid = torch.ones(64, 1, dtype=torch.bool)
    ref = full_softmax_loss(q, cat, rows, valid, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = full_softmax_loss(q, cat, rows, valid, 1.0)
        bf16 = torch.nn.functional.cross_entropy(q @ cat.T, rows[:, 0]).float()
    assert abs(float(got) - float(ref)) < 1e-5
    assert abs(float(bf16) - float(ref)) > 1e-3  # the test can tell the difference
    ids = torch.arange(500)
    neg = cat[100:]
    args = (q, cat[rows], ids[rows], valid, torch.zeros(64, 1), neg, ids[100:], torch.zeros(400), 1.0)
    ref_s = sampled_softmax_loss(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_s = sampled_softmax_loss(*args)
    assert abs(float(got_s) - float(ref_s)) < 1e-5


def _cyclic(users=40, length=30, period=5, groups=4):
    """User u cycles through the `period` items of group u % groups, starting at a user-specific
    phase: every transition occurs at many positions, so next-item HR@1 can approach 1."""
    import pyarrow as pa

    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.data import Catalog, build_user_seqs

    u, it, ts = [], [], []
    for user in range(users):
        g = user % groups
        for t in range(length):
            u.append(user)
            it.append(1 + g * period + (t + user) % period)
            ts.append(1_767_225_600_000_000 + t * 60_000_000)
    n = len(u)
    ev = pa.table({"user_id": u, "item_id": it, "item_type": ["pin"] * n, "action": ["repin"] * n,
                   "surface": ["homefeed"] * n, "ts": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    items = groups * period
    cat = Catalog(np.arange(1, items + 1, dtype=np.int64), np.ones(items, np.int64),
                  np.random.default_rng(0).normal(size=(items, 32)).astype(np.float32))
    return cat, build_user_seqs(ev, cat, PINTEREST_ACTIONS)


@pytest.mark.parametrize("tower", ["id", "id_mlp"])
def test_sasrec_recipe_learns_a_next_item_pattern(tower):
    """Dot logits, direct IDs, no head, tied input, full softmax: next-item HR@1 on a cyclic toy
    far above chance (1/20) after a few epochs: the recipe trains end to end, not just constructs."""
    from pinrec_model.data import make_examples
    from pinrec_model.metrics import hit_rate, next_item_ranks
    from pinrec_model.training import TrainConfig, fit, lookahead
    from pinrec_model.training_loss import CatalogTensors

    cat, seqs = _cyclic()
    cfg = preset("small", variant="uc", full_softmax=True, max_len=8, **{**SMALL, "id_buckets": 64},
                 **{**SASREC, "item_tower": tower})
    U = len(seqs.user_ids)
    ex = make_examples(seqs.subset(np.arange(U), np.ones(U, np.int64)), cfg.max_len, lookahead(cfg))
    res = fit(cfg, TrainConfig(epochs=6, batch_size=16, lr=1e-2, warmup_steps=5, progress=False), cat, ex)
    assert res.history[-1]["loss"] < 0.5 * res.history[0]["loss"]
    last = seqs.offsets[1:] - 1
    hist = seqs.subset(np.arange(U), np.ones(U, np.int64))
    ranks = next_item_ranks(res.model, CatalogTensors(cat, "cpu"), hist, seqs.rows[last], seqs.actions[last], 8)
    assert hit_rate(ranks, 1) > 0.8, ranks


def test_time_age_off_zeroes_only_the_age_feature():
    torch.manual_seed(0)
    cfg = preset("small", variant="uc", time_age=False, **SMALL)
    m = PinRec(cfg).eval()
    e = torch.randn(1, 3, 16)
    z = torch.ones(1, 3, dtype=torch.long)
    tf = torch.rand(1, 3, 6)
    tf_other_age = tf.clone()
    tf_other_age[..., 1] += 5.0
    x1, x2 = m.input_tokens(e, z, z, z, tf, z), m.input_tokens(e, z, z, z, tf_other_age, z)
    torch.testing.assert_close(x1, x2)  # the age no longer reaches the model
    tf_gap = tf.clone()
    tf_gap[..., 0] += 5.0
    assert not torch.allclose(x1, m.input_tokens(e, z, z, z, tf_gap, z))  # the gap still does
    on = PinRec(preset("small", variant="uc", **SMALL)).eval()
    assert not torch.allclose(on.input_tokens(e, z, z, z, tf, z), on.input_tokens(e, z, z, z, tf_other_age, z))


def test_additive_head_conditions_on_phi_linearly():
    torch.manual_seed(0)
    m = PinRec(preset("small", variant="mt_oc", head="add", logits="dot", **SMALL)).eval()
    assert not hasattr(m, "head")
    h = torch.randn(4, 16)
    a = torch.tensor([1, 2, 1, 3])
    t = torch.tensor([1, 1, 2, 9])  # 9 is clamped to t_lim
    want = h + m.action_head(a) + m.offset_head(t.clamp(1, m.cfg.t_lim))
    torch.testing.assert_close(m.output(h, a, t), want)
    assert not torch.allclose(m.output(h, a, t), m.output(h, a + 1, t))


@pytest.mark.parametrize("variant, head", [("uc", "none"), ("mt_oc", "add")])
def test_dot_recipe_serves_through_the_api(tmp_path, variant, head):
    """A dot-product model (raw, unnormalised vectors) saves, loads with its recipe, embeds items
    for the inner-product index and generates de-duplicated candidates, compression included."""
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.api import History, ItemFeatures, embed_items, generate_candidates, load_model, save_model
    from pinrec_model.retrieval import Retriever

    torch.manual_seed(0)
    cfg = preset("small", variant=variant, item_tower="id_mlp", logits="dot", head=head, input_proj=False,
                 n_actions=len(PINTEREST_ACTIONS.actions), **{**SMALL, "id_buckets": 4096})
    vdir = save_model(tmp_path / "v1", PinRec(cfg).eval(), None, PINTEREST_ACTIONS, {"val": 0.0})
    m = load_model(vdir)
    assert m.config == cfg
    ids = np.arange(1, 301, dtype=np.int64)
    feats = ItemFeatures.from_arrays(ids, np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32))
    emb = embed_items(m, ids, ["pin"] * 300, feats.lookup(ids))
    with torch.no_grad():  # the feature MLP starts at zero: the hashed ID vectors
        torch.testing.assert_close(torch.as_tensor(emb), m.model.items.id_vectors(torch.as_tensor(ids)))
    retr = Retriever.build(ids, emb)
    rng = np.random.default_rng(1)
    hs = [History(u, rng.choice(ids, 6, replace=False), ["pin"] * 6, ["repin"] * 6, ["homefeed"] * 6,
                  (1_767_225_600_000_000 + np.arange(6) * 60_000_000).astype(np.int64)) for u in range(3)]
    budget = Budget((("repin", 0.5), ("grid_click", 0.5)))
    for thr in (None, 0.9):
        # An untrained dot-product model retrieves the same large-norm items for every query, so
        # the API may return fewer than n: what it returns must still be distinct and unseen.
        out = generate_candidates(m, hs, feats, budget, 20, retr, compression_threshold=thr, overfetch=20)
        for h, cands in zip(hs, out):
            got = [c.item_id for c in cands]
            assert 10 <= len(got) <= 20 and len(set(got)) == len(got), (thr, got)
            assert not set(got) & set(h.item_ids.tolist())
    # compression compares directions: raw dot products of ~4-norm vectors would merge them all
    from pinrec_model.generation import compress
    g = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32) * 4
    kept, counts = compress(g, 0.9)
    assert len(kept) == 8 and counts.sum() == 8  # random directions: nothing is a near-duplicate
    kept, counts = compress(np.concatenate([g[:1], 3 * g[:1]]), 0.9)
    assert kept.tolist() == [0] and counts.tolist() == [2]  # same direction, other norm: merged
