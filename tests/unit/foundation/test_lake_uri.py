"""Lake roots as URIs (docs/adr/0003) and the `releases` table that publishes atomically."""
from __future__ import annotations

import threading

import pytest

from pinrec.core.lake_releases import append_release, latest_release
from pinrec.core.layout import (Lake, current, current_release, publish_release,
                                published_candidates, read_pointer)


def test_an_s3_lake_keeps_tables_remote_and_works_in_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PINREC_LAKE_CACHE", str(tmp_path / "cache"))
    lake = Lake.at("s3://bucket/team/prod/")
    assert (lake.remote, lake.location) == ("s3://bucket/team/prod", "s3://bucket/team/prod")
    assert lake.table_uri("events") == "s3://bucket/team/prod/tables/events"
    assert lake.root == (tmp_path / "cache" / "bucket" / "team" / "prod").resolve()
    assert lake.table("events") == lake.root / "tables" / "events"  # the staging mirror


def test_a_local_lake_is_unchanged(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    assert lake.remote is None and lake.location == str(tmp_path / "lake")
    assert lake.table_uri("sequences") == str(tmp_path / "lake" / "tables" / "sequences")


@pytest.mark.parametrize("uri, msg", [("gs://bucket/x", "unsupported scheme; use a local folder or s3://"),
                                      ("s3://", "give a bucket")])
def test_unsupported_lake_uris_name_the_fix(uri, msg):
    with pytest.raises(ValueError, match=msg):
        Lake.at(uri)


def test_a_release_carries_the_other_fields_and_concurrent_publishers_get_distinct_seqs(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    assert latest_release(lake) is None
    append_release(lake, model="m1", index="i1", candidates_ds="2026-01-01")
    append_release(lake, candidates_ds="2026-01-02")
    rel = latest_release(lake)
    assert (rel.seq, rel.model, rel.index, rel.candidates_ds) == (1, "m1", "i1", "2026-01-02")
    done = []
    threads = [threading.Thread(target=lambda i=i: done.append(append_release(lake, model=f"m{i}")))
               for i in range(2, 5)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert sorted(r.seq for r in done) == [2, 3, 4]
    last = latest_release(lake)
    assert last.seq == 4 and last.model == next(r.model for r in done if r.seq == 4)
    with pytest.raises(ValueError, match="not \\['arm'\\]"):
        append_release(lake, arm="x")


def test_publish_release_checks_every_version_before_touching_a_pointer(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    lake.version_dir("models", "m1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="index version 'nope'"):
        publish_release(lake, "2026-01-02", "m1", "nope")
    assert current(lake, "models") is None and published_candidates(lake) is None
    lake.version_dir("index", "i1").mkdir(parents=True)
    publish_release(lake, "2026-01-02", "m1", "i1")
    assert current(lake, "models").name == "m1" and current(lake, "index").name == "i1"
    assert read_pointer(lake.root / "candidates" / "CURRENT") == "2026-01-02"
    rel = current_release(lake)
    assert (rel.model, rel.index, rel.candidates_ds) == ("m1", "i1", "2026-01-02")
