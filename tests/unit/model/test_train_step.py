"""The training step's speed-ups keep its arithmetic: right-aligned windows with plain causal
attention give the same hidden states as left padding with a padding mask, and train_step
queues work without reading anything back."""
from __future__ import annotations

import numpy as np
import torch

from pinrec_model.config import preset
from pinrec_model.data import Catalog
from pinrec_model.losses import CountMinSketch
from pinrec_model.model import PinRec
from pinrec_model.training import TrainConfig, lookahead, make_optimizer, train_step
from pinrec_model.training_loss import CatalogTensors, embed_tokens, right_align, training_loss

CFG = dict(d_model=32, n_heads=2, d_ff=64, emb_dim=16, id_dim=16, id_buckets=1024, max_len=12,
           n_random_negatives=16, max_in_batch_negatives=64, dropout=0.0)


def _setup(variant="mt_oc", B=8, seed=0):
    """A catalog with pins and queries, and windows padded on both sides like make_examples'."""
    cfg = preset("small", variant=variant, **CFG)
    rng = np.random.default_rng(seed)
    n = 50
    cat = Catalog(np.arange(1, n + 1), np.where(rng.random(n) < 0.2, 2, 1), rng.normal(size=(n, 32)).astype(np.float32))
    L, E = cfg.max_len, lookahead(cfg)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n, (B, L + E), generator=g)
    lead = torch.randint(0, L - 1, (B,), generator=g)
    lead[0] = 0  # one full window
    trail = torch.randint(0, E, (B,), generator=g)
    col = torch.arange(L + E)[None]
    pad = (col < lead[:, None]) | (col >= L + E - trail[:, None])
    rows = rows.masked_fill(pad, -1)
    real = ~pad
    batch = {"rows": rows, "actions": torch.randint(1, 6, rows.shape, generator=g) * real,
             "surfaces": torch.randint(1, 4, rows.shape, generator=g) * real,
             "ts_s": (1_767_225_600 + torch.randint(1, 5000, rows.shape, generator=g).cumsum(1)) * real}
    torch.manual_seed(seed)
    return cfg, cat, batch, lead


def test_right_align_moves_each_row_to_its_first_real_token():
    cfg, _, batch, lead = _setup()
    L = cfg.max_len
    rows, acts, surf, ts, n_in = right_align(batch["rows"], batch["actions"], batch["surfaces"], batch["ts_s"], L)
    assert torch.equal(n_in, L - lead)
    for b in range(len(rows)):
        real = batch["rows"][b][batch["rows"][b] >= 0]
        assert torch.equal(rows[b, : len(real)], real)  # same tokens, same order, from index 0
        assert (rows[b, len(real):] == -1).all()  # padding only trails
        assert torch.equal(ts[b, : len(real)], batch["ts_s"][b][batch["rows"][b] >= 0])
        assert torch.equal(acts[b, : len(real)], batch["actions"][b][batch["rows"][b] >= 0])


def test_causal_attention_on_right_aligned_rows_equals_the_padding_mask():
    """Every real input token sees the same keys either way, so hidden states match."""
    cfg, cat, batch, lead = _setup("oc")
    L = cfg.max_len
    model = PinRec(cfg).eval()
    ct = CatalogTensors(cat, "cpu")
    inp = {k: v[:, :L] for k, v in batch.items()}
    x_left, valid = embed_tokens(model, ct, inp["rows"], inp["actions"], inp["surfaces"], inp["ts_s"])
    h_left, _ = model.encode(x_left, valid)
    rows, acts, surf, ts, n_in = right_align(batch["rows"], batch["actions"], batch["surfaces"], batch["ts_s"], L)
    now = ts.gather(1, (n_in - 1)[:, None])[:, 0]
    x_right, _ = embed_tokens(model, ct, rows[:, :L], acts[:, :L], surf[:, :L], ts[:, :L], now=now)
    h_right, _ = model.encode(x_right, None)
    for b in range(len(rows)):
        k = int(n_in[b])
        torch.testing.assert_close(h_right[b, :k], h_left[b, L - k:], rtol=1e-5, atol=1e-5)
    assert int(lead.max()) > 0  # the check covered padded rows


def test_train_step_updates_weights_and_returns_a_finite_detached_loss():
    cfg, cat, batch, _ = _setup("mt_oc", B=16)
    model = PinRec(cfg)
    cms = CountMinSketch(cfg.cms_width, cfg.cms_depth)
    tc = TrainConfig(lr=1e-2)
    opt = make_optimizer(model, tc, "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    loss = train_step(model, cms, CatalogTensors(cat, "cpu"), opt, batch, gen, cfg.max_len, 1e-2, tc)
    assert loss.dim() == 0 and not loss.requires_grad and torch.isfinite(loss)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("blocks.") for n in moved) and any(n.startswith("items.") for n in moved)
    assert float(cms.total) > 0  # the sketch saw the step's positives
    # the same step twice from the same state and draws gives the same loss (no hidden state)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ct = CatalogTensors(cat, "cpu")
    la = training_loss(model, CountMinSketch(cfg.cms_width, cfg.cms_depth), ct, batch, gen_a, cfg.max_len)
    lb = training_loss(model, CountMinSketch(cfg.cms_width, cfg.cms_depth), ct, batch, gen_b, cfg.max_len)
    assert torch.equal(la, lb)


def test_sampled_softmax_step_runs_the_item_tower_once(monkeypatch):
    """Inputs, targets and negatives share one tower pass (a second pass after the transformer
    made the host wait on the GPU); the pass covers every window token and random negative."""
    cfg, cat, batch, _ = _setup("mt_oc", B=16)
    ct = CatalogTensors(cat, "cpu")
    calls = []
    real = CatalogTensors.embed

    def counting(self, model, rows):
        calls.append(len(rows))
        return real(self, model, rows)

    monkeypatch.setattr(CatalogTensors, "embed", counting)
    loss = training_loss(PinRec(cfg), CountMinSketch(cfg.cms_width, cfg.cms_depth), ct, batch,
                         torch.Generator().manual_seed(0), cfg.max_len)
    assert torch.isfinite(loss)
    assert len(calls) == 1
    assert calls[0] >= len(torch.unique(batch["rows"][batch["rows"] >= 0]))


def test_bench_model_times_train_step_and_counts_its_flops(tmp_path):
    """`pinrec bench model --tiny` on CPU: the JSON carries the figures the README quotes."""
    import argparse
    import json

    from bench import model_bench

    p = argparse.ArgumentParser()
    model_bench.configure(p)
    out = tmp_path / "m.json"
    args = p.parse_args(["--device", "cpu", "--tiny", "--skip-prefill", "--train-batch", "2", "--train-steps", "1",
                         "--items", "500", "--json", str(out)])
    assert model_bench.run(args) == 0
    t = json.loads(out.read_text())["train"][0]
    assert t["batch"] == 2 and t["seq"] == 256 and t["step_s"] > 0
    assert t["flops_per_step"] > 6 * t["transformer_params"] * 2 * 256  # at least the blocks' 6 N T
    assert abs(t["tokens_per_s"] - 2 * 256 / t["step_s"]) < 1e-6 * t["tokens_per_s"]
    assert abs(t["mfu"] - t["flops_per_step"] / t["step_s"] / 1e12 / 741) < 1e-12
