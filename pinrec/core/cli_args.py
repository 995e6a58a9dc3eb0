"""Command-line arguments every layer's sub-command shares, spelled once: `--lake` and `--ds`."""
from __future__ import annotations

import argparse
import os


def default_lake() -> str:
    # The lake root is an endpoint, so the environment may set it; everything else is flags.
    return os.environ.get("PINREC_LAKE", "lake")


def add_lake_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=default_lake(),
                   help="lake root: a folder or s3://bucket/prefix (default: $PINREC_LAKE or ./lake)")


def add_ds_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--ds", required=required, metavar="YYYY-MM-DD",
                   help="the day to process: events with ts < ds+1 00:00 UTC are visible")
