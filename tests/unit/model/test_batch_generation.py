"""The batch layer's array path (pinrec_model.batch_generation) against the per-user API path,
and the preallocated KV cache against the concatenating one."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pinrec.core.budgets import Arms, Budget
from pinrec.core.contracts import PINTEREST_ACTIONS
from pinrec_model.api import History, ItemFeatures, embed_items, history_tensors, load_model, save_model
from pinrec_model.batch_generation import arrow_history_arrays, device_history, generate_arrays, \
    select_candidates
from pinrec_model.config import preset
from pinrec_model.generation import generate, prefill
from pinrec_model.model import PinRec
from pinrec_model.retrieval import ExactIndex, Retriever
from tests.unit.model.walk_oracle import select_walk

N_ITEMS = 400


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("small", variant="mt_oc", d_model=32, n_heads=2, emb_dim=16, id_buckets=4096,
                 n_actions=len(PINTEREST_ACTIONS.actions), dropout=0.0, max_len=20)
    m = load_model(save_model(tmp_path_factory.mktemp("m") / "v1", PinRec(cfg).eval(), None,
                              PINTEREST_ACTIONS, {}))
    ids = np.arange(1, N_ITEMS + 1, dtype=np.int64)
    feats = ItemFeatures.from_arrays(ids, np.random.default_rng(0).normal(size=(N_ITEMS, 32)).astype(np.float32))
    emb = embed_items(m, ids, ["pin"] * N_ITEMS, feats.lookup(ids))
    return m, feats, Retriever.build(ids, emb, kind="flat"), ExactIndex(ids, emb, "cpu")


def _histories(n_users=9, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        n = int(rng.integers(1, 30))  # some longer than max_len (20): the newest are kept
        types = list(rng.choice(["pin", "pin", "pin", "query"], n))
        ids = rng.integers(1, N_ITEMS + 1, n).astype(np.int64)
        ids[np.array(types) == "query"] += 10_000  # queries are not catalog pins: the tower runs
        out.append(History(100 + u, ids, types, list(rng.choice(["repin", "grid_click", "search", "nope"], n)),
                           list(rng.choice(["homefeed", "search", "elsewhere"], n)),
                           np.sort(1_767_225_600_000_000 + rng.integers(0, 10**12, n)).astype(np.int64)))
    return out


def _batch(hs) -> pa.RecordBatch:
    lst = lambda vals, t: pa.array(vals, pa.list_(t))
    return pa.RecordBatch.from_arrays(
        [pa.array([h.user_id for h in hs], pa.int64()), lst([h.item_ids.tolist() for h in hs], pa.int64()),
         lst([h.item_types for h in hs], pa.string()), lst([h.actions for h in hs], pa.string()),
         lst([h.surfaces for h in hs], pa.string()),
         lst([h.ts_us.tolist() for h in hs], pa.int64()).cast(pa.list_(pa.timestamp("us", tz="UTC")))],
        names=["user_id", "item_ids", "item_types", "actions", "surfaces", "ts"])


def test_arrow_grids_equal_the_history_path(tiny):
    m, feats, _, index = tiny
    hs = _histories()
    batch = _batch(hs).slice(2)  # a sliced batch: offsets do not start at 0
    h = arrow_history_arrays(batch, list(m.vocab.actions), 20)
    ref = history_tensors(m, hs[2:], feats, 20)
    got = device_history(m, h, index, feats)
    assert h.user_ids.tolist() == [x.user_id for x in hs[2:]]
    for name, a, b in zip(("types", "actions", "surfaces", "ts", "valid"), got[1:], ref[1:]):
        assert torch.equal(a, b), name
    valid = ref[5]
    real = valid & (ref[1] > 0)
    # item embeddings: catalog pins from the index, queries through the tower; same values
    assert torch.allclose(got[0][real], ref[0][real], atol=1e-5)
    assert (h.item_ids[~h.valid] == -1).all()


def test_select_candidates_equals_the_walk_of_the_api():
    """Random search results with many repeats across rows: same ids, scores, outcomes."""
    rng = np.random.default_rng(1)
    B, E, K, n = 40, 6, 7, 20
    ids = rng.integers(0, 25, (B, E, K))  # 25 items only: rows overlap, fills are needed
    for b in range(B):
        for e in range(E):
            ids[b, e] = rng.permutation(25)[:K]  # distinct within a row, like a search result
    ids[rng.random((B, E, K)) < 0.1] = -1
    scores = np.sort(rng.random((B, E, K)), axis=2)[:, :, ::-1].astype(np.float32)
    quotas = [4, 3, 3, 4, 3, 3]
    plan = [(f"o{e % 3}", e, q) for e, q in enumerate(quotas)]
    ref = select_walk([plan] * B, scores.reshape(B * E, K), ids.reshape(B * E, K), [set() for _ in range(B)], n)
    got, sc, entry = select_candidates(torch.as_tensor(scores), torch.as_tensor(ids), quotas, n)
    for b in range(B):
        k = len(ref[b])
        assert got[b, :k].tolist() == [c.item_id for c in ref[b]], b
        assert (got[b, k:] == -1).all()
        assert np.allclose(sc[b, :k].numpy(), [c.score for c in ref[b]])
        assert [plan[e][0] for e in entry[b, :k].tolist()] == [c.outcome for c in ref[b]]


def test_generate_arrays_gives_n_distinct_unseen_items_per_arm(tiny):
    m, feats, _, index = tiny
    hs = _histories(12, seed=3)
    arms = Arms.parse({"a": {"repin": 0.5, "grid_click": 0.3, "outbound_click": 0.2}, "b": {"repin": 1.0}},
                      m.vocab.engagement_actions)
    res = generate_arrays(m, arrow_history_arrays(_batch(hs), list(m.vocab.actions), m.config.max_len),
                          index, feats, arms, 30)
    for arm, r in res.items():
        assert r.item_ids.shape == (12, 30)
        for b, h in enumerate(hs):
            got = r.item_ids[b].tolist()
            assert len(set(got)) == 30 and min(got) >= 1  # full, de-duplicated, real items
            assert not set(got) & set(h.item_ids.tolist())  # the WHOLE history excluded
            assert list(r.scores[b]) == sorted(r.scores[b], reverse=True)
        assert set(r.outcomes) <= set(arms[arm].as_dict())
    # one user alone gets what it gets in the batch (padding does not leak between users)
    one = generate_arrays(m, arrow_history_arrays(_batch(hs[4:5]), list(m.vocab.actions), m.config.max_len),
                          index, feats, arms, 30)
    assert one["a"].item_ids[0].tolist() == res["a"].item_ids[4].tolist()


def test_select_candidates_quota_dedup_fill_and_order():
    # 2 users, 3 plan entries, 4 results each; entry 1 repeats entry 0's items
    ids = torch.tensor([[[1, 2, 3, 4], [1, 2, 5, 6], [7, 8, -1, -1]],
                        [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]])
    scores = torch.tensor([[[.9, .8, .7, .6], [.95, .85, .5, .4], [.3, .2, float("-inf"), float("-inf")]],
                           [[.9, .8, .7, .6], [.9, .8, .7, .6], [.9, .8, .7, .6]]])
    got, sc, entry = select_candidates(scores, ids, [2, 2, 2], 6)
    # user 0: entry 0 takes 1, 2; entry 1 skips 1, 2 and takes 5, 6; entry 2 takes 7, 8
    assert sorted(got[0].tolist()) == [1, 2, 5, 6, 7, 8]
    assert sc[0].tolist() == sorted(sc[0].tolist(), reverse=True)
    assert dict(zip(got[0].tolist(), entry[0].tolist())) == {1: 0, 2: 0, 5: 1, 6: 1, 7: 2, 8: 2}
    # user 1: only 4 distinct items exist: the rest stays empty, nothing twice
    assert sorted(x for x in got[1].tolist() if x >= 0) == [1, 2, 3, 4]
    assert got[1].tolist().count(-1) == 2


def test_exact_index_excludes_history_and_matches_brute_force(tiny):
    _, _, faiss_flat, index = tiny
    q = torch.nn.functional.normalize(torch.randn(3, 2, index.emb.shape[1]), dim=-1)
    excl = torch.tensor([[5, 6, -1], [-1, -1, -1], [99999, 7, 7]])  # unknown ids are ignored
    s, i = index.search(q, 10, excl)
    s_ref, i_ref = faiss_flat.search(q.reshape(-1, q.shape[-1]).numpy(), 10 + 3)
    for b in range(3):
        banned = set(excl[b].tolist())
        for e in range(2):
            want = [x for x in i_ref[b * 2 + e].tolist() if x not in banned][:10]
            assert i[b, e].tolist() == want


def test_preallocated_kv_cache_equals_concatenation_and_rewinds(tiny):
    m, feats, _, _ = tiny
    hs = _histories(5, seed=7)
    t = history_tensors(m, hs, feats, 20)
    cond = torch.tensor([[1, 2, 1, 2, 1, 2, 3, 3]] * len(hs))
    with torch.no_grad():
        ref = generate(m.model, prefill(m.model, *t), cond, 2)
        st = prefill(m.model, *t, capacity=t[0].shape[1] + cond.shape[1])
        first = generate(m.model, st, cond, 2)
        again = generate(m.model, st, cond, 2)  # from the same prefill: the cache rewinds
    assert torch.allclose(first, ref, atol=1e-5) and torch.equal(first, again)


def test_a_query_unknown_to_the_items_table_embeds_from_its_text(tiny):
    from dataclasses import replace

    from pinrec.core.features import query_features
    from pinrec_model.api import embed_items

    m, feats, _, _ = tiny
    q = 987_654_321  # a query searched today: not in the items table
    h = History(1, np.array([3, q], np.int64), ["pin", "query"], ["repin", "search"], ["homefeed", "search"],
                np.array([1_767_225_600_000_000, 1_767_225_660_000_000], np.int64))
    with_text = history_tensors(m, [replace(h, query_texts=[None, "red shoes"])], feats, 20)[0][0, -1]
    no_text = history_tensors(m, [h], feats, 20)[0][0, -1]
    expect = embed_items(m, np.array([q]), ["query"], query_features("red shoes", 32)[None, :])[0]
    torch.testing.assert_close(with_text.cpu(), torch.as_tensor(expect))
    assert not torch.allclose(with_text, no_text)
