"""The engagement event as a value: `Event` (one Kafka message value, one row of the landing
table whose schema is contracts.EVENTS_SCHEMA) and the one validation of an event dict, which
the speed layer's parse (streaming/events.py) applies before it accepts a message.

Pure: no I/O, no clock (the caller passes `max_ts_us`), no environment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from pinrec.core.contracts import ITEM_TYPES, MAX_ID, QUERY_ACTION, SURFACES, ActionVocab

EVENT_REQUIRED = ("event_id", "user_id", "item_id", "item_type", "action", "surface", "ts")


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: int
    item_id: int
    item_type: str
    action: str
    surface: str
    ts_us: int  # UTC microseconds since the epoch
    query_text: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "item_type": self.item_type,
            "action": self.action,
            "surface": self.surface,
            "ts": self.ts_us,
        }
        if self.query_text is not None:
            d["query_text"] = self.query_text
        return d

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")


def validate_event_fields(d: Mapping[str, Any], vocab_: ActionVocab, max_ts_us: int) -> str | None:
    """Return the reason an event dict is invalid, or None. Pure; `max_ts_us` is 'now + skew'."""
    for name in EVENT_REQUIRED:
        if name not in d or d[name] is None:
            return f"missing required field {name!r}"
    if not isinstance(d["event_id"], str) or not d["event_id"]:
        return "field 'event_id' must be a non-empty string"
    for name in ("user_id", "item_id", "ts"):
        v = d[name]
        if not isinstance(v, int) or isinstance(v, bool):
            return f"field {name!r} must be an integer, got {type(v).__name__}"
        if v < 0 or v > MAX_ID:
            return f"field {name!r} out of range: {v}"
    if d["item_type"] not in ITEM_TYPES:
        return f"unknown item_type {d['item_type']!r}; expected one of {list(ITEM_TYPES)}"
    if d["surface"] not in SURFACES:
        return f"unknown surface {d['surface']!r}; expected one of {list(SURFACES)}"
    if d["action"] not in vocab_.actions:
        return f"unknown action {d['action']!r}; expected one of {list(vocab_.actions)}"
    if (d["item_type"] == "query") != (d["action"] == QUERY_ACTION):
        return "item_type 'query' goes with action 'search' and only with it"
    qt = d.get("query_text")
    if qt is not None and not isinstance(qt, str):
        return "field 'query_text' must be a string"
    if d["ts"] > max_ts_us:
        return f"timestamp {d['ts']} is in the future (after {max_ts_us})"
    return None
