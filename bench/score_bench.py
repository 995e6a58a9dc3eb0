"""`pinrec bench score`: the scoring job end to end, and where its time goes.

Synthetic inputs of the job's shapes, no lake needed (the GPU machine has no deltalake):
a catalog of `--items` pins with feature vectors, a model of `--preset` (random weights:
speed does not depend on them) saved and loaded through `pinrec_model.api`, its Faiss index,
and `--users` histories of `--hist-len` tokens written as a sequences Parquet file. The timed
run is the job's own loop (`jobs.score.score_batches`): read batches -> histories -> prefill ->
multi-token decode -> compression/allocation -> Faiss retrieval -> candidate rows -> Parquet.
A second pass over a few batches times the phases separately (CUDA-synchronised) and gives
the prefill's achieved TFLOP/s as a share of the measured bf16 peak (741 TFLOP/s on the H100).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench.cli import write_json

H100_BF16_PEAK_TFLOPS = 741.0  # measured (DESIGN.md §4)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--preset", choices=("small", "paper"), default="paper")
    p.add_argument("--variant", default="mt_oc")
    p.add_argument("--hist-len", type=int, default=256)
    p.add_argument("--items", type=int, default=300_000, help="pins in the catalog / index")
    p.add_argument("--index", choices=("auto", "flat", "ivf_hnsw"), default="ivf_hnsw",
                   help="the Faiss index kind (with --retrieval faiss)")
    p.add_argument("--retrieval", choices=("auto", "faiss", "exact"), default="auto",
                   help="as `pinrec score --retrieval`: auto = exact on CUDA, Faiss on CPU")
    p.add_argument("--n", type=int, default=50, help="candidates per user and arm")
    p.add_argument("--arms", type=int, default=1, help="arms scored per user (the first of the default arms)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens-per-step", type=int)
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="eager prefill (as `pinrec score --no-compile`)")
    p.add_argument("--profile-batches", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sharded", action="store_true",
                   help="also time the path of `pinrec score --nproc N` as its one rank of one (users "
                        "hashed to shards and re-cut into full batches, rank-prefixed files), in "
                        "alternating runs with today's path on the same model")
    p.add_argument("--rounds", type=int, default=2, help="with --sharded: runs of each path")
    p.add_argument("--json", help="write the result here")


def synthetic_sequences(users: int, hist_len: int, n_items: int, seed: int):
    """[users] histories of exactly hist_len tokens, as the sequences file schema."""
    import pyarrow as pa

    from pinrec.core.contracts import PINTEREST_ACTIONS, SEQUENCES_SCHEMA, SURFACES

    rng = np.random.default_rng(seed)
    n = users * hist_len
    offsets = pa.array(np.arange(0, n + 1, hist_len, dtype=np.int32))
    lst = lambda values: pa.ListArray.from_arrays(offsets, values)
    acts = np.array(PINTEREST_ACTIONS.engagement_actions, dtype=object)
    ts = (1_767_225_600_000_000 + np.sort(rng.integers(0, 300 * 86_400_000_000, (users, hist_len)),
                                          axis=1)).ravel()
    cols = {
        "user_id": pa.array(np.arange(1, users + 1, dtype=np.int64)),
        "event_ids": lst(pa.array(np.full(n, "e", dtype=object), pa.string())),
        "item_ids": lst(pa.array(rng.integers(1, n_items + 1, n, dtype=np.int64))),
        "item_types": lst(pa.array(np.full(n, "pin", dtype=object), pa.string())),
        "actions": lst(pa.array(acts[rng.integers(0, len(acts), n)], pa.string())),
        "surfaces": lst(pa.array(np.array(SURFACES, dtype=object)[rng.integers(0, 3, n)], pa.string())),
        "ts": lst(pa.array(ts, pa.timestamp("us", tz="UTC"))),
        "length": pa.array(np.full(users, hist_len, dtype=np.int32)),
        "cutoff_ts": pa.array(np.full(users, ts.max() + 1), pa.timestamp("us", tz="UTC")),
    }
    schema = pa.schema([f for f in SEQUENCES_SCHEMA if f.name != "ds"])
    return pa.table([cols[n] for n in schema.names], schema=schema)


def prefill_flops(cfg, hist_len: int) -> float:
    """Forward FLOPs of one history's prefill: 2 x block params x T, plus causal attention
    (QK^T and AV over the lower triangle: 2 x T^2 x d per layer)."""
    d, f, L, T = cfg.d_model, cfg.d_ff, cfg.n_layers, hist_len
    block_params = L * (4 * d * d + 2 * d * f)
    return 2.0 * block_params * T + 2.0 * L * T * T * d


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_phases(m, tables_batches, features, retriever, budget, cfg, hist_len: int) -> dict:
    """Seconds per phase over the given batches, each phase synchronised."""
    import contextlib

    import torch

    from jobs.score_retrieval import histories_from_batch
    from pinrec_model.api import generate_candidates, history_tensors

    dev = str(m.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else contextlib.nullcontext()
    t = {"histories": 0.0, "tensors_and_item_tower": 0.0, "prefill": 0.0, "decode": 0.0,
         "generate_candidates_total": 0.0, "faiss_search_only": 0.0}
    users = 0
    with torch.no_grad(), amp:
        for batch in tables_batches:
            t0 = time.perf_counter()
            hs = histories_from_batch(batch)
            t1 = time.perf_counter()
            emb, types, acts, surf, ts, valid = history_tensors(m, hs, features, hist_len)
            _sync(dev)
            t2 = time.perf_counter()
            st = m.model.prefill(emb, types, acts, surf, ts, valid)
            _sync(dev)
            t3 = time.perf_counter()
            n_emb = m.config.num_embeddings
            cond = torch.ones(len(hs), n_emb, dtype=torch.long, device=dev)
            gen = m.model.generate(st, cond, cfg.tokens_per_step or m.config.tokens_per_step)
            _sync(dev)
            t4 = time.perf_counter()
            generate_candidates(m, hs, features, budget, cfg.n, retriever,
                                tokens_per_step=cfg.tokens_per_step)
            _sync(dev)
            t5 = time.perf_counter()
            q = gen.float().reshape(-1, gen.shape[-1]).cpu().numpy()
            retriever.search(q, int(np.ceil(cfg.n * 2.0)) + hist_len)
            t6 = time.perf_counter()
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                t[k] += v
            users += len(hs)
    return {k: v / users for k, v in t.items()} | {"users": users}


def profile_exact(m, tables_batches, features, index, arms, cfg, hist_len: int) -> dict:
    """Seconds per phase of the array path (jobs.score_retrieval.ExactRetrieval), each phase synchronised."""
    import contextlib

    import torch

    from jobs.score import candidate_rows
    from pinrec_model.api import generation_plan, uniform_plan
    from pinrec_model.batch_generation import ArmResult, arrow_history_arrays, device_history, search_depth, \
        select_candidates

    dev = str(m.device)
    bf16_weights = next(m.model.parameters()).dtype == torch.bfloat16
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") and not bf16_weights \
        else contextlib.nullcontext()
    names = ("arrow_to_grids", "to_device_and_item_emb", "prefill", "decode_and_head",
             "exact_search", "select", "to_host_and_rows")
    t = dict.fromkeys(names, 0.0)
    users, n_emb = 0, m.config.num_embeddings
    k = cfg.tokens_per_step or m.config.tokens_per_step
    with torch.no_grad(), amp:
        for batch in tables_batches:
            marks = [time.perf_counter()]
            lap = lambda: (_sync(dev), marks.append(time.perf_counter()))
            h = arrow_history_arrays(batch, list(m.vocab.actions), hist_len)
            lap()
            emb, types, acts, surf, ts, valid = device_history(m, h, index, features)
            exclude = torch.as_tensor(h.seen).to(dev)
            lap()
            st = m.model.prefill(emb, types, acts, surf, ts, valid, capacity=valid.shape[1] + n_emb)
            lap()
            for arm, budget in arms.items():
                order, groups = generation_plan(m, budget, cfg.n, n_emb)
                plan = uniform_plan(groups)
                quotas = [q for _, _, q in plan]
                gen = m.model.generate(st, torch.tensor(order, device=dev)[None].expand(len(h.user_ids), -1), k)
                lap()
                s, i = index.search(gen[:, [c for _, c, _ in plan]], search_depth(quotas, cfg.n, 2.0), exclude)
                lap()
                items, sc, entry = select_candidates(s, i, quotas, cfg.n)
                lap()
                res = ArmResult(items.cpu().numpy(), sc.cpu().numpy(), entry.cpu().numpy(), [p[0] for p in plan])
                candidate_rows(h.user_ids, res, arm, "{}", "bench", 0)
                lap()
            d = np.diff(marks)
            t[names[0]] += d[0]
            t[names[1]] += d[1]
            t[names[2]] += d[2]
            for j in range(len(arms)):
                for name, v in zip(names[3:], d[3 + 4 * j: 7 + 4 * j]):
                    t[name] += v
            users += len(h.user_ids)
    return {k: v / users for k, v in t.items()} | {"users": users}


def _say(msg: str) -> None:
    import sys

    print(f"[bench score {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    import torch

    from jobs.score import ScoreConfig, SpoolWriter, Timings, compile_prefill, inference_dtype, score_batches
    from jobs.score_retrieval import ExactRetrieval, FaissRetrieval
    from pinrec.core.budgets import DEFAULT_ARMS, Arms
    from pinrec.core.contracts import PINTEREST_ACTIONS
    from pinrec_model.api import ItemFeatures, embed_items, load_model, save_model
    from pinrec_model.config import preset
    from pinrec_model.model import PinRec
    from pinrec_model.retrieval import ExactIndex, Retriever

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="pinrec-bench-score-"))
    base = preset(args.preset)
    mcfg = preset(args.preset, variant=args.variant, max_len=args.hist_len,
                  max_positions=max(base.max_positions, args.hist_len + base.num_embeddings + 1))
    save_model(work / "model", PinRec(mcfg), None, PINTEREST_ACTIONS, {})
    job_cfg = ScoreConfig(ds="2026-01-01", lake="", device=args.device, compile=args.compile)
    m = load_model(work / "model", device=args.device, dtype=inference_dtype(job_cfg))
    compile_prefill(m, job_cfg)
    dev = str(m.device)
    _say(f"model {args.preset} loaded on {dev}")
    rng = np.random.default_rng(args.seed)
    ids = np.arange(1, args.items + 1, dtype=np.int64)
    feats = rng.normal(size=(args.items, mcfg.feature_dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    features = ItemFeatures.from_arrays(ids, feats)
    t0 = time.perf_counter()
    item_emb = embed_items(m, ids, ["pin"] * len(ids), feats)
    exact = args.retrieval == "exact" or (args.retrieval == "auto" and dev.startswith("cuda"))
    _say(f"{len(ids):,} items embedded; building the {'exact' if exact else args.index} index")
    retriever = ExactIndex(ids, item_emb, dev) if exact else Retriever.build(ids, item_emb, kind=args.index)
    retrieval = ExactRetrieval(m, features, retriever) if exact else FaissRetrieval(m, features, retriever)
    index_s = time.perf_counter() - t0
    _say(f"index built in {index_s:.1f} s")
    pq.write_table(synthetic_sequences(args.users, args.hist_len, args.items, args.seed),
                   work / "sequences.parquet")
    arms = Arms.parse(DEFAULT_ARMS, m.vocab.engagement_actions).head(args.arms)
    cfg = ScoreConfig(ds="2026-01-01", lake=str(work), n=args.n, batch_size=args.batch_size,
                      device=dev, tokens_per_step=args.tokens_per_step)
    dataset = pads.dataset(work / "sequences.parquet")

    def batches(limit=None):
        for i, b in enumerate(dataset.to_batches(batch_size=args.batch_size)):
            if limit is not None and i >= limit:
                return
            yield b

    _say(f"{args.users:,} synthetic histories written; warm-up batch")
    warm = SpoolWriter(work / "warm")  # CUDA context, kernels, allocator: not part of the rate
    for _ in score_batches(retrieval, batches(1), arms, cfg, "bench", warm, Timings()):
        pass
    warm.close()
    _say("timed run")
    spool, timings = SpoolWriter(work / "candidates"), Timings()
    t0 = time.perf_counter()
    for _ in score_batches(retrieval, batches(), arms, cfg, "bench", spool, timings):
        pass
    spool.close()
    _sync(dev)
    secs = time.perf_counter() - t0
    _say(f"timed run done in {secs:.1f} s; profiling phases")
    if exact:
        phases = profile_exact(m, batches(args.profile_batches), features, retriever, arms, cfg,
                               args.hist_len)
    else:
        phases = profile_phases(m, batches(args.profile_batches), features, retriever,
                                arms[next(iter(arms))], cfg, args.hist_len)
    flops = prefill_flops(mcfg, args.hist_len)
    prefill_tflops = flops / phases["prefill"] / 1e12
    out = {
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        "preset": args.preset, "variant": args.variant, "hist_len": args.hist_len,
        "users": timings.users, "arms": len(arms), "n": args.n, "items": args.items,
        "index": retriever.kind, "batch_size": args.batch_size, "bf16": dev.startswith("cuda"),
        "compiled_prefill": getattr(m.model, "compiled_encode", None) is not None,
        "seconds": round(secs, 3), "users_per_s": round(timings.users / secs, 1),
        "read_s": round(timings.read, 3), "generate_s": round(timings.generate, 3),
        "write_s": round(timings.write, 3), "candidate_rows": spool.rows,
        "index_build_s": round(index_s, 2),
        "per_user_us": {k: round(v * 1e6, 2) for k, v in phases.items() if k != "users"},
        "prefill_gflop_per_user": round(flops / 1e9, 2),
        "prefill_users_per_s": round(1.0 / phases["prefill"], 1),
        "prefill_tflops": round(prefill_tflops, 1),
        "prefill_share_of_peak": round(prefill_tflops / H100_BF16_PEAK_TFLOPS, 4),
        "gpu_hours_for_500M_users": round(500e6 / (timings.users / secs) / 3600, 1),
    }
    print(f"scoring {out['users']:,} users x {out['arms']} arm(s), {args.preset} preset, "
          f"{args.hist_len}-token histories, {out['device']}")
    print(f"{'end to end':28}{out['users_per_s']:>12,.1f} users/s")
    print(f"{'  read / generate / write':28}{timings.read:>8.2f}s {timings.generate:8.2f}s {timings.write:8.2f}s")
    for k, v in out["per_user_us"].items():
        print(f"{'  ' + k:28}{v:>12.2f} us/user")
    print(f"{'prefill':28}{out['prefill_users_per_s']:>12,.1f} users/s, {prefill_tflops:.1f} TFLOP/s "
          f"= {100 * out['prefill_share_of_peak']:.1f}% of {H100_BF16_PEAK_TFLOPS:.0f}")
    if args.sharded:
        out["sharded"] = compare_sharded(args, retrieval, batches, arms, cfg, work,
                                         first=(timings.users / secs, spool.rows))
        sh = out["sharded"]
        print(f"{'sharded, 1 rank of 1':28}{sh['median_users_per_s']['sharded_1_rank']:>12,.1f} users/s "
              f"(today's path {sh['median_users_per_s']['today']:,.1f}; ratio {sh['ratio']:.3f})")
    write_json(args.json, out)
    return 0


def compare_sharded(args, retrieval, batches, arms, cfg, work: Path, first) -> dict:
    """users/s of today's loop vs the sharded worker's loop (rank 0 of 1), alternating runs;
    `first`: (users/s, rows) of the timed run above, today's path's first run."""
    import statistics

    from jobs.score import SpoolWriter, Timings, score_batches
    from jobs.score_shards import Shard

    def timed(batch_iter, spool) -> tuple[float, int]:
        t = Timings()
        t0 = time.perf_counter()
        for _ in score_batches(retrieval, batch_iter, arms, cfg, "bench", spool, t):
            pass
        spool.close()
        _sync(str(retrieval.model.device))
        return t.users / (time.perf_counter() - t0), spool.rows

    runs: dict[str, list] = {"today": [first], "sharded_1_rank": []}
    for r in range(args.rounds):
        if r > 0:
            runs["today"].append(timed(batches(), SpoolWriter(work / f"today-{r}")))
        shard = Shard(0, 1, work / f"sharded-{r}")
        runs["sharded_1_rank"].append(timed(shard.batches(batches(), args.batch_size),
                                            SpoolWriter(shard.staging, shard.file_prefix)))
        _say(f"round {r + 1}: today {runs['today'][-1][0]:,.0f}, sharded {runs['sharded_1_rank'][-1][0]:,.0f} users/s")
    rows = {k: {n for _, n in v} for k, v in runs.items()}
    if len(rows["today"] | rows["sharded_1_rank"]) != 1:
        raise RuntimeError(f"the two paths wrote different row counts: {rows}")
    med = {k: statistics.median(u for u, _ in v) for k, v in runs.items()}
    return {"users_per_s": {k: [round(u, 1) for u, _ in v] for k, v in runs.items()},
            "median_users_per_s": {k: round(v, 1) for k, v in med.items()},
            "ratio": round(med["sharded_1_rank"] / med["today"], 4), "rows": rows["today"].pop()}
