"""`pinrec demo`: the main job end to end on the embedded default, then where to look.

Runs every stage that exists, in pipeline order, on a local lake folder; stages are plain
`pinrec` sub-commands, the same entry points Airflow calls.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from pinrec.cli import add_lake_arg

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class DemoConfig:
    lake: str
    users: int = 2_000
    days: int = 60
    seed: int = 0


def configure(p: argparse.ArgumentParser) -> None:
    add_lake_arg(p)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(args.lake, args.users, args.days, args.seed)
    from pinrec.cli import main as pinrec

    steps = [["data", "synth", "--users", str(cfg.users), "--days", str(cfg.days),
              "--seed", str(cfg.seed), "--lake", cfg.lake]]
    timings = []
    for step in steps:
        t0 = time.perf_counter()
        rc = pinrec(step)
        timings.append((" ".join(step[:2]), time.perf_counter() - t0))
        if rc != 0:
            print(f"demo: step `pinrec {' '.join(step)}` failed with exit code {rc}")
            return rc
    root = Path(cfg.lake).resolve()
    print("\nDemo finished. Step timings:")
    for name, s in timings:
        print(f"  {name:<20} {s:7.1f}s")
    print(f"\nResults: the lake is at {root}")
    print(f"  events table:  {root / 'tables' / 'events'}")
    print(f"  query it:      .venv/bin/pinrec sql \"SELECT ds, count(*) FROM events GROUP BY ds\" "
          f"--lake {root}")
    return 0
