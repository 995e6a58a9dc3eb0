"""Synthetic data: deterministic, streamed by day, with the ground truth outcome conditioning needs."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.synth import ACTION_PROBS, FORMATS, SynthConfig, build_world, generate, item_id_of
from pinrec.core.contracts import EVENTS_SCHEMA, query_item_id

CFG = SynthConfig(users=400, days=20, seed=3, items=2_000, clusters=20)


def _all(cfg):
    return pa.concat_tables([t for _, t in generate(cfg)])


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b = _all(CFG), _all(CFG)
    assert a.equals(b)
    c = _all(SynthConfig(users=400, days=20, seed=4, items=2_000, clusters=20))
    assert not c.column("item_id").equals(a.column("item_id"))


def test_chunking_does_not_change_days_or_contract():
    days = [ds for ds, _ in generate(CFG)]
    assert days == sorted(days) and days[0] == "2026-01-01" and len(days) == 20
    t = _all(SynthConfig(users=400, days=20, seed=3, items=2_000, clusters=20, chunk_users=100))
    assert t.schema.equals(EVENTS_SCHEMA)
    assert len(set(t.column("event_id").to_pylist())) == t.num_rows
    # each event lies inside its ds partition
    ds_of_ts = pc.strftime(t.column("ts"), format="%Y-%m-%d")
    assert pc.all(pc.equal(ds_of_ts, t.column("ds"))).as_py()


def test_format_drives_action_ground_truth():
    cfg = SynthConfig(users=2_000, days=10, seed=1, items=2_000, clusters=20)
    world = build_world(cfg)
    t = _all(cfg).filter(pc.equal(pc.field("item_type"), "pin"))
    fmt = world.item_format[t.column("item_id").to_numpy() - 1]
    acts = t.column("action").to_numpy(zero_copy_only=False)
    # products draw outbound clicks, visual pins draw repins: measured shares follow ACTION_PROBS
    product = fmt == FORMATS.index("product")
    visual = fmt == FORMATS.index("visual")
    assert abs(np.mean(acts[product] == "outbound_click") - ACTION_PROBS[2, 3]) < 0.03
    assert abs(np.mean(acts[visual] == "repin") - ACTION_PROBS[0, 0]) < 0.03
    assert np.mean(acts[visual] == "outbound_click") < 0.06


def test_popularity_is_skewed_and_queries_follow_interests():
    cfg = SynthConfig(users=2_000, days=10, seed=1, items=2_000, clusters=20)
    world = build_world(cfg)
    t = _all(cfg)
    pins = t.filter(pc.equal(pc.field("item_type"), "pin")).column("item_id").to_numpy()
    counts = np.sort(np.bincount(pins))[::-1]
    assert counts[: len(counts) // 10].sum() > 0.4 * counts.sum(), "top 10% of items: >40% of events"
    q = t.filter(pc.equal(pc.field("item_type"), "query")).to_pylist()
    assert 0.05 < len(q) / t.num_rows < 0.11
    assert all(r["item_id"] == query_item_id(r["query_text"]) and r["surface"] == "search" for r in q)
    # users' queries name topics of their own clusters: a user's pins and queries share topics
    u = q[0]["user_id"]
    topic = int(q[0]["query_text"].split()[0][5:])
    user_pins = t.filter((pc.field("user_id") == u) &
                 (pc.field("item_type") == "pin")).column("item_id").to_numpy()
    assert topic in set(world.item_cluster[user_pins - 1].tolist())


def test_item_ids_start_at_one():
    assert item_id_of(np.array([0, 1]))[0] == 1
