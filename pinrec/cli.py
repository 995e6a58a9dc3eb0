"""`pinrec`: one console script for every layer, so Airflow tasks, ops and tests run the same code.

Each sub-command group lives in its own module exposing `configure(parser)` and `run(args) -> int`.
Those modules import heavy libraries (torch, pyspark, faiss) inside `run`, so `pinrec --help`
and Airflow's DAG parsing stay fast. A group whose module does not exist yet is still listed and
exits non-zero with "not implemented yet" rather than pretending to succeed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from pinrec.core.errors import UserError

# group -> (module, one-line help). Order is the order of the pipeline.
GROUPS: dict[str, tuple[str, str]] = {
    "data": ("jobs.data_cli", "import real datasets or synthesise events into the lake"),
    "sequences": ("jobs.sequences", "daily Spark job: 365-day engagement sequences per user"),
    "items": ("jobs.items", "daily job: the items table with content features"),
    "train": ("jobs.train", "train a PinRec model (or a baseline) into models/<version>"),
    "index": ("jobs.index", "daily job: embed items, build and publish the Faiss index"),
    "score": ("jobs.score", "daily job: outcome-conditioned candidates per user and arm"),
    "gate": ("jobs.gate", "daily DAG checks: landing sensor, params, quality gate, publish"),
    "maintenance": ("jobs.maintenance", "compact and vacuum the Delta tables"),
    "stream": ("streaming.cli", "speed layer: Kafka consumer into RocksDB, replay"),
    "serve": ("serving.serve_cmd", "serving layer: the HTTP recommendations API"),
    "recommend": ("serving.recommend_cmd", "print one user's merged recommendations"),
    "outcomes": ("jobs.outcomes", "daily job: what each arm's served lists and candidates earned"),
    "report": ("jobs.arm_report", "reports for people: `report arms` (HTML with plots)"),
    "eval": ("jobs.evaluate", "offline evaluation (leave-one-out, unordered recall)"),
    "bench": ("bench.cli", "benchmarks: print a table and write JSON"),
    "sql": ("jobs.sql", "run SQL over the lake tables (duckdb)"),
    "demo": ("pinrec.demo", "run the whole pipeline end to end on the embedded default"),
    "rehearse": ("pinrec.rehearsal.runner", "rehearse production days with faults through the real scheduler"),
}

# Our packages log at INFO; every library (kafka-python's connection chatter, py4j, urllib3,
# botocore, ...) at WARNING unless `pinrec --verbose`.
OUR_LOGGERS = ("pinrec", "pinrec_model", "jobs", "streaming", "serving", "bench")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

EXIT_USER_ERROR = 2
EXIT_NOT_IMPLEMENTED = 3


def configure_logging(verbose: bool = False) -> None:
    """The one place logging is set up (every sub-command runs through `main`)."""
    root = logging.getLogger()
    if not root.handlers:  # leave a host's (pytest's, Airflow's) handlers alone
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a sub-command's parser must not reset a `--verbose` given before it
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log libraries too (kafka, py4j, ...) and our debug messages")


def _not_implemented(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"{name}: not implemented yet", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED

    return run


def add_module_commands(sub, table: dict[str, tuple[str, str]], prog: str, run_key: str) -> None:
    """One sub-command per (module, help) entry of `table`; each module brings `configure`
    and `run`. Shared by `pinrec` and `pinrec bench`."""
    for name, (module, help_) in table.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_verbose_arg(p)
        if importlib.util.find_spec(module) is None:
            p.set_defaults(**{run_key: _not_implemented(f"{prog} {name}")}, _stub=True)
            continue
        mod = importlib.import_module(module)
        mod.configure(p)
        p.set_defaults(**{run_key: mod.run})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinrec",
        description="PinRec: outcome-conditioned, multi-token generative retrieval pipeline.",
    )
    add_verbose_arg(parser)
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    add_module_commands(sub, GROUPS, "pinrec", "_run")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A stub accepts any flags, so a DAG or script written ahead of a job fails with
    # "not implemented yet", not with an argparse complaint.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_stub", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(getattr(args, "verbose", False))
    try:
        return int(args._run(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"pinrec {args.group}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"pinrec {args.group}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
