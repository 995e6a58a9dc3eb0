"""Pure parsing and encoding of engagement events for the speed layer.

`parse(raw) -> Event | Rejection` decides what is accepted (DESIGN.md §3, via the shared
`contracts.validate_event_fields`), and the key/value codec fixes the RocksDB layout:

    key   = user_id (8 B big-endian) | ts_us (8 B big-endian) | blake2b-8(event_id)
    value = struct(item_id, item_type, surface, len(action), len(event_id)) | action | event_id | query_text

Keys sort by user then time, so "a user's events since t" is one prefix range scan, and the
event-id hash makes a re-delivered message overwrite itself (idempotent writes). No I/O, no clock:
the caller passes `max_ts_us` ("now" plus allowed skew).
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Iterable

from pinrec.core.contracts import ITEM_TYPES, SURFACES, ActionVocab, Rejection
from pinrec.core.events import Event, validate_event_fields

from streaming.limits import MAX_EVENT_BYTES as MAX_MESSAGE_BYTES

_HEADER = struct.Struct(">qBBBB")
_KEY = struct.Struct(">QQ")
KEY_LEN = 24


def parse(raw: bytes | None, vocab: ActionVocab, max_ts_us: int,
          max_bytes: int = MAX_MESSAGE_BYTES) -> Event | Rejection:
    """One Kafka message value -> an accepted Event or the Rejection that sends it to the DLQ."""
    if raw is None:
        return Rejection("empty message (null value)", b"")
    if len(raw) > max_bytes:
        return Rejection(f"oversized payload: {len(raw)} bytes > {max_bytes} (max_event_bytes)", raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(f"not UTF-8 text: {e.reason} at byte {e.start}", raw)
    try:
        d = json.loads(text)
    except ValueError as e:
        return Rejection(f"not JSON: {e.msg} at char {e.pos}", raw)
    if not isinstance(d, dict):
        return Rejection(f"not a JSON object: got {type(d).__name__}", raw)
    reason = validate_event_fields(d, vocab, max_ts_us)
    if reason is not None:
        return Rejection(reason, raw)
    if len(d["event_id"].encode("utf-8")) > 255 or len(d["action"].encode("utf-8")) > 255:
        return Rejection("field 'event_id' or 'action' longer than 255 bytes", raw)
    return Event(event_id=d["event_id"], user_id=d["user_id"], item_id=d["item_id"],
                 item_type=d["item_type"], action=d["action"], surface=d["surface"],
                 ts_us=d["ts"], query_text=d.get("query_text"))


def event_hash(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()


def encode_key(user_id: int, ts_us: int, event_id: str) -> bytes:
    return _KEY.pack(user_id, ts_us) + event_hash(event_id)


def user_prefix(user_id: int) -> bytes:
    return user_id.to_bytes(8, "big")


def key_bounds(user_id: int, since_us: int = 0) -> tuple[bytes, bytes]:
    """[lo, hi) key range of a user's events with ts >= since_us."""
    return _KEY.pack(user_id, since_us), (user_id + 1).to_bytes(8, "big")


def key_ts(key: bytes) -> int:
    return int.from_bytes(key[8:16], "big")


def encode_value(e: Event) -> bytes:
    action = e.action.encode("utf-8")
    eid = e.event_id.encode("utf-8")
    head = _HEADER.pack(e.item_id, ITEM_TYPES.index(e.item_type), SURFACES.index(e.surface),
                        len(action), len(eid))
    return head + action + eid + (e.query_text or "").encode("utf-8")


def decode(key: bytes, value: bytes) -> Event:
    user_id, ts_us = _KEY.unpack_from(key)
    item_id, it, sf, la, le = _HEADER.unpack_from(value)
    o = _HEADER.size
    action = value[o:o + la].decode("utf-8")
    eid = value[o + la:o + la + le].decode("utf-8")
    qt = value[o + la + le:].decode("utf-8")
    item_type = ITEM_TYPES[it]
    return Event(event_id=eid, user_id=user_id, item_id=item_id, item_type=item_type,
                 action=action, surface=SURFACES[sf], ts_us=ts_us,
                 query_text=qt if item_type == "query" or qt else None)


def split(parsed: Iterable[Event | Rejection]) -> tuple[list[Event], list[Rejection]]:
    good, bad = [], []
    for p in parsed:
        (good if isinstance(p, Event) else bad).append(p)
    return good, bad
