"""Synthetic engagement data with a known right answer, streamed one day at a time.

The world:
- items sit in content clusters, with Zipf popularity inside each cluster, and a *format*
  (visual, long-form, product, video); the content vector = cluster centroid + format direction
  + noise, so a model can see both topic and format from features;
- the format sets which action an engagement takes (visual items draw repins, products draw
  outbound clicks, long-form items draw long grid clicks): conditioning on an action therefore
  has a measurable right answer, which is what the controllability matrix checks;
- users hold a few latent interests (clusters) that drift over the year, visit on some days in
  one session, and search with queries tied to their interests (query tokens, search surface).

Deterministic for a seed; memory is bounded by one day of one chunk of users, so 1M users x 365
days streams through without holding the year.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrec.core.contracts import DAY_US, EVENTS_SCHEMA, PINTEREST_ACTIONS, query_item_id

FORMATS = ("visual", "long_form", "product", "video")
# P(action | format) over PINTEREST_ACTIONS.engagement_actions:
#                   repin  grid   long   outbound other
ACTION_PROBS = np.array([
    [0.60, 0.25, 0.05, 0.03, 0.07],  # visual
    [0.08, 0.22, 0.58, 0.05, 0.07],  # long_form
    [0.07, 0.20, 0.08, 0.60, 0.05],  # product
    [0.12, 0.55, 0.08, 0.05, 0.20],  # video
])


@dataclass(frozen=True)
class SynthConfig:
    users: int = 2_000
    days: int = 60
    seed: int = 0
    start: str = "2026-01-01"  # first day (UTC)
    items: int = 5_000
    clusters: int = 40
    dim: int = 32  # content vector size
    interests: int = 3  # latent interests per user
    p_active: float = 0.35  # chance a user has a session on a given day
    events_per_session: float = 5.0
    query_rate: float = 0.08  # share of tokens that are search queries
    queries_per_cluster: int = 6
    zipf: float = 1.1
    drift: float = 0.01  # daily chance that a user swaps one interest for a new one
    session_focus: float = 0.7  # chance an event follows the session's interest
    chunk_users: int = 250_000

    def __post_init__(self):
        if self.users < 1 or self.days < 1 or self.items < self.clusters:
            raise ValueError("synth needs users >= 1, days >= 1 and items >= clusters")


@dataclass(frozen=True)
class World:
    """Everything fixed for the year: items, their clusters/formats/content, query vocabulary."""

    item_cluster: np.ndarray  # [I] int
    item_format: np.ndarray  # [I] int
    content: np.ndarray  # [I, dim] float32
    cluster_items: np.ndarray  # [C, I/C] item ids, most popular first
    rank_cdf: np.ndarray  # [I/C] Zipf CDF over ranks inside a cluster
    query_ids: np.ndarray  # [C, Q] int64
    query_texts: np.ndarray  # [C, Q] object


def item_id_of(index: np.ndarray) -> np.ndarray:
    return index.astype(np.int64) + 1  # ids start at 1; 0 stays free for padding


def build_world(cfg: SynthConfig) -> World:
    rng = np.random.default_rng([cfg.seed, 1])
    per = cfg.items // cfg.clusters
    n = per * cfg.clusters
    item_cluster = np.repeat(np.arange(cfg.clusters), per)
    perm = rng.permutation(n)  # item ids are not ordered by cluster
    item_cluster = item_cluster[perm]
    item_format = rng.integers(0, len(FORMATS), n)
    centroids = rng.normal(size=(cfg.clusters, cfg.dim))
    fmt_dirs = rng.normal(size=(len(FORMATS), cfg.dim))
    content = centroids[item_cluster] + 0.8 * fmt_dirs[item_format] + 0.5 * rng.normal(size=(n, cfg.dim))
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    cluster_items = np.stack([np.flatnonzero(item_cluster == c) for c in range(cfg.clusters)])
    w = 1.0 / np.arange(1, per + 1) ** cfg.zipf
    rank_cdf = np.cumsum(w / w.sum())
    words = [f"topic{c}" for c in range(cfg.clusters)]
    texts = np.array([[f"{words[c]} idea {q}" for q in range(cfg.queries_per_cluster)]
                      for c in range(cfg.clusters)], dtype=object)
    qids = np.vectorize(query_item_id, otypes=[np.int64])(texts)
    return World(item_cluster, item_format, content.astype(np.float32), cluster_items, rank_cdf,
                 qids, texts)


def _day_events(cfg: SynthConfig, world: World, interests: np.ndarray, user0: int, day: int,
                rng: np.random.Generator) -> pa.Table | None:
    """One day of events for users [user0, user0 + len(interests)). Pure given the rng state."""
    n_users = len(interests)
    active = np.flatnonzero(rng.random(n_users) < cfg.p_active)
    if len(active) == 0:
        return None
    counts = rng.poisson(cfg.events_per_session - 1, len(active)) + 1
    user_idx = np.repeat(active, counts)  # [E]
    e = len(user_idx)
    pos = np.arange(e) - np.repeat(np.cumsum(counts) - counts, counts)  # index within session
    session_interest = interests[active, rng.integers(0, cfg.interests, len(active))]
    focused = rng.random(e) < cfg.session_focus
    cluster = np.where(focused, np.repeat(session_interest, counts),
                       interests[user_idx, rng.integers(0, cfg.interests, e)])
    is_query = rng.random(e) < cfg.query_rate
    rank = np.minimum(np.searchsorted(world.rank_cdf, rng.random(e)), world.cluster_items.shape[1] - 1)
    item_index = world.cluster_items[cluster, rank]
    cum = np.cumsum(ACTION_PROBS, axis=1)[world.item_format[item_index]]
    action = (rng.random(e)[:, None] > cum).sum(axis=1).clip(0, ACTION_PROBS.shape[1] - 1)
    q = rng.integers(0, world.query_ids.shape[1], e)
    item_id = np.where(is_query, world.query_ids[cluster, q], item_id_of(item_index))
    acts = np.array(PINTEREST_ACTIONS.actions, dtype=object)
    action_s = np.where(is_query, "search", acts[action])
    # Pins right after a query in the session are search results; others feed or related pins.
    prev_query = np.concatenate([[False], is_query[:-1]]) & (pos > 0)
    feed = np.where(rng.random(e) < 0.7, "homefeed", "related_pins")
    surface = np.where(is_query | prev_query, "search", feed)
    day_start = _epoch_us(cfg.start) + day * DAY_US
    session_start = rng.integers(0, DAY_US - 3_600_000_000, len(active))
    ts = day_start + np.repeat(session_start, counts) + pos * 45_000_000 + rng.integers(0, 30_000_000, e)
    seq = pa.array(np.arange(e, dtype=np.int64))  # unique within (seed, day, chunk)
    event_id = pc.binary_join_element_wise(f"syn{cfg.seed}-d{day}-u{user0}-", pc.cast(seq, pa.string()), "")
    qtext = np.where(is_query, world.query_texts[cluster, q], None)
    ds = _ds(cfg.start, day)
    return pa.table(
        {
            "event_id": event_id,
            "user_id": pa.array(user_idx.astype(np.int64) + user0 + 1),
            "item_id": pa.array(item_id.astype(np.int64)),
            "item_type": pa.array(np.where(is_query, "query", "pin")),
            "query_text": pa.array(qtext, pa.string()),
            "action": pa.array(action_s, pa.string()),
            "surface": pa.array(surface, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "ds": pa.array(np.full(e, ds, dtype=object), pa.string()),
        },
        schema=EVENTS_SCHEMA,
    )


def _epoch_us(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) * 1_000_000


def _ds(start: str, day: int) -> str:
    return (datetime.strptime(start, "%Y-%m-%d") + timedelta(days=day)).strftime("%Y-%m-%d")


def generate(cfg: SynthConfig, world: World | None = None) -> Iterator[tuple[str, pa.Table]]:
    """Yield (ds, events of that day) for every day, users streamed in chunks."""
    world = world or build_world(cfg)
    chunks = [(u0, min(cfg.users, u0 + cfg.chunk_users)) for u0 in range(0, cfg.users, cfg.chunk_users)]
    # Each chunk has its own generator and interest state: the output does not depend on how
    # many chunks run in one process, only on the seed and the chunk size.
    states = []
    for u0, u1 in chunks:
        rng = np.random.default_rng([cfg.seed, 2, u0])
        states.append((rng, rng.integers(0, cfg.clusters, (u1 - u0, cfg.interests))))
    for day in range(cfg.days):
        parts = []
        for (u0, _), (rng, interests) in zip(chunks, states):
            swap = np.flatnonzero(rng.random(len(interests)) < cfg.drift)
            interests[swap, rng.integers(0, cfg.interests, len(swap))] = rng.integers(0, cfg.clusters, len(swap))
            t = _day_events(cfg, world, interests, u0, day, rng)
            if t is not None:
                parts.append(t)
        if parts:
            yield _ds(cfg.start, day), pa.concat_tables(parts)


def item_features(world: World) -> pa.Table:
    from jobs.importers import item_features_table

    n = len(world.item_cluster)
    pins = item_features_table(item_id_of(np.arange(n)).tolist(), content=list(world.content))
    qids = world.query_ids.ravel()
    queries = item_features_table(qids.tolist(), item_type="query")
    return pa.concat_tables([pins, queries])
