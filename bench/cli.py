"""`pinrec bench <name>`: a thin dispatcher over the benchmark modules.

Each benchmark lives in `bench/<module>.py` and exposes `configure(parser)` and `run(args) -> int`,
like the job modules; it prints a table and writes JSON with `--json`. To add one, write the
module and add one line to BENCHES. Quality bars and the tokens-per-step sweep are `pinrec eval`
options (docs/model.md); `model` measures training MFU and prefill on the GPU.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# name -> (module, one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "synth": ("bench.synth_bench", "synthetic event generation rate and peak memory"),
    "sequences": ("bench.sequences_bench", "sequences job: full 365-day rebuild vs incremental update"),
    "score": ("bench.score_bench", "scoring job end to end: users/s, prefill share of peak"),
    "stream": ("bench.stream_bench", "speed layer: consumer events/s, produce->readable p99, DLQ corpus"),
    "crash": ("bench.crash_bench", "speed layer: kill -9 the consumer mid-stream, check exactly-once"),
    "serve": ("bench.serve_bench", "serving: p99 per request, precomputed and with CPU regeneration"),
    "served-land": ("bench.served_land_bench", "served lander: one MERGE landing vs the size of the day so far"),
    "report": ("bench.report", "render the README's measured-figures table from bench/results/ (--write)"),
    "quality": ("bench.quality_bench", "quality suite: every dataset x variant x seed with the default rules, "
                                       "beside the reference SASRec (issue 15)"),
    "model": ("bench.model_bench", "H100: paper-preset training MFU and prefill vs HF GPT-2 (side by side)"),
}


def write_json(path: str | None, result: dict) -> None:
    """Every benchmark's `--json PATH`: the result dict, pretty-printed, folders created."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.cli import add_module_commands

    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    add_module_commands(sub, BENCHES, "pinrec bench", "_bench_run")


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
