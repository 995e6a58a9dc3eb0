"""`pinrec bench model`: GPU bars for the `paper` preset (12 layers, 768 hidden, 12 heads).

1. Training: tokens/s and model FLOPs utilisation of real training steps (sampled softmax,
   bf16 autocast, compiled blocks) on synthetic sequences; FLOPs per step are counted by
   torch's FlopCounterMode on one eager step, MFU = FLOPs/s / peak (741 TFLOP/s measured bf16).
2. Prefill of 256-token histories, side by side in the same process: PinRec (compiled) vs
   HuggingFace GPT2Model of the same size, eager and compiled, users/s and share of peak.
Prints a table and writes JSON (--json). Needs CUDA for meaningful numbers (runs on CPU tiny).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=741.0, help="measured bf16 matmul peak")
    p.add_argument("--train-batch", default="256", help="batch size(s), comma-separated")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--variant", default="mt_oc")
    p.add_argument("--prefill-batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-prefill", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--dropout", type=float, help="override the preset's dropout (default: the preset's)")
    p.add_argument("--tf32", action="store_true", help="TF32 for fp32 matmuls (pinrec train: off)")
    p.add_argument("--sdpa", choices=["flash", "cudnn", "efficient"], help="experiment: one attention backend")
    p.add_argument("--profile", help="path prefix: torch.profiler tables of 3 training steps per batch size")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke run)")
    p.add_argument("--ddp", action="store_true",
                   help="also time the step under DDP with world size 1 (NCCL on CUDA, gloo on CPU; "
                        "the in-batch negatives go through the cross-rank gather), in alternating "
                        "blocks with the plain step on the same model: the cost of the data-parallel path")
    p.add_argument("--ddp-rounds", type=int, default=3, help="alternating plain/DDP blocks of --train-steps")
    p.add_argument("--ddp-only", action="store_true", help="with --ddp: skip the MFU run, time plain vs DDP only")
    p.add_argument("--json", dest="json_out")


def _sync(dev):
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _cfg(args):
    from pinrec_model.config import preset

    over = dict(variant=args.variant, max_len=args.seq)
    if args.dropout is not None:
        over["dropout"] = args.dropout
    if args.tiny:
        over.update(d_model=64, n_layers=2, n_heads=2, d_ff=256, emb_dim=32, id_dim=32, id_buckets=4096)
    return preset("paper", **over)


def _synthetic(args, cfg, dev):
    import numpy as np

    from pinrec_model.data import Catalog
    from pinrec_model.training_loss import CatalogTensors

    rng = np.random.default_rng(0)
    n = args.items
    cat = Catalog(np.arange(1, n + 1, dtype=np.int64), np.ones(n, np.int64),
                  rng.normal(size=(n, cfg.feature_dim)).astype(np.float32))
    return cat, CatalogTensors(cat, dev)


def _train_setup(args, cfg, dev, B: int):
    import torch

    from pinrec_model.losses import CountMinSketch
    from pinrec_model.model import PinRec
    from pinrec_model.training import TrainConfig, lookahead, make_optimizer

    cat, ct = _synthetic(args, cfg, dev)
    L, E = cfg.max_len, lookahead(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {"rows": torch.randint(0, len(cat), (B, L + E), generator=g).to(dev),
             "actions": torch.randint(1, 6, (B, L + E), generator=g).to(dev),
             "surfaces": torch.randint(1, 4, (B, L + E), generator=g).to(dev),
             "ts_s": (1_767_225_600 + torch.arange(L + E)[None].repeat(B, 1) * 60).to(dev)}
    # The step `pinrec train` runs (training.train_step): same optimizer, clipping, autocast and
    # compiled regions; only the data is synthetic and already on the device.
    tc = TrainConfig(batch_size=B, lr=1e-4, device=dev, compile=dev.startswith("cuda"), progress=False)
    model = PinRec(cfg).to(dev)
    cms = CountMinSketch(cfg.cms_width, cfg.cms_depth).to(dev)
    opt = make_optimizer(model, tc, dev)
    return cat, ct, L, g, batch, tc, model, cms, opt


def bench_train(args, cfg, dev, B: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pinrec_model.training import train_step

    cat, ct, L, g, batch, tc, model, cms, opt = _train_setup(args, cfg, dev, B)

    def step(t=tc):
        with _sdpa(args.sdpa):
            return train_step(model, cms, ct, opt, batch, g, L, tc.lr, t)

    with FlopCounterMode(display=False) as fc:
        step(replace(tc, compile=False))  # eager: FlopCounterMode sees every matmul
    flops = fc.get_total_flops()
    # Attention share of the count: FlopCounterMode (like PaLM's MFU formula) counts the full
    # T x T score matrix though causal attention needs half of it; reported alongside.
    sdpa = sum(v for k, v in fc.get_flop_counts().get("Global", {}).items() if "attention" in str(k))
    for _ in range(3):
        step()  # compile + warm-up
    _sync(dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / args.train_steps
    out = {"variant": cfg.variant, "batch": B, "seq": L, "dropout": cfg.dropout, "step_s": dt,
           "tokens_per_s": B * L / dt, "flops_per_step": flops, "tflops": flops / dt / 1e12,
           "mfu": flops / dt / 1e12 / args.peak_tflops, "sdpa_flops_per_step": sdpa,
           "mfu_causal_half": (flops - sdpa / 2) / dt / 1e12 / args.peak_tflops, "loss": float(step()),
           "transformer_params": sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))}
    if dev.startswith("cuda"):
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.profile:
        out["profile"] = _profile(step, dev, f"{args.profile}.b{B}.txt")
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def bench_ddp_overhead(args, cfg, dev, B: int) -> dict:
    """Seconds per training step, plain vs DDP with world size 1, on one model and batch, in
    alternating blocks of --train-steps (drift on a shared machine hits both alike)."""
    import statistics

    import torch
    import torch.distributed as dist

    from pinrec_model.distributed import BatchPart
    from pinrec_model.training import data_parallel, train_step

    cuda = dev.startswith("cuda")
    if cuda:
        dev = f"cuda:{torch.device(dev).index or 0}"  # one rank, one device: name its index
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                                rank=0, world_size=1, device_id=torch.device(dev) if cuda else None)
    cat, ct, L, g, batch, tc, model, cms, opt = _train_setup(args, cfg, dev, B)
    ddp = data_parallel(model, cms, ct, L, tc, dev)
    plain = lambda: train_step(model, cms, ct, opt, batch, g, L, tc.lr, tc)
    parallel = lambda: train_step(model, cms, ct, opt, batch, g, L, tc.lr, tc, ddp, BatchPart(0, B))

    def block(fn) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            fn()
        _sync(dev)
        return (time.perf_counter() - t0) / args.train_steps

    for fn in (plain, parallel):
        for _ in range(3):
            fn()  # compile + warm-up of each path
    times = {"plain": [], "ddp_ws1": []}
    for _ in range(args.ddp_rounds):
        times["plain"].append(block(plain))
        times["ddp_ws1"].append(block(parallel))
    med = {k: statistics.median(v) for k, v in times.items()}  # the group stays for the next batch size
    return {"batch": B, "seq": L, "steps_per_block": args.train_steps, "step_s": times,
            "median_step_s": med, "tokens_per_s": {k: B * L / v for k, v in med.items()},
            "ddp_ws1_cost": med["ddp_ws1"] / med["plain"] - 1.0}


def _sdpa(name: str | None):
    """An experiment: pin scaled_dot_product_attention to one backend (default: torch's choice,
    which is what pinrec train uses)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not name:
        return contextlib.nullcontext()
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[name])


def _profile(step, dev, path: str, n: int = 3) -> dict:
    """torch.profiler over n steps: kernel table to `path`, and how busy the GPU was."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
    _sync(dev)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        _sync(dev)
        wall = (time.perf_counter() - t0) / n
    ka = prof.key_averages()
    from torch.autograd import DeviceType

    # kernels only (an aten op's row repeats its kernels' time)
    kernel_s = sum(e.self_device_time_total for e in ka if e.device_type == DeviceType.CUDA) / 1e6 / n
    with open(path, "w") as f:
        f.write(f"wall per step {wall * 1e3:.2f} ms, device time per step {kernel_s * 1e3:.2f} ms\n")
        f.write(ka.table(sort_by="self_device_time_total" if dev.startswith("cuda") else "self_cpu_time_total",
                         row_limit=60, max_name_column_width=70))
        f.write(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
    return {"wall_ms": wall * 1e3, "device_busy_ms": kernel_s * 1e3, "table": path}


def bench_prefill(args, cfg, dev) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pinrec_model.blocks import time_features
    from pinrec_model.model import PinRec

    B, T = args.prefill_batch, args.seq
    model = PinRec(cfg).to(dev).eval().to(torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    dtype = model.in_proj.weight.dtype
    g = torch.Generator().manual_seed(0)
    # The item tower runs separately (its own service in the paper, 4.4.2): histories arrive as
    # item embeddings, like HF's inputs_embeds.
    emb = torch.nn.functional.normalize(torch.randn(B, T, cfg.emb_dim, generator=g), dim=-1).to(dev, dtype)
    ints = {k: torch.randint(1, 4, (B, T), generator=g).to(dev) for k in ("acts", "surf")}
    ints["types"] = torch.ones(B, T, dtype=torch.long, device=dev)
    ts = (1_767_225_600 + torch.arange(T)[None].repeat(B, 1) * 60).to(dev)
    valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    pos = torch.arange(T, device=dev)[None].expand(B, T)
    acts = torch.full((B,), 1, device=dev)

    def ours(emb):
        x = model.input_tokens(emb, ints["types"], ints["acts"], ints["surf"],
                               time_features(ts, valid, ts[:, -1]).to(dtype), pos)
        h, _ = model.encode(x, None)  # full histories: no padding mask, flash attention
        return model.output(h[:, -1], acts, torch.ones_like(acts))

    results = {}

    def timeit(name, fn, x, n=20):
        with torch.no_grad():
            for _ in range(3):
                fn(x)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(n):
                fn(x)
            _sync(dev)
        dt = (time.perf_counter() - t0) / n
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            (fn._torchdynamo_orig_callable if hasattr(fn, "_torchdynamo_orig_callable") else fn)(x)
        fl = fc.get_total_flops()
        results[name] = {"users_per_s": B / dt, "batch_s": dt, "gflop_per_user": fl / B / 1e9,
                         "share_of_peak": fl / dt / 1e12 / args.peak_tflops}

    timeit("pinrec_eager", ours, emb)
    timeit("pinrec_compiled", torch.compile(ours), emb)
    if not args.skip_hf:
        from transformers import GPT2Config, GPT2Model

        hf = GPT2Model(GPT2Config(n_layer=cfg.n_layers, n_embd=cfg.d_model, n_head=cfg.n_heads,
                                  n_positions=cfg.max_positions, attn_pdrop=0, resid_pdrop=0, embd_pdrop=0))
        hf = hf.to(dev).eval().to(dtype)
        x = torch.randn(B, T, cfg.d_model, generator=g).to(dev, dtype)
        hf_fn = lambda x: hf(inputs_embeds=x).last_hidden_state[:, -1]
        timeit("hf_gpt2_eager", hf_fn, x)
        timeit("hf_gpt2_compiled", torch.compile(hf_fn), x)
    return results


def _report_ddp(args, cfg, dev, B: int, out: dict) -> None:
    import torch

    d = bench_ddp_overhead(args, cfg, dev, B)
    out.setdefault("ddp_ws1", []).append(d)
    print(f"DDP world size 1, batch {B} x {d['seq']}: {1e3 * d['median_step_s']['ddp_ws1']:.1f} ms/step vs "
          f"plain {1e3 * d['median_step_s']['plain']:.1f} ms (cost {100 * d['ddp_ws1_cost']:+.1f} %; "
          f"blocks {d['step_s']})", flush=True)
    torch._dynamo.reset()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()


def run(args) -> int:
    import torch

    dev = args.device if (args.device != "cuda" or torch.cuda.is_available()) else "cpu"
    # pinrec train leaves fp32 matmuls (the loss's logits) at full fp32; --tf32 shows the cost.
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    cfg = _cfg(args)
    out = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
           "peak_tflops": args.peak_tflops, "preset": "tiny" if args.tiny else "paper"}
    if not args.skip_train:
        out["train"] = []
        for B in (int(b) for b in str(args.train_batch).split(",")):
            if args.ddp and args.ddp_only:
                _report_ddp(args, cfg, dev, B, out)
                continue
            t = bench_train(args, cfg, dev, B)
            out["train"].append(t)
            print(f"train {t['variant']} batch {B} x {t['seq']}: {t['tokens_per_s']:,.0f} tokens/s, "
                  f"{t['tflops']:.0f} TFLOP/s, MFU {100 * t['mfu']:.1f}% of {args.peak_tflops:.0f} "
                  f"({t['flops_per_step'] / 1e12:.2f} TFLOP/step, {1e3 * t['step_s']:.1f} ms/step"
                  + (f", GPU busy {t['profile']['device_busy_ms']:.1f} of {t['profile']['wall_ms']:.1f} ms"
                     if "profile" in t else "") + ")", flush=True)
            torch._dynamo.reset()  # the next batch size compiles its own static graphs
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
            if args.ddp:
                _report_ddp(args, cfg, dev, B, out)
    if not args.skip_prefill:
        out["prefill"] = bench_prefill(args, cfg, dev)
        print(f"prefill {args.prefill_batch} x {args.seq} tokens:")
        for k, v in out["prefill"].items():
            print(f"  {k:<18} {v['users_per_s']:>10,.0f} users/s  {v['gflop_per_user']:.1f} GFLOP/user  "
                  f"{100 * v['share_of_peak']:.1f}% of peak")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return 0
