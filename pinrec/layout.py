"""Where things live under one lake root, and the atomic CURRENT pointers.

    <lake>/tables/<name>/          Delta tables: events, sequences, items, candidates, served,
                                   arm_outcomes
    <lake>/models/<version>/       immutable model versions (safetensors + config.json + metrics.json)
    <lake>/models/CURRENT          the serving model version (one line)
    <lake>/index/<version>/        immutable Faiss index versions (index.faiss + ids.npy + meta.json)
    <lake>/index/CURRENT           the serving index version
    <lake>/candidates/CURRENT      the `ds` of the candidates partition serving reads
    <lake>/runs/                   reports, plots, bench output

Versions are never modified after they are published; serving follows CURRENT, which is
replaced atomically (write temp, fsync, rename), so a reader sees the old or the new version,
never half of one. A failed job never touches CURRENT, so the previous version keeps serving.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

TABLES = ("events", "sequences", "items", "candidates", "item_features", "served", "arm_outcomes",
          # how `sequences` is stored (jobs/sequences_store.py): read it with read_sequences
          "sequence_days", "sequence_checkpoints", "sequence_runs")
ARTIFACT_KINDS = ("models", "index")
_VERSION = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Lake:
    root: Path

    @staticmethod
    def at(path: str | os.PathLike) -> "Lake":
        return Lake(Path(path).expanduser().resolve())

    def table(self, name: str) -> Path:
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; known tables: {list(TABLES)}")
        return self.root / "tables" / name

    def artifacts(self, kind: str) -> Path:
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {list(ARTIFACT_KINDS)}")
        return self.root / kind

    def version_dir(self, kind: str, version: str) -> Path:
        if not _VERSION.match(version):
            raise ValueError(f"bad version name {version!r}: use letters, digits, '.', '_', '-'")
        return self.artifacts(kind) / version

    @property
    def runs(self) -> Path:
        return self.root / "runs"


def write_pointer(path: Path, value: str) -> None:
    """Replace the file at `path` with `value` atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_pointer(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


def publish(lake: Lake, kind: str, version: str) -> Path:
    """Point `<kind>/CURRENT` at an existing, complete version folder."""
    vdir = lake.version_dir(kind, version)
    if not vdir.is_dir():
        raise FileNotFoundError(f"cannot publish {kind} version {version!r}: {vdir} does not exist")
    write_pointer(lake.artifacts(kind) / "CURRENT", version)
    return vdir


def current(lake: Lake, kind: str) -> Path | None:
    """The folder of the serving version of `kind`, or None when nothing was published yet."""
    version = read_pointer(lake.artifacts(kind) / "CURRENT")
    return lake.version_dir(kind, version) if version else None


def publish_candidates(lake: Lake, ds: str) -> None:
    """Serving reads the candidates partition named here, so a day whose quality gate failed
    (its partition written but not published) never reaches users."""
    write_pointer(lake.root / "candidates" / "CURRENT", ds)


def published_candidates(lake: Lake) -> str | None:
    return read_pointer(lake.root / "candidates" / "CURRENT")


# The lake's held-out share (pinrec.contracts.held_out_users), fixed by its first `pinrec train`.
def holdout_path(lake: Lake) -> Path:
    return lake.artifacts("models") / "HOLDOUT"


def read_holdout_fraction(lake: Lake) -> float | None:
    value = read_pointer(holdout_path(lake))
    return float(value) if value is not None else None


def fix_holdout_fraction(lake: Lake, fraction: float) -> float:
    """Store `fraction` as the lake's held-out share unless one is stored already; return the
    stored one. Create-only (link of a complete temp file), so two first trainings racing agree."""
    path = holdout_path(lake)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".HOLDOUT.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{fraction!r}\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return read_holdout_fraction(lake)
