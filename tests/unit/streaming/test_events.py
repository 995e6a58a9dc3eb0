"""parse() and the RocksDB key/value codec: pure functions, no broker."""
from __future__ import annotations

import json

import pytest

from pinrec.core.contracts import PINTEREST_ACTIONS, Rejection
from pinrec.core.events import Event
from streaming.corpus import good_event, malformed_messages
from streaming.events import decode, encode_key, encode_value, key_bounds, key_ts, parse

NOW = 1_780_000_000_000_000
MAX_TS = NOW + 300_000_000


def test_good_event_parses_to_the_same_fields():
    d = good_event(3, NOW)
    e = parse(json.dumps({**d, "unknown_field": [1, 2]}).encode(), PINTEREST_ACTIONS, MAX_TS)
    assert e == Event("good-3", 7, 1003, "pin", "repin", "homefeed", NOW - 1_000_000 + 3)


CORPUS = malformed_messages(NOW)
# Kinds parse() does not foresee: it raises, and the consumer's isolation dead-letters them.
RAISES = [c for c in CORPUS if c[2].startswith("processing failed: ")]
REJECTED = [c for c in CORPUS if c not in RAISES]


def test_corpus_has_at_least_twelve_distinct_kinds():
    assert len({k for k, _, _ in CORPUS}) >= 12


def test_the_corpus_holds_a_kind_that_parse_does_not_foresee():
    assert [k for k, _, _ in RAISES] == ["deeply_nested_json"]


@pytest.mark.parametrize("kind,raw,reason", RAISES, ids=[k for k, _, _ in RAISES])
def test_unforeseen_kinds_raise_the_exception_their_reason_names(kind, raw, reason):
    exc = reason.removeprefix("processing failed: ")
    with pytest.raises(Exception) as e:
        parse(raw, PINTEREST_ACTIONS, MAX_TS)
    assert type(e.value).__name__ == exc


@pytest.mark.parametrize("kind,raw,reason", REJECTED, ids=[k for k, _, _ in REJECTED])
def test_every_malformed_kind_is_rejected_with_its_reason(kind, raw, reason):
    r = parse(raw, PINTEREST_ACTIONS, MAX_TS)
    assert isinstance(r, Rejection), f"{kind} was accepted: {r}"
    assert reason in r.reason
    assert r.raw == (raw or b"")


def test_query_event_roundtrips_through_the_codec_with_its_text():
    e = Event("q-1", 42, 2**62 + 5, "query", "search", "search", NOW, "red shoes")
    k, v = encode_key(e.user_id, e.ts_us, e.event_id), encode_value(e)
    assert len(k) == 24 and key_ts(k) == NOW
    assert decode(k, v) == e


def test_pin_event_roundtrips_without_query_text():
    e = Event("p-1", 1, 9, "pin", "outbound_click", "related_pins", 5)
    assert decode(encode_key(1, 5, "p-1"), encode_value(e)) == e


def test_keys_sort_by_user_then_time_and_same_event_gives_same_key():
    a = encode_key(1, 999_999, "x")
    b = encode_key(2, 1, "y")
    c = encode_key(2, 2, "a")
    assert a < b < c
    assert encode_key(2, 2, "a") == c  # idempotency: a re-delivery overwrites itself
    assert encode_key(2, 2, "b") != c  # two events in the same µs do not collide
    lo, hi = key_bounds(2, since_us=2)
    assert not (lo <= b < hi) and lo <= c < hi and not (lo <= a < hi)
