"""The closed loop's contracts: who gets which arm, what a served list looks like, what an arm earned.

Pure (no I/O, no clock): serving assigns arms and logs served lists with these, the speed layer
lands them, and the batch `outcomes` job reads them back, so the three cannot disagree.

- Arm assignment: a user who names no arm gets one by a stable hash of (salt, user_id) mapped onto
  the cumulative traffic shares, in the sorted order of the arm names. Same user, same salt, same
  shares -> same arm on every replica and every day; a new salt reshuffles everybody.
- `served` table: one row per served item (request_id, rank), partitioned by the UTC day the
  response was sent. `arm_source` says whether the arm was assigned by the hash ("assigned",
  part of the arm comparison) or named by the request ("requested", left out of it).
- `arm_outcomes` table: one row per (ds, arm, outcome) with what the arm earned (see
  jobs/outcomes.py for how each column is computed).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa

# The `served` and `arm_outcomes` schemas live beside the other table schemas (the lake adapter
# writes through them); they are re-exported here with the rest of the closed loop's contracts.
from pinrec.contracts import ARM_OUTCOMES_SCHEMA, SERVED_SCHEMA, TS_TYPE  # noqa: F401 (re-export)

SERVED_TOPIC = "served"
ARM_SOURCES = ("assigned", "requested")
ITEM_SOURCES = ("precomputed", "regenerated", "popularity")
DEFAULT_SALT = "pinrec-arms-v1"


@dataclass(frozen=True)
class TrafficSplit:
    """Traffic shares over arms (non-negative, summing to 1) and the experiment salt."""

    shares: tuple[tuple[str, float], ...]  # sorted by arm name
    salt: str = DEFAULT_SALT

    @staticmethod
    def of(shares: Mapping[str, float], salt: str = DEFAULT_SALT) -> "TrafficSplit":
        if not shares:
            raise ValueError("traffic shares are empty; give each arm a share, e.g. {\"a\": 0.5, \"b\": 0.5}")
        bad = {a: w for a, w in shares.items() if not isinstance(w, (int, float)) or w < 0}
        if bad:
            raise ValueError(f"traffic shares must be non-negative numbers, got {bad}")
        total = float(sum(shares.values()))
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"traffic shares must sum to 1, got {total:.6f}: {dict(shares)}")
        return TrafficSplit(tuple(sorted((a, float(w)) for a, w in shares.items())), salt)

    @staticmethod
    def even(arms: list[str] | tuple[str, ...], salt: str = DEFAULT_SALT) -> "TrafficSplit":
        return TrafficSplit.of({a: 1.0 / len(arms) for a in arms}, salt)

    def arm_of(self, user_id: int) -> str:
        """The arm `user_id` is assigned to: hash -> a point in [0, 1) -> the share it falls in."""
        digest = hashlib.blake2b(f"{self.salt}:{int(user_id)}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2.0**64
        upto = 0.0
        for arm, share in self.shares:
            upto += share
            if point < upto:
                return arm
        return next(a for a, s in reversed(self.shares) if s > 0)  # float rounding at the top end


# --------------------------------------------------------------------------------------------
# One served response -> one log record -> rows of the `served` table. Serving's logger, the
# lander and the closed-loop simulation all go through these two, so a served list has one shape.
# --------------------------------------------------------------------------------------------


def served_record(response: Mapping[str, Any], request_id: str, arm_source: str,
                  served_at_us: int) -> dict[str, Any]:
    """The log record (the `served` topic's JSON value) of one `RecommendationService.recommend`
    response. `served_at_us` is when it was sent (UTC µs), from the caller: this stays pure."""
    if arm_source not in ARM_SOURCES:
        raise ValueError(f"arm_source must be one of {list(ARM_SOURCES)}, got {arm_source!r}")
    if not request_id:
        raise ValueError("request_id must be a non-empty string: it is the idempotency key")
    return {
        "request_id": str(request_id),
        "user_id": int(response["user_id"]),
        "arm": response["arm"],
        "arm_source": arm_source,
        "candidates_ds": response.get("candidates_ds"),
        "sequences_ds": response.get("sequences_ds"),
        "served_at": int(served_at_us),
        "items": [{"item_id": int(i["item_id"]), "outcome": i.get("outcome"), "source": i["source"]}
                  for i in response["items"]],
    }


def served_rows(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """`served` rows (SERVED_SCHEMA), one per item, rank = position in the response (0 first).
    A record without an arm (no candidates were published) is logged with arm "" so that it
    still counts as served; the outcomes job leaves it out of the comparison."""
    cols: dict[str, list] = {name: [] for name in SERVED_SCHEMA.names}
    for rec in records:
        ts = int(rec["served_at"])
        ds = datetime.fromtimestamp(ts / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")
        for rank, item in enumerate(rec["items"]):
            if item["source"] not in ITEM_SOURCES:
                raise ValueError(f"served item source must be one of {list(ITEM_SOURCES)}, "
                                 f"got {item['source']!r} (request {rec['request_id']})")
            for name, value in (("request_id", rec["request_id"]), ("user_id", rec["user_id"]),
                                ("arm", rec["arm"] or ""), ("arm_source", rec["arm_source"]),
                                ("rank", rank), ("item_id", item["item_id"]),
                                ("outcome", item.get("outcome")), ("source", item["source"]),
                                ("candidates_ds", rec.get("candidates_ds")),
                                ("sequences_ds", rec.get("sequences_ds")), ("served_at", ts),
                                ("ds", ds)):
                cols[name].append(value)
    arrays = [pa.array(cols[f.name], pa.int64() if f.name == "served_at" else f.type)
              for f in SERVED_SCHEMA]
    arrays[SERVED_SCHEMA.get_field_index("served_at")] = arrays[
        SERVED_SCHEMA.get_field_index("served_at")].cast(TS_TYPE)
    return pa.Table.from_arrays(arrays, schema=SERVED_SCHEMA)
