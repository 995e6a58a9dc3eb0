"""The sampled softmax's parts (pinrec_model.negatives): the refactored loss equals the loss
inlined in training_loss before the parts existed, and each part does what it says."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from tests.unit.model.test_train_step import _setup

from pinrec_model.losses import CountMinSketch
from pinrec_model.model import PinRec
from pinrec_model.negatives import (InBatchNegatives, LogQCorrection, MixedNegatives, NoCorrection, RandomNegatives,
                                    Targets, logq_correction, negatives_sampler)
from pinrec_model.training_loss import CatalogTensors, training_loss

# Recorded by running the inlined loss at commit 25e89f4 (before the parts), with
# `three_steps` below: per step (loss, sum of squared gradients), then the generator's next draw.
RECORDED = {
    "mt_oc": ("mt_oc", {}, [13.625276565551758, 38005.87612785752, 12.518546104431152, 52409.65526993804, 12.122838973999023, 43578.34255585193, 2674561.0]),
    "uc": ("uc", {}, [18.11919403076172, 50410.31383357286, 17.615766525268555, 50588.87170325112, 17.29509735107422, 50421.502626505375, 1073738593.0]),
    "oc_no_logq": ("oc", {"logq_correction": False}, [10.765891075134277, 50072.780123590455, 10.829490661621094, 51461.361396973945, 10.8672513961792, 54058.4119796781, 1073738593.0]),
    "mt_oc_logq_on_positive": ("mt_oc", {"logq_on_positive": True}, [7.862065315246582, 40861.626017901894, 7.0377068519592285, 54642.03632031457, 7.164677143096924, 44199.645485540976, 2674561.0]),
    "uc_in_batch_only_no_logq": ("uc", {"n_random_negatives": 0, "logq_correction": False}, [12.16302490234375, 52983.26523513226, 12.16302490234375, 52983.26523513226, 12.16302490234375, 52983.26523513226, 159010501.0]),
    "uc_random_only_no_logq": ("uc", {"max_in_batch_negatives": 0, "logq_correction": False}, [12.064827919006348, 125106.31784374903, 10.077707290649414, 83885.95038593917, 10.847877502441406, 68520.67199541818, 1073738593.0]),
    "mt_oc_window_mean": ("mt_oc", {"window_loss": "mean"}, [17.1262264251709, 44301.85369423072, 15.818395614624023, 57755.04929548923, 15.61318588256836, 47861.84616104558, 2674561.0]),
    "uc_few_in_batch": ("uc", {"max_in_batch_negatives": 5}, [18.01737403869629, 104965.41801225572, 15.864788055419922, 195765.7478740961, 15.92767333984375, 133847.27779173254, 1073738593.0]),
    "uc_full_softmax": ("uc", {"full_softmax": True}, [12.863670349121094, 72527.453505315, 12.863670349121094, 72527.453505315, 12.863670349121094, 72527.453505315, 398764591.0]),
}


def _step_setup(variant, over):
    cfg, cat, batch, _ = _setup(variant, B=8, seed=0)
    cfg = replace(cfg, **over)
    torch.manual_seed(0)
    model = PinRec(cfg).train()
    return cfg, model, CountMinSketch(cfg.cms_width, cfg.cms_depth), CatalogTensors(cat, "cpu"), batch


def three_steps(variant: str, over: dict) -> list[float]:
    """Three losses on one batch without optimiser steps: the sketch and the generator carry over."""
    cfg, model, cms, ct, batch = _step_setup(variant, over)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        loss = training_loss(model, cms, ct, batch, gen, cfg.max_len)
        model.zero_grad()
        loss.backward()
        out += [float(loss.detach()), float(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None))]
    return out + [float(torch.randint(0, 1 << 30, (1,), generator=gen))]


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_loss_parts_equal_the_inlined_loss_they_replaced(case):
    variant, over, want = RECORDED[case]
    got = three_steps(variant, over)
    # exact on the machine that recorded them; a hair of slack for another CPU's BLAS
    assert got[0::2] == pytest.approx(want[0::2], rel=1e-6)  # losses, then the generator's position
    assert got[1::2] == pytest.approx(want[1::2], rel=1e-5)  # gradients
    assert got[-1] == want[-1]


def test_the_config_selects_the_parts():
    cfg, _, cms, ct, _ = _step_setup("uc", {})
    pick = lambda **o: negatives_sampler(replace(cfg, **o), cms, ct.ids, ct.pin_rows)
    assert isinstance(pick(), MixedNegatives)
    assert isinstance(pick(n_random_negatives=0), InBatchNegatives)
    assert isinstance(pick(max_in_batch_negatives=0), MixedNegatives) and pick(max_in_batch_negatives=0).in_batch.k == 0
    with pytest.raises(ValueError, match="no negatives"):
        pick(n_random_negatives=0, max_in_batch_negatives=0)
    assert isinstance(logq_correction(cfg), LogQCorrection) and not logq_correction(cfg).on_positive
    assert isinstance(logq_correction(replace(cfg, logq_correction=False)), NoCorrection)


def test_in_batch_only_with_logq_trains_now():
    """n_random_negatives=0 with the correction on used to fail on log(0 / N)."""
    cfg, model, cms, ct, batch = _step_setup("uc", {"n_random_negatives": 0})
    loss = training_loss(model, cms, ct, batch, torch.Generator().manual_seed(0), cfg.max_len)
    assert torch.isfinite(loss) and loss > 0


def test_each_sampler_states_its_q():
    cfg, _, cms, ct, _ = _step_setup("uc", {})
    gen = torch.Generator().manual_seed(0)
    rnd = RandomNegatives(7, ct.pin_rows)
    rnd.draw(gen, 2, 3, None, "cpu")
    emb = torch.randn(7, 4)
    neg = rnd(None, emb)
    assert len(neg.rows) == 7 and set(neg.rows.tolist()) <= set(ct.pin_rows.tolist())
    assert torch.allclose(neg.log_count, torch.full((7,), math.log(7 / len(ct.pin_rows))))
    inb = InBatchNegatives(3, cms, ct.ids)
    inb.draw(gen, 2, 3, None, "cpu")
    prim = torch.tensor([0, 1, 1, 2, 4])
    t = Targets(prim, torch.randn(5, 4), (torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 0, 1, 2])), [5], None)
    neg = inb(t, emb[:0])
    assert len(neg.rows) == 3 and set(neg.rows.tolist()) <= set(prim.tolist())
    # Q = log(m * p(i)), p from the sketch that has just counted the 5 primary targets
    p = (cms.count(ct.ids[neg.rows]) + 1) / (5 + cms.width)
    assert torch.allclose(neg.log_count, (math.log(3) + torch.log(p)).float())
    pos_q, neg_q = LogQCorrection(on_positive=False)(inb, neg, prim[:, None])
    assert torch.equal(pos_q, torch.zeros(5, 1)) and torch.equal(neg_q, neg.log_count)
    pos_q, _ = LogQCorrection(on_positive=True)(inb, neg, prim[:, None])
    assert torch.allclose(pos_q[:, 0], inb.log_count(prim))
    assert torch.equal(NoCorrection()(inb, neg, prim[:, None])[1], torch.zeros(3))
