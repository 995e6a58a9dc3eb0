"""Where things live under one lake root, and the atomic release record that says what serves.

    <lake>/tables/<name>/          Delta tables: events, sequences, items, candidates, served,
                                   arm_outcomes
    <lake>/models/<version>/       immutable model versions (safetensors + config.json + metrics.json)
    <lake>/index/<version>/        immutable Faiss index versions (index.faiss + ids.npy + meta.json)
    <lake>/RELEASE.json            the release record: the model version, the index version and the
                                   candidates `ds` that serve, with a `seq` (docs/adr/0012)
    <lake>/models/CURRENT          per-kind mirrors of the release record, for ops and for
    <lake>/index/CURRENT           servers of older code; read only on a lake published before
    <lake>/candidates/CURRENT      the release record existed (then they are the release)
    <lake>/runs/                   reports, plots, bench output
    <lake>/runs/params/<ds>/       a run's validated params and arms (`pinrec gate params`)

Versions are never modified after they are published; serving follows the release record, which
is replaced atomically (write temp, fsync, rename), so a reader sees the old or the new release,
never half of one, and never the model of one publish with the candidates of another (three
files replaced one after the other allowed that). A failed job never publishes, so the previous
release keeps serving.

The lake may also live on object storage: `Lake.at("s3://bucket/prefix")` (docs/adr/0003).
Then the tables are Delta tables at `s3://bucket/prefix/tables/<name>` (delta-rs commits them
with S3 conditional writes, so concurrent writers are safe), model and index versions are
immutable prefixes `s3://bucket/prefix/<kind>/<version>/` written once (`push_version`, with a
`_COMPLETE` marker last), and there is no release file -- object stores have no atomic rename.
Publishing appends one row to the `releases` Delta table (`lake_releases.py`) naming the model,
the index and the candidates `ds` together, so a reader that reads one release never pairs a
model of one day with candidates of another. `root` is then a local working folder (the
`PINREC_LAKE_CACHE` environment variable, default ~/.cache/pinrec/lakes/<bucket>/<prefix>):
Spark's staging output, run reports, and read-only copies of immutable versions (`version_dir`
fetches a published version there on first use, so jobs keep opening local folders).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinrec.core.lake_releases import Release

TABLES = ("events", "sequences", "items", "candidates", "item_features", "served", "arm_outcomes",
          # how `sequences` is stored (pinrec/core/sequences_store.py): read it with read_sequences
          "sequence_days", "sequence_checkpoints", "sequence_runs")
ARTIFACT_KINDS = ("models", "index")
_VERSION = re.compile(r"^[A-Za-z0-9._-]+$")


REMOTE_SCHEMES = ("s3://",)


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def _cache_root(uri: str) -> Path:
    base = os.environ.get("PINREC_LAKE_CACHE")
    base = Path(base) if base else Path.home() / ".cache" / "pinrec" / "lakes"
    return (base.expanduser() / uri.split("://", 1)[1].strip("/")).resolve()


@dataclass(frozen=True)
class Lake:
    root: Path                 # local folder: the lake itself, or the working folder of a remote one
    remote: str | None = None  # "s3://bucket/prefix" when the lake lives on object storage

    @staticmethod
    def at(path: str | os.PathLike) -> "Lake":
        text = str(path)
        if is_remote(text):
            uri = text.rstrip("/")
            if uri.count("/") < 2 or not uri.split("://", 1)[1]:
                raise ValueError(f"--lake {text!r}: give a bucket, as in s3://bucket/prefix")
            return Lake(_cache_root(uri), uri)
        if "://" in text:
            raise ValueError(f"--lake {text!r}: unsupported scheme; use a local folder or "
                             f"s3://bucket/prefix")
        return Lake(Path(path).expanduser().resolve())

    @property
    def location(self) -> str:
        """What to pass as --lake to another process: the URI of a remote lake, else the folder."""
        return self.remote or str(self.root)

    def table(self, name: str) -> Path:
        """The table's local folder: the table itself, or (remote lake) its staging mirror."""
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; known tables: {list(TABLES)}")
        return self.root / "tables" / name

    def table_uri(self, name: str) -> str:
        """Where delta-rs opens the table."""
        local = self.table(name)
        return f"{self.remote}/tables/{name}" if self.remote else str(local)

    def artifacts(self, kind: str) -> Path:
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {list(ARTIFACT_KINDS)}")
        return self.root / kind

    def version_dir(self, kind: str, version: str) -> Path:
        """The local folder of a version. On a remote lake a version published there is fetched
        into the working folder first (versions are immutable, so a fetched copy never goes
        stale); one that does not exist remotely is returned as a fresh local path to write."""
        if not _VERSION.match(version):
            raise ValueError(f"bad version name {version!r}: use letters, digits, '.', '_', '-'")
        local = self.artifacts(kind) / version
        if self.remote and not local.is_dir():
            from pinrec.core.lake_store import fetch_version

            fetch_version(self, kind, version, local)
        return local

    def push_version(self, kind: str, version: str) -> None:
        """Make a version written into `version_dir` durable: on a remote lake, upload it once
        under its immutable prefix (refused if that version already exists there)."""
        if self.remote:
            from pinrec.core.lake_store import push_version

            push_version(self, kind, version, self.artifacts(kind) / version)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def params_dir(self, ds: str) -> Path:
        """A run's validated parameters (`pinrec gate params`): params.json and arms.json."""
        return self.runs / "params" / ds

    def arms_file(self, ds: str) -> Path:
        """The run's arms, written by `pinrec gate params`, read by `pinrec score`."""
        return self.params_dir(ds) / "arms.json"


# Version names: a function of ds and the model kind, so a re-run of a ds (or a backfill) names
# the same immutable versions. Pure strings: the daily pipeline (pinrec/core/pipeline.py) builds them.
def model_version_name(ds: str, variant: str, preset: str) -> str:
    """The daily model version: d<YYYYMMDD>-<variant>-<preset>."""
    return f"d{ds.replace('-', '')}-{variant}-{preset}"


def index_version_name(ds: str, model_version: str) -> str:
    """How `pinrec index` names the index it builds for (ds, model)."""
    return f"{ds}.{model_version}"


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


RELEASE_FILE = "RELEASE.json"
_RELEASE_FIELD = {"models": "model", "index": "index"}


def release_path(lake: Lake) -> Path:
    """A local lake's release record (JSON), replaced atomically on every publish."""
    return lake.root / RELEASE_FILE


def pointer_paths(lake: Lake) -> dict[str, Path]:
    """The per-kind CURRENT files of a local lake, by release field: the release of a lake
    published before the release record existed; after it, mirrors written for ops and for
    servers of older code, never read while the release record exists."""
    return {"model": lake.artifacts("models") / "CURRENT",
            "index": lake.artifacts("index") / "CURRENT",
            "candidates_ds": lake.root / "candidates" / "CURRENT"}


def _read_local_release(lake: Lake) -> Release | None:
    from pinrec.core.lake_releases import Release

    path = release_path(lake)
    try:
        text = path.read_text()
    except FileNotFoundError:  # a lake published before release records: its pointers
        fields = {f: read_pointer(p) for f, p in pointer_paths(lake).items()}
        return Release(-1, release_id="", **fields) if any(fields.values()) else None
    try:
        record = json.loads(text)
        return Release(**{f: record[f] for f in Release.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a release record ({type(e).__name__}: {e}); restore it "
                         f"from a backup or publish again with `pinrec gate publish`") from None


def _append_local_release(lake: Lake, changes: dict) -> Release:
    """The latest release with `changes` applied and `seq` bumped, as one atomic replace of the
    release record, then mirrored to the per-kind pointers."""
    from pinrec.core.lake_releases import Release

    path = release_path(lake)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The DAG runs one publishing task at a time per lake, but a hand-run `pinrec index` or
    # `gate publish` may overlap it: the lock makes the read-modify-write one step, so no
    # publish is lost. Readers take no lock: they read one file that is replaced whole.
    with open(path.with_name(".RELEASE.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        base = _read_local_release(lake) or Release(-1, None, None, None, "")
        rel = replace(base, seq=base.seq + 1, release_id=uuid.uuid4().hex, **changes)
        record = asdict(rel) | {"released_at": datetime.now(timezone.utc).isoformat()}
        write_pointer(path, json.dumps(record, sort_keys=True))
        for field, pointer in pointer_paths(lake).items():
            value = getattr(rel, field)
            if value is not None and read_pointer(pointer) != value:
                write_pointer(pointer, value)
    return rel


def _append_release(lake: Lake, **changes) -> Release:
    if lake.remote:
        from pinrec.core.lake_releases import append_release

        return append_release(lake, **changes)
    return _append_local_release(lake, changes)


def current_release(lake: Lake) -> Release | None:
    """What serves now, read in one step (local lake: the release record; remote lake: the
    latest `releases` row), or None before the first publish. Read this once per load rather
    than `current()` and `published_candidates()` one by one: a publish may land in between."""
    if lake.remote:
        from pinrec.core.lake_releases import latest_release

        return latest_release(lake)
    return _read_local_release(lake)


def publish(lake: Lake, kind: str, version: str) -> Path:
    """Publish an existing, complete version of `kind`: a new release that changes only it."""
    vdir = lake.version_dir(kind, version)
    if not vdir.is_dir():
        raise FileNotFoundError(f"cannot publish {kind} version {version!r}: {vdir} does not exist")
    _append_release(lake, **{_RELEASE_FIELD[kind]: version})
    return vdir


def current(lake: Lake, kind: str) -> Path | None:
    """The folder of the serving version of `kind`, or None when nothing was published yet."""
    rel = current_release(lake)
    version = getattr(rel, _RELEASE_FIELD[kind]) if rel else None
    return lake.version_dir(kind, version) if version else None


def publish_candidates(lake: Lake, ds: str) -> None:
    """Serving reads the candidates partition named here, so a day whose quality gate failed
    (its partition written but not published) never reaches users."""
    _append_release(lake, candidates_ds=ds)


def published_candidates(lake: Lake) -> str | None:
    rel = current_release(lake)
    return rel.candidates_ds if rel else None


# The lake's held-out share (pinrec.core.contracts.held_out_users), fixed by its first `pinrec train`.
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


def publish_release(lake: Lake, ds: str, model: str, index: str | None) -> Release:
    """Publish a day's model, index and candidates together, as one release: remote lake, one
    `releases` row (one Delta commit); local lake, one atomic replace of the release record. A
    reader sees all three of the new day or all three of the old one."""
    for kind, version in (("models", model), ("index", index)):
        if version is not None and not lake.version_dir(kind, version).is_dir():
            raise FileNotFoundError(f"cannot publish {kind} version {version!r}: it does not exist "
                                    f"under {lake.location}/{kind}")
    changes = dict(model=model, candidates_ds=ds) | ({"index": index} if index is not None else {})
    return _append_release(lake, **changes)


def gate_record_path(lake, ds: str) -> Path:
    """The quality gate's decision on the candidate model of ds (JSON; the last run's)."""
    return lake.runs / "gate" / f"{ds}.json"


def _refused_record(lake, version: str) -> dict | None:
    """The gate's record refusing model `version`, if its last decision on it was a refusal."""
    import json

    folder = lake.runs / "gate"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        if record.get("candidate_model") == version and record.get("passed") is False:
            return record
    return None


def gate_refusal(lake, version: str) -> str | None:
    """The gate's reason when its last decision on model `version` was a refusal, else None
    (passed, or never judged: a model trained outside the DAG). `pinrec train` never warm-starts
    from a refused model."""
    record = _refused_record(lake, version)
    return (record.get("reason") or "refused") if record else None


def gate_fallback(lake, version: str) -> Path | None:
    """What a warm start continues from instead of a refused `version`: the model that kept
    serving when the gate refused it (it passed its own gate), unless that model is of a later
    day than `version` (a backfill must not start from a model that saw later data) or its name
    carries no day (not a DAG version). None: train from scratch."""
    record = _refused_record(lake, version) or {}
    serving = record.get("serving_model") or ""
    day = lambda v: v[1:9] if v[:1] == "d" and v[1:9].isdigit() else None  # noqa: E731
    if day(serving) and day(version) and day(serving) <= day(version):
        return lake.version_dir("models", serving)
    return None
