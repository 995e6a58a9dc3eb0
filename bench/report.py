"""`pinrec bench report`: the README's "Measured figures" table, rendered from the evidence.

Each row of FIGURES names what was measured, the committed JSON file(s) under bench/results/ (or
docs/) it comes from, the value inside (a dotted path), and the command that wrote it. The numbers
in the README are never typed by hand: this module reads them, and a test
(tests/unit/test_readme_figures.py) fails when the README's table differs from a fresh render.
Several files for one row (a glob) are repeated runs: the row shows their median and min–max.

    pinrec bench report            # print the table
    pinrec bench report --write    # replace the table between the README's markers
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- measured-figures:start -->", "<!-- measured-figures:end -->"


@dataclass(frozen=True)
class Figure:
    what: str  # what was measured, and its bar if it has one
    files: str  # glob under the repository root; several files = repeated runs
    value: str  # dotted path into each JSON (list indices allowed: "train.0.mfu")
    fmt: str  # format of one value, e.g. "{:,.0f} users/s"
    command: str  # the command that wrote the file(s)
    machine: str  # where it ran and whether it was quiet (from the run's own record)


FIGURES: tuple[Figure, ...] = (
    Figure("scoring job, H100, paper preset, 100k pins, exact GPU search (bar 5k users/s)",
           "bench/results/score_h100.json", "users_per_s", "{:,.0f} users/s",
           "pinrec bench score --users 40960 --preset paper --items 100000 --batch-size 2048",
           "H100 (device tool, one process)"),
    Figure("scoring job, CPU, small preset, 20k pins, flat index",
           "bench/results/score_cpu_small.json", "users_per_s", "{:,.1f} users/s",
           "pinrec bench score --users 256 --preset small --items 20000 --index flat", "2 shared cores"),
    Figure("scoring job, CPU, paper preset, 20k pins, flat index",
           "bench/results/score_cpu_paper.json", "users_per_s", "{:,.1f} users/s",
           "pinrec bench score --users 64 --preset paper --items 20000 --index flat --batch-size 32",
           "2 shared cores"),
    Figure("training MFU, H100, paper preset, batch 512 × 256 (bar 40 %)",
           "bench/results/model_train_h100.json", "train.0.mfu", "{:.1%}",
           "pinrec bench model --train-batch 512,256 --skip-prefill", "H100 (device tool)"),
    Figure("serve p99, precomputed + RocksDB tail, 200 req/s (bar 5 ms)",
           "bench/results/serve_quiet_run*.json", "precomputed.p99_ms", "{:.2f} ms",
           "pinrec bench serve --attempts 4 --json bench/results/serve_quiet_runN.json",
           "2 cores; quiet host (others < 0.05 cores) as each file records"),
)


def lookup(doc, path: str):
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def values(fig: Figure, root: Path = ROOT) -> list[float]:
    files = sorted(glob.glob(str(root / fig.files)))
    if not files:
        raise FileNotFoundError(f"figure {fig.what!r}: no file matches {fig.files}; run `{fig.command}`")
    return [float(lookup(json.loads(Path(f).read_text()), fig.value)) for f in files]


def cell(fig: Figure, vals: list[float]) -> str:
    if len(vals) == 1:
        return fig.fmt.format(vals[0])
    return (f"median {fig.fmt.format(statistics.median(vals))} "
            f"(min–max {fig.fmt.format(min(vals))} – {fig.fmt.format(max(vals))}, {len(vals)} runs)")


def render(figures=FIGURES, root: Path = ROOT) -> str:
    lines = ["| what | figure | machine | evidence | command |", "|---|---|---|---|---|"]
    for f in figures:
        lines.append(f"| {f.what} | {cell(f, values(f, root))} | {f.machine} | `{f.files}` | `{f.command}` |")
    return "\n".join(lines)


def readme_block(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} ... {END} markers around the measured figures")
    return text[text.index(START) + len(START):text.index(END)].strip("\n")


def write_readme(path: Path = README) -> None:
    text = path.read_text()
    readme_block(text)  # markers present
    head, tail = text[:text.index(START) + len(START)], text[text.index(END):]
    path.write_text(f"{head}\n{render()}\n{tail}")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--write", action="store_true", help="replace the README's table with the rendered one")


def run(args) -> int:
    if args.write:
        write_readme()
        print(f"wrote the measured figures into {README}")
    else:
        print(render())
    return 0
