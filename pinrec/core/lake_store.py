"""Object-storage I/O for a remote lake (`s3://bucket/prefix`): files in and out of S3 through
pyarrow's S3 file system, configured like delta-rs from the standard AWS environment
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).

Immutable versions: a model or index version is uploaded once under `<kind>/<version>/`, data
files first and the `_COMPLETE` marker last; a reader trusts a prefix only with its marker, and
a writer refuses to upload over a complete version (re-running a day re-uses it instead).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

COMPLETE = "_COMPLETE"


def filesystem():
    """pyarrow's S3FileSystem for the lake. `allow_delayed_open` turns the upload of a small
    file into one PutObject instead of a multipart upload (moto 5.2's CompleteMultipartUpload
    reply is not understood by Arrow's S3 client, getmoto/moto#10055; one request is cheaper
    on real S3 too)."""
    import pyarrow.fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    kw = dict(allow_delayed_open=True, region=os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw |= dict(endpoint_override=host or endpoint, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kw)


def _key(uri: str) -> str:
    return uri.split("://", 1)[1].rstrip("/")


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    return filesystem().get_file_info(_key(uri)).type != pafs.FileType.NotFound


def upload_file(local: Path, uri: str) -> None:
    fs = filesystem()
    with open(local, "rb") as src, fs.open_output_stream(_key(uri)) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def download_file(uri: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
    with filesystem().open_input_stream(_key(uri)) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    os.replace(tmp, local)


def version_uri(lake, kind: str, version: str) -> str:
    return f"{lake.remote}/{kind}/{version}"


def push_version(lake, kind: str, version: str, local: Path) -> None:
    """Upload the complete local folder `local` as `<kind>/<version>/` (marker last)."""
    base = version_uri(lake, kind, version)
    if exists(f"{base}/{COMPLETE}"):
        raise FileExistsError(f"{kind} version {version!r} already exists at {base}; versions are "
                              f"immutable: pick a new version name")
    if not local.is_dir():
        raise FileNotFoundError(f"cannot upload {kind} version {version!r}: {local} does not exist")
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != COMPLETE)
    for f in files:
        upload_file(f, f"{base}/{f.relative_to(local).as_posix()}")
    marker = local / COMPLETE
    marker.write_text("\n".join(f.relative_to(local).as_posix() for f in files) + "\n")
    upload_file(marker, f"{base}/{COMPLETE}")


def fetch_version(lake, kind: str, version: str, local: Path) -> bool:
    """Download a complete remote version into `local` (atomically: temp folder, rename).
    False when the version does not exist (or is not complete) remotely."""
    base = version_uri(lake, kind, version)
    if not exists(f"{base}/{COMPLETE}"):
        return False
    tmp = local.with_name(f".{local.name}.fetch-{uuid.uuid4().hex[:8]}")
    download_file(f"{base}/{COMPLETE}", tmp / COMPLETE)
    for rel in (tmp / COMPLETE).read_text().split():
        download_file(f"{base}/{rel}", tmp / rel)
    try:
        os.rename(tmp, local)
    except OSError:  # a concurrent reader fetched it first: same immutable bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return True
