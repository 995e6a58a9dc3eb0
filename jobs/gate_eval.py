"""The quality gate's evaluation: candidate and serving model on the same held-out users of the
same `ds`, each with its own saved config, a paired bootstrap of their difference, and the hard
checks that fail a candidate whatever its recall (docs/adr/0004-held-out-quality-gate.md).

Pure parts (`eval_users`, `paired_bootstrap`, `short_candidate_share`, `nonfinite_tensors`) take
arrays; `evaluate_model` runs one model; `run_checks` reads the lake and returns the evidence
`jobs.gate.decide` decides on. Nothing is cached: both models are evaluated on every run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RECALL_K = 10


@dataclass(frozen=True)
class GateEvalConfig:
    window: int = 10  # target tokens from each held-out user's end (unordered recall@10)
    min_history: int = 5  # history tokens a held-out user needs before the window
    max_users: int = 20_000  # evaluate at most this many held-out users (a fixed hash order)
    index_size: int = 1_000_000  # random pins ranked against (all pins of a smaller catalog)
    bootstrap: int = 2000  # paired bootstrap resamples
    seed: int = 0
    min_candidates: int = 10  # a (user, arm) with fewer candidate rows is "short"
    max_short_share: float = 0.01  # ... and more than this share of users with one fails the gate
    device: str = "cpu"


@dataclass
class ModelEval:
    version: str
    recall: np.ndarray | None = None  # per evaluated user (NaN: no pin among the targets)
    error: str | None = None  # could not load or run
    holdout_fraction: float | None = None  # the share it held out when trained (metrics.json)
    feature_dim: int | None = None
    features_from: str = ""


@dataclass
class Evidence:
    users: np.ndarray  # evaluated held-out user ids
    candidate: ModelEval
    serving: ModelEval | None
    lake_fraction: float | None
    hard_failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

def eval_users(seqs, type_ids: np.ndarray, fraction: float, window: int, min_history: int,
               max_users: int) -> np.ndarray:
    """Indices of the held-out users with `window + min_history` tokens and a pin among their
    last `window`, at most `max_users`, in the order of their stable hash (so a cap keeps the
    same users day to day)."""
    from pinrec.core.contracts import held_out_users, user_unit_hash

    lens = seqs.lengths()
    ok = held_out_users(seqs.user_ids, fraction) & (lens >= window + min_history)
    cand = np.flatnonzero(ok)
    has_pin = np.array([(type_ids[seqs.rows[seqs.offsets[u + 1] - window:seqs.offsets[u + 1]]] == 1).any()
                        for u in cand], dtype=bool)
    cand = cand[has_pin] if len(cand) else cand
    order = np.argsort(user_unit_hash(seqs.user_ids[cand]), kind="stable")
    return np.sort(cand[order][:max_users])


def paired_bootstrap(cand: np.ndarray, serv: np.ndarray, n_boot: int, seed: int,
                     chunk: int = 100) -> tuple[float, float, float]:
    """(mean difference cand - serv, 2.5 % and 97.5 % percentiles of the resampled mean
    difference), resampling users with replacement, the same users for both models."""
    d = np.asarray(cand, float) - np.asarray(serv, float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for s in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - s), n))
        means.append(d[idx].mean(axis=1))
    means = np.concatenate(means)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def short_candidate_share(cand_users: np.ndarray, cand_arms: np.ndarray, users: np.ndarray,
                          arms: list[str], min_rows: int) -> float:
    """Share of `users` with fewer than `min_rows` candidate rows for some arm (none counts)."""
    if len(users) == 0:
        return 0.0
    ok = np.ones(len(users), bool)
    for arm in arms:
        ids, counts = np.unique(cand_users[cand_arms == arm], return_counts=True)
        got = np.zeros(len(users), np.int64)
        if len(ids):
            pos = np.searchsorted(ids, users).clip(0, len(ids) - 1)
            hit = ids[pos] == users
            got[hit] = counts[pos[hit]]
        ok &= got >= min_rows
    return float(1.0 - ok.mean())


def nonfinite_tensors(state: dict) -> list[str]:
    import torch

    return sorted(k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all())


def compare(ev: Evidence, cfg: GateEvalConfig):
    """Evidence -> (candidate recall, serving recall, 95 % interval of the difference, users
    compared, hard failures, why the recall rule does not apply or None), for `gate.decide`."""
    hard, note = list(ev.hard_failures), None
    cand_r = serv_r = ci = None
    n = 0
    if ev.candidate.recall is not None and len(ev.candidate.recall):
        cand_r = float(np.nanmean(ev.candidate.recall))
    serving = ev.serving
    if serving is None:
        return cand_r, None, None, 0, hard, None
    if serving.error:
        note = (f"the serving model {serving.version} cannot be evaluated ({serving.error}); "
                "decided on the hard checks alone")
    elif serving is not ev.candidate and (serving.holdout_fraction is None or ev.lake_fraction is None
                                          or serving.holdout_fraction < ev.lake_fraction):
        # a model that trained on some held-out users would look better than it is on them
        note = (f"the serving model {serving.version} trained on held-out users (it predates the "
                "held-out rule), so its recall is not comparable; decided on the hard checks alone")
    elif ev.candidate.recall is None:  # the candidate failed a hard check: report serving's figure
        serv_r = float(np.nanmean(serving.recall)) if len(serving.recall) else None
    else:
        both = ~np.isnan(ev.candidate.recall) & ~np.isnan(serving.recall)
        n = int(both.sum())
        if n == 0:
            hard.append(f"no held-out user has {cfg.window + cfg.min_history} tokens with a pin among "
                        f"the last {cfg.window}: nothing to compare on; lower --window")
        else:
            c, s = ev.candidate.recall[both], serving.recall[both]
            cand_r, serv_r = float(c.mean()), float(s.mean())
            _, lo, hi = paired_bootstrap(c, s, cfg.bootstrap, cfg.seed)
            ci = (lo, hi)
    return cand_r, serv_r, ci, n, hard, note


# ------------------------------------------------------------------------------------------
# One model
# ------------------------------------------------------------------------------------------

def catalog_for(events, item_features, items, width: int):
    """The catalog a model of feature width `width` reads: items@ds vectors where the table has
    that width (what index, score and serving give it), else item_features featurised at it."""
    from jobs.train_data import use_items_features
    from pinrec_model.data import build_catalog

    cat = build_catalog(events, item_features, width)
    if items is None:
        return cat, f"item_features at width {width} (no items table)"
    widths = {len(r) for r in items.column("features").to_pylist()[:100] if r}
    if widths != {width}:
        return cat, f"item_features at width {width} (items table is {sorted(widths)} wide)"
    n = use_items_features(cat, items, width)
    return cat, f"items table ({n} rows, width {width})"


def evaluate_model(vdir: Path, events, item_features, items, seqs, users: np.ndarray,
                   cfg: GateEvalConfig) -> ModelEval:
    """Per-user unordered recall@10 of one model version on `users` (catalog at its width)."""
    from pinrec_model.api import load_model
    from pinrec_model.offline import (UnorderedSplit, eval_targets, generate_for_users, index_rows,
                                      target_conditions, unordered_scores)
    from pinrec_model.training_loss import CatalogTensors

    out = ModelEval(vdir.name)
    metrics = vdir / "metrics.json"
    if metrics.exists():
        out.holdout_fraction = (json.loads(metrics.read_text()).get("holdout") or {}).get("fraction")
    try:
        m = load_model(vdir, cfg.device)
        out.feature_dim = m.config.feature_dim
        cat, out.features_from = catalog_for(events, item_features, items, m.config.feature_dim)
        ct = CatalogTensors(cat, m.device)
        import torch

        with torch.no_grad():
            table = ct.embed(m.model, torch.arange(len(ct.ids), device=ct.ids.device))
        item_emb = table.float().cpu().numpy()
        split = UnorderedSplit(np.zeros(0, np.int64), users, cfg.window)
        hist, t_rows, t_acts = eval_targets(seqs, cat, split)
        n_emb = 1 if m.config.variant == "pinnerformer" else m.config.num_embeddings
        k = m.config.tokens_per_step if m.config.offset_conditioned else 1
        gen, _ = generate_for_users(m.model, ct, hist, target_conditions(t_acts, n_emb), k,
                                    item_table=table)
        if not (np.isfinite(gen).all() and np.isfinite(item_emb).all()):
            out.error = "the model's embeddings are not finite (NaN or inf)"
            return out
        rec, _, _ = unordered_scores(gen, item_emb, index_rows(cat, cfg.index_size), t_rows, RECALL_K)
        out.recall = np.asarray(rec, float)
    except Exception as e:  # a model that cannot load or run is a finding, not a crash
        out.error = f"{type(e).__name__}: {e}"
    return out


# ------------------------------------------------------------------------------------------
# The lake
# ------------------------------------------------------------------------------------------

def check_index(lake, ds: str, model_version: str) -> str | None:
    """Why the index built for this model is unusable, or None (jobs/index.py's build.json)."""
    from jobs.index import index_version

    build = lake.version_dir("index", index_version(ds, model_version)) / "build.json"
    if not build.exists():
        return f"no index was built for model {model_version} at ds={ds} ({build} is missing)"
    rep = json.loads(build.read_text())
    recall = rep.get(f"recall@{RECALL_K}_vs_exact")
    if recall is None or recall < rep.get("min_recall", 0.95):
        return f"the index for model {model_version} failed its recall check ({recall} < {rep.get('min_recall')})"
    return None


def check_candidates(lake, ds: str, users: np.ndarray, cfg: GateEvalConfig) -> tuple[str | None, float]:
    """(why this run's candidates are unusable or None, share of users with short lists)."""
    from pinrec.core.lake import DeltaRsTables

    t = DeltaRsTables(lake)
    if not t.exists("candidates") or ds not in t.partitions("candidates"):
        return f"no candidates partition for ds={ds}", 1.0
    c = t.read("candidates", [ds], columns=["user_id", "arm"])
    arms_file = lake.runs / "params" / ds / "arms.json"
    arms = sorted(json.loads(arms_file.read_text())) if arms_file.exists() else \
        sorted(set(c.column("arm").to_pylist()))
    share = short_candidate_share(c.column("user_id").to_numpy(),
                                  np.asarray(c.column("arm").to_pylist(), dtype=object), np.sort(users),
                                  arms, cfg.min_candidates)
    if share > cfg.max_short_share:
        return (f"{share:.1%} of users have fewer than {cfg.min_candidates} candidates for some arm "
                f"(allowed: {cfg.max_short_share:.1%})"), share
    return None, share


def run_checks(lake, ds: str, cand_dir: Path, serving_dir: Path | None, cfg: GateEvalConfig) -> Evidence:
    """Evaluate both models on the same held-out users of sequences@ds and run the hard checks."""
    from safetensors.torch import load_file

    from jobs.train_data import items_table_features, read_training_data
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec.core.layout import read_holdout_fraction
    from pinrec_model.data import build_catalog, build_user_seqs

    events, feats = read_training_data(lake, ds)
    items = items_table_features(lake, ds)
    base = build_catalog(events)  # ids and types: the same for every feature width
    seqs = build_user_seqs(events, base, PINTEREST_ACTIONS)
    fraction = read_holdout_fraction(lake)
    hard, notes = [], []
    if fraction is None:
        hard.append("the lake has no held-out share (models/HOLDOUT): no model was trained by "
                    "`pinrec train` with held-out users; retrain with the current `pinrec train`")
        users = np.zeros(0, np.int64)
    else:
        users = eval_users(seqs, base.type_ids, fraction, cfg.window, cfg.min_history, cfg.max_users)
    bad = []
    try:
        bad = nonfinite_tensors(load_file(str(cand_dir / "model.safetensors")))
    except Exception as e:
        hard.append(f"the candidate's weights cannot be read: {type(e).__name__}: {e}")
    if bad:
        hard.append(f"the candidate has non-finite weights in {len(bad)} tensor(s): {', '.join(bad[:5])}")
    cand = evaluate_model(cand_dir, events, feats, items, seqs, users, cfg)
    if cand.error:
        hard.append(f"the candidate cannot be evaluated: {cand.error}")
    if fraction is not None and (cand.holdout_fraction is None or cand.holdout_fraction < fraction):
        hard.append(f"the candidate did not hold out the lake's held-out users (its share "
                    f"{cand.holdout_fraction}, the lake's {fraction}): it trained on the users it "
                    "would be judged on; retrain it with `pinrec train`")
    if why := check_index(lake, ds, cand_dir.name):
        hard.append(why)
    why, share = check_candidates(lake, ds, seqs.user_ids, cfg)
    if why:
        hard.append(why)
    notes.append(f"short candidate lists: {share:.2%} of users")
    serving = None
    if serving_dir is not None and serving_dir.name != cand_dir.name:
        serving = evaluate_model(serving_dir, events, feats, items, seqs, users, cfg)
    elif serving_dir is not None:
        serving = cand  # re-running the day whose model already serves
    return Evidence(seqs.user_ids[users], cand, serving, fraction, hard, notes)
