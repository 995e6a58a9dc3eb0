import pyarrow as pa
import pytest

from pinrec.core import contracts as c
from pinrec.core.events import validate_event_fields


def test_query_ids_are_stable_and_normalised():
    a = c.query_item_id("  Cat   Toys ")
    assert a == c.query_item_id("cat toys")
    assert a != c.query_item_id("dog toys")
    assert 0 <= a <= c.MAX_ID
    # a fixed value: the id must not change between releases or hosts
    assert c.query_item_id("cat toys") == c.query_item_id("CAT TOYS")


def test_action_vocab_ids_and_unknown_action():
    v = c.PINTEREST_ACTIONS
    assert v.actions[-1] == "search"
    assert v.action_id("repin") == 0
    with pytest.raises(ValueError, match="unknown action 'like'"):
        v.action_id("like")
    assert c.ActionVocab.from_json(v.to_json()) == v


def _event(**kw):
    d = dict(event_id="e1", user_id=1, item_id=2, item_type="pin", action="repin",
             surface="homefeed", ts=1_700_000_000_000_000)
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "kw, reason",
    [
        (dict(user_id="7"), "'user_id' must be an integer"),
        (dict(ts=True), "'ts' must be an integer"),
        (dict(action="like"), "unknown action 'like'"),
        (dict(surface="email"), "unknown surface"),
        (dict(item_type="board"), "unknown item_type"),
        (dict(item_type="query"), "goes with action 'search'"),
        (dict(event_id=""), "non-empty string"),
        (dict(ts=9_000_000_000_000_000), "in the future"),
        (dict(item_id=-1), "out of range"),
    ],
)
def test_validate_event_rejects_with_reason(kw, reason):
    got = validate_event_fields(_event(**kw), c.PINTEREST_ACTIONS, max_ts_us=2_000_000_000_000_000)
    assert got is not None and reason in got


def test_validate_event_missing_field():
    d = _event()
    del d["surface"]
    assert validate_event_fields(d, c.PINTEREST_ACTIONS, 2**62) == "missing required field 'surface'"
    assert validate_event_fields(_event(), c.PINTEREST_ACTIONS, 2**62) is None


def test_ds_cutoff_and_validation():
    assert c.cutoff_us("2026-01-01") == 1_767_312_000 * 1_000_000
    assert c.ds_of_us(c.cutoff_us("2026-01-01") - 1) == "2026-01-01"
    assert c.ds_of_us(c.cutoff_us("2026-01-01")) == "2026-01-02"
    for bad in ("2026-1-1", "2026-02-30", "yesterday"):
        with pytest.raises(ValueError, match="--ds"):
            c.parse_ds(bad)


def test_table_schemas_partitioned_by_ds():
    for name in ("events", "sequences", "items", "candidates"):
        schema = c.TABLE_SCHEMAS[name]
        assert "ds" in schema.names and c.PARTITION_COLUMNS[name] == ["ds"]
    assert c.EVENTS_SCHEMA.field("ts").type == pa.timestamp("us", tz="UTC")
    keys = {"ds", "user_id", "arm", "rank", "item_id", "score", "outcome", "model_version",
            "budget", "generated_at"}
    assert keys == set(c.CANDIDATES_SCHEMA.names)
