"""The closed loop's pure parts: the world resumes exactly where `pinrec data synth` stopped,
and users respond to served items by their interests and the items' formats."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from jobs.synth import ACTION_PROBS, FORMATS, SynthConfig, generate
from serving.closed_loop import LoopConfig, WorldState, events_table, respond, response_events, table_events

SYN = SynthConfig(users=60, days=3, items=400, clusters=8, seed=3, start="2026-02-01")


def test_resumed_world_continues_the_generator_day_for_day():
    longer = dict(generate(replace(SYN, days=5)))
    state = WorldState.resume(SYN)
    assert state.ds == "2026-02-04"
    for ds in ("2026-02-04", "2026-02-05"):
        assert state.ds == ds
        assert state.organic_day().equals(longer[ds])


def loop_cfg(**kw) -> LoopConfig:
    return LoopConfig(lake=None, api="", token="", bootstrap="", synth=SYN, **kw)


def test_users_engage_only_with_their_interests_when_others_never_tempt_them():
    world = WorldState.resume(SYN).world
    cluster = 2
    mine = [int(i) + 1 for i in world.cluster_items[cluster][:30]]
    other = [int(i) + 1 for i in world.cluster_items[5][:30]]
    served = [x for pair in zip(mine, other) for x in pair]  # alternate
    cfg = loop_cfg(p_interest=1.0, p_other=0.0, rank_halflife=1e9)
    got = respond(served, np.array([cluster, 7]), world, np.random.default_rng(0), cfg)
    assert [item for _, item, _ in got] == mine
    assert [rank for rank, _, _ in got] == list(range(0, 60, 2))


def test_the_format_decides_the_action():
    world = WorldState.resume(replace(SYN, items=4000, clusters=1)).world
    visual = [int(i) + 1 for i in np.flatnonzero(world.item_format == FORMATS.index("visual"))]
    product = [int(i) + 1 for i in np.flatnonzero(world.item_format == FORMATS.index("product"))]
    cfg = loop_cfg(p_interest=1.0, p_other=1.0, rank_halflife=1e9)
    rng = np.random.default_rng(1)
    share = lambda got, a: sum(x == a for _, _, x in got) / len(got)  # noqa: E731
    v = respond(visual, np.array([0]), world, rng, cfg)
    p = respond(product, np.array([0]), world, rng, cfg)
    assert len(v) == len(visual) and len(p) == len(product)
    # P(repin | visual) = 0.60, P(outbound | product) = 0.60: within 5 standard errors
    for got, action, prob in ((v, "repin", ACTION_PROBS[0, 0]), (p, "outbound_click", ACTION_PROBS[2, 3])):
        se = (prob * (1 - prob) / len(got)) ** 0.5
        assert abs(share(got, action) - prob) < 5 * se
    assert share(v, "repin") > share(p, "repin") + 0.3


def test_items_outside_the_world_are_skipped_and_rank_damps():
    world = WorldState.resume(SYN).world
    cfg = loop_cfg(p_interest=1.0, p_other=1.0, rank_halflife=1e-9)  # only rank 0 survives
    got = respond([10**9, 5, 6, 7], np.array([0]), world, np.random.default_rng(0), cfg)
    assert got == []  # rank 0 is outside the world; every later rank has chance 0
    got = respond([5, 6, 7], np.array([0]), world, np.random.default_rng(0), cfg)
    assert [(r, i) for r, i, _ in got] == [(0, 5)]


def test_response_events_round_trip_through_the_events_table():
    ev = response_events(9, 1_770_000_000_000_000, [(0, 5, "repin"), (3, 8, "other")], "2026-02-02", 7)
    assert [e.ts_us for e in ev] == [1_770_000_020_000_000, 1_770_000_080_000_000]
    assert len({e.event_id for e in ev}) == 2
    assert table_events(events_table(ev)) == ev


def test_more_users_than_a_chunk_is_refused():
    with pytest.raises(ValueError, match="one chunk"):
        WorldState.resume(replace(SYN, users=10, chunk_users=5))
