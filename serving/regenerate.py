"""CPU regeneration: candidates generated at request time from the fresh (merged) sequence.

Loads the published model and Faiss index (both named by one release record) and the item
features (newest `items` partition), then calls `pinrec_model.api` — the only model surface
serving uses. When no model is published, regeneration is unavailable and the service says
so in each response instead of failing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pinrec.core.budgets import Budget
from pinrec.core.events import Event
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

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    def regenerate(self, user_id: int, history: Sequence[Event], budget: Budget,
                   n: int) -> list[Rec]:
        cols, seen_before = split_history(history, self.max_len)
        t0 = time.perf_counter()
        with self._slots:
            t1 = time.perf_counter()
            recs = self.generate(user_id, cols, seen_before, budget, n)
            t2 = time.perf_counter()
        for lst, v in ((self.wait_ms, t1 - t0), (self.compute_ms, t2 - t1)):
            lst.append(v * 1e3)
            if len(lst) > 50_000:
                del lst[:10_000]
        return recs

    def generate(self, user_id: int, cols: tuple, seen_before: frozenset,
                 budget: Budget, n: int) -> list[Rec]:
        """The model call alone, on `split_history` output (what a worker process runs)."""
        import torch

        from pinrec_model.api import History, generate_candidates

        ids, types, actions, surfaces, ts, texts = cols
        h = History(user_id=user_id, item_ids=np.array(ids, dtype=np.int64), item_types=list(types),
                    actions=list(actions), surfaces=list(surfaces), ts_us=np.array(ts, dtype=np.int64),
                    query_texts=list(texts))
        k = self.tokens_per_step if self.model.config.offset_conditioned else None
        with torch.inference_mode():
            cands = generate_candidates(self.model, [h], self.features, budget, n, self.retriever,
                                        tokens_per_step=k, overfetch=self.overfetch)[0]
        return [Rec(c.item_id, c.score, c.outcome, "regenerated") for c in cands
                if c.item_id not in seen_before]


def split_history(history: Sequence[Event], max_len: int) -> tuple[tuple, frozenset]:
    """((item ids, types, actions, surfaces, ts, query texts) of the newest max_len events, the
    item ids of the older ones). Pure, plain tuples: cheap to send to a worker process. The query
    texts let a query the items table does not know yet (the request's own, or one searched
    today) be featurised from its text, as training featurises it.

    The model reads only its newest max_len tokens; passing just those keeps the Faiss search
    depth (which grows with the history it must skip) small. Older history items are removed
    from the result instead, so the result is the same as excluding the whole history."""
    recent = history[-max_len:] if max_len > 0 else []
    seen_before = frozenset(e.item_id for e in history[:len(history) - len(recent)])
    cols = tuple(tuple(getattr(e, f) for e in recent)
                 for f in ("item_id", "item_type", "action", "surface", "ts_us", "query_text"))
    return cols, seen_before


def load_regenerator(lake_root, release, threads: int = 1) -> tuple[Regenerator | None, str]:
    """(regenerator, why-not) for the model and index `release` names (a
    pinrec.core.lake_releases.Release, read once by the caller so they match the candidates it
    serves): None with the reason when nothing is published to regenerate with."""
    import torch

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake
    from pinrec_model.api import ItemFeatures, embed_items, load_model
    from pinrec_model.retrieval import Retriever

    torch.set_num_threads(threads)
    try:  # OpenMP threads spinning on a busy 2-core host cost more than they save per request
        import faiss

        faiss.omp_set_num_threads(threads)
        # A regeneration searches ~16 queries; below 20 Faiss scores them one vector at a time
        # (measured 8.8 ms CPU over 20k x 64 items) instead of one BLAS matrix product (3.4 ms).
        faiss.cvar.distance_compute_blas_threshold = 1
    except ImportError:
        pass
    lake = Lake.at(lake_root)
    if release is None or release.model is None:
        return None, "no published model (the lake's release names none); run `pinrec train --publish`"
    mdir = lake.version_dir("models", release.model)
    if not mdir.exists():
        return None, f"the published model {release.model!r} is missing at {mdir}; publish another"
    tables = DeltaRsTables(lake)
    ds = tables.latest_partition("items")
    if ds is None:
        return None, "no items table; run `pinrec items`"
    items = tables.read("items", [ds], columns=["item_id", "item_type", "features"])
    m = load_model(mdir, device="cpu")
    features = ItemFeatures.from_table(items, m.config.feature_dim)
    idir = lake.version_dir("index", release.index) if release.index else None
    if idir is not None and idir.exists():
        retriever = Retriever.load(idir)
    else:  # no published index: embed the catalogue once at start (small catalogues only)
        pins = items.filter(items.column("item_type").to_numpy(zero_copy_only=False) == "pin")
        ids = pins.column("item_id").to_numpy()
        emb = embed_items(m, ids, ["pin"] * len(ids), features.lookup(ids))
        retriever = Retriever.build(ids, emb)
    return Regenerator(m, features, retriever, m.version), ""
