"""`pinrec maintenance`: compact small files and vacuum removed ones, table by table.

Daily jobs replace partitions and MERGE, which leaves many small files and logically removed
ones; readers only ever see live files, so this is about cost, not correctness. Compaction
rewrites small files of a partition into larger ones (same rows, new commit); vacuum deletes
files no snapshot younger than the retention references. The default retention (7 days) is
safe with readers and writers running; shorter needs --unsafe-retention (no job may run).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from pinrec.core.contracts import PARTITION_COLUMNS
from pinrec.core.layout import TABLES, Lake


@dataclass(frozen=True)
class MaintenanceConfig:
    lake: str
    tables: tuple[str, ...] = TABLES
    ds: tuple[str, ...] = ()  # partitions to compact (all when empty)
    retention_hours: int = 168
    unsafe_retention: bool = False
    dry_run: bool = False


def run_job(cfg: MaintenanceConfig) -> dict[str, dict]:
    from pinrec.core.lake import DeltaRsTables

    tables = DeltaRsTables(Lake.at(cfg.lake))
    report = {}
    for name in cfg.tables:
        if not tables.exists(name):
            continue
        files_before = len(tables.live_files(name))
        # Named days compact only the ds-partitioned tables; unpartitioned side tables
        # (item_features) are compacted whole when no day is named.
        partitioned = bool(PARTITION_COLUMNS.get(name))
        if cfg.dry_run or (cfg.ds and not partitioned):
            compacted = {}
        else:
            compacted = tables.optimize(name, list(cfg.ds) or None)
        removed = tables.vacuum(name, retention_hours=cfg.retention_hours, dry_run=cfg.dry_run,
                                allow_unsafe=cfg.unsafe_retention)
        report[name] = {"files_before": files_before, "files_after": len(tables.live_files(name)),
                        "files_compacted": compacted.get("numFilesRemoved", 0),
                        "files_vacuumed": len(removed), "version": tables.version(name)}
    return report


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_lake_arg

    add_lake_arg(p)
    p.add_argument("--tables", default=",".join(TABLES), help="comma-separated tables")
    p.add_argument("--ds", action="append", default=[], metavar="YYYY-MM-DD",
                   help="compact only these partitions (repeatable; default: all)")
    p.add_argument("--retention-hours", type=int, default=168)
    p.add_argument("--unsafe-retention", action="store_true",
                   help="allow retention below 168 h (only when no job is reading or writing)")
    p.add_argument("--dry-run", action="store_true", help="list what vacuum would delete")


def run(args: argparse.Namespace) -> int:
    names = tuple(t for t in args.tables.split(",") if t)
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise ValueError(f"--tables: unknown {unknown}; known: {list(TABLES)}")
    report = run_job(MaintenanceConfig(lake=args.lake, tables=names, ds=tuple(args.ds),
                                       retention_hours=args.retention_hours,
                                       unsafe_retention=args.unsafe_retention, dry_run=args.dry_run))
    print(f"{'table':16}{'files before':>14}{'after':>8}{'compacted':>11}{'vacuumed':>10}")
    for name, r in report.items():
        print(f"{name:16}{r['files_before']:>14}{r['files_after']:>8}{r['files_compacted']:>11}"
              f"{r['files_vacuumed']:>10}")
    print(json.dumps(report))
    return 0
