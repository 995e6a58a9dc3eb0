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
from pinrec.core.contracts import ARM_OUTCOMES_SCHEMA, SERVED_SCHEMA, TS_TYPE  # noqa: F401 (re-export)

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
