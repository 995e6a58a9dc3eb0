"""A small but complete serving lake (sequences, items, published candidates, a published model
and index) written through the real adapters, for the serving tests, the serve benchmark and
demos without a batch run. The model has random weights: it exercises the regeneration path and
its latency, not quality.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from pinrec.core.contracts import (CANDIDATES_SCHEMA, ITEMS_SCHEMA, PINTEREST_ACTIONS, SEQUENCES_SCHEMA,
                                   cutoff_us)

ARMS = {"control": {"repin": 0.5, "grid_click": 0.3, "outbound_click": 0.2},
        "saves": {"repin": 1.0}}


@dataclass(frozen=True)
class SampleLakeConfig:
    root: Path
    ds: str = "2026-03-01"
    users: int = 200              # users 0..users-1 have sequences and candidates
    items: int = 2000             # pin ids 1..items
    history: int = 40
    candidates: int = 100         # per user and arm
    model: bool = True
    seed: int = 0


def _ts(us) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))


def sequences_table(cfg: SampleLakeConfig, rng) -> pa.Table:
    cut = cutoff_us(cfg.ds)
    acts = PINTEREST_ACTIONS.engagement_actions
    rows = {k: [] for k in ("user_id", "event_ids", "item_ids", "item_types", "actions", "surfaces",
                            "ts", "length")}
    for u in range(cfg.users):
        t = cut - (cfg.history - np.arange(cfg.history)) * 3_600_000_000
        rows["user_id"].append(u)
        rows["event_ids"].append([f"b-{u}-{i}" for i in range(cfg.history)])
        rows["item_ids"].append(rng.integers(1, cfg.items + 1, cfg.history).tolist())
        rows["item_types"].append(["pin"] * cfg.history)
        rows["actions"].append([acts[i] for i in rng.integers(0, len(acts), cfg.history)])
        rows["surfaces"].append(["homefeed"] * cfg.history)
        rows["ts"].append([datetime.fromtimestamp(x / 1e6, tz=timezone.utc) for x in t.tolist()])
        rows["length"].append(cfg.history)
    n = cfg.users
    rows["cutoff_ts"] = [datetime.fromtimestamp(cut / 1e6, tz=timezone.utc)] * n
    rows["ds"] = [cfg.ds] * n
    return pa.Table.from_pydict(rows, schema=SEQUENCES_SCHEMA)


def items_table(cfg: SampleLakeConfig, rng) -> pa.Table:
    ids = np.arange(1, cfg.items + 1, dtype=np.int64)
    feats = rng.normal(size=(cfg.items, 32)).astype(np.float32)
    eng = rng.zipf(1.5, cfg.items).astype(np.int64)
    t0 = _ts(np.full(cfg.items, cutoff_us(cfg.ds) - 86_400_000_000 * 30))
    return pa.Table.from_pydict({
        "item_id": ids, "item_type": ["pin"] * cfg.items,
        "features": pa.array(list(feats), type=pa.list_(pa.float32())),
        "first_seen": t0, "last_seen": t0, "engagements": eng, "ds": [cfg.ds] * cfg.items,
    }, schema=ITEMS_SCHEMA)


def candidates_table(cfg: SampleLakeConfig, rng, arms=ARMS) -> pa.Table:
    from pinrec.core.budgets import Budget

    cols = {k: [] for k in CANDIDATES_SCHEMA.names}
    gen = datetime(2026, 3, 2, tzinfo=timezone.utc)
    for u in range(cfg.users):
        for arm, weights in arms.items():
            budget = Budget.parse(weights, PINTEREST_ACTIONS.engagement_actions, f"arm {arm!r}")
            outcomes = [a for a, q in budget.quotas(cfg.candidates).items() for _ in range(q)]
            items = rng.choice(np.arange(1, cfg.items + 1), cfg.candidates, replace=False)
            for r, (item, outcome) in enumerate(zip(items.tolist(), outcomes)):
                cols["ds"].append(cfg.ds)
                cols["user_id"].append(u)
                cols["arm"].append(arm)
                cols["rank"].append(r)
                cols["item_id"].append(item)
                cols["score"].append(1.0 - r / cfg.candidates)
                cols["outcome"].append(outcome)
                cols["model_version"].append("sample")
                cols["budget"].append(budget.to_json())
                cols["generated_at"].append(gen)
    return pa.Table.from_pydict(cols, schema=CANDIDATES_SCHEMA)


def publish_random_model(lake, items: pa.Table, version: str = "sample", seed: int = 0) -> None:
    import torch

    from pinrec.core.layout import publish
    from pinrec_model.api import ItemFeatures, embed_items, load_model, save_model
    from pinrec_model.config import preset
    from pinrec_model.model import PinRec
    from pinrec_model.retrieval import Retriever

    torch.manual_seed(seed)
    cfg = preset("small", variant="mt_oc", n_actions=len(PINTEREST_ACTIONS.actions), dropout=0.0)
    vdir = lake.version_dir("models", version)
    if not vdir.exists():
        save_model(vdir, PinRec(cfg).eval(), None, PINTEREST_ACTIONS, {"note": "random weights"})
    publish(lake, "models", version)
    m = load_model(vdir)
    ids = items.column("item_id").to_numpy()
    feats = ItemFeatures.from_table(items, m.config.feature_dim)
    emb = embed_items(m, ids, ["pin"] * len(ids), feats.lookup(ids))
    Retriever.build(ids, emb).save(lake.version_dir("index", version))
    publish(lake, "index", version)


def build(cfg: SampleLakeConfig) -> None:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake, publish_candidates

    lake = Lake.at(cfg.root)
    tables = DeltaRsTables(lake)
    rng = np.random.default_rng(cfg.seed)
    tables.replace_partitions("sequences", sequences_table(cfg, rng), [cfg.ds])
    items = items_table(cfg, rng)
    tables.replace_partitions("items", items, [cfg.ds])
    tables.replace_partitions("candidates", candidates_table(cfg, rng), [cfg.ds])
    publish_candidates(lake, cfg.ds)
    if cfg.model:
        publish_random_model(lake, items, seed=cfg.seed)
