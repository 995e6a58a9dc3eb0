"""CPU regeneration: candidates generated at request time from the fresh (merged) sequence.

Loads the published model (`models/CURRENT`), the item features (newest `items` partition)
and the published Faiss index (`index/CURRENT`), then calls `pinrec_model.api` — the only
model surface serving uses. When no model is published, regeneration is unavailable and the
service says so in each response instead of failing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pinrec.contracts import Event
from serving.candidates import Rec


@dataclass
class Regenerator:
    model: object          # pinrec_model.api.LoadedModel
    features: object       # pinrec_model.api.ItemFeatures
    retriever: object      # pinrec_model.retrieval.Retriever
    version: str
    # All embeddings in one decode step (the paper's multi-token generation): one forward pass
    # instead of num_embeddings/4, which is what makes CPU regeneration fit a request budget.
    tokens_per_step: int | None = 16
    overfetch: float = 2.0
    concurrency: int = 2   # generations at once (torch and Faiss release the GIL; 2 cores here)

    def __post_init__(self):
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self.compute_ms: list[float] = []   # generation time without the wait for a slot
        self.wait_ms: list[float] = []

    def regenerate(self, user_id: int, history: Sequence[Event], budget: dict[str, float],
                   n: int) -> list[Rec]:
        from pinrec_model.api import History, generate_candidates

        # The model reads only its newest max_len tokens; passing just those keeps the Faiss
        # search depth (which grows with the history it must skip) small. Older history items
        # are removed below, so the result is the same as excluding the whole history.
        seen_before = {e.item_id for e in history[: -self.model.config.max_len]}
        history = history[-self.model.config.max_len:]
        h = History(user_id=user_id,
                    item_ids=np.array([e.item_id for e in history], dtype=np.int64),
                    item_types=[e.item_type for e in history],
                    actions=[e.action for e in history],
                    surfaces=[e.surface for e in history],
                    ts_us=np.array([e.ts_us for e in history], dtype=np.int64))
        t0 = time.perf_counter()
        with self._slots:
            t1 = time.perf_counter()
            k = self.tokens_per_step if self.model.config.offset_conditioned else None
            cands = generate_candidates(self.model, [h], self.features, budget, n, self.retriever,
                                        tokens_per_step=k, overfetch=self.overfetch)[0]
            t2 = time.perf_counter()
        for lst, v in ((self.wait_ms, t1 - t0), (self.compute_ms, t2 - t1)):
            lst.append(v * 1e3)
            if len(lst) > 50_000:
                del lst[:10_000]
        return [Rec(c.item_id, c.score, c.outcome, "regenerated") for c in cands
                if c.item_id not in seen_before]


def load_regenerator(lake_root, threads: int = 1) -> tuple[Regenerator | None, str]:
    """(regenerator, why-not): None with the reason when nothing is published to regenerate with."""
    import torch

    from jobs.lake import LakeTables
    from pinrec.layout import Lake, current
    from pinrec_model.api import ItemFeatures, embed_items, load_model
    from pinrec_model.retrieval import Retriever

    torch.set_num_threads(threads)
    try:  # OpenMP threads spinning on a busy 2-core host cost more than they save per request
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    lake = Lake.at(lake_root)
    mdir = current(lake, "models")
    if mdir is None or not Path(mdir).exists():
        return None, "no published model (models/CURRENT); run `pinrec train --publish`"
    tables = LakeTables(lake)
    ds = tables.latest_partition("items")
    if ds is None:
        return None, "no items table; run `pinrec items`"
    items = tables.read("items", [ds], columns=["item_id", "item_type", "features"])
    features = ItemFeatures.from_table(items)
    m = load_model(mdir, device="cpu")
    idir = current(lake, "index")
    if idir is not None and Path(idir).exists():
        retriever = Retriever.load(idir)
    else:  # no published index: embed the catalogue once at start (small catalogues only)
        pins = items.filter(items.column("item_type").to_numpy(zero_copy_only=False) == "pin")
        ids = pins.column("item_id").to_numpy()
        emb = embed_items(m, ids, ["pin"] * len(ids), features.lookup(ids))
        retriever = Retriever.build(ids, emb)
    return Regenerator(m, features, retriever, m.version), ""
