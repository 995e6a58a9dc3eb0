"""A local lake's release record (pinrec/core/layout.py, docs/adr/0012): one file names the
model, the index and the candidates ds that serve, so a reader never mixes two publishes."""
from __future__ import annotations

import json
import threading

import pytest

from pinrec.core.layout import (Lake, current, current_release, pointer_paths, publish,
                                publish_candidates, publish_release, published_candidates,
                                read_pointer, release_path, write_pointer)


def day(k: int) -> str:
    return f"2026-{1 + k // 28:02d}-{1 + k % 28:02d}"


def lake_with_versions(tmp_path, n: int) -> Lake:
    lake = Lake.at(tmp_path / "lake")
    for k in range(n):
        lake.version_dir("models", f"m{k}").mkdir(parents=True)
        lake.version_dir("index", f"i{k}").mkdir(parents=True)
    return lake


def test_a_release_is_read_back_whole_and_mirrored_to_the_pointers(tmp_path):
    lake = lake_with_versions(tmp_path, 2)
    assert current_release(lake) is None and not release_path(lake).exists()
    first = publish_release(lake, day(0), "m0", "i0")
    second = publish_release(lake, day(1), "m1", "i1")
    assert current_release(lake) == second
    assert (second.seq, second.model, second.index, second.candidates_ds) == (1, "m1", "i1", day(1))
    assert first.seq == 0 and first.release_id != second.release_id
    record = json.loads(release_path(lake).read_text())
    assert {k: record[k] for k in ("seq", "model", "index", "candidates_ds")} == \
        {"seq": 1, "model": "m1", "index": "i1", "candidates_ds": day(1)}
    assert record["released_at"].endswith("+00:00")  # UTC, ISO 8601
    # the per-kind pointers mirror it, for ops and servers of older code
    assert {f: read_pointer(p) for f, p in pointer_paths(lake).items()} == \
        {"model": "m1", "index": "i1", "candidates_ds": day(1)}
    assert not list(lake.root.glob(".RELEASE.json.*"))  # no temp file left behind


def test_a_single_kind_publish_changes_only_its_field_and_bumps_seq(tmp_path):
    lake = lake_with_versions(tmp_path, 3)
    publish_release(lake, day(0), "m0", "i0")
    publish(lake, "index", "i2")
    rel = current_release(lake)
    assert (rel.seq, rel.model, rel.index, rel.candidates_ds) == (1, "m0", "i2", day(0))
    publish_candidates(lake, day(5))
    publish(lake, "models", "m1")
    rel = current_release(lake)
    assert (rel.seq, rel.model, rel.index, rel.candidates_ds) == (3, "m1", "i2", day(5))
    assert (current(lake, "models").name, current(lake, "index").name,
            published_candidates(lake)) == ("m1", "i2", day(5))
    # a release without an index keeps the published one (there is nothing to pair it with)
    publish_release(lake, day(6), "m2", None)
    assert current_release(lake).index == "i2"


def test_the_release_record_wins_over_the_pointers(tmp_path):
    lake = lake_with_versions(tmp_path, 2)
    publish_release(lake, day(0), "m0", "i0")
    write_pointer(pointer_paths(lake)["model"], "m1")  # an old-code publisher, or a hand edit
    assert current_release(lake).model == "m0" and current(lake, "models").name == "m0"


def test_a_lake_with_only_the_old_pointers_still_reads_and_upgrades_on_publish(tmp_path):
    lake = lake_with_versions(tmp_path, 3)
    # what the three-pointer code wrote: no release record
    paths = pointer_paths(lake)
    for field, value in (("model", "m0"), ("index", "i0"), ("candidates_ds", day(0))):
        write_pointer(paths[field], value)
    rel = current_release(lake)
    assert (rel.seq, rel.model, rel.index, rel.candidates_ds) == (-1, "m0", "i0", day(0))
    assert (current(lake, "models").name, published_candidates(lake)) == ("m0", day(0))
    publish(lake, "index", "i2")  # the first publish keeps the other two fields
    rel = current_release(lake)
    assert release_path(lake).exists()
    assert (rel.seq, rel.model, rel.index, rel.candidates_ds) == (0, "m0", "i2", day(0))


def test_a_corrupt_release_record_names_the_file_and_the_fix(tmp_path):
    lake = lake_with_versions(tmp_path, 1)
    release_path(lake).write_text('{"seq": 3}\n')
    with pytest.raises(ValueError, match="RELEASE.json is not a release record.*pinrec gate publish"):
        current_release(lake)


def test_concurrent_single_kind_publishers_lose_no_update(tmp_path):
    """Two publishers (say a hand-run `pinrec index` beside the DAG's candidates publish) each
    read-modify-write the record: the lock keeps every publish, none overwritten by a racer."""
    n = 40
    lake = lake_with_versions(tmp_path, n)
    seen: list = []
    stop = threading.Event()

    def models():
        for k in range(n):
            publish(lake, "models", f"m{k}")

    def candidates():
        for k in range(n):
            publish_candidates(lake, day(k))

    def reader():
        while not stop.is_set():
            rel = current_release(lake)
            if rel is not None:
                seen.append(rel)

    threads = [threading.Thread(target=f) for f in (models, candidates)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    stop.set()
    watcher.join(30)
    rel = current_release(lake)
    assert (rel.seq, rel.model, rel.candidates_ds) == (2 * n - 1, f"m{n - 1}", day(n - 1))
    seqs = [r.seq for r in seen]
    assert seqs == sorted(seqs)  # a reader never goes back to an older release


def test_a_reader_never_sees_a_mix_of_two_publishes(tmp_path):
    """The defect this record fixes: with three pointer files written one after the other, a
    reader between two writes got the new model with the old candidates. A publisher releases
    day after day (model m<k>, index i<k>, candidates day k) while a reader reads thousands of
    times; every read must be one whole publish."""
    publishes, min_reads = 150, 3000
    lake = lake_with_versions(tmp_path, publishes)
    publish_release(lake, day(0), "m0", "i0")
    reads: list = []
    done = threading.Event()

    def publisher():
        for k in range(1, publishes):
            publish_release(lake, day(k), f"m{k}", f"i{k}")
        done.set()

    def reader():
        while not done.is_set() or len(reads) < min_reads:
            rel = current_release(lake)
            reads.append((rel.seq, rel.model, rel.index, rel.candidates_ds))

    threads = [threading.Thread(target=publisher), threading.Thread(target=reader)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert done.is_set() and len(reads) >= min_reads
    mixed = [r for r in reads if r[1:] != (f"m{r[0]}", f"i{r[0]}", day(r[0]))]
    assert not mixed, f"{len(mixed)} of {len(reads)} reads mixed two publishes, e.g. {mixed[:3]}"
    assert len({r[0] for r in reads}) > 10  # the reads did interleave with the publishes
