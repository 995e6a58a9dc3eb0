"""The signal service's merge rule: de-duplicated by event_id, chronological, order-independent."""
from __future__ import annotations

import random

import pytest

from pinrec.core.contracts import query_item_id
from pinrec.core.events import Event
from serving.signals import merge_history

CUT = 1_000_000


def ev(eid: str, ts: int, item: int = 1, action: str = "repin") -> Event:
    return Event(eid, 7, item, "pin", action, "homefeed", ts)


BATCH = [ev("b1", 10), ev("b2", 20), ev("both", 30, item=5)]
# The realtime tail: fresh events, one the batch already holds (a late arrival the batch
# layer absorbed), one older than the cutoff (already absorbed, must be ignored), and two
# events with the same timestamp (tie broken by event_id).
TAIL = [ev("r1", CUT + 5), ev("r2", CUT + 1), ev("both", 30, item=999), ev("old", CUT - 1),
        ev("r4", CUT + 3), ev("r3", CUT + 3)]
EXPECTED = ["b1", "b2", "both", "r2", "r3", "r4", "r1"]


def arrivals(order: str) -> list[Event]:
    if order == "ascending":
        return sorted(TAIL, key=lambda e: (e.ts_us, e.event_id))
    if order == "descending":
        return sorted(TAIL, key=lambda e: (e.ts_us, e.event_id), reverse=True)
    shuffled = list(TAIL)
    random.Random(3).shuffle(shuffled)
    return shuffled


@pytest.mark.parametrize("order", ["ascending", "descending", "unordered"])
def test_merge_rule_is_the_same_whatever_the_arrival_order(order):
    merged = merge_history(BATCH, arrivals(order), CUT, max_len=100)
    assert [e.event_id for e in merged] == EXPECTED
    # the batch copy of a duplicated id wins over the realtime copy
    assert next(e for e in merged if e.event_id == "both").item_id == 5


@pytest.mark.parametrize("order", ["ascending", "descending", "unordered"])
def test_duplicates_inside_the_tail_resolve_the_same_way(order):
    tail = arrivals(order) + [ev("r1", CUT + 5, item=42)]
    merged = merge_history([], tail, CUT, max_len=100)
    assert [e.event_id for e in merged] == ["r2", "r3", "r4", "r1"]
    assert next(e for e in merged if e.event_id == "r1").item_id == 1  # smaller (ts, id, item)


def test_max_len_keeps_the_newest_and_query_goes_last():
    merged = merge_history(BATCH, TAIL, CUT, max_len=3, query="  Red Shoes ", now_us=CUT + 100)
    assert [e.event_id for e in merged[:3]] == ["r3", "r4", "r1"]
    q = merged[-1]
    assert (q.item_type, q.action, q.surface, q.ts_us) == ("query", "search", "search", CUT + 100)
    assert q.item_id == query_item_id("red shoes")


def test_blank_query_is_not_a_token():
    assert merge_history(BATCH, [], CUT, 10, query="   ") == BATCH
