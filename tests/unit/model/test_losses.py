"""Loss parts: the count-min sketch, logQ correction and the windowed min."""
from __future__ import annotations

import math

import numpy as np
import torch

from pinrec_model.losses import CountMinSketch, full_softmax_loss, sampled_softmax_loss


def test_count_min_sketch_never_undercounts_and_is_close_on_skewed_stream():
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.3, 50_000).astype(np.int64) % 5000
    cms = CountMinSketch(width=4096, depth=4)
    for chunk in np.array_split(ids, 10):
        cms.update(torch.as_tensor(chunk))
    uniq, true = np.unique(ids, return_counts=True)
    est = cms.count(torch.as_tensor(uniq)).numpy()
    assert (est >= true).all()
    top = np.argsort(-true)[:20]
    assert np.allclose(est[top], true[top], rtol=0.05)  # heavy hitters are near exact
    assert float(cms.total) == len(ids)


def _learned_distribution(logq: bool, steps=150) -> torch.Tensor:
    """One context whose next item follows a skewed distribution p; train with in-batch
    negatives only (drawn from p as well), return the model's full-softmax distribution."""
    torch.manual_seed(0)
    n, D = 10, 8
    item = torch.nn.Parameter(torch.randn(n, D) * 0.1)
    ctx = torch.nn.Parameter(torch.randn(1, D) * 0.1)
    opt = torch.optim.Adam([item, ctx], lr=0.05)
    cms = CountMinSketch(1024, 4)
    p = torch.tensor([0.5] + [0.5 / 9] * 9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tgt = torch.multinomial(p, 128, replacement=True, generator=g)
        cms.update(tgt)
        q = torch.nn.functional.normalize(ctx, dim=-1).expand(128, D)
        e = torch.nn.functional.normalize(item, dim=-1)
        lq = (math.log(128) + cms.log_prob(tgt)) if logq else torch.zeros(128)
        pos_q = lq if logq == "all" else torch.zeros(128)
        # in-batch negatives: the other rows' targets, as in training
        loss = sampled_softmax_loss(q, e[tgt][:, None], tgt[:, None], torch.ones(128, 1, dtype=torch.bool),
                                    pos_q[:, None], e[tgt], tgt, lq, scale=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = 10.0 * torch.nn.functional.normalize(ctx, dim=-1) @ torch.nn.functional.normalize(item, dim=-1).T
        return torch.softmax(s[0], dim=0)


def test_logq_on_negatives_recovers_the_true_distribution():
    """Toy catalogue with a known skew (one item has 50 % of the traffic, DESIGN.md §6): with
    accidental hits masked, correcting the negatives recovers p; also correcting the positive
    (the regression this guards against) over-rates the popular item."""
    ours = _learned_distribution(True)
    both = _learned_distribution("all")
    assert abs(float(ours[0]) - 0.5) < 0.06
    assert abs(float(ours[1:].sum()) - 0.5) < 0.06
    assert float(both[0]) > 0.75


def test_window_min_picks_best_positive_and_masks_target_negatives():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # second positive matches the query
    neg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zeros = torch.zeros(1, 2)
    # negative 0 has the same id as positive 1 -> masked, so only negative 1 remains
    loss = sampled_softmax_loss(q, pos, torch.tensor([[7, 8]]), torch.tensor([[True, True]]), zeros,
                                neg, torch.tensor([8, 9]), torch.zeros(2), scale=5.0)
    expected = -math.log(math.exp(5) / (math.exp(5) + math.exp(0)))
    assert abs(float(loss) - expected) < 1e-5
    # an invalid positive is never chosen
    loss2 = sampled_softmax_loss(q, pos, torch.tensor([[7, 8]]), torch.tensor([[True, False]]), zeros,
                                 neg, torch.tensor([8, 9]), torch.zeros(2), scale=5.0)
    assert float(loss2) > float(loss)


def test_full_softmax_is_cross_entropy():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    cat = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    tgt = torch.tensor([[3], [5], [0], [19]])
    ours = full_softmax_loss(q, cat, tgt, torch.ones(4, 1, dtype=torch.bool), 7.0)
    ref = torch.nn.functional.cross_entropy(7.0 * q @ cat.T, tgt[:, 0])
    torch.testing.assert_close(ours, ref)


def _ce(s_pos: float, s_negs) -> float:
    return -s_pos + math.log(math.exp(s_pos) + sum(math.exp(x) for x in s_negs))


def test_window_mean_averages_distinct_targets_with_the_others_out_of_the_partition():
    # the ablation (window_loss="mean", not Eq. 5): ids 7, 7, 8 and a padded slot -> items 7 and 8
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    ids, valid = torch.tensor([[7, 7, 8, 5]]), torch.tensor([[True, True, True, False]])
    neg = torch.tensor([[0.6, 0.8], [0.0, 1.0]])  # the second negative IS item 8: masked
    args = (q, pos, ids, valid, torch.zeros(1, 4), neg, torch.tensor([9, 8]), torch.zeros(2), 3.0)
    got = sampled_softmax_loss(*args, window_loss="mean")
    expected = (_ce(3.0, [1.8]) + _ce(0.0, [1.8])) / 2  # item 7 and item 8, each against item 9
    assert abs(float(got) - expected) < 1e-5
    assert float(got) > float(sampled_softmax_loss(*args))  # the min takes item 7 alone


def test_full_softmax_window_mean_matches_a_hand_count_and_equals_min_for_one_target():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    cat = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    rows = torch.tensor([[4, 4, 9], [0, 2, 0], [6, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    got = full_softmax_loss(q, cat, rows, valid, 5.0, window_loss="mean")
    logits = (5.0 * q @ cat.T).tolist()
    per_row = []
    for m in range(3):
        targets = sorted({int(r) for r, v in zip(rows[m], valid[m]) if v})
        others = [logits[m][n] for n in range(12) if n not in targets]
        per_row.append(sum(_ce(logits[m][t], others) for t in targets) / len(targets))
    assert abs(float(got) - sum(per_row) / 3) < 1e-4
    # one target per row (next-token): the mean and the min are the same loss
    one = valid & (torch.arange(3)[None, :] == 0)
    torch.testing.assert_close(full_softmax_loss(q, cat, rows, one, 5.0, window_loss="mean"),
                               full_softmax_loss(q, cat, rows, one, 5.0))
