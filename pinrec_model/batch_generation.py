"""Generation for the batch layer: a RecordBatch of `sequences` rows in, candidate arrays out.

`api.generate_candidates` serves one request or a small batch through Python objects (History,
Candidate); the daily job scores every user, so this path keeps everything in arrays:

    arrow_history_arrays   sequences rows -> int64 [B, T] grids (numpy, pyarrow compute; no
                           per-token Python)                      -- runs on a prefetch thread
    device_history         grids -> the prefill's tensors; pins in the catalog take their
                           embedding from the ExactIndex instead of re-running the item tower
    generate_arrays        prefill once, then per arm: multi-token decode into a preallocated
                           KV cache, exact search with the history masked, vectorised selection
    select_candidates      the one selection (per-embedding quotas, de-dup, fill from the
                           over-fetched tail, order by score) as tensor ops; api's per-user
                           Faiss path selects through it too

Selection gives exactly what the old per-user walk gave (tests/unit/model/walk_oracle.py); the
search differs from the Faiss path in two ways: it is exact, and history items are masked before
the top-k, which is fetched at least N deep, so de-duplication can always fill N. Compression
(per-user plans) is the api path: its plans are padded into the same selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pinrec.core.budgets import Arms
from pinrec.core.contracts import ITEM_TYPES, SURFACES
from pinrec_model.api import LoadedModel, embed_item_ids, generation_plan, uniform_plan
from pinrec_model.selection import select_candidates

HISTORY_COLUMNS = ("user_id", "item_ids", "item_types", "actions", "surfaces", "ts")


@dataclass
class HistoryArrays:
    """A batch of left-padded histories as int64 grids [B, T] (0 = padding; ids -1 = padding)."""

    user_ids: np.ndarray  # [B]
    item_ids: np.ndarray
    types: np.ndarray
    actions: np.ndarray
    surfaces: np.ndarray
    ts_s: np.ndarray
    valid: np.ndarray  # bool
    seen: np.ndarray  # [B, L] every item of the whole history (not only the newest T), -1 = none
    catalog_pos: np.ndarray | None = None  # [B, T] row in the index (N = not a catalog pin): `locate`
    pinned: dict | None = None  # the grids in page-locked memory (CUDA): asynchronous copies

    GRIDS = ("item_ids", "types", "actions", "surfaces", "ts_s", "valid", "seen", "catalog_pos")

    def grid(self, name: str):
        return self.pinned[name] if self.pinned is not None else getattr(self, name)


def locate(h: HistoryArrays, catalog_ids: np.ndarray, pin: bool) -> HistoryArrays:
    """Host side (the prefetch thread): each token's row in the sorted catalog ids, len(catalog)
    where it is not a catalog pin (the index's zero row), and with `pin` the grids copied to
    page-locked memory, so that the device copies neither wait for the GPU nor block the host."""
    n_cat = len(catalog_ids)
    pos = np.searchsorted(catalog_ids, h.item_ids).clip(0, max(n_cat - 1, 0))
    found = (h.item_ids >= 0) & (h.types == 1)
    found &= (catalog_ids[pos] == h.item_ids) if n_cat else False
    h.catalog_pos = np.where(found, pos, n_cat)
    if pin:
        h.pinned = {g: torch.from_numpy(getattr(h, g)).pin_memory() for g in HistoryArrays.GRIDS}
    return h


def _codes(values: pa.Array, vocab, default: int) -> np.ndarray:
    """Strings -> 1-based ids in `vocab` (C-level lookup); unknown -> default."""
    idx = pc.index_in(values, value_set=pa.array(list(vocab), pa.string()))
    return (pc.fill_null(idx, default - 1).to_numpy(zero_copy_only=False).astype(np.int64) + 1)


def arrow_history_arrays(batch: pa.RecordBatch, actions: list[str], max_len: int) -> HistoryArrays:
    """The newest `max_len` tokens of each row, left-padded into [B, T] grids (T = the longest
    kept history of the batch). Same layout as api.history_tensors."""
    B = batch.num_rows
    col = batch.column("item_ids")
    offs = col.offsets.to_numpy().astype(np.int64)
    lens = np.diff(offs)
    T = max(1, min(max_len, int(lens.max()) if B else 1))
    n = np.minimum(lens, T)
    tot = int(n.sum())
    first = np.cumsum(n) - n
    # source positions in the values arrays, destination positions in the [B, T] grid
    src = np.arange(tot) - np.repeat(first, n) + np.repeat(offs[1:] - n, n)
    dst = np.arange(tot) - np.repeat(first, n) + np.repeat(np.arange(B) * T + (T - n), n)
    take = pa.array(src)

    def grid(values: np.ndarray, fill: int = 0) -> np.ndarray:
        g = np.full(B * T, fill, np.int64)
        g[dst] = values
        return g.reshape(B, T)

    def values(name: str) -> pa.Array:
        c = batch.column(name)
        if c.offsets.to_numpy()[0] != offs[0] or len(c.values) < offs[-1]:
            raise ValueError(f"sequences column {name!r} is not aligned with item_ids")
        return c.values.take(take)

    ids = col.values.take(take).to_numpy(zero_copy_only=False)
    ts = values("ts").cast(pa.int64()).to_numpy(zero_copy_only=False) // 1_000_000
    valid = np.zeros(B * T, bool)
    valid[dst] = True
    valid = valid.reshape(B, T)
    valid[:, -1] = True  # users without history still get one (padding) token to prefill
    # The whole history is excluded from the candidates, also what the model does not read.
    L = max(1, int(lens.max()) if B else 1)
    seen = np.full(B * L, -1, np.int64)
    seen[np.arange(offs[-1] - offs[0]) - np.repeat(offs[:-1] - offs[0], lens) + np.repeat(np.arange(B) * L, lens)] = \
        col.values.slice(offs[0], offs[-1] - offs[0]).to_numpy(zero_copy_only=False)
    return HistoryArrays(batch.column("user_id").to_numpy().astype(np.int64), grid(ids, -1),
                         grid(_codes(values("item_types"), ITEM_TYPES, 1)),
                         grid(_codes(values("actions"), actions, 0)),
                         grid(_codes(values("surfaces"), SURFACES, 1)), grid(ts), valid, seen.reshape(B, L))


@torch.no_grad()
def device_history(m: LoadedModel, h: HistoryArrays, index, features):
    """HistoryArrays -> (emb, types, actions, surfaces, ts, valid) on the model's device.

    Pins found in the index take its embedding (the item tower's output for that id); other
    tokens (queries, pins outside the catalog) run the tower once per distinct (id, type).
    No host synchronisation unless such tokens exist (they are known on the host)."""
    if h.catalog_pos is None:
        locate(h, index.host_ids, pin=False)
    dev = m.device
    t = lambda name: torch.as_tensor(h.grid(name)).to(dev, non_blocking=True)
    emb = index.rows(t("catalog_pos"))  # the zero row where a token is not a catalog pin
    rest = (h.item_ids >= 0) & (h.catalog_pos == len(index))
    if rest.any():
        r_ids, r_types = h.item_ids[rest], h.types[rest]
        keys, inv = np.unique(np.stack([r_ids, r_types], 1), axis=0, return_inverse=True)
        e = embed_item_ids(m, keys[:, 0], keys[:, 1], features.lookup(keys[:, 0]))
        emb[torch.as_tensor(rest, device=dev)] = e[torch.as_tensor(inv.reshape(-1), device=dev)].to(emb.dtype)
    return emb, t("types"), t("actions"), t("surfaces"), t("ts_s"), t("valid")


def search_depth(quotas: list[int], n: int, overfetch: float) -> int:
    """Results fetched per embedding: its quota over-fetched, and N at least, so that whatever
    de-duplication takes away, the union of the rows can still fill N."""
    return max(int(math.ceil(max(quotas, default=0) * overfetch)), n)


@dataclass
class ArmResult:
    """One arm's candidates for a batch: [B, n] (id -1 = no candidate) + outcome names. The
    arrays are numpy, or page-locked tensors still being copied until `ready` has fired."""

    item_ids: object
    scores: object
    outcome_codes: object  # index into outcomes
    outcomes: list[str]
    ready: object = None  # torch.cuda.Event

    def host(self) -> "ArmResult":
        """Wait for the copies (if any) and return numpy arrays."""
        if self.ready is None:
            return self
        self.ready.synchronize()
        return ArmResult(self.item_ids.numpy(), self.scores.numpy(), self.outcome_codes.numpy(), self.outcomes)


def _to_host(items, scores, entry, names, asynchronous: bool) -> ArmResult:
    if not asynchronous:
        return ArmResult(items.cpu().numpy(), scores.cpu().numpy(), entry.cpu().numpy(), names)
    out = [torch.empty(x.shape, dtype=x.dtype, pin_memory=True) for x in (items, scores, entry)]
    for dst, src in zip(out, (items, scores, entry)):
        dst.copy_(src, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return ArmResult(*out, names, ready)


@torch.no_grad()
def generate_arrays(m: LoadedModel, h: HistoryArrays, index, features, arms: Arms,
                    n: int, *, tokens_per_step: int | None = None, overfetch: float = 2.0,
                    num_embeddings: int | None = None, asynchronous: bool = False) -> dict[str, ArmResult]:
    """Candidates for every arm of a batch: one prefill, then per arm the generation from that
    prefill (the preallocated KV cache rewinds between arms), exact search, selection. With
    `asynchronous` (CUDA) the results come back while the next batch is already launched:
    call `.host()` on each (on a writer thread)."""
    cfg = m.config
    n_emb = num_embeddings or cfg.num_embeddings
    k = tokens_per_step or (cfg.tokens_per_step if cfg.offset_conditioned else 1)
    emb, types, acts, surf, ts, valid = device_history(m, h, index, features)
    st = m.model.prefill(emb, types, acts, surf, ts, valid, capacity=valid.shape[1] + n_emb)
    exclude = torch.as_tensor(h.grid("seen")).to(m.device, non_blocking=True)
    B = len(h.user_ids)
    asynchronous = asynchronous and str(m.device).startswith("cuda")
    out = {}
    for arm, budget in arms.items():
        order, groups = generation_plan(m, budget, n, n_emb)
        plan = uniform_plan(groups)
        cond = torch.tensor(order, device=m.device)[None, :].expand(B, -1)
        gen = m.model.generate(st, cond, k)  # [B, n_emb, D]
        quotas = [q for _, _, q in plan]
        q = gen[:, [c for _, c, _ in plan]]
        scores, ids = index.search(q, search_depth(quotas, n, overfetch), exclude)
        items, sc, entry = select_candidates(scores, ids, quotas, n)
        out[arm] = _to_host(items, sc, entry, [name for name, _, _ in plan], asynchronous)
    return out
