"""Shared fixtures. Real components only; skips name what is missing and why."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test with a clear reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared dataset {p} is absent (tests read real data from ../shared/data)")
    return p


@pytest.fixture
def lake_root(tmp_path) -> Path:
    return tmp_path / "lake"
