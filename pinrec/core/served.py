"""The `served` Kafka message: one JSON object per API response, written by serving and read by
the speed layer's lander. Pure (no I/O, no clock): `encode` on one side, `parse` and `rows` on the
other, so the two cannot disagree about the format.

    key   = request_id (UTF-8): the idempotency key (at least once on the wire, once in the lake)
    value = {"request_id": "9f3c…", "user_id": 42, "arm": "balanced", "arm_source": "assigned",
             "candidates_ds": "2026-03-01", "sequences_ds": "2026-03-01",
             "served_at_us": 1772409600000000,
             "item_ids": [7, 12, ...], "outcomes": ["repin", null, ...],
             "sources": ["precomputed", "popularity", ...]}

The three lists are the served items in rank order (rank = position, from 0), one entry per
item. Columns rather than one object per item: the server encodes this on its own CPU for every
response, and lists of scalars encode in a third of the time of 50 small objects, at half the
bytes. A response that named no arm while no arm was published carries arm NO_ARM. `rows`
explodes records into SERVED_SCHEMA rows, one per item.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa

from pinrec.core.contracts import Rejection, ds_of_us
from pinrec.core.experiments import ARM_SOURCES, ITEM_SOURCES, SERVED_SCHEMA

NO_ARM = "none"
MAX_SERVED_BYTES = 256 * 1024   # 1000 items (the API's maximum n) take ~70 kB
MIN_TS_US = 946_684_800_000_000  # 2000-01-01: anything older is a unit error (s or ms)
_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ServedRecord:
    request_id: str
    user_id: int
    arm: str
    arm_source: str
    candidates_ds: str | None
    sequences_ds: str | None
    served_at_us: int
    items: tuple[tuple[int, str | None, str], ...]  # (item_id, outcome, source) in rank order


def message(response: dict, served_at_us: int) -> dict:
    """The message value (JSON object) for one API response (`RecommendationService.recommend`'s
    dict, which carries request_id and arm_source); `served_at_us` from the caller (pure)."""
    items = response["items"]
    return {"request_id": response["request_id"], "user_id": response["user_id"],
            "arm": response["arm"] or NO_ARM, "arm_source": response["arm_source"],
            "candidates_ds": response["candidates_ds"], "sequences_ds": response["sequences_ds"],
            "served_at_us": served_at_us,
            "item_ids": [i["item_id"] for i in items], "outcomes": [i["outcome"] for i in items],
            "sources": [i["source"] for i in items]}


def encode(response: dict, served_at_us: int) -> tuple[bytes, bytes]:
    """(key, value) of the `served` topic's message for one API response."""
    return response["request_id"].encode(), json.dumps(message(response, served_at_us),
                                                       separators=(",", ":")).encode()


def record(response: dict, served_at_us: int) -> ServedRecord:
    """The ServedRecord of one API response, as the lander reads it back from its message: the
    closed-loop simulation, which serves on simulated days, writes its rows through this."""
    got = parse(encode(response, served_at_us)[1], max_ts_us=served_at_us)
    if isinstance(got, Rejection):
        raise ValueError(f"response of request {response.get('request_id')} is not a valid served "
                         f"record: {got.reason}")
    return got


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _why_bad(d: dict, max_ts_us: int) -> str | None:
    rid = d.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        return "field 'request_id' must be a string of 1..128 characters"
    if not _is_int(d.get("user_id")) or d["user_id"] < 0:
        return "field 'user_id' must be a non-negative integer"
    if not isinstance(d.get("arm"), str) or not d["arm"]:
        return "field 'arm' must be a non-empty string"
    if d.get("arm_source") not in ARM_SOURCES:
        return f"field 'arm_source' must be one of {list(ARM_SOURCES)}, got {d.get('arm_source')!r}"
    for k in ("candidates_ds", "sequences_ds"):
        if d.get(k) is not None and not (isinstance(d[k], str) and _DS.match(d[k])):
            return f"field {k!r} must be null or YYYY-MM-DD, got {d[k]!r}"
    ts = d.get("served_at_us")
    if not _is_int(ts) or ts < MIN_TS_US:
        return f"field 'served_at_us' must be UTC microseconds after 2000-01-01, got {ts!r}"
    if ts > max_ts_us:
        return f"field 'served_at_us' is in the future: {ts} > {max_ts_us}"
    cols = [d.get(k) for k in ("item_ids", "outcomes", "sources")]
    if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
        return "fields 'item_ids', 'outcomes' and 'sources' must be lists of one length"
    for k, (item, outcome, source) in enumerate(zip(*cols)):
        if not _is_int(item):
            return f"item_ids[{k}] must be an integer, got {item!r}"
        if source not in ITEM_SOURCES:
            return f"sources[{k}] must be one of {list(ITEM_SOURCES)}, got {source!r}"
        if outcome is not None and not isinstance(outcome, str):
            return f"outcomes[{k}] must be a string or null, got {outcome!r}"
    return None


def parse(raw: bytes | None, max_ts_us: int, max_bytes: int = MAX_SERVED_BYTES) -> ServedRecord | Rejection:
    """One `served` message value -> a record, or the Rejection that sends it to the DLQ.
    `max_ts_us` is "now" plus the clock skew allowed."""
    if raw is None:
        return Rejection("empty message (null value)", b"")
    if len(raw) > max_bytes:
        return Rejection(f"oversized payload: {len(raw)} bytes > {max_bytes}", raw)
    try:
        d = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Rejection(f"not UTF-8 text: {e.reason} at byte {e.start}", raw)
    except ValueError as e:
        return Rejection(f"not JSON: {e}", raw)
    if not isinstance(d, dict):
        return Rejection(f"not a JSON object: got {type(d).__name__}", raw)
    reason = _why_bad(d, max_ts_us)
    if reason is not None:
        return Rejection(reason, raw)
    return ServedRecord(d["request_id"], d["user_id"], d["arm"], d["arm_source"],
                        d.get("candidates_ds"), d.get("sequences_ds"), d["served_at_us"],
                        tuple(zip(d["item_ids"], d["outcomes"], d["sources"])))


def first_per_request(records: Iterable[ServedRecord]) -> list[ServedRecord]:
    """One record per request_id (the first seen): a re-sent response is the same response."""
    seen: dict[str, ServedRecord] = {}
    for r in records:
        seen.setdefault(r.request_id, r)
    return list(seen.values())


def rows(records: Iterable[ServedRecord]) -> pa.Table:
    """SERVED_SCHEMA rows, one per served item; ds = the UTC day of served_at."""
    cols: dict[str, list] = {f.name: [] for f in SERVED_SCHEMA}
    for r in records:
        ds = ds_of_us(r.served_at_us)
        for rank, (item_id, outcome, source) in enumerate(r.items):
            for k, v in (("request_id", r.request_id), ("user_id", r.user_id), ("arm", r.arm),
                         ("arm_source", r.arm_source), ("rank", rank), ("item_id", item_id),
                         ("outcome", outcome), ("source", source),
                         ("candidates_ds", r.candidates_ds), ("sequences_ds", r.sequences_ds),
                         ("served_at", r.served_at_us), ("ds", ds)):
                cols[k].append(v)
    arrays = [pa.array(cols[f.name], type=pa.int64() if f.name == "served_at" else f.type)
              for f in SERVED_SCHEMA]
    arrays[SERVED_SCHEMA.get_field_index("served_at")] = arrays[
        SERVED_SCHEMA.get_field_index("served_at")].cast(SERVED_SCHEMA.field("served_at").type)
    return pa.Table.from_arrays(arrays, schema=SERVED_SCHEMA)
