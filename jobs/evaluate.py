"""`pinrec eval`: offline evaluation on the events of a lake (leave-one-out or unordered),
training the variant first unless --model is given. Prints a table, writes JSON (--json) and,
beside it, PNG plots (training curves, controllability matrix, tokens-per-step trade-off).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jobs.train import add_model_args

EVAL_VARIANTS = ("pop", "sasrec", "pinnerformer", "uc", "oc", "mt_oc")


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_lake_arg

    add_lake_arg(p)
    p.add_argument("--events", help="evaluate on this Parquet file of events (EVENTS_SCHEMA columns) "
                                    "instead of the lake's events table")
    p.add_argument("--item-features", help="Parquet file of item_features to go with --events")
    add_model_args(p, EVAL_VARIANTS)
    p.add_argument("--protocol", choices=("loo", "unordered"), default="loo")
    p.add_argument("--model", help="evaluate this model version folder instead of training one")
    p.add_argument("--seeds", default=None, help="comma list: train and evaluate once per seed, "
                                                 "report mean and spread (default: --seed)")
    p.add_argument("--controllability", action="store_true",
                   help="Figure 4: lift of the conditioned variant over UC per desired x actual action")
    p.add_argument("--tokens-per-step", default=None, help="Figure 5 sweep, e.g. 1,2,4,8,16")
    p.add_argument("--latency-repeats", type=int, default=7,
                   help="tokens-per-step: timed generation runs per k (the median is reported)")
    p.add_argument("--window", type=int, default=10, help="unordered: target tokens per eval user")
    p.add_argument("--index-size", type=int, default=1_000_000, help="unordered: random items in the index")
    p.add_argument("--num-embeddings", type=int, default=16, help="unordered: embeddings per user")
    p.add_argument("--validation-only", action="store_true",
                   help="loo: train and report the validation figures only; the test item is never "
                        "read (what a sweep that picks a default may look at)")
    p.add_argument("--json", dest="json_out", help="write the result JSON here (plots beside it)")


def load_events(args):
    import pyarrow.parquet as pq

    from jobs.train_data import read_training_data
    from pinrec.core.layout import Lake

    if args.events:
        feats = pq.read_table(args.item_features) if args.item_features else None
        return pq.read_table(args.events), feats
    return read_training_data(Lake.at(args.lake))


def model_feature_dim(args, vocab) -> int:
    from jobs.train import model_config
    from pinrec_model.config import PinRecConfig

    if args.model:
        saved = json.loads((Path(args.model) / "config.json").read_text())["model"]
        return PinRecConfig.from_json(saved).feature_dim
    return model_config(args, vocab).feature_dim


def model_split(args, seqs, catalog):
    """--model on a lake whose models hold users out: evaluate on those held-out users (the
    gate's users: pinrec.core.contracts.held_out_users), never on users the model trained on."""
    import numpy as np

    from pinrec.core.layout import Lake, read_holdout_fraction
    from pinrec_model.offline import UnorderedSplit
    from jobs.gate_eval import eval_users

    fraction = None if args.events else read_holdout_fraction(Lake.at(args.lake))
    if not args.model or fraction is None:
        return None
    users = eval_users(seqs, catalog.type_ids, fraction, args.window, 5, 2000)
    print(f"evaluating on {len(users)} held-out users (share {fraction:.4g}, models/HOLDOUT)")
    return UnorderedSplit(np.setdiff1d(np.arange(len(seqs.user_ids)), users), users, args.window)


def _mean_std(runs: list[dict]) -> dict:
    import numpy as np

    out = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = np.array([r[k] for r in runs], dtype=float)
            out[k] = float(vals.mean())
            if len(runs) > 1:
                out[f"{k}_std"] = float(vals.std(ddof=1))
    return out


def eval_config(args, vocab, prep) -> dict:
    """The config report of what this evaluation trains (the same rules as `pinrec train`), or
    of the saved model (--model)."""
    from jobs.train import config_report, effective_config

    if args.model:
        return json.loads((Path(args.model) / "config.json").read_text())
    return config_report(*effective_config(args, vocab, prep))


def run(args) -> int:
    from jobs.train_data import prepare
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.config_groups import format_config

    vocab = PINTEREST_ACTIONS
    events, feats = load_events(args)
    # the catalog's attribute width comes from the model config (popularity has none): the saved
    # one for --model (a model trained with feature_dim=64 reads 64-wide vectors)
    prep = prepare(events, feats, vocab, None if args.variant == "pop" else model_feature_dim(args, vocab))
    if args.variant != "pop":  # what trains (or was trained), printed first; in the JSON too
        print(format_config(eval_config(args, vocab, prep)), flush=True)
    if args.print_config:
        return 0
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    t0 = time.perf_counter()
    if args.protocol == "loo":
        runs = [_loo_once(args, prep, vocab, s) for s in seeds]
    else:
        runs = [_unordered_once(args, prep, vocab, s) for s in seeds]
    result = {"protocol": args.protocol, "variant": args.variant, "preset": args.preset, "seeds": seeds,
              **_mean_std([r["metrics"] for r in runs]), "per_seed": [r["metrics"] for r in runs],
              "seconds": time.perf_counter() - t0}
    for extra in ("controllability", "tokens_per_step", "config"):
        if extra in runs[0]:
            result[extra] = runs[0][extra]
    if "tokens_per_step" in runs[0] and len(runs) > 1:  # Figure 5 over seeds: mean per k, and each seed's
        ks = runs[0]["tokens_per_step"]
        result["tokens_per_step"] = {k: _mean_std([r["tokens_per_step"][k] for r in runs]) for k in ks}
        result["tokens_per_step_per_seed"] = [r["tokens_per_step"] for r in runs]
    result["training"] = [r.get("history", []) for r in runs]
    if "diversity" not in result:
        result["diversity"] = float("nan")
    print_table(result)
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=float))
        try:
            from pinrec_model.plots import write_plots
        except ImportError as e:  # the GPU host may lack matplotlib; the JSON is the result
            print(f"no plots: {e}")
        else:
            for p in write_plots(result, out.with_suffix("")):
                print(f"plot: {p}")
    return 0


def _train(args, prep, vocab, seed, holdout, users=None, variant=None):
    from dataclasses import replace

    from jobs.train import config_report, effective_config, train_refit

    a = argparse.Namespace(**{**vars(args), "variant": variant or args.variant, "seed": seed})
    cfg, tc, rules = effective_config(a, vocab, prep)
    tc = replace(tc, seed=seed)
    return train_refit(prep, cfg, tc, holdout, users, args.val_users, refit=args.refit), \
        config_report(cfg, tc, rules)


def _load(args, prep):
    from pinrec_model.api import load_model
    from pinrec_model.training_loss import CatalogTensors

    m = load_model(args.model, args.device)
    return m.model, CatalogTensors(prep.catalog, m.device)


def _loo_once(args, prep, vocab, seed) -> dict:
    from pinrec_model.offline import loo_eval_model, loo_eval_popularity, loo_split
    from pinrec_model.training import resolve_device
    from pinrec_model.training_loss import CatalogTensors

    users, test_pos = loo_split(prep.seqs, prep.catalog)
    if args.variant == "pop":
        return {"metrics": loo_eval_popularity(prep.seqs, prep.catalog, users, test_pos)}
    if args.model:
        model, ct = _load(args, prep)
        history = []
    else:
        res, config = _train(args, prep, vocab, seed, holdout=2)  # --refit: then on the validation item too
        model, history = res.model, res.history
        ct = CatalogTensors(prep.catalog, resolve_device(args.device))
    # the test split is read once per reported run, and never by a sweep (--validation-only)
    m = {} if args.validation_only else loo_eval_model(model, ct, prep.seqs, users, test_pos, model.cfg.max_len)
    m["diversity"] = float("nan")
    if history:  # the epoch validation chose, and the validation figures it was chosen on
        best = max(history, key=lambda h: (h.get("val_ndcg@10", float("nan")), -h["epoch"]))
        m.update({"epochs_run": len(history), "best_epoch": best["epoch"],
                  "val_ndcg@10": best.get("val_ndcg@10"), "val_recall@10": best.get("val_recall@10")})
    return {"metrics": m, "history": history,
            "config": config if not args.model else eval_config(args, vocab, prep)}


def _item_table(model, ct):
    """Every catalog item embedded once -> (device table, numpy copy): retrieval scores against
    it, and generation looks history items up in it (as the scoring job does)."""
    import torch

    with torch.no_grad():
        table = ct.embed(model, torch.arange(len(ct.ids), device=ct.ids.device))
    return table, table.float().cpu().numpy()


def _unordered_once(args, prep, vocab, seed) -> dict:
    import numpy as np

    from pinrec_model.offline import (controllability_matrix, eval_targets, generate_for_users, history_rows,
                                      index_rows, target_conditions, unordered_scores, unordered_split,
                                      unordered_summary)
    from pinrec_model.training import resolve_device
    from pinrec_model.training_loss import CatalogTensors

    split = model_split(args, prep.seqs, prep.catalog) or unordered_split(prep.seqs, args.window, seed=0)
    hist, t_rows, t_acts = eval_targets(prep.seqs, prep.catalog, split)
    index = index_rows(prep.catalog, args.index_size)
    past = history_rows(hist)
    if args.variant == "pop":
        tr = prep.seqs.subset(split.train_users)
        counts = np.bincount(tr.rows[tr.rows >= 0], minlength=len(prep.catalog)).astype(float)
        top = index[np.argsort(-counts[index], kind="stable")[:10]]
        hits = [np.isin(t, top) for t in t_rows]
        rec = np.array([h.mean() if len(h) else np.nan for h in hits])
        return {"metrics": unordered_summary(rec, [top] * len(t_rows), t_rows, hits, past)}
    dev = resolve_device(args.device)
    if args.model:
        model, ct = _load(args, prep)
        history = []
    else:
        res, config = _train(args, prep, vocab, seed, holdout=1, users=split.train_users)
        model, history = res.model, res.history
        ct = CatalogTensors(prep.catalog, dev)
    item_table, item_emb = _item_table(model, ct)
    n_emb = 1 if args.variant == "pinnerformer" else args.num_embeddings
    k = model.cfg.tokens_per_step if model.cfg.offset_conditioned else 1
    cond = target_conditions(t_acts, n_emb)
    gen, secs = generate_for_users(model, ct, hist, cond, k, item_table=item_table)
    rec, hits, retrieved = unordered_scores(gen, item_emb, index, t_rows)
    out = {"metrics": {**unordered_summary(rec, retrieved, t_rows, hits, past), "latency_s": secs, "embeddings": n_emb,
                       "gen_tokens_per_step": k}, "history": history,
           "config": config if not args.model else eval_config(args, vocab, prep)}
    names = {i + 1: a for i, a in enumerate(vocab.engagement_actions)}
    if args.tokens_per_step:
        sweep = {}
        for kk in [int(x) for x in args.tokens_per_step.split(",")]:
            generate_for_users(model, ct, hist, cond, kk, item_table=item_table)  # warm-up: allocator, kernels
            # the median of several timed runs: one run on a shared GPU swung 2-4x between rounds
            runs_k = [generate_for_users(model, ct, hist, cond, kk, with_decode_time=True, item_table=item_table)
                      for _ in range(args.latency_repeats)]
            g = runs_k[0][0]
            s, s_dec = (float(np.median([x[i] for x in runs_k])) for i in (1, 2))
            r, h, ret = unordered_scores(g, item_emb, index, t_rows)
            sweep[str(kk)] = {"latency_s": s, "decode_latency_s": s_dec, **unordered_summary(r, ret, t_rows, h),
                              "embeddings": n_emb, "latency_runs": [x[1] for x in runs_k]}
        out["tokens_per_step"] = sweep
    if args.controllability:
        if not model.cfg.action_conditioned:
            raise ValueError("--controllability needs a conditioned variant: use --variant oc or mt_oc")
        uc_res, _ = _train(args, prep, vocab, seed, holdout=1, users=split.train_users, variant="uc")
        uc_table, uc_emb = _item_table(uc_res.model, ct)
        g_uc, _ = generate_for_users(uc_res.model, ct, hist, np.zeros_like(cond), 1, item_table=uc_table)
        _, hits_uc, ret_uc = unordered_scores(g_uc, uc_emb, index, t_rows)
        by_desired = {}
        present = sorted(set(np.concatenate(t_acts).tolist()) & set(names))
        for a in present:
            g_a, _ = generate_for_users(model, ct, hist, target_conditions(t_acts, n_emb, a), k, item_table=item_table)
            by_desired[a] = unordered_scores(g_a, item_emb, index, t_rows)[1]
        out["controllability"] = controllability_matrix(by_desired, hits_uc, t_acts, names)
        rec_uc = np.array([h.mean() if len(h) else np.nan for h in hits_uc])
        m, uc = out["metrics"], unordered_summary(rec_uc, ret_uc, t_rows, hits_uc, past)
        for sfx in ("", "_distinct", "_new"):
            m[f"uc_recall@10{sfx}"] = uc[f"recall@10{sfx}"]
            m[f"lift_over_uc{sfx}"] = m[f"recall@10{sfx}"] / m[f"uc_recall@10{sfx}"] - 1
    return out


def print_table(result: dict) -> None:
    keys = [k for k in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20",
                        "recall@10_excl_history", "ndcg@10_excl_history", "recall@10_distinct",
                        "recall@10_new", "diversity", "latency_s", "uc_recall@10", "lift_over_uc",
                        "uc_recall@10_distinct", "lift_over_uc_distinct", "uc_recall@10_new",
                        "lift_over_uc_new", "val_ndcg@10", "val_recall@10", "best_epoch", "epochs_run") if k in result]
    print(f"pinrec eval  protocol={result['protocol']}  variant={result['variant']}  seeds={result['seeds']}")
    for k in keys:
        std = result.get(f"{k}_std")
        print(f"  {k:<26} {result[k]:.4f}" + (f"  ± {std:.4f}" if std is not None else ""))
    if "controllability" in result:
        print("  controllability (lift of OC over UC; rows desired, columns actual):")
        for a, row in result["controllability"].items():
            print(f"    {a:<16} " + "  ".join(f"{b}={v:+.3f}" for b, v in row.items()))
    if "tokens_per_step" in result:
        print("  tokens/step  latency_s  recall@10  diversity")
        for k, v in result["tokens_per_step"].items():
            print(f"    {k:>6}   {v['latency_s']:.4f}    {v['recall@10']:.4f}    {v['diversity']:.4f}")


if __name__ == "__main__":  # `python -m jobs.evaluate ...` where the console script is absent
    import sys

    _p = argparse.ArgumentParser(prog="pinrec eval")
    configure(_p)
    sys.exit(run(_p.parse_args()))
