"""`pinrec bench <name>`: a thin dispatcher over the benchmark modules.

Each benchmark lives in `bench/<module>.py` and exposes `configure(parser)` and `run(args) -> int`,
like the job modules; it prints a table and writes JSON with `--json`. To add one, write the
module and add one line to BENCHES. Modules are imported only when listed here and found, so a
missing one shows "not implemented yet" instead of breaking `pinrec bench --help`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

# name -> (module, one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "synth": ("bench.synth_bench", "synthetic event generation rate and peak memory"),
    "sequences": ("bench.sequences_bench", "sequences job: full 365-day rebuild vs incremental update"),
    "score": ("bench.score_bench", "scoring job end to end: users/s, prefill share of peak"),
    "train": ("bench.train_bench", "training throughput and share of peak"),
    "prefill": ("bench.prefill_bench", "GPU prefill vs HF GPT-2 of the same size"),
    "multitoken": ("bench.multitoken_bench", "multi-token generation speed-up"),
    "stream": ("bench.stream_bench", "speed layer: consumer events/s, produce->readable p99, DLQ corpus"),
    "crash": ("bench.crash_bench", "speed layer: kill -9 the consumer mid-stream, check exactly-once"),
    "serve": ("bench.serve_bench", "serving: p99 per request, precomputed and with CPU regeneration"),
    "model": ("bench.model_bench", "H100: paper-preset training MFU and prefill vs HF GPT-2 (side by side)"),
    "quality": ("bench.quality_bench", "offline quality bars (Beauty, multi-action)"),
}


def write_json(path: str | None, result: dict) -> None:
    """Every benchmark's `--json PATH`: the result dict, pretty-printed, folders created."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def _not_implemented(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"pinrec bench {name}: not implemented yet", file=sys.stderr)
        return 3

    return run


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (module, help_) in BENCHES.items():
        bp = sub.add_parser(name, help=help_, description=help_)
        if importlib.util.find_spec(module) is None:
            bp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            bp.set_defaults(_bench_run=_not_implemented(name))
            continue
        mod = importlib.import_module(module)
        mod.configure(bp)
        bp.set_defaults(_bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
