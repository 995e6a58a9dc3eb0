"""`pinrec bench quality`: the quality suite in one command (issue 15).

Every dataset of the suite, every variant, several seeds, with the DEFAULTS (the data rules of
pinrec_model/defaults.py; no other flag), leave-one-out with every item ranked. Beside them, in
the same run, the reference full-softmax SASRec (`--reference ../shared/tools/sasrec_reference.py`,
its DESIGN §5 settings), so each ratio PinRec / reference is measured side by side on the same
machine. Runs go out as concurrent processes (`--parallel`), each writing its own JSON; this
module only imports the data, launches, waits, and summarises: one JSON, a table, a bar plot.

    pinrec bench quality --device cuda --json bench/results/quality_h200.json \
        --reference ../shared/tools/sasrec_reference.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# dataset -> (importer source, path under --data-root)
SUITE = {"beauty": ("beauty", "amazon_beauty"), "sports": ("sports", "amazon_sports"),
         "toys": ("toys", "amazon_toys"), "yelp": ("yelp", "yelp"), "lastfm": ("lastfm", "lastfm"),
         "movielens100k": ("movielens100k", "movielens100k")}
BARRED = ("beauty", "sports", "toys", "yelp")  # the bars: >= 1.05 x reference on each
BASELINES = ("sasrec", "pinnerformer")  # variants of ours that are baselines, not PinRec
# The reference's own settings (DESIGN §5): what its published H200 figures were run with.
REFERENCE_ARGS = ["--max-len", "50", "--hidden", "128", "--heads", "2", "--dropout", "0.5"]
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@10_excl_history", "ndcg@10_excl_history")
REF_KEYS = {"recall@10": ("all", "HR@10"), "ndcg@10": ("all", "NDCG@10"), "recall@20": ("all", "HR@20"),
            "ndcg@20": ("all", "NDCG@20"), "recall@10_excl_history": ("excl", "HR@10"),
            "ndcg@10_excl_history": ("excl", "NDCG@10")}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", default=",".join(SUITE), help=f"comma list of {list(SUITE)}")
    p.add_argument("--variants", default="uc,sasrec,oc,mt_oc", help="PinRec variants to run")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default="../shared/data",
                   help="folder holding the datasets' folders (movielens100k: a folder with the recbole "
                        "wheel, or where to download it)")
    p.add_argument("--reference", help="path of sasrec_reference.py: run it beside, same seeds")
    p.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="runs at once (each is one process)")
    p.add_argument("--workdir", default="build/quality", help="imported data and per-run JSON/logs")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="override the rules' training budget (testing only: the published run uses none)")
    p.add_argument("--extra", default="", help="extra `pinrec eval` flags for every PinRec run (testing only)")
    p.add_argument("--from-runs", metavar="DIR",
                   help="launch nothing: summarise the per-run JSONs already in DIR (named "
                        "<dataset>_<variant>_s<seed>.json), e.g. a suite split over several device calls")
    p.add_argument("--json", help="write the summary here (a bar plot beside it)")


@dataclass(frozen=True)
class Run:
    name: str
    dataset: str
    variant: str  # a PinRec variant or "reference"
    seed: int
    argv: tuple[str, ...]
    out: Path


def import_dataset(name: str, data_root: Path, workdir: Path) -> dict:
    """Events + item features as Parquet (what `pinrec eval --events` reads), and the
    `user item item ...` text the reference reads; cached in workdir."""
    import pyarrow.parquet as pq

    from jobs import importers as im

    source, folder = SUITE[name]
    d = workdir / "data" / name
    files = {"events": d / "events.parquet", "item_features": d / "item_features.parquet",
             "text": d / "sequences.txt"}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    d.mkdir(parents=True, exist_ok=True)
    path = data_root / folder
    data = im.read_movielens100k(path) if source == "movielens100k" else im.read_s3rec(path, source=source)
    pq.write_table(data.events, files["events"])
    pq.write_table(data.item_features, files["item_features"])
    ev = data.events.select(["user_id", "item_id", "ts"]).to_pandas().sort_values(["user_id", "ts"], kind="stable")
    # the reference wants dense item ids from 1; order within a user is the events' order
    codes = {it: i + 1 for i, it in enumerate(sorted(ev["item_id"].unique()))}
    with files["text"].open("w") as f:
        for u, items in ev.groupby("user_id", sort=True)["item_id"]:
            f.write(f"{u} " + " ".join(str(codes[i]) for i in items) + "\n")
    return {k: str(v) for k, v in files.items()}


def plan_runs(args, files: dict[str, dict]) -> list[Run]:
    runs, wd = [], Path(args.workdir) / "runs"
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = args.extra.split() if args.extra else []
    budget = ["--max-seconds", str(args.max_seconds)] if args.max_seconds else []
    for ds, f in files.items():
        for v in args.variants.split(","):
            for s in seeds:
                out = wd / f"{ds}_{v}_s{s}.json"
                argv = (sys.executable, "-m", "jobs.evaluate", "--events", f["events"], "--item-features",
                        f["item_features"], "--protocol", "loo", "--variant", v, "--device", args.device,
                        "--seed", str(s), "--quiet", "--json", str(out), *budget, *extra)
                runs.append(Run(out.stem, ds, v, s, argv, out))
        if args.reference:
            for s in seeds:
                out = wd / f"{ds}_reference_s{s}.json"
                budget_ref = ["--max-seconds", str(args.max_seconds)] if args.max_seconds else []
                argv = (sys.executable, args.reference, "--data", "beauty", "--path", f["text"], *REFERENCE_ARGS,
                        "--seed", str(s), "--out", str(out), *budget_ref)
                runs.append(Run(out.stem, ds, "reference", s, argv, out))
    return runs


def launch(runs: list[Run], parallel: int) -> dict[str, dict]:
    """Run everything, `parallel` at a time (longest datasets first); -> name -> status."""
    from tqdm import tqdm

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    pending, active, status = list(runs), {}, {}
    with tqdm(total=len(runs), desc="quality runs", unit="run") as bar:
        while pending or active:
            while pending and len(active) < parallel:
                r = pending.pop(0)
                r.out.parent.mkdir(parents=True, exist_ok=True)
                log = r.out.with_suffix(".log").open("w")
                active[r.name] = (r, subprocess.Popen(r.argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                                  time.perf_counter(), log)
            time.sleep(1.0)
            for name, (r, proc, t0, log) in list(active.items()):
                if proc.poll() is None:
                    continue
                log.close()
                status[name] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
                del active[name]
                bar.update(1)
    return status


def read_result(r: Run) -> dict | None:
    if not r.out.exists():
        return None
    d = json.loads(r.out.read_text())
    if r.variant == "reference":
        m = {k: d["test"][a][b] for k, (a, b) in REF_KEYS.items()}
        return {**m, "epochs_run": d["epochs_run"], "best_epoch": d["best_epoch"], "seconds": d["total_wall_s"],
                "stopped": d["stopped"]}
    best = d.get("per_seed", [{}])[0]
    return {**{k: d[k] for k in METRICS if k in d}, "epochs_run": best.get("epochs_run"),
            "best_epoch": best.get("best_epoch"), "val_ndcg@10": best.get("val_ndcg@10"),
            "seconds": d["seconds"], "config": d.get("config")}


def summarise(runs: list[Run], status: dict) -> dict:
    """Per dataset and variant: mean, sd, min-max over seeds of each metric; ratios to the reference."""
    cells: dict[tuple[str, str], list[dict]] = {}
    failed = []
    for r in runs:
        res = read_result(r)
        if res is None or status.get(r.name, {}).get("rc", 1) != 0:
            failed.append({"run": r.name, **status.get(r.name, {})})
            continue
        cells.setdefault((r.dataset, r.variant), []).append({"seed": r.seed, **res})
    table = {}
    for (ds, v), rs in sorted(cells.items()):
        agg = {"seeds": [x["seed"] for x in rs], "per_seed": rs}
        for k in (*METRICS, "epochs_run", "seconds"):
            vals = np.array([x[k] for x in rs if x.get(k) is not None], dtype=float)
            if len(vals):
                agg[k] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                          "min": float(vals.min()), "max": float(vals.max())}
        if rs and rs[0].get("config"):
            agg["effective_config"] = rs[0]["config"]
        table.setdefault(ds, {})[v] = agg
    for ds, by_v in table.items():
        ref = by_v.get("reference")
        for v, agg in by_v.items():
            if ref and v != "reference":
                agg["ratio_to_reference"] = {k: agg[k]["mean"] / ref[k]["mean"]
                                             for k in ("recall@10", "ndcg@10") if k in agg and k in ref}
    return {"datasets": table, "failed": failed, "bars": bars(table)}


def bars(table: dict) -> dict:
    """The issue's bars: best PinRec variant >= 1.05 x reference on R@10 and N@10 per barred dataset,
    >= 1.10 x on average; PinRec-UC >= the project's SASRec variant everywhere."""
    out, ratios = {}, []
    for ds in BARRED:
        by_v = table.get(ds, {})
        # PinRec's variants only: the SASRec and PinnerFormer variants are the project's baselines
        cands = {v: a["ratio_to_reference"] for v, a in by_v.items()
                 if "ratio_to_reference" in a and v not in BASELINES}
        if not cands:
            continue
        best_v = max(cands, key=lambda v: min(cands[v].values()))
        r = cands[best_v]
        ratios.append(r)
        out[ds] = {"best_variant": best_v, **r, "met_1.05": all(x >= 1.05 for x in r.values())}
    if ratios:
        out["average"] = {k: float(np.mean([r[k] for r in ratios])) for k in ratios[0]}
        out["average"]["met_1.10"] = all(x >= 1.10 for x in out["average"].values() if isinstance(x, float))
    out["uc_vs_sasrec"] = {ds: {k: by_v["uc"][k]["mean"] >= by_v["sasrec"][k]["mean"] for k in ("recall@10", "ndcg@10")}
                           for ds, by_v in table.items() if "uc" in by_v and "sasrec" in by_v}
    return out


def print_table(summary: dict) -> None:
    print(f"{'dataset':<14}{'variant':<11}{'R@10':>16}{'N@10':>16}{'ratio R/N':>14}{'epochs':>8}{'s':>7}")
    for ds, by_v in summary["datasets"].items():
        for v, a in by_v.items():
            fmt = lambda k: f"{a[k]['mean']:.4f}±{a[k]['sd']:.4f}" if k in a else "-"
            rr = a.get("ratio_to_reference")
            ratio = f"{rr['recall@10']:.2f}/{rr['ndcg@10']:.2f}" if rr else "-"
            ep = f"{a['epochs_run']['mean']:.0f}" if "epochs_run" in a else "-"
            sec = f"{a['seconds']['mean']:.0f}" if "seconds" in a else "-"
            print(f"{ds:<14}{v:<11}{fmt('recall@10'):>16}{fmt('ndcg@10'):>16}{ratio:>14}{ep:>8}{sec:>7}")
    if summary["failed"]:
        print(f"failed runs: {summary['failed']}")


def plot(summary: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    dss = list(summary["datasets"])
    variants = sorted({v for by_v in summary["datasets"].values() for v in by_v})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, k in zip(axes, ("recall@10", "ndcg@10")):
        w = 0.8 / max(1, len(variants))
        for i, v in enumerate(variants):
            mean = [summary["datasets"][d].get(v, {}).get(k, {}).get("mean", np.nan) for d in dss]
            sd = [summary["datasets"][d].get(v, {}).get(k, {}).get("sd", 0.0) for d in dss]
            ax.bar(np.arange(len(dss)) + i * w, mean, w, yerr=sd, label=v, capsize=2)
        ax.set_xticks(np.arange(len(dss)) + 0.4 - w / 2, dss)
        ax.set_title(f"{k}, leave-one-out, every item ranked (mean ± sd over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def runs_in(folder: Path) -> list[Run]:
    """The runs whose JSONs lie in `folder` (<dataset>_<variant>_s<seed>.json), for --from-runs."""
    runs = []
    for out in sorted(folder.glob("*_s*.json")):
        head, _, seed = out.stem.rpartition("_s")
        ds = next((d for d in SUITE if head.startswith(d + "_")), None)
        if ds is None or not seed.isdigit():
            continue
        runs.append(Run(out.stem, ds, head[len(ds) + 1:], int(seed), (), out))
    if not runs:
        raise SystemExit(f"--from-runs {folder}: no <dataset>_<variant>_s<seed>.json files there")
    return runs


def run(args) -> int:
    from bench.cli import write_json

    t0 = time.perf_counter()
    if args.from_runs:
        runs = runs_in(Path(args.from_runs))
        status = {r.name: {"rc": 0} for r in runs}
    else:
        wd = Path(args.workdir)
        files = {d: import_dataset(d, Path(args.data_root), wd) for d in args.datasets.split(",")}
        runs = plan_runs(args, files)
        print(f"{len(runs)} runs, {args.parallel} at a time, work in {wd}")
        status = launch(runs, args.parallel)
    summary = summarise(runs, status)
    where = (f"the machine each run's log under {args.from_runs} names" if args.from_runs else machine())
    summary.update({"command": " ".join(sys.argv), "device": args.device, "seeds": args.seeds,
                    "wall_s": round(time.perf_counter() - t0, 1), "machine": where})
    print_table(summary)
    write_json(args.json, summary)
    if args.json:
        png = plot(summary, Path(args.json).with_suffix(".png"))
        if png:
            print(f"plot: {png}")
    return 0 if not summary["failed"] else 1


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} cores"
    except ImportError:
        pass
    return f"cpu, {os.cpu_count()} cores"
