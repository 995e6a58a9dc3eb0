"""`pinrec data import|synth`: load real or synthetic events into the lake's `events` table.

Import is all-or-nothing: the whole file is read and validated in memory first, so a bad file
writes nothing; then its `ds` partitions are replaced in one Delta commit, so importing the same
file twice leaves the table as one import leaves it.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, asdict
from pathlib import Path

from pinrec.core.cli_args import add_lake_arg
from pinrec.core.contracts import vocab

# Kept here, not in jobs.importers, so `pinrec --help` does not import pandas.
# beauty, sports, toys, yelp, lastfm: one format (S3-Rec), jobs.importers.S3REC_FILES
S3REC_SOURCES = ("beauty", "sports", "toys", "yelp", "lastfm")
SOURCES = (*S3REC_SOURCES, "trivago", "taobao", "movielens100k", "generic")


@dataclass(frozen=True)
class ImportConfig:
    source: str
    path: str
    lake: str
    vocab: str = "pinterest"
    start: str = "2026-01-01"  # first day for datasets that have positions, not timestamps


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_cmd", metavar="{import,synth}", required=True)
    imp = sub.add_parser("import", help="import a real dataset into the events table")
    imp.add_argument("source", choices=SOURCES)
    imp.add_argument("path", help="dataset folder or file (movielens100k: a cache folder for the "
                                  "recbole wheel, or the wheel itself)")
    imp.add_argument("--vocab", default="pinterest", help="action vocabulary (default: pinterest)")
    imp.add_argument("--start", default="2026-01-01",
                     help="first day for datasets without timestamps (positions become minutes)")
    add_lake_arg(imp)
    syn = sub.add_parser("synth", help="synthesise users, items and a year of events")
    syn.add_argument("--users", type=int, default=2_000)
    syn.add_argument("--days", type=int, default=60)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--items", type=int, default=5_000)
    syn.add_argument("--start", default="2026-01-01", help="first day, YYYY-MM-DD")
    syn.add_argument("--json", help="write {events, seconds, events_per_s} here")
    add_lake_arg(syn)


def run(args: argparse.Namespace) -> int:
    if args.data_cmd == "import":
        return run_import(ImportConfig(args.source, args.path, args.lake, args.vocab, args.start))
    from jobs.synth import SynthConfig

    cfg = SynthConfig(users=args.users, days=args.days, seed=args.seed, items=args.items,
                      start=args.start)
    stats = run_synth(cfg, args.lake)
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return 0


def read_source(cfg: ImportConfig):
    from jobs import importers as im

    v = vocab(cfg.vocab)
    path = Path(cfg.path)
    if cfg.source in S3REC_SOURCES:
        return im.read_s3rec(path, start=cfg.start, source=cfg.source)
    if cfg.source == "trivago":
        return im.read_trivago(path)
    if cfg.source == "taobao":
        return im.read_taobao(path)
    if cfg.source == "movielens100k":
        return im.read_movielens100k(path)
    return im.read_generic(path, v, start=cfg.start)


def run_import(cfg: ImportConfig) -> int:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    t0 = time.perf_counter()
    data = read_source(cfg)  # raises with a clear message before anything is written
    tables = DeltaRsTables(Lake.at(cfg.lake))
    days = data.events.column("ds").unique().to_pylist()
    tables.replace_partitions("events", data.events, days)
    if data.item_features.num_rows:
        tables.overwrite("item_features", data.item_features)
    n_users = len(data.events.column("user_id").unique())
    print(f"imported {data.events.num_rows:,} events of {n_users:,} users from {cfg.source} "
          f"({len(days)} days, {min(days)}..{max(days)}) into {tables.uri('events')} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


def run_synth(cfg, lake: str) -> dict:
    from tqdm import tqdm

    from pinrec.core.lake import DeltaRsTables
    from jobs.synth import build_world, generate, item_features
    from pinrec.core.layout import Lake

    tables = DeltaRsTables(Lake.at(lake))
    world = build_world(cfg)
    tables.overwrite("item_features", item_features(world))
    n_events, gen_s, t0 = 0, 0.0, time.perf_counter()
    it = generate(cfg, world)
    with tqdm(total=cfg.days, unit="day", desc="synth", disable=None) as bar:
        while True:
            g0 = time.perf_counter()
            try:
                ds, events = next(it)
            except StopIteration:
                break
            gen_s += time.perf_counter() - g0
            tables.replace_partitions("events", events, [ds])
            n_events += events.num_rows
            bar.update(1)
            bar.set_postfix(events=f"{n_events:,}")
    total_s = time.perf_counter() - t0
    stats = {"users": cfg.users, "days": cfg.days, "events": n_events,
             "generate_s": round(gen_s, 3), "total_s": round(total_s, 3),
             "generate_events_per_s": round(n_events / max(gen_s, 1e-9)),
             "events_per_s_with_delta_writes": round(n_events / max(total_s, 1e-9)),
             "config": asdict(cfg)}
    print(f"synthesised {n_events:,} events for {cfg.users:,} users over {cfg.days} days into "
          f"{tables.uri('events')}: generation {stats['generate_events_per_s']:,} events/s, "
          f"with Delta writes {stats['events_per_s_with_delta_writes']:,} events/s")
    return stats
