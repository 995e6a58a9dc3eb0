"""What serving hands the model (pure): the newest max_len events as plain columns, and the
older history's items, which are removed from the result instead of searched past."""
from __future__ import annotations

import pickle

from pinrec.core.events import Event
from serving.regenerate import split_history

HISTORY = [Event(f"e{i}", 7, 100 + i, "pin", "repin" if i % 2 else "grid_click", "homefeed", 1000 + i)
           for i in range(6)]


def test_newest_max_len_events_as_columns_and_older_items_apart():
    cols, older = split_history(HISTORY, 4)
    ids, types, actions, surfaces, ts, texts = cols
    assert ids == (102, 103, 104, 105) and ts == (1002, 1003, 1004, 1005)
    assert texts == (None,) * 4
    assert actions == ("grid_click", "repin", "grid_click", "repin")
    assert types == ("pin",) * 4 and surfaces == ("homefeed",) * 4
    assert older == frozenset({100, 101})


def test_short_history_and_zero_max_len():
    cols, older = split_history(HISTORY[:2], 50)
    assert cols[0] == (100, 101) and older == frozenset()
    cols, older = split_history(HISTORY, 0)
    assert cols == ((),) * 6 and older == frozenset(range(100, 106))


def test_columns_survive_the_pipe_to_a_worker():
    msg = split_history(HISTORY, 3)
    assert pickle.loads(pickle.dumps(msg)) == msg


def test_query_texts_travel_with_the_columns():
    from serving.signals import query_event

    cols, _ = split_history([*HISTORY[:2], query_event("red shoes", 2000)], 50)
    assert cols[1] == ("pin", "pin", "query") and cols[5] == (None, None, "red shoes")
