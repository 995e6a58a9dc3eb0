"""`pinrec index --ds D`: embed every pin with the model's item tower, build a Faiss index,
check it against exact search, and publish it only if it is good enough.

read (items@ds, model version) -> pure (embed, build, measure recall) -> write:
the build goes to a temporary folder, becomes `index/<version>/` (immutable) by one rename,
and is published after that (a new release naming it: pinrec.core.layout). A build that fails or
whose recall@10 against exact inner-product search on a sample is below `--min-recall` (0.95) never
reaches either, so the previous index keeps serving. The version is named by ds and model
version, so a re-run of a day re-publishes the index it already built instead of rebuilding.

Only pins are indexed: candidates are pins; queries are history tokens, never recommended.
"""
from __future__ import annotations

import argparse
import json
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from pinrec.core.contracts import parse_ds
from pinrec.core.layout import Lake, current, index_version_name, publish


class IndexRejected(Exception):
    """The built index does not meet the recall bar; nothing was published."""


@dataclass(frozen=True)
class IndexConfig:
    ds: str
    lake: str
    model_version: str | None = None  # default: the published model
    kind: str = "auto"  # auto | flat | ivf_hnsw (Retriever.build)
    nprobe: int = 8
    min_recall: float = 0.95
    sample: int = 2000
    k: int = 10
    seed: int = 0
    device: str = "auto"
    # The daily DAG builds without publishing and lets the quality gate publish model and index
    # together: serving must never pair a new index with the old model's item tower.
    publish: bool = True

    def __post_init__(self):
        parse_ds(self.ds)


def resolve_model(lake: Lake, version: str | None):
    """(version name, folder) of the requested or the serving model, with a usable error."""
    if version is None:
        vdir = current(lake, "models")
        if vdir is None:
            raise ValueError(f"no --model-version given and {lake.location} has no published model; "
                             f"train one with `pinrec train --publish` or pass --model-version")
        return vdir.name, vdir
    vdir = lake.version_dir("models", version)
    if not (vdir / "config.json").exists():
        raise FileNotFoundError(f"model version {version!r} not found at {vdir}; "
                                f"train it with `pinrec train --version {version}`")
    return version, vdir


def recall_vs_exact(retriever, emb: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean |top-k(index) ∩ top-k(exact)| / k over the query sample (pure)."""
    k = min(k, len(ids))
    exact = np.argpartition(-(queries @ emb.T), k - 1, axis=1)[:, :k]
    exact_ids = ids[exact]
    _, got = retriever.search(queries, k)
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, exact_ids)]
    return float(np.mean(hits)) / k


def sample_queries(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries that look like the model's outputs: item embeddings plus noise, renormalised."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(emb), size=min(n, len(emb)), replace=False)
    q = emb[pick] + 0.5 * rng.normal(size=(len(pick), emb.shape[1])).astype(np.float32) / np.sqrt(emb.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


index_version = index_version_name  # the name lives in the layout, beside the model's


def run_job(cfg: IndexConfig) -> dict:
    """Build, check and publish; returns the build report. Raises IndexRejected below the bar."""
    import pyarrow.compute as pc

    from pinrec.core.lake import DeltaRsTables
    from pinrec_model.api import ItemFeatures, embed_items, load_model
    from pinrec_model.retrieval import Retriever

    lake = Lake.at(cfg.lake)
    model_version, mdir = resolve_model(lake, cfg.model_version)
    version = index_version(cfg.ds, model_version)
    vdir = lake.version_dir("index", version)
    if (vdir / "meta.json").exists():  # a re-run of the day: same inputs, same index
        if cfg.publish:
            publish(lake, "index", version)
        return json.loads((vdir / "build.json").read_text()) | {"reused": True}

    tables = DeltaRsTables(lake)
    items = tables.read("items", [cfg.ds], filter=pc.field("item_type") == "pin")
    if items.num_rows == 0:
        raise ValueError(f"no pins in items@{cfg.ds}; run `pinrec items --ds {cfg.ds}` first")
    items = items.sort_by("item_id")
    ids = np.array(items.column("item_id").to_numpy())  # writable: torch wraps it
    m = load_model(mdir, device=cfg.device)
    emb = embed_items(m, ids, ["pin"] * len(ids), ItemFeatures.from_table(items, m.config.feature_dim).lookup(ids))
    retriever = Retriever.build(ids, emb, kind=cfg.kind, nprobe=cfg.nprobe)
    recall = recall_vs_exact(retriever, emb, ids, sample_queries(emb, cfg.sample, cfg.seed), cfg.k)
    report = {"version": version, "ds": cfg.ds, "model_version": model_version,
              "kind": retriever.kind, "items": int(len(ids)), "dim": int(emb.shape[1]),
              f"recall@{cfg.k}_vs_exact": round(recall, 4), "min_recall": cfg.min_recall,
              "sample": int(min(cfg.sample, len(ids)))}
    if recall < cfg.min_recall:
        _record(lake, cfg.ds, report | {"published": False})
        serving = current(lake, "index")
        raise IndexRejected(
            f"index for ds={cfg.ds} has recall@{cfg.k} {recall:.4f} against exact search, below "
            f"{cfg.min_recall}; not published, the serving index is still "
            f"{serving.name if serving else None!r}. Raise --nprobe or use --kind flat")
    tmp = lake.artifacts("index") / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        retriever.save(tmp)
        (tmp / "build.json").write_text(json.dumps(report, indent=2) + "\n")
        tmp.rename(vdir)  # the version appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lake.push_version("index", version)  # remote lake: upload once, immutable
    if cfg.publish:
        publish(lake, "index", version)
    _record(lake, cfg.ds, report | {"published": cfg.publish})
    return report


def _record(lake: Lake, ds: str, report: dict) -> None:
    out = lake.runs / "index" / f"{ds}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_ds_arg, add_lake_arg

    add_lake_arg(p)
    add_ds_arg(p)
    d = IndexConfig(ds="2000-01-01", lake="")
    p.add_argument("--model-version", help="model version to embed with (default: the published one)")
    p.add_argument("--kind", choices=("auto", "flat", "ivf_hnsw"), default=d.kind,
                   help="flat (exact) for small catalogs, IVF-HNSW for large; auto picks by size")
    p.add_argument("--nprobe", type=int, default=d.nprobe)
    p.add_argument("--min-recall", type=float, default=d.min_recall,
                   help="publish only if recall@10 against exact search is at least this")
    p.add_argument("--sample", type=int, default=d.sample, help="queries in the recall check")
    p.add_argument("--device", default=d.device, help="cpu | cuda | auto")
    p.add_argument("--no-publish", dest="publish", action="store_false",
                   help="build and check the version but do not publish it "
                        "(the quality gate publishes it with its model)")


def run(args: argparse.Namespace) -> int:
    cfg = IndexConfig(ds=args.ds, lake=args.lake, model_version=args.model_version, kind=args.kind,
                      nprobe=args.nprobe, min_recall=args.min_recall, sample=args.sample,
                      device=args.device, publish=args.publish)
    try:
        report = run_job(cfg)
    except IndexRejected as e:
        print(f"pinrec index: REJECTED: {e}")
        return 1
    print(json.dumps(report))
    return 0
