"""Where trivago's unordered recall comes from: each target is the user's last pin, another
history item, or a new item. Trains UC and MT+OC as `pinrec eval --protocol unordered --window 6`
does (default recipe, small preset) and splits each model's hits by those three kinds, beside a
"history embeddings" reference: the item embeddings of the user's newest distinct history pins
used as the 16 generated embeddings (no model of the future at all).

    PYTHONPATH=. python docs/model/trivago/breakdown.py .device_data/trivago_events.parquet \
        [--item-features .device_data/trivago_items.parquet --set feature_dim=4096] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from jobs.evaluate import _item_table, configure, load_events
from jobs.train import model_config, train_config, train_refit
from jobs.train_data import prepare
from pinrec.core.contracts import PINTEREST_ACTIONS
from pinrec_model.offline import (eval_targets, generate_for_users, index_rows, target_conditions,
                                  unordered_scores, unordered_split)
from pinrec_model.training import resolve_device
from pinrec_model.training_loss import CatalogTensors


def kinds(prep, split, t_rows) -> list[np.ndarray]:
    """Per eval user, per target: 0 = the last history pin, 1 = another history item, 2 = new."""
    out = []
    for i, u in enumerate(split.eval_users):
        s, e = prep.seqs.offsets[u], prep.seqs.offsets[u + 1] - split.window
        h = prep.seqs.rows[s:e]
        pins = h[prep.catalog.type_ids[h] == 1]
        last = pins[-1] if len(pins) else -1
        t = t_rows[i]
        out.append(np.where(t == last, 0, np.where(np.isin(t, h), 1, 2)))
    return out


def split_hits(hits, kind) -> dict:
    h, k = np.concatenate(hits), np.concatenate(kind)
    return {name: {"share_of_targets": float((k == c).mean()), "recall": float(h[k == c].mean())}
            for c, name in enumerate(("last_pin", "other_history", "new"))} | {"all": float(h.mean())}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    configure(p)
    ev_file, rest = sys.argv[1], sys.argv[2:]
    args = p.parse_args(["--events", ev_file, "--protocol", "unordered", "--window", "6", "--epochs", "40",
                         "--patience", "6", "--quiet", *rest])
    vocab = PINTEREST_ACTIONS
    prep = prepare(*load_events(args), vocab, model_config(args, vocab).feature_dim)
    split = unordered_split(prep.seqs, args.window, seed=0)
    hist, t_rows, t_acts = eval_targets(prep.seqs, prep.catalog, split)
    index = index_rows(prep.catalog, args.index_size)
    kind = kinds(prep, split, t_rows)
    dev = resolve_device(args.device)
    ct = CatalogTensors(prep.catalog, dev)
    result = {"eval_users": int(len(split.eval_users))}
    for variant in ("uc", "mt_oc"):
        a = argparse.Namespace(**{**vars(args), "variant": variant})
        cfg = model_config(a, vocab)
        res = train_refit(prep, cfg, train_config(a), 1, split.train_users, args.val_users)
        table, item_emb = _item_table(res.model, ct)
        k = cfg.tokens_per_step if cfg.offset_conditioned else 1
        cond = target_conditions(t_acts, 16) if variant != "uc" else np.zeros((len(t_rows), 16), np.int64)
        gen, _ = generate_for_users(res.model, ct, hist, cond, k, item_table=table)
        _, hits, _ = unordered_scores(gen, item_emb, index, t_rows)
        result[variant] = split_hits(hits, kind)
        if variant == "uc":  # the reference: the newest 16 distinct history pins' own embeddings
            ref = np.zeros_like(gen)
            for i, u in enumerate(split.eval_users):
                s, e = prep.seqs.offsets[u], prep.seqs.offsets[u + 1] - split.window
                h = prep.seqs.rows[s:e][::-1]
                h = h[prep.catalog.type_ids[h] == 1]
                _, first = np.unique(h, return_index=True)
                newest = h[np.sort(first)][:16]
                ref[i, :len(newest)] = item_emb[newest]
                ref[i, len(newest):] = item_emb[newest[0]] if len(newest) else 0
            _, hits_ref, _ = unordered_scores(ref, item_emb, index, t_rows)
            result["history_embeddings"] = split_hits(hits_ref, kind)
    print(json.dumps(result, indent=1))
