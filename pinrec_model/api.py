"""The model API for the batch layer and serving: load a model version, embed items, generate
candidates. (Jobs that train or evaluate use training, offline and data directly: the package
docstring lists the public modules.)

    load_model(version_dir, device) -> LoadedModel
    embed_items(m, item_ids, item_types, features) -> float32 [N, D]   (the item tower)
    generate_candidates(m, histories, features, budget: Budget, n, retriever, ...) -> [[Candidate]] per user

Generation is `PinRec.generate`; selection from search results is
`selection.select_candidates`, the one implementation for both entry points here and
`batch_generation.generate_arrays` (the job's exact-search path).

Model versions are folders `<lake>/models/<version>/{model.safetensors, config.json,
metrics.json}`, written once by `save_model` and never modified.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from pinrec.core.budgets import Budget, largest_remainder
from pinrec.core.contracts import ITEM_TYPES, SURFACES, ActionVocab
from pinrec.core.features import FEATURE_DIM, query_features
from pinrec_model.config import PinRecConfig
from pinrec_model.generation import compress
from pinrec_model.losses import CountMinSketch
from pinrec_model.model import PinRec
from pinrec_model.retrieval import Retriever

UNCONDITIONED = "any"  # the `outcome` of candidates from a model that cannot condition


@dataclass(frozen=True)
class History:
    user_id: int
    item_ids: np.ndarray  # int64 [T], chronological
    item_types: list[str]
    actions: list[str]
    surfaces: list[str]
    ts_us: np.ndarray  # int64 [T]
    # The text of each query token (None for pins), when the caller has it: a query the items
    # table does not know yet (searched today) is featurised from its text, as training does.
    query_texts: Sequence[str | None] | None = None


class Candidate(NamedTuple):
    """One generated candidate (a NamedTuple: cheap to build, 50+ per user per arm)."""

    item_id: int
    score: float
    outcome: str


class ItemFeatures:
    """Item id -> feature vector [F]; unknown ids get zeros (they rely on the ID embedding)."""

    def __init__(self, item_ids: np.ndarray, features: np.ndarray):
        order = np.argsort(np.asarray(item_ids, dtype=np.int64), kind="stable")
        self.ids = np.asarray(item_ids, dtype=np.int64)[order]
        self.features = np.asarray(features, dtype=np.float32).reshape(len(order), -1)[order]

    @staticmethod
    def from_table(table, width: int = FEATURE_DIM) -> "ItemFeatures":
        """From the `items` table (pyarrow): columns item_id and features (list<float>), which
        must be `width` wide (the model's feature_dim): a mismatch is a clear error, not a
        shape error deep inside the item tower."""
        ids = table.column("item_id").to_numpy()
        rows = table.column("features").to_pylist()
        widths = {len(r) for r in rows if r}
        if widths and widths != {width}:
            raise ValueError(f"the items table has {sorted(widths)}-dim features but the model reads "
                             f"{width}: rebuild it with `pinrec items --feature-dim {width}` (or train with "
                             f"--set feature_dim={sorted(widths)[0]})")
        feats = np.zeros((len(ids), width), dtype=np.float32)
        for i, r in enumerate(rows):
            if r:
                feats[i] = r
        return ItemFeatures(ids, feats)

    @staticmethod
    def from_arrays(item_ids, features) -> "ItemFeatures":
        return ItemFeatures(item_ids, features)

    def lookup(self, item_ids, query_texts: Sequence[str | None] | None = None) -> np.ndarray:
        """[N, F] vectors; an unknown id gets zeros, or, given its text in `query_texts`
        (parallel to item_ids, queries only), the query featuriser's vector of that text."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        width = self.features.shape[1] if len(self.ids) else FEATURE_DIM
        out = np.zeros((len(item_ids), width), np.float32)
        hit = np.zeros(len(item_ids), bool)
        if len(self.ids):
            pos = np.searchsorted(self.ids, item_ids).clip(0, len(self.ids) - 1)
            hit = self.ids[pos] == item_ids
            out[hit] = self.features[pos[hit]]
        if query_texts is not None:
            for i in np.flatnonzero(~hit):
                if query_texts[i]:
                    out[i] = query_features(query_texts[i], width)
        return out


@dataclass
class LoadedModel:
    model: PinRec
    config: PinRecConfig
    vocab: ActionVocab
    variant: str
    version: str
    device: str


def _resolve(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def save_model(version_dir: str | Path, model: PinRec, cms: CountMinSketch | None, vocab: ActionVocab,
               metrics: dict, extra: dict | None = None) -> Path:
    """Write an immutable model version; refuses to overwrite an existing one."""
    from safetensors.torch import save_file

    vdir = Path(version_dir)
    if vdir.exists():
        raise FileExistsError(f"model version {vdir} already exists; versions are immutable, pick a new name")
    tmp = vdir.with_name(f".{vdir.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if cms is not None:
        state.update({f"cms.{k}": v.detach().cpu().contiguous() for k, v in cms.state_dict().items()})
    save_file(state, str(tmp / "model.safetensors"))
    meta = {"model": model.cfg.to_json(), "vocab": vocab.to_json(), "variant": model.cfg.variant,
            "version": vdir.name, **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    tmp.rename(vdir)  # the version appears complete or not at all
    return vdir


def load_model(version_dir: str | Path, device: str = "cpu", dtype: str | None = None) -> LoadedModel:
    """A model version on `device`; dtype "bfloat16" casts the weights for inference (the GPU
    scoring path: half the activation traffic of fp32 weights under autocast, which keeps
    LayerNorm and the residual stream in fp32)."""
    from safetensors.torch import load_file

    vdir = Path(version_dir)
    cfg_file = vdir / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{vdir} is not a model version (no config.json); train one with `pinrec train`")
    meta = json.loads(cfg_file.read_text())
    cfg = PinRecConfig.from_json(meta["model"])
    dev = _resolve(device)
    model = PinRec(cfg)
    state = load_file(str(vdir / "model.safetensors"))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("cms.")})
    model.to(dev).eval()
    if dtype is not None:
        model.to(getattr(torch, dtype))
    return LoadedModel(model, cfg, ActionVocab.from_json(meta["vocab"]), cfg.variant, meta.get("version", vdir.name), dev)


_TYPE_IDS = {t: i + 1 for i, t in enumerate(ITEM_TYPES)}  # unknown types embed as pins (1)
QUERY_TYPE = _TYPE_IDS["query"]


def _str_ids(values, table: dict, default: int) -> np.ndarray:
    """Strings -> int64 ids: one table lookup per DISTINCT value, then a C-level map over all."""
    lut = {v: table.get(v, default) for v in set(values)}
    return np.fromiter(map(lut.__getitem__, values), np.int64, len(values))


def _type_ids(item_types: Sequence[str]) -> np.ndarray:
    return _str_ids(item_types, _TYPE_IDS, 1)


@torch.no_grad()
def embed_item_ids(m: LoadedModel, ids: np.ndarray, type_ids: np.ndarray, features: np.ndarray,
                   batch_size: int = 65536) -> torch.Tensor:
    """The item tower on ids int64 [N], type ids int64 [N] (1 pin, 2 query) and features
    float [N, F] -> float32 [N, D] on the model's device."""
    ids_t = torch.from_numpy(np.array(ids, dtype=np.int64))  # a copy: Arrow buffers are read-only
    types_t = torch.as_tensor(np.asarray(type_ids, dtype=np.int64))
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    out = [m.model.embed_items(ids_t[s:s + batch_size].to(m.device), types_t[s:s + batch_size].to(m.device),
                               feats[s:s + batch_size].to(m.device)).float()
           for s in range(0, len(ids_t), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, m.config.emb_dim), dtype=torch.float32, device=m.device)


@torch.no_grad()
def embed_items(m: LoadedModel, item_ids, item_types: Sequence[str], features: np.ndarray,
                batch_size: int = 65536) -> np.ndarray:
    """The item tower: item_ids [N] int64, item_types [N] names, features [N, F] float ->
    float32 [N, D] numpy (L2-normalised for cosine models)."""
    return embed_item_ids(m, item_ids, _type_ids(item_types), features, batch_size).cpu().numpy()


def history_tensors(m: LoadedModel, histories: Sequence[History], features: ItemFeatures, max_len: int):
    """Histories -> left-padded tensors on the model's device (the newest `max_len` tokens).

    No per-token Python: the newest tokens of all users are concatenated, strings mapped to ids
    through small tables, and scattered into the [B, T] grid by fancy indexing. The item tower
    runs once per distinct (item id, type) of the batch and is gathered back on the device."""
    B = len(histories)
    lens = np.fromiter((len(h.item_ids) for h in histories), np.int64, B)
    T = max(1, min(max_len, int(lens.max()) if B else 1))
    n = np.minimum(lens, T)
    tot = int(n.sum())
    spans = [(b, slice(int(s), int(e))) for b, (s, e) in enumerate(zip((lens - n).tolist(), lens.tolist())) if s < e]
    ids = np.zeros((B, T), np.int64)
    types, acts, surf, ts = (np.zeros((B, T), np.int64) for _ in range(4))
    valid = np.zeros((B, T), bool)
    if tot:
        take = lambda col: list(chain.from_iterable(getattr(histories[b], col)[sl] for b, sl in spans))
        # flat position of token i of user b: b*T + (T - n_b) + (i - start_b)
        start = np.cumsum(n) - n
        flat = np.arange(tot) + np.repeat(np.arange(B) * T + (T - n) - start, n)
        ids.reshape(-1)[flat] = np.concatenate([np.asarray(histories[b].item_ids, dtype=np.int64)[sl]
                                                 for b, sl in spans])
        types.reshape(-1)[flat] = _type_ids(take("item_types"))
        amap = {a: i + 1 for i, a in enumerate(m.vocab.actions)}
        acts.reshape(-1)[flat] = _str_ids(take("actions"), amap, 0)
        surf.reshape(-1)[flat] = _str_ids(take("surfaces"), {s: i + 1 for i, s in enumerate(SURFACES)}, 1)
        ts.reshape(-1)[flat] = np.concatenate([np.asarray(histories[b].ts_us, dtype=np.int64)[sl]
                                                for b, sl in spans]) // 1_000_000
        valid.reshape(-1)[flat] = True
    # Users with no history still get one (padding) token so that prefill has a last state.
    valid[:, -1] |= True
    query_text = {int(i): q for h in histories if h.query_texts is not None
                  for i, q in zip(h.item_ids, h.query_texts) if q}
    # Item tower over the distinct (id, type) pairs only (padding embeds as a pin, as before).
    flat_ids, flat_types = ids.reshape(-1), np.maximum(types.reshape(-1), 1)
    emb = torch.empty((B * T, m.config.emb_dim), dtype=torch.float32, device=m.device)
    present = np.unique(flat_types)
    for t in present.tolist():
        rows = None if len(present) == 1 else np.flatnonzero(flat_types == t)
        uniq, inv = np.unique(flat_ids if rows is None else flat_ids[rows], return_inverse=True)
        texts = [query_text.get(int(i)) for i in uniq] if t == QUERY_TYPE and query_text else None
        e = embed_item_ids(m, uniq, np.full(len(uniq), t, np.int64), features.lookup(uniq, texts))
        inv_t = torch.as_tensor(inv.reshape(-1)).to(m.device)
        if rows is None:
            emb = e[inv_t]
        else:
            emb[torch.as_tensor(rows).to(m.device)] = e[inv_t]
    dev = m.device
    t = lambda a: torch.as_tensor(a, device=dev)
    return (emb.reshape(B, T, -1), t(types), t(acts), t(surf), t(ts), t(valid))


def condition_order(counts: dict[int, int]) -> list[int]:
    """Interleave action ids so every multi-token step carries a mix: [a, b, a, b, a, ...]."""
    left = dict(counts)
    out = []
    while any(v > 0 for v in left.values()):
        for a in list(left):
            if left[a] > 0:
                out.append(a)
                left[a] -= 1
    return out


def generation_plan(m: LoadedModel, budget: Budget, n: int, n_emb: int):
    """What to generate and how to spend N: (condition action id of each of the n_emb
    embeddings in generation order, [(outcome name, its embeddings' columns, items for it)]).
    Both the embeddings and the items follow the budget's one allocation rule (its quotas)."""
    if m.config.action_conditioned:
        order = condition_order({m.vocab.action_id(a) + 1: c for a, c in budget.quotas(n_emb).items()})
        items_per_action = budget.quotas(n)
    else:
        order = [0] * n_emb
        items_per_action = {UNCONDITIONED: n}
    names_by_id = {m.vocab.action_id(a) + 1: a for a in m.vocab.engagement_actions}
    groups = []  # per action, in order of first appearance
    for aid in dict.fromkeys(order):
        name = names_by_id.get(aid, UNCONDITIONED)
        groups.append((name, [i for i, a in enumerate(order) if a == aid], int(items_per_action.get(name, 0))))
    return order, groups


def uniform_plan(groups) -> list[tuple[str, int, int]]:
    """Without compression: [(outcome, embedding column, items to take from its results)],
    each outcome's items split evenly over its embeddings (largest remainder)."""
    plan = []
    for name, sel, items in groups:
        quota = largest_remainder([1] * len(sel), items)
        plan += [(name, sel[i], q) for i, q in enumerate(quota) if q > 0]
    return plan


def generate_candidates(m: LoadedModel, histories: Sequence[History], features: ItemFeatures,
                        budget: Budget, n: int, retriever: Retriever, *,
                        exclude_history: bool = True, tokens_per_step: int | None = None,
                        compression_threshold: float | None = None, overfetch: float = 2.0,
                        num_embeddings: int | None = None) -> list[list[Candidate]]:
    """N candidates per history, allocated over actions by `budget` (its quotas: B(a)·N items
    each). -> per history, up to n Candidates ordered by score."""
    if not histories:
        return []
    cfg = m.config
    n_emb = num_embeddings or cfg.num_embeddings
    k = tokens_per_step or (cfg.tokens_per_step if cfg.offset_conditioned else 1)
    hist_len = min(cfg.max_len, cfg.max_positions - n_emb - 1)
    emb, types, acts, surf, ts, valid = history_tensors(m, histories, features, hist_len)
    st = m.model.prefill(emb, types, acts, surf, ts, valid)
    order, groups = generation_plan(m, budget, n, n_emb)
    cond = torch.tensor(order, device=m.device)[None, :].expand(len(histories), -1)
    gen = m.model.generate(st, cond, k).float().cpu().numpy()  # [B, n_emb, D]
    B = len(histories)
    if compression_threshold is None:
        # Nothing is compressed, so the plan [(action, column, quota)] is the same for every user.
        plan = uniform_plan(groups)
        plans = [plan] * B
        cols = [c for _, c, _ in plan]
        queries = gen[:, cols].reshape(-1, gen.shape[-1]) if plan else None
    else:
        plans = []  # per user: [(action name, column, quota)]
        for b in range(B):
            plan = []
            for name, sel, items in groups:
                kept, counts = compress(gen[b, sel], compression_threshold)
                quota = largest_remainder(counts.tolist(), items)
                plan += [(name, sel[i], q) for i, q in zip(kept.tolist(), quota) if q > 0]
            plans.append(plan)
        rows = [b for b, p in enumerate(plans) for _ in p]
        queries = gen[rows, [c for p in plans for _, c, _ in p]] if rows else None
    lens = [len(h.item_ids) for h in histories]
    excl = max(lens, default=0) if exclude_history else 0
    max_q = max((q for p in plans for _, _, q in p), default=0)
    k_search = int(math.ceil(max_q * overfetch)) + excl
    if not max_q or not len(queries):
        return [[] for _ in histories]
    scores, ids = retriever.search(queries, k_search)  # [sum of plan entries, K]: users' entries in order
    seen = [np.asarray(h.item_ids, dtype=np.int64) if exclude_history else None for h in histories]
    return select_per_user(plans, scores, ids, seen, n)


def select_per_user(plans, scores: np.ndarray, ids: np.ndarray, seen: list, n: int) -> list[list[Candidate]]:
    """Per-user plans and their flat search results -> candidates, through the one selection
    (selection.select_candidates). scores/ids [R, K]: one row per plan entry of every
    user, in order; seen: per user the item ids to exclude (int64 [T]) or None."""
    from pinrec_model.selection import select_candidates

    B, K = len(plans), ids.shape[1]
    E = max(len(p) for p in plans)
    grid_ids = np.full((B, E, K), -1, np.int64)  # padding entries: no results, quota 0
    grid_s = np.full((B, E, K), -np.inf, np.float32)
    quotas = np.zeros((B, E), np.int64)
    r = 0
    for b, plan in enumerate(plans):
        e = len(plan)
        rows = ids[r:r + e]
        grid_ids[b, :e] = rows if seen[b] is None else np.where(np.isin(rows, seen[b]), -1, rows)
        grid_s[b, :e] = scores[r:r + e]
        quotas[b, :e] = [q for _, _, q in plan]
        r += e
    got, sc, entry = select_candidates(torch.from_numpy(grid_s), torch.from_numpy(grid_ids), torch.from_numpy(quotas), n)
    got, sc, entry = got.tolist(), sc.tolist(), entry.tolist()
    return [[Candidate(i, s, plan[e][0]) for i, s, e in zip(got[b], sc[b], entry[b]) if i >= 0]
            for b, plan in enumerate(plans)]
