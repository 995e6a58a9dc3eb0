"""`pinrec train`: train a PinRec variant (or a baseline) from a lake into models/<version>.

Reads `sequences` for `--ds` (else the imported `events`), holds out each user's last engagement
for validation (early stopping), writes an immutable version and publishes it with --publish.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields

from jobs.train_data import (Prepared, items_table_features, prepare, read_training_data,
                             use_items_features)
from pinrec.core.cli_args import add_lake_arg

VARIANT_CHOICES = ("uc", "oc", "mt_oc", "sasrec", "pinnerformer")
EPOCH_CAP_HELP = "learning-rate schedule: >= 20 epochs and 2,000 steps, run to its end"


def configure(p: argparse.ArgumentParser) -> None:
    add_lake_arg(p)
    p.add_argument("--ds", help="train on the sequences partition of this day (falls back to events)")
    add_model_args(p)
    p.add_argument("--version", help="model version name (default: <variant>-<timestamp>)")
    p.add_argument("--publish", action="store_true", help="point models/CURRENT at the new version")
    p.add_argument("--warm-start-from", metavar="VERSION|current",
                   help="start from a saved version's weights (`current`: the serving model); "
                        "trains from scratch, with a note, when that version does not exist")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="share of users never trained on (the quality gate's held-out users; "
                        "default 2 %%, raised to reach 500 users). Fixed by the lake's first "
                        "training in models/HOLDOUT; ignored, with a note, once fixed")
    p.add_argument("--holdout-min-users", type=int, default=None,
                   help="raise the held-out share to reach this many users (default 500, capped at "
                        "half the users); 0 keeps --holdout-fraction as given (a small demo lake, "
                        "where 500 of 1,000 users would leave half the data untrained)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel training on N processes, one per GPU (DDP under torchrun; "
                        "NCCL on CUDA, gloo on CPU): --batch-size is per process, the global "
                        "batch is N times it, in-batch negatives come from all N")


def add_model_args(p: argparse.ArgumentParser, variants=VARIANT_CHOICES) -> None:
    p.add_argument("--variant", choices=variants, default="mt_oc")
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epoch cap (default: the data rules' {EPOCH_CAP_HELP}; without rules 20)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per step (default: the rules' 256; without rules 128)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step's regions (default: on for the paper "
                        "preset on CUDA, where it took the H100 from 19 to 44 %% MFU; off otherwise)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock cap on training (default: the data rules' budget; 0 = none)")
    p.add_argument("--full-softmax", action=argparse.BooleanOptionalAction, default=None,
                   help="full softmax over the catalogue, or (--no-full-softmax) sampled with logQ "
                        "(default: the data rules choose by catalogue size)")
    p.add_argument("--rules", choices=("data", "off"), default="data",
                   help="data: derive max_len, softmax, dropout, epochs, patience, warm-up and the time "
                        "budget from the data (pinrec_model/defaults.py, docs/model.md); off: the code "
                        "defaults alone. Explicit flags and --set win either way")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective model and training config for this data, grouped (item "
                        "tower, sequence model, head, objective, training), with each rule's reason, "
                        "and exit without training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PinRecConfig field, e.g. --set d_model=128 (repeatable)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--decay-embeddings", action="store_true", help="weight-decay the hashed-ID table too")
    p.add_argument("--patience", type=int, default=None,
                   help="early stopping: epochs without a better validation NDCG@10 (default: the rules'; 5)")
    p.add_argument("--val-users", type=int, default=5000, help="users in the validation recall")
    p.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default: the rules'; 100)")
    p.add_argument("--refit", action="store_true",
                   help="after early stopping picks the epoch count N, train again from scratch with the "
                        "held-out validation token as a training target too, for N epochs under the same "
                        "schedule, and keep that model (pinrec train: every token; pinrec eval loo: "
                        "everything before the test item). Beauty: +14 %% HR@10, see docs/model.md")
    p.add_argument("--quiet", action="store_true")


def model_config(args, vocab, rules=None):
    """The effective PinRecConfig: preset, then the data rules (`rules`, when given), then the
    variant's needs, then explicit flags and --set (the user always wins)."""
    from pinrec_model.config import preset

    over = {"variant": args.variant, "n_actions": len(vocab.actions)}
    if rules is not None:
        over.update(rules.model)
    if args.variant == "sasrec":
        # SASRec: ID embeddings only, next-item, full-softmax cross-entropy.
        over.update(use_features=False, full_softmax=True)
        if over.get("item_tower") == "id_mlp":  # the same tower without its feature MLP
            over["item_tower"] = "id"
    if getattr(args, "full_softmax", None) is not None:
        over["full_softmax"] = args.full_softmax
    over.update(parse_overrides(args.set))
    return preset(args.preset, **over)


def data_rules(args, prep):
    """The default rules for this data (None with --rules off)."""
    if getattr(args, "rules", "data") == "off":
        return None
    from pinrec_model.defaults import data_shape, default_rules

    return default_rules(data_shape(prep.seqs.lengths(), len(prep.catalog)), args.variant)


def effective_config(args, vocab, prep):
    """(model config, train config, rules) for this data: what trains, printed and saved."""
    rules = data_rules(args, prep)
    return model_config(args, vocab, rules), train_config(args, rules), rules


def config_report(cfg, tc, rules) -> dict:
    """The effective configuration as saved beside every model (config.json) and in every eval
    JSON: the flat PinRecConfig (loadable as is), the TrainConfig, and the rules with reasons."""
    return {"model": cfg.to_json(), "train": dict(tc.__dict__),
            "rules": rules.to_json() if rules is not None else None}


def parse_overrides(pairs) -> dict:
    """["KEY=VALUE", ...] -> PinRecConfig field overrides, each value cast to its field's type
    (`pinrec train --set`, and the DAG's `model_set` param through `pinrec gate params`)."""
    from pinrec_model.config import PinRecConfig

    types = {f.name: f.type for f in fields(PinRecConfig)}
    over = {}
    for kv in pairs:
        if "=" not in kv:
            raise ValueError(f"--set {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        if k not in types:
            raise ValueError(f"--set {k}: unknown config field; known: {sorted(types)}")
        t = types[k]
        try:
            over[k] = (v.lower() in ("1", "true", "yes")) if t in (bool, "bool") else \
                int(v) if t in (int, "int") else float(v) if t in (float, "float") else v
        except ValueError:
            raise ValueError(f"--set {k}={v}: {k} takes a{'n' if t in (int, 'int') else ''} "
                             f"{getattr(t, '__name__', t)}") from None
    return over


# Training defaults without data rules (--rules off, or before the data is read).
CODE_TRAIN_DEFAULTS = {"epochs": 20, "patience": 5, "warmup_steps": 100, "max_seconds": None, "batch_size": 128}


def train_config(args, rules=None):
    from pinrec_model.training import TrainConfig, resolve_device

    compile_ = args.compile
    if compile_ is None:  # compiling pays for itself on the paper size on a GPU, not on CPU
        compile_ = args.preset == "paper" and str(resolve_device(args.device)).startswith("cuda")
    base = {**CODE_TRAIN_DEFAULTS, **(rules.train if rules is not None else {})}
    given = {"epochs": args.epochs, "patience": args.patience, "warmup_steps": args.warmup,
             "max_seconds": args.max_seconds, "batch_size": args.batch_size}
    t = {k: (v if v is not None else base[k]) for k, v in given.items()}
    if t["max_seconds"] == 0:
        t["max_seconds"] = None
    return TrainConfig(lr=args.lr, seed=args.seed, device=args.device,
                       compile=compile_, weight_decay=args.weight_decay,
                       decay_embeddings=args.decay_embeddings, progress=not args.quiet, **t)


def holdout_validation(prep: Prepared, users, holdout: int, max_len: int, max_users: int = 2000):
    """A validation closure: next-item recall@10 and NDCG@10 of the token `holdout` from each user's end,
    from the tokens before it; users with a pin there, at most `max_users` (fixed sample).

    The histories are padded once here and moved to the model's device at the first call, so an
    epoch's validation is only the model's forward passes (no per-epoch host work or copies)."""
    import numpy as np
    import torch

    from pinrec_model.data import left_pad
    from pinrec_model.metrics import hit_rate, ndcg, padded_ranks

    s = prep.seqs
    lens = s.lengths()[users]
    ok = users[lens > holdout]
    tpos = s.offsets[ok] + s.lengths()[ok] - holdout
    pin = prep.catalog.type_ids[s.rows[tpos]] == 1
    ok, tpos = ok[pin], tpos[pin]
    ok, tpos = ok[:max_users], tpos[:max_users]
    host = {**left_pad(s.subset(ok, keep_last=np.full(len(ok), holdout)), max_len),
            "target_rows": s.rows[tpos], "target_actions": s.actions[tpos]}
    on_device: dict = {}

    def validate(model, ct):
        dev = ct.ids.device
        if on_device.get("device") != dev:  # once per run (per device)
            on_device.update({k: torch.as_tensor(v, device=dev) for k, v in host.items()}, device=dev)
        hist = {k: on_device[k] for k in ("rows", "actions", "surfaces", "ts_s")}
        # a GPU ranks 1,024 users against the catalogue at once; the CPU keeps the 256 it always used
        r = padded_ranks(model, ct, hist, on_device["target_rows"], on_device["target_actions"],
                         batch_size=1024 if dev.type == "cuda" else 256)
        return {"recall@10": hit_rate(r, 10), "ndcg@10": ndcg(r, 10)}

    return validate


def warm_start_state(lake, source: str | None, cfg, rules=None):
    """(version, state dict, config) to start from, or (None, None, cfg) to train from scratch.

    The data rules ran on the full-retrain day; a warm start keeps what they chose then (today's
    data may round to another max_len), so the fields the rules set come from the saved version.
    Any other difference is a real config change and is refused."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from pinrec.core.layout import current, gate_fallback, gate_refusal
    from pinrec_model.config import PinRecConfig

    if not source:
        return None, None, cfg
    vdir = current(lake, "models") if source == "current" else lake.version_dir("models", source)
    if vdir is not None and (refused := gate_refusal(lake, vdir.name)):  # it may be broken (NaN)
        vdir = gate_fallback(lake, vdir.name)  # what kept serving then, unless it saw later days
        print(f"warm start: {source!r} was refused by its gate ({refused}); from {vdir and vdir.name}")
    if vdir is None or not (vdir / "config.json").exists():  # the first day, a gap, no fallback
        print(f"warm start: no model {source!r} to continue from in {lake.root}; training from scratch")
        return None, None, cfg
    saved = PinRecConfig.from_json(json.loads((vdir / "config.json").read_text())["model"])
    if rules is not None:
        cfg = replace(cfg, **{k: getattr(saved, k) for k in rules.model})
    if saved != cfg:
        diff = {k: (getattr(saved, k), getattr(cfg, k)) for k in cfg.to_json()
                if getattr(saved, k) != getattr(cfg, k)}
        raise ValueError(f"--warm-start-from {source}: version {vdir.name} has another model config "
                         f"(saved vs requested: {diff}); retrain from scratch (drop the flag)")
    return vdir.name, load_file(str(vdir / "model.safetensors")), cfg


def trainable_users(lake, user_ids, requested: float | None = None, min_users: int | None = None):
    """(indices of the users a model may train on, the held-out record for metrics.json):
    every user but the lake's held-out ones (pinrec.core.contracts.held_out_users)."""
    import numpy as np

    from pinrec.core.contracts import HOLDOUT_FRACTION, held_out_users, holdout_fraction_for
    from pinrec.core.layout import fix_holdout_fraction, read_holdout_fraction

    fraction = read_holdout_fraction(lake)
    if fraction is None:
        share = requested or HOLDOUT_FRACTION
        fraction = fix_holdout_fraction(lake, holdout_fraction_for(len(user_ids), share) if min_users is None
                                        else holdout_fraction_for(len(user_ids), share, min_users))
    elif requested is not None and requested != fraction:
        print(f"held-out users: --holdout-fraction {requested} ignored; the lake's share is fixed "
              f"at {fraction} (models/HOLDOUT) so no user a model trained on is ever held out")
    held = held_out_users(user_ids, fraction)
    return np.flatnonzero(~held), {"fraction": fraction, "users": int(held.sum())}


def warm_start_keeps_holdout(lake, version: str | None, fraction: float) -> bool:
    """A warm start may only continue a model that held out the same users."""
    if version is None:
        return True
    metrics = json.loads((lake.version_dir("models", version) / "metrics.json").read_text())
    if (metrics.get("holdout") or {}).get("fraction") == fraction:
        return True
    print(f"warm start: version {version} did not hold out the lake's held-out users (share "
          f"{fraction}); training from scratch so that they stay unseen")
    return False


def train_on(prep: Prepared, cfg, tc, holdout: int, users=None, val_users: int = 5000,
             init_state=None, validate: bool = True):
    """Train on each user's tokens but the last `holdout`; validate on the token at -holdout
    (unless `validate` is False: a refit whose epoch count was chosen by an earlier run)."""
    import numpy as np

    from pinrec_model.data import make_examples
    from pinrec_model.training import fit, lookahead

    s = prep.seqs
    users = np.arange(len(s.user_ids)) if users is None else users
    train_seqs = s.subset(users, keep_last=np.full(len(users), holdout))
    ex = make_examples(train_seqs, cfg.max_len, lookahead(cfg))
    val = holdout_validation(prep, users, holdout, cfg.max_len, val_users) if holdout > 0 and validate else None
    return fit(cfg, tc, prep.catalog, ex, val, init_state=init_state)


def best_epoch(history: list[dict], metric: str = "ndcg@10") -> int:
    """The epoch whose validation `metric` the early-stopped run kept (first of equals)."""
    import numpy as np

    vals = np.array([h[f"val_{metric}"] for h in history], dtype=float)
    if np.isnan(vals).all():  # nothing validated: fit() kept the last epoch
        return len(history)
    return int(history[int(np.nanargmax(vals))]["epoch"])


def train_refit(prep: Prepared, cfg, tc, holdout: int, users=None, val_users: int = 5000,
                init_state=None, refit: bool = False):
    """train_on, then with `refit` once more from the same start on one more token per user (the
    validation token) for the epoch count validation chose, under the same learning-rate schedule.
    The refit model is returned; its history follows the first run's, marked "refit"."""
    from dataclasses import replace

    if refit and holdout < 1:
        raise ValueError("--refit needs a held-out validation token to choose the epoch count")
    res = train_on(prep, cfg, tc, holdout, users, val_users, init_state)
    if not refit:
        return res
    n = best_epoch(res.history, tc.select_metric)
    again = train_on(prep, cfg, replace(tc, stop_after=n), holdout - 1, users, val_users, init_state,
                     validate=False)
    again.history = [*res.history, *({**h, "refit": True} for h in again.history)]
    again.best_val, again.refit_epochs = res.best_val, n
    return again


def run(args) -> int:
    import sys

    from pinrec_model import distributed as D

    if args.print_config:  # nothing trains: no worker processes to start
        return run_rank(args, None)
    if D.launched_by_torchrun():
        return run_rank(args, D.init_process_group(D.rank_device(args.device, D.context_from_env())))
    if args.nproc > 1:
        # the same command as N torchrun workers: they see WORLD_SIZE and take the branch above
        return D.torchrun(args.nproc, sys.argv[1:])
    return run_rank(args, None)


def run_rank(args, ctx) -> int:
    """Train (one process, or one rank of `ctx`'s data-parallel job) and, on rank 0 only,
    write the model version once every rank has finished training."""
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec.core.layout import Lake, publish
    from pinrec_model.api import save_model
    from pinrec_model.config_groups import format_config

    main = ctx is None or ctx.is_main
    lake = Lake.at(args.lake)
    vocab = PINTEREST_ACTIONS
    version = args.version or f"{args.variant}-{time.strftime('%Y%m%dT%H%M%S')}-s{args.seed}"
    if lake.version_dir("models", version).exists() and not args.print_config:
        raise ValueError(f"model version {version!r} already exists under {lake.location}/models; "
                         f"versions are immutable: pass a new --version")
    events, feats = read_training_data(lake, args.ds)
    # serving needs items at the model's feature width, which no rule changes
    prep = prepare(events, feats, vocab, model_config(args, vocab).feature_dim)
    cfg, tc, rules = effective_config(args, vocab, prep)
    warm_from, init_state, cfg = warm_start_state(lake, args.warm_start_from, cfg, rules)
    report = config_report(cfg, tc, rules)
    if main:  # what trains, printed before it does (and saved in config.json beside the model)
        print(format_config(report), flush=True)
    if args.print_config:
        return 0
    items = items_table_features(lake, args.ds)
    if items is not None:
        n = use_items_features(prep.catalog, items, cfg.feature_dim)
        if main:
            print(f"features: {n:,} of {len(prep.catalog):,} catalog items from items@{args.ds}")
    elif args.ds and main:
        print(f"features: no items table for {args.ds}; query tokens are featurised without their "
              f"text (run `pinrec items --ds {args.ds}` first to train on what serving reads)")
    users, holdout = trainable_users(lake, prep.seqs.user_ids, getattr(args, "holdout_fraction", None),
                                     getattr(args, "holdout_min_users", None))
    print(f"held-out users: {holdout['users']:,} of {len(prep.seqs.user_ids):,} (share "
          f"{holdout['fraction']:.4g}) are not trained on")
    if not warm_start_keeps_holdout(lake, warm_from, holdout["fraction"]):
        warm_from, init_state = None, None
    t0 = time.perf_counter()
    res = train_refit(prep, cfg, tc, holdout=1, users=users, val_users=args.val_users,
                      init_state=init_state, refit=args.refit)
    if ctx is not None:
        import torch.distributed as dist

        dist.barrier()  # every rank finished training: only now does rank 0 write the version
        dist.destroy_process_group()
        if not main:
            return 0
    metrics = {f"val_{tc.select_metric}": res.best_val, "history": res.history, "warm_start_from": warm_from,
               "holdout": holdout,
               "refit_epochs": res.refit_epochs, "world_size": 1 if ctx is None else ctx.world_size,
               "train_seconds": time.perf_counter() - t0,
               "users": int(len(prep.seqs.user_ids)), "items": int(len(prep.catalog))}
    vdir = save_model(lake.version_dir("models", version), res.model, res.cms, vocab, metrics,
                      {**report, "ds": args.ds})
    lake.push_version("models", version)  # remote lake: upload once, immutable
    if args.publish:
        publish(lake, "models", version)
    print(json.dumps({"version": version, "path": str(vdir), f"val_{tc.select_metric}": res.best_val,
                      "published": bool(args.publish)}))
    return 0
