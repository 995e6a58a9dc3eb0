"""Lake layout pointers, the first-cut Delta adapter, the CLI surface and the item featurizer."""
import os
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest

from pinrec.core.lake import DeltaRsTables
from jobs.synth import SynthConfig, generate
from pinrec.core import layout
from pinrec.cli import GROUPS, main
from pinrec.core.features import FEATURE_DIM, feature_matrix, pin_features, query_features


def test_release_is_replaced_atomically_and_readers_never_see_partial(tmp_path):
    lake = layout.Lake.at(tmp_path)
    for v in ("v1", "v2"):
        lake.version_dir("models", v).mkdir(parents=True)
    assert layout.current(lake, "models") is None
    layout.publish(lake, "models", "v1")
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(layout.current_release(lake).model)
            seen.add(layout.read_pointer(lake.artifacts("models") / "CURRENT"))  # the mirror

    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        layout.publish(lake, "models", "v2" if i % 2 else "v1")
    stop.set()
    t.join()
    assert seen <= {"v1", "v2"}, f"a reader saw a partial pointer: {seen}"
    assert not [p for p in os.listdir(lake.artifacts("models")) if p.startswith(".CURRENT")]
    assert not [p for p in os.listdir(lake.root) if p.startswith(".RELEASE.json.")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        layout.publish(lake, "models", "v3")
    with pytest.raises(ValueError, match="bad version name"):
        lake.version_dir("models", "../etc")


def test_delta_partition_replace_is_idempotent_and_keeps_other_days(tmp_path):
    tables = DeltaRsTables(layout.Lake.at(tmp_path))
    days = dict(generate(SynthConfig(users=100, days=3, seed=0, items=200, clusters=4)))
    for ds, t in days.items():
        tables.replace_partitions("events", t, [ds])
    d1 = sorted(days)[1]
    before = tables.read("events").sort_by("event_id")
    tables.replace_partitions("events", days[d1], [d1])  # re-run one day
    after = tables.read("events").sort_by("event_id")
    assert after.equals(before)
    assert tables.partitions("events") == sorted(days)
    assert tables.read("events", ds=[d1]).num_rows == days[d1].num_rows
    with pytest.raises(ValueError, match="outside"):
        tables.replace_partitions("events", days[d1], ["2030-01-01"])
    with pytest.raises(ValueError, match="missing columns"):
        tables.replace_partitions("events", pa.table({"x": [1]}), [d1])


def test_missing_table_error_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the job that writes it first"):
        DeltaRsTables(layout.Lake.at(tmp_path)).read("sequences")


def test_help_lists_every_group():
    out = subprocess.run([sys.executable, "-m", "pinrec.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for group in ("data", "sequences", "items", "train", "index", "score", "stream", "serve",
                  "recommend", "eval", "bench", "sql", "demo"):
        assert group in GROUPS and f"    {group}" in out


def test_unimplemented_group_fails_loudly(capsys, monkeypatch):
    monkeypatch.setitem(GROUPS, "score", ("jobs.no_such_module_yet", "x"))
    assert main(["score", "--ds", "2026-01-01"]) == 3
    assert "not implemented yet" in capsys.readouterr().err


def test_features_are_unit_norm_and_type_specific():
    m = feature_matrix(["pin", "pin", "query", "pin"], [[1, 2], None, None, None],
                       [None, np.ones(40), None, None], [None, None, "Cat toys", None])
    assert m.shape == (4, FEATURE_DIM)
    np.testing.assert_allclose(np.linalg.norm(m[:3], axis=1), 1.0, rtol=1e-5)
    assert not m[3].any(), "an item without side features gets zeros (ID embedding only)"
    np.testing.assert_array_equal(query_features("cat  TOYS"), query_features("cat toys"))
    assert float(query_features("cat toys") @ query_features("dog food")) < 0.9
    assert np.array_equal(pin_features([1, 2], None), pin_features([2, 1], None))


def test_shared_buckets_counts_values_that_collide():
    import collections

    from jobs.items import attribute_report
    from pinrec.core.features import _bucket, shared_buckets

    values = list(range(1, 41))
    per_bucket = collections.Counter(_bucket(f"attr:{v}", 16)[0] for v in values)
    expected = sum(1 for v in values if per_bucket[_bucket(f"attr:{v}", 16)[0]] > 1)
    # an item's values and repeats across items count once each
    assert shared_buckets([values[:25], values[20:], None, []], 16) == (40, expected)
    assert shared_buckets([[7], [7]], 1) == (1, 0) and shared_buckets([[7, 8]], 1) == (2, 2)
    assert shared_buckets([None], 8) == (0, 0)
    side = pa.table({"item_id": [1, 2], "attributes": [[7], [8]]})
    assert attribute_report(side, 1).startswith("attributes: 2 distinct values in 1 buckets; 2 (100%) share")
    assert attribute_report(pa.table({"item_id": [1], "attributes": [None]}, schema=pa.schema(
        [("item_id", pa.int64()), ("attributes", pa.list_(pa.int64()))])), 8) is None
