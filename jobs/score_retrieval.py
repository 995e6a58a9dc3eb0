"""How `pinrec score` generates and retrieves, behind one small interface chosen once per job.

`BatchRetrieval` is what the scoring loop (`jobs.score.score_batches`) sees: `prepare` a batch
of sequences rows on the host, then `generate` every arm's candidates for it as arrays
(`batch_generation.ArmResult`, [B, n], id -1 = no candidate). Two implementations:

- `ExactRetrieval`, the GPU path: Arrow -> padded grids (`batch_generation`), one prefill per
  batch, exact masked search on the device against the pins of items@ds embedded by the scoring
  model, vectorised selection; results may still be copying back when `generate` returns.
- `FaissRetrieval`: the published Faiss index through `api.generate_candidates` (per-user
  plans, so it can compress near-duplicate embeddings), its per-user lists packed into the
  same arrays.

`build_retrieval` picks one from the job's config (`--retrieval auto|faiss|exact`);
`resolve_index` finds the Faiss index folder built with the scoring model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.core.budgets import Arms
from pinrec.core.layout import Lake

if TYPE_CHECKING:
    from jobs.score import ScoreConfig
    from pinrec_model.api import Candidate, ItemFeatures, LoadedModel
    from pinrec_model.batch_generation import ArmResult
    from pinrec_model.retrieval import ExactIndex, Retriever

EXACT_MAX_ITEMS = 5_000_000  # 5M x 256 bf16 = 2.6 GB of GPU memory; beyond, a Faiss index


class BatchRetrieval(Protocol):
    """Candidates for a batch of users, every arm, as arrays."""

    kind: str  # "exact", or the Faiss index kind ("flat", "ivf_hnsw"): the job reports it
    model: LoadedModel

    def prepare(self, batch: pa.RecordBatch) -> Any:
        """Host-only work on sequences rows (the scoring loop runs it on its prefetch thread)."""

    def generate(self, prepared: Any, arms: Arms, n: int,
                 tokens_per_step: int | None) -> tuple[np.ndarray, dict[str, ArmResult]]:
        """-> (user ids [B] int64, per arm its ArmResult [B, n]). The results may still be on
        their way to the host: `ArmResult.host()` waits for them."""


@dataclass(frozen=True)
class ExactRetrieval:
    """The array path (pinrec_model.batch_generation) against an ExactIndex on the model's device."""

    model: LoadedModel
    features: ItemFeatures
    index: ExactIndex
    kind: str = "exact"

    def prepare(self, batch: pa.RecordBatch):
        """sequences rows -> HistoryArrays with catalog rows found (pinned memory on CUDA), so
        the device work needs no host sync per batch."""
        from pinrec_model.batch_generation import arrow_history_arrays, locate

        cfg = self.model.config
        hist_len = min(cfg.max_len, cfg.max_positions - cfg.num_embeddings - 1)
        h = arrow_history_arrays(batch, list(self.model.vocab.actions), hist_len)
        return locate(h, self.index.host_ids, pin=str(self.model.device).startswith("cuda"))

    def generate(self, h, arms: Arms, n: int, tokens_per_step: int | None):
        from pinrec_model.batch_generation import generate_arrays

        return h.user_ids, generate_arrays(self.model, h, self.index, self.features, arms, n,
                                           tokens_per_step=tokens_per_step, asynchronous=True)


@dataclass(frozen=True)
class FaissRetrieval:
    """The per-user path (api.generate_candidates) against a Faiss index; compresses
    near-duplicate generated embeddings when `compression_threshold` is set."""

    model: LoadedModel
    features: ItemFeatures
    index: Retriever
    compression_threshold: float | None = None

    @property
    def kind(self) -> str:
        return self.index.kind

    def prepare(self, batch: pa.RecordBatch) -> list:
        return histories_from_batch(batch)

    def generate(self, histories: list, arms: Arms, n: int, tokens_per_step: int | None):
        from pinrec_model.api import generate_candidates

        users = np.fromiter((h.user_id for h in histories), np.int64, len(histories))
        return users, {arm: arrays_from_candidates(
            generate_candidates(self.model, histories, self.features, budget, n, self.index,
                                tokens_per_step=tokens_per_step,
                                compression_threshold=self.compression_threshold), n)
            for arm, budget in arms.items()}


def histories_from_batch(batch: pa.RecordBatch) -> list:
    """sequences rows -> api.History (arrays via offsets, no per-element Python objects for ids)."""
    from pinrec_model.api import History

    users = batch.column("user_id").to_numpy()
    item_col, ts_col = batch.column("item_ids"), batch.column("ts")
    offs = item_col.offsets.to_numpy()
    items = item_col.values.to_numpy(zero_copy_only=False)
    ts = ts_col.values.cast(pa.int64()).to_numpy(zero_copy_only=False)
    ts_offs = ts_col.offsets.to_numpy()
    types, acts, surfs = (batch.column(c).to_pylist() for c in ("item_types", "actions", "surfaces"))
    return [History(int(users[i]), items[offs[i]:offs[i + 1]], types[i], acts[i], surfs[i],
                    ts[ts_offs[i]:ts_offs[i + 1]]) for i in range(len(users))]


def arrays_from_candidates(results: list[list[Candidate]], n: int) -> ArmResult:
    """Per user up to n Candidates, best first -> ArmResult [B, n]: each user's candidates
    packed from rank 1, the rest id -1; outcome names coded in order of first appearance."""
    from pinrec_model.batch_generation import ArmResult

    B = len(results)
    items = np.full((B, n), -1, np.int64)
    scores = np.zeros((B, n), np.float32)
    codes = np.zeros((B, n), np.int64)
    names: dict[str, int] = {}
    for b, cands in enumerate(results):
        for r, c in enumerate(cands):
            items[b, r], scores[b, r] = c.item_id, c.score
            codes[b, r] = names.setdefault(c.outcome, len(names))
    return ArmResult(items, scores, codes, list(names))


def build_retrieval(cfg: ScoreConfig, m, index_dir: Path, items: pa.Table, features) -> BatchRetrieval:
    """The retrieval the config asks for: the published Faiss index, or an ExactIndex of the
    pins of items@ds embedded by the scoring model (the index was built from the same two).
    auto: exact on CUDA up to EXACT_MAX_ITEMS pins without compression, else Faiss."""
    from pinrec_model.api import embed_items
    from pinrec_model.retrieval import ExactIndex, Retriever

    pins = items.filter(pc.equal(items.column("item_type"), "pin"))
    mode = cfg.retrieval
    if mode == "auto":
        exact_ok = str(m.device).startswith("cuda") and cfg.compression_threshold is None
        mode = "exact" if exact_ok and 0 < pins.num_rows <= EXACT_MAX_ITEMS else "faiss"
    if mode == "faiss":
        return FaissRetrieval(m, features, Retriever.load(index_dir), cfg.compression_threshold)
    ids = pins.column("item_id").to_numpy()
    emb = embed_items(m, ids, ["pin"] * len(ids), features.lookup(ids))
    return ExactRetrieval(m, features, ExactIndex(ids, emb, m.device))


def resolve_index(lake: Lake, ds: str, model_version: str, requested: str | None) -> Path:
    """The index folder to retrieve from; it must have been built with the scoring model."""
    from jobs.index import index_version
    from pinrec.core.layout import current

    if requested:
        vdir = lake.version_dir("index", requested)
    elif lake.version_dir("index", index_version(ds, model_version)).is_dir():
        vdir = lake.version_dir("index", index_version(ds, model_version))
    else:
        vdir = current(lake, "index")
    if vdir is None or not (vdir / "meta.json").exists():
        raise FileNotFoundError(f"no Faiss index for ds={ds} and model {model_version!r} under "
                                f"{lake.artifacts('index')}; run `pinrec index --ds {ds} "
                                f"--model-version {model_version}` first")
    build = vdir / "build.json"
    built_with = json.loads(build.read_text()).get("model_version") if build.exists() else None
    if built_with is not None and built_with != model_version:
        raise ValueError(f"index {vdir.name} was built with model {built_with!r}, not "
                         f"{model_version!r}: its embeddings are not comparable; run `pinrec "
                         f"index --ds {ds} --model-version {model_version}`")
    return vdir
