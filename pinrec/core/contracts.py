"""The data contracts every layer shares: event schema, action vocabulary, table schemas, ids.

One source of truth (DESIGN.md §3). Pure: no I/O, no clock, no environment. The batch layer,
the speed layer and serving all import from here, so a field added here is added everywhere.
The engagement event's value type and its validation live beside it in events.py.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import pyarrow as pa

# --------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------

ITEM_TYPES: tuple[str, ...] = ("pin", "query")
SURFACES: tuple[str, ...] = ("homefeed", "related_pins", "search")
QUERY_ACTION = "search"


@dataclass(frozen=True)
class ActionVocab:
    """The actions a dataset knows, in a fixed order (index = action id used by the model).

    `engagement_actions` are outcomes the model can be conditioned on; `QUERY_ACTION` marks
    search-query tokens, which are inputs but never an outcome to ask for.
    """

    name: str
    engagement_actions: tuple[str, ...]

    @property
    def actions(self) -> tuple[str, ...]:
        return self.engagement_actions + (QUERY_ACTION,)

    def action_id(self, action: str) -> int:
        try:
            return self.actions.index(action)
        except ValueError:
            raise ValueError(
                f"unknown action {action!r} for vocabulary {self.name!r}; "
                f"expected one of {list(self.actions)}"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "engagement_actions": list(self.engagement_actions)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "ActionVocab":
        return ActionVocab(d["name"], tuple(d["engagement_actions"]))


# The paper's budget example spreads over these five (Figure 3 caption).
PINTEREST_ACTIONS = ActionVocab(
    "pinterest", ("repin", "grid_click", "long_grid_click", "outbound_click", "other")
)
VOCABS: dict[str, ActionVocab] = {"pinterest": PINTEREST_ACTIONS}

# MovieLens ratings as outcomes: 5 = strong positive (a save), 4 = positive, <= 3 = weak.
ACTION_BY_RATING = {5: "repin", 4: "grid_click", 3: "other", 2: "other", 1: "other"}


def vocab(name: str) -> ActionVocab:
    if name not in VOCABS:
        raise ValueError(f"unknown action vocabulary {name!r}; known: {sorted(VOCABS)}")
    return VOCABS[name]


# --------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")
MAX_ID = (1 << 63) - 1


def normalise_query(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


def query_item_id(text: str) -> int:
    """A stable 63-bit id for a search query: the same text gives the same id on every host."""
    digest = hashlib.blake2b(normalise_query(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_ID


def stable_event_id(*parts: object) -> str:
    """Deterministic event id from the fields that identify an event in a source dataset."""
    raw = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


# --------------------------------------------------------------------------------------------
# Engagement event (Kafka value JSON; same columns in the landing table)
# --------------------------------------------------------------------------------------------

TS_TYPE = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("item_type", pa.string(), nullable=False),
        pa.field("query_text", pa.string()),
        pa.field("action", pa.string(), nullable=False),
        pa.field("surface", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("ds", pa.string(), nullable=False),  # partition: UTC date of ts, YYYY-MM-DD
    ]
)
# The value type `Event` and the one validation of an event dict: pinrec/core/events.py.


@dataclass(frozen=True)
class Rejection:
    """Why an input record was not accepted; goes to the dead-letter topic with the raw bytes."""

    reason: str
    raw: bytes = field(repr=False, default=b"")


# --------------------------------------------------------------------------------------------
# Table schemas
# --------------------------------------------------------------------------------------------

SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("event_ids", pa.list_(pa.string())),
        pa.field("item_ids", pa.list_(pa.int64())),
        pa.field("item_types", pa.list_(pa.string())),
        pa.field("actions", pa.list_(pa.string())),
        pa.field("surfaces", pa.list_(pa.string())),
        pa.field("ts", pa.list_(TS_TYPE)),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("cutoff_ts", TS_TYPE, nullable=False),
        pa.field("ds", pa.string(), nullable=False),
    ]
)

# How `sequences` is stored (docs/adr/0002-sequences-daily-cost.md): `sequence_days` holds, per
# ds, one row per user active that day (that day's events, same columns as SEQUENCES_SCHEMA);
# `sequence_checkpoints` holds, at some ds, the full sequences as of that ds; `sequence_runs`
# one row per finished `pinrec sequences --ds` run. Readers call
# `pinrec.core.sequences_store.read_sequences(tables, ds)`, which merges them into SEQUENCES_SCHEMA.
SEQUENCE_RUNS_SCHEMA = pa.schema(
    [
        pa.field("window_days", pa.int32(), nullable=False),
        pa.field("max_len", pa.int32(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # day | checkpoint | full
        pa.field("day_events", pa.int64(), nullable=False),
        pa.field("active_users", pa.int64(), nullable=False),
        pa.field("rows_read", pa.int64(), nullable=False),
        pa.field("rows_written", pa.int64(), nullable=False),
        pa.field("bytes_written", pa.int64(), nullable=False),
        pa.field("finished_at", TS_TYPE, nullable=False),
        pa.field("ds", pa.string(), nullable=False),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("item_type", pa.string(), nullable=False),
        pa.field("features", pa.list_(pa.float32())),
        pa.field("first_seen", TS_TYPE),
        pa.field("last_seen", TS_TYPE),
        pa.field("engagements", pa.int64()),
        pa.field("ds", pa.string(), nullable=False),
    ]
)

CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("outcome", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("budget", pa.string()),  # JSON of the arm's budget over actions
        pa.field("generated_at", TS_TYPE),
    ]
)

# Side features per item as the sources provide them (categorical attribute ids for real data,
# a dense content vector for synthetic data); the `items` job turns them into `features`.
ITEM_FEATURES_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("item_type", pa.string(), nullable=False),
        pa.field("attributes", pa.list_(pa.int64())),
        pa.field("content", pa.list_(pa.float32())),
    ]
)

# What the API served, one row per served item (request_id, rank); written by the speed
# layer's lander (streaming/served_lander.py) from the `served` topic, partitioned by the UTC day
# the response was sent. pinrec/core/experiments.py re-exports it with the closed loop's contracts.
SERVED_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("arm_source", pa.string(), nullable=False),  # experiments.ARM_SOURCES
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("outcome", pa.string()),  # the action the item's embedding was conditioned on
        pa.field("source", pa.string(), nullable=False),  # experiments.ITEM_SOURCES
        pa.field("candidates_ds", pa.string()),
        pa.field("sequences_ds", pa.string()),
        pa.field("served_at", TS_TYPE, nullable=False),
        pa.field("ds", pa.string(), nullable=False),  # UTC day of served_at
    ]
)

# What each arm earned, one row per (ds, arm, outcome); written by `pinrec outcomes`
# (jobs/outcomes.py, which says how each column is computed).
ARM_OUTCOMES_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),  # an engagement action, or "all"
        pa.field("budget_share", pa.float64()),  # the arm's budget for this outcome
        pa.field("served_impressions", pa.int64()),
        pa.field("served_users", pa.int64()),
        pa.field("engaged_items", pa.int64()),
        pa.field("engaged_users", pa.int64()),
        pa.field("engagement_rate", pa.float64()),
        pa.field("engagement_rate_lo", pa.float64()),  # 95 % bootstrap interval over users
        pa.field("engagement_rate_hi", pa.float64()),
        pa.field("realised_share", pa.float64()),  # share of the arm's engagements taking this action
        pa.field("realised_share_lo", pa.float64()),
        pa.field("realised_share_hi", pa.float64()),
        pa.field("candidate_recall", pa.float64()),
        pa.field("candidate_recall_lo", pa.float64()),
        pa.field("candidate_recall_hi", pa.float64()),
        pa.field("coverage", pa.float64()),  # distinct candidate items / catalogue
        pa.field("novelty", pa.float64()),  # share of candidates not in the user's history
        pa.field("attribution_days", pa.int32()),
        pa.field("computed_at", TS_TYPE),
    ]
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "item_features": ITEM_FEATURES_SCHEMA,
    "events": EVENTS_SCHEMA,
    "sequences": SEQUENCES_SCHEMA,
    "sequence_days": SEQUENCES_SCHEMA,
    "sequence_checkpoints": SEQUENCES_SCHEMA,
    "sequence_runs": SEQUENCE_RUNS_SCHEMA,
    "items": ITEMS_SCHEMA,
    "candidates": CANDIDATES_SCHEMA,
    "served": SERVED_SCHEMA,
    "arm_outcomes": ARM_OUTCOMES_SCHEMA,
}
PARTITION_COLUMNS: dict[str, list[str]] = {
    "item_features": [],
    "events": ["ds"],
    "sequences": ["ds"],
    "sequence_days": ["ds"],
    "sequence_checkpoints": ["ds"],
    "sequence_runs": ["ds"],
    "items": ["ds"],
    "candidates": ["ds"],
    "served": ["ds"],
    "arm_outcomes": ["ds"],
}


# --------------------------------------------------------------------------------------------
# Dates. `ds` has one meaning everywhere: the UTC calendar day whose events are complete;
# the daily jobs for `ds` see every event with ts < cutoff(ds) = (ds + 1 day) 00:00 UTC.
# --------------------------------------------------------------------------------------------

_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DAY_US = 86_400_000_000  # microseconds per day: event timestamps (`ts`) are UTC microseconds


def parse_ds(ds: str) -> datetime:
    if not isinstance(ds, str) or not _DS.match(ds):
        raise ValueError(f"--ds must look like YYYY-MM-DD, got {ds!r}")
    try:
        return datetime.strptime(ds, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise ValueError(f"--ds {ds!r} is not a calendar date: {e}") from None


def cutoff_us(ds: str) -> int:
    """Exclusive upper bound (UTC µs) of the events a daily run for `ds` may see."""
    return int(parse_ds(ds).timestamp()) * 1_000_000 + DAY_US


def ds_of_us(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")


# --------------------------------------------------------------------------------------------
# Held-out users: never trained on by any model version, evaluated by the quality gate
# (docs/adr/0004-held-out-quality-gate.md). `pinrec train` drops them, `pinrec eval --model`
# and `pinrec gate check` evaluate on them; all three call `held_out_users`.
# --------------------------------------------------------------------------------------------

HOLDOUT_FRACTION = 0.02   # default share of users held out
HOLDOUT_MIN_USERS = 500   # the share is raised to reach this many where the lake has the users
HOLDOUT_MAX_FRACTION = 0.5  # ... but never above this share of the users
_HOLDOUT_SALT = 0x5EED_0F_9A7E_0004  # the held-out set is independent of every other user hash


def user_unit_hash(user_ids) -> "np.ndarray":
    """A stable point in [0, 1) per user id (splitmix64 finaliser of id ^ salt, top 53 bits):
    the same id gives the same point on every host, every day, whatever other users exist."""
    import numpy as np

    x = np.asarray(user_ids, dtype=np.int64).astype(np.uint64) ^ np.uint64(_HOLDOUT_SALT)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def holdout_fraction_for(n_users: int, fraction: float = HOLDOUT_FRACTION,
                         min_users: int = HOLDOUT_MIN_USERS) -> float:
    """The held-out share a lake fixes when its first model is trained on `n_users` users:
    `fraction`, raised so that about `min_users` users are held out where the lake has them,
    capped at HOLDOUT_MAX_FRACTION. Computed ONCE per lake and then stored (pinrec.core.layout
    `fix_holdout_fraction`): a share that followed the user count day by day would move users
    who were trained on into the held-out set whenever the count fell."""
    if not 0 < fraction <= HOLDOUT_MAX_FRACTION:
        raise ValueError(f"held-out fraction must be in (0, {HOLDOUT_MAX_FRACTION}], got {fraction}")
    if n_users <= 0:
        return fraction
    return min(HOLDOUT_MAX_FRACTION, max(fraction, min_users / n_users))


def held_out_users(user_ids, fraction: float) -> "np.ndarray":
    """bool mask: the users no model may train on. Membership depends on the user id and the
    lake's fixed fraction only, so it is the same on every day and for every model version."""
    return user_unit_hash(user_ids) < fraction
