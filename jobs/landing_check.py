"""Does a landed `events` partition fit the contract? Checked by `pinrec gate landing` (the
DAG's wait_for_landing sensor) before any job reads the day, so a file with a wrong schema
fails the run at the door with a message naming the file, the column, the type found and the
type the contract wants, instead of deep inside a join (found by `pinrec rehearse`: a landing
file with string user_id/ts failed `sequences` with "Function 'equal' has no kernel matching
input types (timestamp[us, tz=UTC], string)")."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa


def schema_problems(found: pa.Schema, want: pa.Schema, partition_cols=("ds",)) -> list[str]:
    """Columns missing from `found` or of another type than `want` says (pure)."""
    problems = []
    for f in want:
        if f.name in partition_cols:
            continue  # partition values live in the Delta log, not in the file
        if f.name not in found.names:
            problems.append(f"column {f.name} is missing (want {f.type})")
        elif not found.field(f.name).type.equals(f.type):
            problems.append(f"column {f.name} is {found.field(f.name).type}, want {f.type}")
    return problems


def check_events_partition(lake, ds: str) -> list[str]:
    """One line per bad file of the `events` partition `ds`; empty when every file fits."""
    import pyarrow.parquet as pq

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.contracts import EVENTS_SCHEMA

    out = []
    for path in DeltaRsTables(lake).live_files("events", [ds]):
        problems = schema_problems(pq.read_schema(path), EVENTS_SCHEMA)
        if problems:
            out.append(f"{Path(path).parent.name}/{Path(path).name}: " + "; ".join(problems))
    return out
