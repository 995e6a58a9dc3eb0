"""The closed loop in the synthetic world: users respond to what the API serves them.

The synthetic world (jobs/synth.py) knows why a user engages: a user engages with items of
their latent interests, and the item's format decides the action (visual -> repin, product ->
outbound click, ...). One simulated day, after the lake's synthesised days:

1. the world moves on as `pinrec data synth` would have: interests drift, active users have a
   session of organic engagements (the same generator, continued from its state);
2. each active user loads the feed at the start of the session: `GET /v1/recommendations/<u>`
   on the running API, naming no arm: serving assigns it by its traffic split (`pinrec serve
   --traffic`; the loop checks it is `cfg.split`), and the response becomes one `served`
   record through `pinrec.core.served.record` (the shape serving's logger and the lander use);
3. the user responds to each served item by their interests and the item's format
   (`respond`, pure): engaged with probability `p_interest` if the item is in one of their
   interest clusters, `p_other` otherwise, damped by rank; the action drawn from the format;
4. organic + responses go to Kafka `engagements` (the consumer stores them in RocksDB, so the
   next day's requests see them: engaged items are filtered, histories regenerate), and into
   the lake's `events` partition of the day; the served lists into the `served` partition.

Serving's own logger stamps `served_at` with the wall clock, and the loop serves on simulated
days, so the loop writes the served rows itself, through the same `pinrec.core.served.rows` the
lander uses, with the lake adapter (partition replace: re-running a day is idempotent).
"""
from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from jobs.synth import ACTION_PROBS, SynthConfig, World, _day_events, build_world
from pinrec.core.contracts import EVENTS_SCHEMA, PINTEREST_ACTIONS, ds_of_us, parse_ds
from pinrec.core.events import Event
from pinrec.core.experiments import DEFAULT_SALT, TrafficSplit
from pinrec.core.served import record, rows

ACTIONS = PINTEREST_ACTIONS.engagement_actions


@dataclass(frozen=True)
class LoopConfig:
    lake: Path
    api: str                      # base URL of the running API
    token: str
    bootstrap: str                # Kafka
    synth: SynthConfig            # the world the lake's events were synthesised with
    arms: tuple[tuple[str, float], ...] = (("balanced", 0.5), ("repin", 0.5))
    salt: str = DEFAULT_SALT
    n: int = 20                   # items per served list
    p_interest: float = 0.35      # engagement chance of a served item in the user's interests
    p_other: float = 0.03         # ... of any other served item
    rank_halflife: float = 10.0   # the chance halves every this many ranks
    topic: str = "engagements"
    workers: int = 4              # concurrent API requests
    seed: int = 7

    @property
    def split(self) -> TrafficSplit:
        return TrafficSplit.of(dict(self.arms), self.salt)


@dataclass
class WorldState:
    """The synthetic world where `pinrec data synth` stopped: items, users' interests, the rng."""

    cfg: SynthConfig
    world: World
    interests: np.ndarray         # [U, interests] cluster ids
    rng: np.random.Generator
    day: int                      # the next day index to simulate

    @staticmethod
    def resume(cfg: SynthConfig) -> "WorldState":
        """Replay the generator (as `jobs.synth.generate` runs it) to the end of its days."""
        if cfg.users > cfg.chunk_users:
            raise ValueError(f"the closed loop simulates one chunk of users; {cfg.users} users is "
                             f"more than chunk_users={cfg.chunk_users}")
        world = build_world(cfg)
        rng = np.random.default_rng([cfg.seed, 2, 0])
        interests = rng.integers(0, cfg.clusters, (cfg.users, cfg.interests))
        state = WorldState(cfg, world, interests, rng, 0)
        for _ in range(cfg.days):
            state.organic_day()
        return state

    def organic_day(self) -> pa.Table | None:
        """The next day's organic events (exactly what synth would have generated next)."""
        rng, interests = self.rng, self.interests
        swap = np.flatnonzero(rng.random(len(interests)) < self.cfg.drift)
        interests[swap, rng.integers(0, self.cfg.interests, len(swap))] = rng.integers(
            0, self.cfg.clusters, len(swap))
        events = _day_events(self.cfg, self.world, interests, 0, self.day, rng)
        self.day += 1
        return events

    @property
    def ds(self) -> str:
        return (parse_ds(self.cfg.start) + timedelta(days=self.day)).strftime("%Y-%m-%d")


def respond(items: list[int], interests: np.ndarray, world: World, rng: np.random.Generator,
            cfg: LoopConfig) -> list[tuple[int, int, str]]:
    """Which served items one user engages with, and how: -> [(rank, item_id, action)].

    items: served item ids in rank order; interests: [interests] the user's clusters. Pure given
    the rng. Items outside the world (ids the synthetic catalogue does not have) are skipped."""
    out = []
    n_items = len(world.item_cluster)
    for rank, item_id in enumerate(items):
        idx = item_id - 1  # jobs.synth.item_id_of
        if not 0 <= idx < n_items:
            continue
        p = cfg.p_interest if world.item_cluster[idx] in interests else cfg.p_other
        if rng.random() < p * 0.5 ** (rank / cfg.rank_halflife):
            action = rng.choice(len(ACTIONS), p=ACTION_PROBS[world.item_format[idx]])
            out.append((rank, int(item_id), ACTIONS[action]))
    return out


def fetch(cfg: LoopConfig, user_id: int) -> dict:
    """One request naming no arm: serving assigns it by its traffic split (`pinrec serve
    --traffic`, the same shares and salt as `cfg.split`), as in production."""
    req = urllib.request.Request(f"{cfg.api}/v1/recommendations/{user_id}?n={cfg.n}",
                                 headers={"Authorization": f"Bearer {cfg.token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def response_events(user_id: int, t_serve: int, engaged: list[tuple[int, int, str]],
                    ds: str, seed: int) -> list[Event]:
    """The engagement events of one user's response; a user scrolls ~20 s per rank."""
    return [Event(f"loop{seed}-{ds}-u{user_id}-r{rank}", user_id, item, "pin", action, "homefeed",
                  t_serve + (rank + 1) * 20_000_000) for rank, item, action in engaged]


def events_table(events: list[Event]) -> pa.Table:
    rows = [{**e.to_json(), "query_text": e.query_text, "ds": ds_of_us(e.ts_us)} for e in events]
    return pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)


def table_events(t: pa.Table) -> list[Event]:
    cols = {c: t.column(c).to_pylist() for c in
            ("event_id", "user_id", "item_id", "item_type", "action", "surface", "query_text")}
    ts = t.column("ts").cast(pa.int64()).to_pylist()
    return [Event(cols["event_id"][i], cols["user_id"][i], cols["item_id"][i], cols["item_type"][i],
                  cols["action"][i], cols["surface"][i], ts[i], cols["query_text"][i])
            for i in range(t.num_rows)]


def simulate_day(cfg: LoopConfig, state: WorldState) -> dict:
    """One day of the loop; -> {"ds", "served_users", "events", "responses"} (events = what was
    produced to Kafka, for the caller to wait on the consumer)."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake
    from streaming.replay import ReplayConfig, event_messages, produce

    ds = state.ds
    organic = state.organic_day()
    organic_events = table_events(organic) if organic is not None else []
    # the session starts with a feed load a minute before the first organic engagement
    starts: dict[int, int] = {}
    for e in organic_events:
        starts[e.user_id] = min(starts.get(e.user_id, e.ts_us), e.ts_us)
    users = sorted(starts)
    split = cfg.split
    with ThreadPoolExecutor(cfg.workers) as pool:
        responses = list(pool.map(lambda u: fetch(cfg, u), users))
    wrong = [(u, r["arm"]) for u, r in zip(users, responses) if r["arm"] != split.arm_of(u)]
    if wrong:
        raise RuntimeError(f"serving assigned other arms than the loop's split for {len(wrong)} users "
                           f"(e.g. user {wrong[0][0]} got {wrong[0][1]!r}): start `pinrec serve` with "
                           f"--traffic {','.join(f'{a}={w}' for a, w in cfg.arms)} --salt {cfg.salt}")
    rng = np.random.default_rng([cfg.seed, state.day])
    records, responses_events = [], []
    day_start = int(parse_ds(ds).timestamp()) * 1_000_000
    for u, resp in zip(users, responses):
        t = max(day_start, starts[u] - 60_000_000)  # served on the day of the session
        records.append(record(resp, t))
        engaged = respond([i["item_id"] for i in resp["items"]], state.interests[u - 1],
                          state.world, rng, cfg)  # synth user ids start at 1
        responses_events += response_events(u, t, engaged, ds, cfg.seed)
    day_events = sorted(organic_events + responses_events, key=lambda e: (e.ts_us, e.event_id))
    sent = produce(ReplayConfig(cfg.bootstrap, cfg.topic), event_messages(day_events))
    tables = DeltaRsTables(Lake.at(cfg.lake))
    tables.replace_partitions("events", events_table(day_events), [ds])
    if records:
        tables.replace_partitions("served", rows(records), [ds])
    return {"ds": ds, "served_users": len(users), "events": sent, "responses": len(responses_events)}


def resume_world(synth: SynthConfig, lake: Path) -> WorldState:
    """The world after the lake's synthesised days; refuses a lake that was not synthesised
    with these settings (its last events partition must be synth's last day)."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    state = WorldState.resume(synth)
    last = (parse_ds(synth.start) + timedelta(days=synth.days - 1)).strftime("%Y-%m-%d")
    have = DeltaRsTables(Lake.at(lake)).partitions("events")
    if not have or have[-1] < last:
        raise ValueError(f"the lake {lake} does not hold the synthetic days up to {last} "
                         f"(its newest events are {have[-1] if have else 'none'}); the closed loop "
                         "continues the world `pinrec data synth` wrote, with the same settings")
    while state.ds <= have[-1]:  # days an earlier loop already wrote: move the world past them
        state.organic_day()
    return state
