"""The lake adapter's one interface (`LakeTables`) and its two back ends (docs/adr/0008)."""
from __future__ import annotations

import inspect

import pytest

from pinrec.core.lake import DeltaRsTables
from pinrec.core.lake_spark import SparkDeltaTables, open_tables
from pinrec.core.lake_tables import LakeTables, check_vacuum_retention
from pinrec.core.layout import Lake

BACK_ENDS = (DeltaRsTables, SparkDeltaTables)


def protocol_methods() -> list[str]:
    return sorted(n for n, v in vars(LakeTables).items() if inspect.isfunction(v) and not n.startswith("_"))


@pytest.mark.parametrize("cls", BACK_ENDS, ids=lambda c: c.backend)
def test_each_back_end_implements_every_method_of_the_interface_with_its_parameters(cls):
    assert {"read", "merge", "replace_partitions", "live_files", "vacuum"} <= set(protocol_methods())
    for name in protocol_methods():
        want = list(inspect.signature(getattr(LakeTables, name)).parameters)
        have = list(inspect.signature(getattr(cls, name)).parameters)
        assert have[:len(want)] == want, f"{cls.__name__}.{name}{have} vs LakeTables.{name}{want}"


def test_both_back_ends_are_lake_tables_and_differ_by_type(tmp_path):
    lake = Lake.at(tmp_path / "lake")
    rs, spark = DeltaRsTables(lake), SparkDeltaTables(lake, spark=object())
    assert isinstance(rs, LakeTables) and isinstance(spark, LakeTables)
    assert (rs.backend, spark.backend) == ("deltalake", "delta-spark")
    # committing files someone else wrote is what only delta-rs does: callers ask by type
    assert isinstance(rs, DeltaRsTables) and not isinstance(spark, DeltaRsTables)
    assert not isinstance(object(), LakeTables)


def test_open_tables_without_a_session_is_delta_rs(tmp_path):
    assert type(open_tables(Lake.at(tmp_path / "lake"))) is DeltaRsTables


def test_vacuum_below_a_week_needs_the_unsafe_flag():
    with pytest.raises(ValueError, match="below the safe 168 h; pass --unsafe-retention"):
        check_vacuum_retention(24, allow_unsafe=False)
    check_vacuum_retention(24, allow_unsafe=True)
    check_vacuum_retention(168, allow_unsafe=False)
