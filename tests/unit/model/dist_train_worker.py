"""Run by test_distributed.py: fit() on a fixed toy dataset, either as one plain process or as
one rank of a torchrun job (gloo), and save what it learned to OUT/rank<r>.pt.

    python dist_train_worker.py OUT BATCH                                  # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 dist_train_worker.py OUT BATCH
"""
from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from pinrec.core.contracts import PINTEREST_ACTIONS
from pinrec_model import distributed as D
from pinrec_model.config import preset
from pinrec_model.data import Catalog, build_user_seqs, make_examples
from pinrec_model.training import TrainConfig, fit, lookahead


def data(users=48, items=40, seed=0):
    """Each user cycles through one of 4 item groups, from a different starting item."""
    rng = np.random.default_rng(seed)
    u, it, ts = [], [], []
    for user in range(users):
        g = user % 4
        for t in range(10):
            u.append(user)
            it.append(1 + g * 10 + ((t + user) % 10))
            ts.append(1_767_225_600_000_000 + t * 60_000_000 + user)
    n = len(u)
    ev = pa.table({"user_id": u, "item_id": it, "item_type": ["pin"] * n, "action": ["repin"] * n,
                   "surface": ["homefeed"] * n, "ts": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    ids = np.arange(1, items + 1, dtype=np.int64)
    cat = Catalog(ids, np.ones(items, np.int64), rng.normal(size=(items, 16)).astype(np.float32))
    return cat, build_user_seqs(ev, cat, PINTEREST_ACTIONS)


def main(out: str, batch: int) -> None:
    if D.launched_by_torchrun():
        D.init_process_group("cpu")
    torch.set_num_threads(1)  # two ranks on a 2-core CI machine
    cat, seqs = data()
    # in-batch negatives capped at 6, below each rank's rows per step: the global top-k subsample
    # and the cross-rank gather are both exercised; no dropout (its masks are per process)
    cfg = preset("small", variant="mt_oc", d_model=32, n_heads=2, d_ff=64, emb_dim=16, id_dim=16,
                 id_buckets=512, feature_dim=16, max_len=6, n_random_negatives=8,
                 max_in_batch_negatives=6, dropout=0.0, cms_width=512)
    ex = make_examples(seqs, cfg.max_len, lookahead(cfg))
    tc = TrainConfig(epochs=2, batch_size=batch, lr=3e-3, warmup_steps=2, seed=3, progress=False)
    res = fit(cfg, tc, cat, ex)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({"model": res.model.state_dict(), "cms": res.cms.state_dict(), "history": res.history,
                "examples": len(ex.rows)}, f"{out}/rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
