"""The model API: the ONLY surface the batch layer and serving call (see the working agreement).

    load_model(version_dir, device) -> LoadedModel
    embed_items(m, item_ids, item_types, features) -> float32 [N, D]   (the item tower)
    generate_candidates(m, histories, features, budget, n, retriever, ...) -> [[Candidate]]

Model versions are folders `<lake>/models/<version>/{model.safetensors, config.json,
metrics.json}`, written once by `save_model` and never modified.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pinrec.contracts import ITEM_TYPES, SURFACES, ActionVocab, validate_budget
from pinrec.features import FEATURE_DIM
from pinrec_model.generation import compress, generate, largest_remainder, prefill
from pinrec_model.losses import CountMinSketch
from pinrec_model.model import PinRec, PinRecConfig
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


@dataclass(frozen=True)
class Candidate:
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
    def from_table(table) -> "ItemFeatures":
        """From the `items` table (pyarrow): columns item_id and features (list<float>)."""
        ids = table.column("item_id").to_numpy()
        rows = table.column("features").to_pylist()
        feats = np.zeros((len(ids), FEATURE_DIM), dtype=np.float32)
        for i, r in enumerate(rows):
            if r:
                feats[i, : len(r)] = r[:FEATURE_DIM]
        return ItemFeatures(ids, feats)

    @staticmethod
    def from_arrays(item_ids, features) -> "ItemFeatures":
        return ItemFeatures(item_ids, features)

    def lookup(self, item_ids) -> np.ndarray:
        item_ids = np.asarray(item_ids, dtype=np.int64)
        out = np.zeros((len(item_ids), self.features.shape[1] if len(self.ids) else FEATURE_DIM), np.float32)
        if len(self.ids) == 0:
            return out
        pos = np.searchsorted(self.ids, item_ids).clip(0, len(self.ids) - 1)
        hit = self.ids[pos] == item_ids
        out[hit] = self.features[pos[hit]]
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


def load_model(version_dir: str | Path, device: str = "cpu") -> LoadedModel:
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
    return LoadedModel(model, cfg, ActionVocab.from_json(meta["vocab"]), cfg.variant, meta.get("version", vdir.name), dev)


def _type_ids(item_types: Sequence[str]) -> np.ndarray:
    return np.array([ITEM_TYPES.index(t) + 1 if t in ITEM_TYPES else 1 for t in item_types], dtype=np.int64)


@torch.no_grad()
def embed_items(m: LoadedModel, item_ids, item_types: Sequence[str], features: np.ndarray,
                batch_size: int = 65536) -> np.ndarray:
    """The item tower: float32 [N, D], L2-normalised."""
    ids = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
    types = torch.as_tensor(_type_ids(item_types))
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    out = []
    for s in range(0, len(ids), batch_size):
        sl = slice(s, s + batch_size)
        out.append(m.model.embed_items(ids[sl].to(m.device), types[sl].to(m.device), feats[sl].to(m.device))
                   .float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, m.config.emb_dim), np.float32)


def history_tensors(m: LoadedModel, histories: Sequence[History], features: ItemFeatures, max_len: int):
    """Histories -> left-padded tensors on the model's device (the newest `max_len` tokens)."""
    B = len(histories)
    T = max(1, min(max_len, max((len(h.item_ids) for h in histories), default=1)))
    amap = {a: i + 1 for i, a in enumerate(m.vocab.actions)}
    smap = {s: i + 1 for i, s in enumerate(SURFACES)}
    ids = np.zeros((B, T), np.int64)
    types, acts, surf, ts = (np.zeros((B, T), np.int64) for _ in range(4))
    valid = np.zeros((B, T), bool)
    for b, h in enumerate(histories):
        n = min(T, len(h.item_ids))
        if n == 0:
            continue
        sl = slice(len(h.item_ids) - n, len(h.item_ids))
        ids[b, T - n:] = np.asarray(h.item_ids)[sl]
        types[b, T - n:] = _type_ids(h.item_types[sl])
        acts[b, T - n:] = [amap.get(a, 0) for a in h.actions[sl]]
        surf[b, T - n:] = [smap.get(s, 1) for s in h.surfaces[sl]]
        ts[b, T - n:] = np.asarray(h.ts_us)[sl] // 1_000_000
        valid[b, T - n:] = True
    # Users with no history still get one (padding) token so that prefill has a last state.
    valid[:, -1] |= True
    emb = embed_items(m, ids.reshape(-1), [ITEM_TYPES[max(t, 1) - 1] for t in types.reshape(-1)],
                      features.lookup(ids.reshape(-1)))
    dev = m.device
    t = lambda a: torch.as_tensor(a, device=dev)
    return (t(emb.reshape(B, T, -1)), t(types), t(acts), t(surf), t(ts), t(valid))


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


def generate_candidates(m: LoadedModel, histories: Sequence[History], features: ItemFeatures,
                        budget: dict[str, float], n: int, retriever: Retriever, *,
                        exclude_history: bool = True, tokens_per_step: int | None = None,
                        compression_threshold: float | None = None, overfetch: float = 2.0,
                        num_embeddings: int | None = None) -> list[list[Candidate]]:
    """N candidates per history, allocated over actions by `budget` (B(a) * N items each)."""
    if not histories:
        return []
    cfg = m.config
    budget = validate_budget(budget, m.vocab)
    n_emb = num_embeddings or cfg.num_embeddings
    k = tokens_per_step or (cfg.tokens_per_step if cfg.offset_conditioned else 1)
    hist_len = min(cfg.max_len, cfg.max_positions - n_emb - 1)
    emb, types, acts, surf, ts, valid = history_tensors(m, histories, features, hist_len)
    st = prefill(m.model, emb, types, acts, surf, ts, valid)
    if cfg.action_conditioned:
        names = [a for a in budget if budget[a] > 0]
        per = largest_remainder(np.array([budget[a] for a in names]), n_emb)
        order = condition_order({m.vocab.action_id(a) + 1: int(c) for a, c in zip(names, per)})
        items_per_action = {a: c for a, c in zip(names, largest_remainder(np.array([budget[a] for a in names]), n))}
    else:
        order = [0] * n_emb
        items_per_action = {UNCONDITIONED: n}
    cond = torch.tensor(order, device=m.device)[None, :].expand(len(histories), -1)
    gen = generate(m.model, st, cond, k).float().cpu().numpy()  # [B, n_emb, D]
    names_by_id = {m.vocab.action_id(a) + 1: a for a in m.vocab.engagement_actions}
    plans = []  # per user: [(action name, embedding, quota)]
    for b in range(len(histories)):
        plan = []
        for aid in sorted(set(order), key=order.index):
            name = names_by_id.get(aid, UNCONDITIONED)
            sel = [i for i, a in enumerate(order) if a == aid]
            kept, counts = compress(gen[b, sel], compression_threshold)
            quota = largest_remainder(counts, items_per_action.get(name, 0))
            plan += [(name, gen[b, sel[i]], int(q)) for i, q in zip(kept, quota) if q > 0]
        plans.append(plan)
    excl = max((len(h.item_ids) for h in histories), default=0) if exclude_history else 0
    max_q = max((q for p in plans for _, _, q in p), default=0)
    k_search = int(math.ceil(max_q * overfetch)) + excl
    queries = np.stack([e for p in plans for _, e, _ in p]) if max_q else np.zeros((0, cfg.emb_dim), np.float32)
    scores, ids = retriever.search(queries, k_search) if len(queries) else (None, None)
    out, qi = [], 0
    for b, plan in enumerate(plans):
        seen = set(int(x) for x in histories[b].item_ids) if exclude_history else set()
        chosen, rest = [], []
        for name, _, quota in plan:
            got, pos = 0, 0
            row_s, row_i = scores[qi], ids[qi]
            # Stop at the quota: the over-fetched tail is only read when a fill is needed
            # (building it for every user cost ~8 ms/user on the H100 host, bench score).
            while got < quota and pos < len(row_i):
                i = int(row_i[pos])
                if i >= 0 and i not in seen:
                    chosen.append(Candidate(i, float(row_s[pos]), name))
                    seen.add(i)
                    got += 1
                pos += 1
            rest.append((qi, pos, name))
            qi += 1
        # Over-fetched results fill what de-duplication took away, best score first.
        if len(chosen) < n:
            spare = [Candidate(int(i), float(s), name) for q, start, name in rest
                     for s, i in zip(scores[q][start:], ids[q][start:]) if i >= 0]
            for c in sorted(spare, key=lambda c: -c.score):
                if len(chosen) >= n:
                    break
                if c.item_id not in seen:
                    chosen.append(c)
                    seen.add(c.item_id)
        out.append(sorted(chosen, key=lambda c: -c.score)[:n])
    return out
