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
    Figure("H200 prefill, paper preset, 256 tokens, compiled: PinRec (bar ≥ HF GPT-2 compiled, next row)",
           "bench/results/model_h200.json", "prefill.pinrec_compiled.users_per_s", "{:,.0f} users/s",
           "pinrec bench model --train-batch 512 --json bench/results/model_h200.json", "H200 (device tool, alone)"),
    Figure("H200 prefill, HuggingFace GPT2Model compiled, same run",
           "bench/results/model_h200.json", "prefill.hf_gpt2_compiled.users_per_s", "{:,.0f} users/s",
           "same", "H200 (device tool, alone)"),
    Figure("H200 training MFU, paper preset, batch 512 × 256 (bar 40 %)",
           "bench/results/model_h200.json", "train.0.mfu", "{:.1%}", "same", "H200 (device tool, alone)"),
    Figure("scoring job, H200, sharded path with 1 rank (bar: equals today's 5.6k users/s)",
           "bench/results/score_sharded_h200.json", "sharded.median_users_per_s.sharded_1_rank",
           "{:,.0f} users/s",
           "pinrec bench score --users 40960 --preset paper --items 100000 --batch-size 2048 --sharded --rounds 2",
           "H200 (device tool, alone)"),
    Figure("scoring job, H200, today's one-process path, same run",
           "bench/results/score_sharded_h200.json", "sharded.median_users_per_s.today", "{:,.0f} users/s",
           "same", "H200 (device tool, alone)"),
    Figure("training, H200, DDP world size 1 vs plain, batch 512 × 256: cost (bar ≤ 3 %)",
           "bench/results/ddp_ws1_b512_h200.json", "ddp_ws1.0.ddp_ws1_cost", "{:+.1%}",
           "pinrec bench model --train-batch 512 --ddp --ddp-only --skip-prefill --train-steps 20 --ddp-rounds 3",
           "H200 (device tool, alone)"),
    Figure("training, H200, DDP world size 1 vs plain, batch 256 × 256: cost (bar ≤ 3 %: not met)",
           "bench/results/ddp_ws1_b256_h200.json", "ddp_ws1.0.ddp_ws1_cost", "{:+.1%}",
           "same with --train-batch 256", "H200 (device tool, alone)"),
    Figure("training throughput per H200 under DDP, batch 512 × 256",
           "bench/results/ddp_ws1_b512_h200.json", "ddp_ws1.0.tokens_per_s.ddp_ws1", "{:,.0f} tokens/s",
           "same", "H200 (device tool, alone)"),
    Figure("sequences: daily run / full 365-day rebuild at 1M users × 366 days (bar ≤ 1/20)",
           "bench/results/sequences_scaling.json", "bars.ratio_at_largest", "{:.4f}",
           "pinrec bench sequences --sizes 250000,1000000 --repeat 3 --driver-memory 8g --lake /tmp/seqbench-lakes",
           "2 cores, quiet (the JSON records the 1-min load); 3 repetitions"),
    Figure("sequences: daily run at 1M users (median of 3)",
           "bench/results/sequences_scaling.json", "sizes.1.daily_s.median", "{:.2f} s", "same", "2 cores, quiet"),
    Figure("sequences: full 365-day rebuild at 1M users (median of 3)",
           "bench/results/sequences_scaling.json", "sizes.1.full_s.median", "{:.1f} s", "same", "2 cores, quiet"),
    Figure("sequences: the daily run's bytes written at 1M users",
           "bench/results/sequences_scaling.json", "sizes.1.daily_work.bytes_written", "{:,.0f} B", "same",
           "2 cores, quiet"),
    Figure("sequences: daily time per day-event, spread 250k → 1M users (bar ≤ 1.5×: not met as written; the time per event falls with size, 14.4 → 3.4 µs)",
           "bench/results/sequences_scaling.json", "bars.per_event_spread", "{:.2f}×", "same", "2 cores, quiet"),
    Figure("sequences: the same, net of an empty day's fixed cost",
           "bench/results/sequences_scaling.json", "bars.net_per_event_spread", "{:.2f}×", "same", "2 cores, quiet"),
    Figure("sequences on a Spark standalone cluster (2 workers), 20k users: full rebuild",
           "bench/results/sequences_cluster2_20k.json", "full_s", "{:.1f} s",
           "pinrec bench sequences --cluster 2 --users 20000 --days 366 --lake L --executor-memory 1g --driver-memory 2g",
           "2 cores, loaded; shows the cluster path works, not a speed comparison"),
    Figure("speed layer: kafka-python consumer into RocksDB on Tansu (bar ≥ 15k/s: not met here)",
           "bench/results/stream_[0-9].json", "throughput.events_per_s", "{:,.0f} events/s",
           "pinrec bench stream --json bench/results/stream_N.json", "2 cores, loaded (1-min load 20–26)"),
    Figure("speed layer: CPU per event in the consumer",
           "bench/results/stream_[0-9].json", "throughput.cpu_us_per_event", "{:.1f} µs",
           "same", "2 cores, loaded"),
    Figure("speed layer: produced → readable p99 at 5k/s offered (bar < 1 s: not met; producers reached ≤ 3.6k/s)",
           "bench/results/stream_[0-9].json", "visibility.p99_visible_ms", "{:,.0f} ms",
           "same", "2 cores, loaded"),
    Figure("malformed corpus incl. a 2 MB and a 20 MB message: kinds dead-lettered (bar ≥ 12)",
           "bench/results/stream_[0-9].json", "dlq.dead_lettered", "{:.0f} of 24", "same", "2 cores, loaded"),
    Figure("kill -9 the consumer 5× during 200k events: events missing",
           "bench/results/crash.json", "missing", "{:.0f}",
           "pinrec bench crash --kills 5 --events 200000 --json bench/results/crash.json", "2 cores, load ~20"),
    Figure("kill -9 the consumer 5× during 200k events: events stored twice",
           "bench/results/crash.json", "duplicates", "{:.0f}", "same", "2 cores, load ~20"),
    Figure("serve p99 with served-list logging on / off (bar ≤ 1.10)",
           "bench/results/serve_logging.json", "served_log.p99_ratio_on_off", "{:.2f}",
           "pinrec bench serve --phases logging --logging-rounds 5 --json bench/results/serve_logging.json",
           "2 cores, loaded (others used ~1.6 cores): too noisy to resolve 10 %; on the stdlib server, before FastAPI"),
    Figure("closed loop in `pinrec demo`: repin arm's realised repin share minus the balanced arm's",
           "bench/results/closed_loop_demo_4epochs_quiet_run.json", "difference_repin_minus_balanced.diff",
           "{:+.3f}", "pinrec demo", "2 cores, quiet"),
    Figure("the same difference: low end of its 95 % bootstrap interval (bar > 0)",
           "bench/results/closed_loop_demo_4epochs_quiet_run.json", "difference_repin_minus_balanced.lo",
           "{:+.3f}", "pinrec demo", "2 cores, quiet"),
    Figure("week rehearsal, one fault a day through the real scheduler: wall time (every invariant held)",
           "bench/results/rehearsal/week/report.json", "wall_s", "{:.0f} s",
           "pinrec rehearse --days 7 --lake /tmp/rh/lake --out /tmp/rh/out", "2 cores, quiet"),
    Figure("quality round 3, H200, defaults chosen on validation: PinRec-UC / reference SASRec R@10, mean of Beauty, Sports, Toys, Yelp, 3 seeds (bar ≥ 1.10: not met)",
           "bench/results/quality/h200_round3_suite.json", "bars.average.recall@10", "{:.2f}×",
           "pinrec bench quality --variants uc,sasrec --seeds 0,1,2 --reference … (two calls: bench/results/quality/h200_round3_README.md)",
           "H200 shared by 14-18 runs; every PinRec run finished its schedule"),
    Figure("the same, N@10 (bar ≥ 1.10: not met)",
           "bench/results/quality/h200_round3_suite.json", "bars.average.ndcg@10", "{:.2f}×", "same",
           "H200 shared by 14-18 runs"),
    Figure("quality round 2, H200: PinRec-UC / reference SASRec R@10, mean of Beauty, Sports, Toys, Yelp (bar ≥ 1.10: not met)",
           "bench/results/quality/h200_round2_defaults_s0.json", "bars.average.recall@10", "{:.2f}×",
           "pinrec bench quality --datasets beauty,sports,toys,yelp --variants uc,sasrec --seeds 0 --max-seconds 370 (bench/results/quality/h200_round2_README.md)",
           "H200 shared by 12 runs; one seed; PinRec capped before converging"),
    Figure("serve p99, FastAPI/uvicorn server, precomputed, 200 req/s (bar 5 ms), median of 3 rounds",
           "bench/results/serve_servers.json", "servers.fastapi.precomputed.p99_ms.median", "{:.2f} ms",
           "pinrec bench serve --phases servers --server-rounds 3 --json bench/results/serve_servers.json",
           "2 cores, quiet (load 0.4-0.7); legacy and FastAPI alternating in one run"),
    Figure("serve p99 with regeneration, FastAPI (bar 50 ms), median of 3 rounds",
           "bench/results/serve_servers.json", "servers.fastapi.regenerate.p99_ms.median", "{:.1f} ms", "same",
           "2 cores, quiet"),
    Figure("serve p99, the stdlib http.server FastAPI replaced, same run (measured before it was removed)",
           "bench/results/serve_servers.json", "servers.legacy.precomputed.p99_ms.median", "{:.2f} ms",
           "same run; the stdlib server is gone, so not repeatable", "2 cores, quiet"),
    Figure("serve p99 with regeneration, the stdlib server, same run (measured before it was removed)",
           "bench/results/serve_servers.json", "servers.legacy.regenerate.p99_ms.median", "{:.1f} ms",
           "same run; the stdlib server is gone, so not repeatable", "2 cores, quiet"),
    Figure("serve p99, precomputed + RocksDB tail, 200 req/s (bar 5 ms)",
           "bench/results/serve_quiet_run*.json", "precomputed.p99_ms", "{:.2f} ms",
           "pinrec bench serve --attempts 4 --json bench/results/serve_quiet_runN.json",
           "2 cores; quiet host (others < 0.05 cores) as each file records; on the stdlib server, before FastAPI"),
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
