"""Faiss retrieval by inner product (paper 4.4.4): exact flat search for small catalogs,
IVF-HNSW for large ones. Ids live beside the index (positions -> item ids), so any id type
works with either index kind."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLAT_MAX = 200_000  # below this, exact search is fast enough and has recall 1


@dataclass
class Retriever:
    index: object  # faiss.Index
    ids: np.ndarray  # [N] int64
    kind: str

    @staticmethod
    def build(ids: np.ndarray, emb: np.ndarray, kind: str = "auto", nprobe: int = 8) -> "Retriever":
        import faiss

        emb = np.ascontiguousarray(emb, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(emb):
            raise ValueError(f"Retriever.build: {len(ids)} ids but {len(emb)} embeddings")
        if kind == "auto":
            kind = "flat" if len(ids) <= FLAT_MAX else "ivf_hnsw"
        d = emb.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf_hnsw":
            nlist = int(min(65536, max(16, 4 * np.sqrt(len(ids)))))
            index = faiss.index_factory(d, f"IVF{nlist}_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(emb)
            faiss.extract_index_ivf(index).nprobe = nprobe
        else:
            raise ValueError(f"unknown index kind {kind!r}; expected auto, flat or ivf_hnsw")
        index.add(emb)
        return Retriever(index, ids, kind)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, D] -> (scores [Q, k], item ids [Q, k]); missing slots have id -1."""
        k = int(min(k, len(self.ids)))
        scores, pos = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, np.where(pos >= 0, self.ids[pos.clip(min=0)], -1)

    def save(self, folder: str | Path) -> None:
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        np.save(folder / "ids.npy", self.ids)
        (folder / "meta.json").write_text(json.dumps({"kind": self.kind, "n": int(len(self.ids))}))

    @staticmethod
    def load(folder: str | Path) -> "Retriever":
        import faiss

        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return Retriever(faiss.read_index(str(folder / "index.faiss")), np.load(folder / "ids.npy"), meta["kind"])
