"""A corpus of malformed messages, one per kind of bad input, with the reason each must get.

Used by the DLQ tests and by `pinrec bench stream` to show that every kind lands in the
dead-letter topic while good messages around it are stored. `now_us` fixes "the future".
"""
from __future__ import annotations

import json

from streaming.events import MAX_MESSAGE_BYTES


def good_event(i: int, now_us: int, user_id: int = 7) -> dict:
    return {"event_id": f"good-{i}", "user_id": user_id, "item_id": 1000 + i, "item_type": "pin",
            "action": "repin", "surface": "homefeed", "ts": now_us - 1_000_000 + i}


def malformed_messages(now_us: int) -> list[tuple[str, bytes | None, str]]:
    """(kind, raw value, substring the rejection reason must contain)."""
    def ev(**over) -> bytes:
        d = good_event(0, now_us)
        d["event_id"] = "bad-" + "-".join(over) if over else "bad"
        for k, v in over.items():
            if v is _DROP:
                d.pop(k)
            else:
                d[k] = v
        return json.dumps(d).encode()

    return [
        ("not_json", b"{this is not json", "not JSON"),
        ("empty_bytes", b"", "not JSON"),
        ("not_utf8", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("json_array", b"[1, 2, 3]", "not a JSON object"),
        ("json_string", b'"an event"', "not a JSON object"),
        ("null_value", None, "empty message"),
        ("missing_event_id", ev(event_id=_DROP), "missing required field 'event_id'"),
        ("missing_user_id", ev(user_id=_DROP), "missing required field 'user_id'"),
        ("missing_ts", ev(ts=_DROP), "missing required field 'ts'"),
        ("user_id_string", ev(user_id="12"), "'user_id' must be an integer"),
        ("user_id_bool", ev(user_id=True), "'user_id' must be an integer"),
        ("item_id_float", ev(item_id=1.5), "'item_id' must be an integer"),
        ("ts_iso_string", ev(ts="2026-01-01T00:00:00Z"), "'ts' must be an integer"),
        ("negative_user_id", ev(user_id=-5), "out of range"),
        ("empty_event_id", ev(event_id=""), "'event_id' must be a non-empty string"),
        ("unknown_action", ev(action="like"), "unknown action 'like'"),
        ("unknown_surface", ev(surface="email"), "unknown surface"),
        ("unknown_item_type", ev(item_type="video"), "unknown item_type"),
        ("query_with_repin", ev(item_type="query"), "item_type 'query' goes with action 'search'"),
        ("far_future_ts", ev(ts=now_us + 10 * 86_400 * 1_000_000), "in the future"),
        # Small but fatal to json.loads (RecursionError, not a ValueError): parse does not
        # special-case it, so it exercises the consumer's isolation of unforeseen failures.
        ("deeply_nested_json", b"[" * 10_000, "processing failed: RecursionError"),
        ("oversized", json.dumps({**good_event(0, now_us), "pad": "x" * MAX_MESSAGE_BYTES}).encode(),
         "oversized payload"),
    ]


_DROP = object()
