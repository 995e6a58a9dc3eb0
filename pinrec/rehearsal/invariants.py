"""The invariants checked after every rehearsal day. Each check returns a Check; the pure
functions take what the edges (runner.py) read from the API, RocksDB, the broker and the lake.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def model_ds(model_version: str | None) -> str | None:
    """`d20260104-mt_oc-small` -> `2026-01-04` (the DAG names model versions by ds)."""
    if not model_version or not model_version.startswith("d") or len(model_version) < 9:
        return None
    try:
        return datetime.strptime(model_version[1:9], "%Y%m%d").strftime("%Y-%m-%d")
    except ValueError:
        return None


def served_consistency(health: dict, expected_ds: str, answers_ds: set) -> Check:
    """Model, index and candidates served belong to one ds, the one that should serve."""
    ds, model, index = health.get("candidates_ds"), health.get("model_version"), health.get("index_version")
    problems = []
    if ds != expected_ds:
        problems.append(f"candidates_ds {ds} != expected {expected_ds}")
    if model_ds(model) != ds:
        problems.append(f"model {model} is not of ds {ds}")
    if health.get("candidates_model_version") != model:
        problems.append(f"candidates were scored by {health.get('candidates_model_version')}, "
                        f"the API serves model {model}")
    if index != f"{ds}.{model}":
        problems.append(f"index {index} is not {ds}.{model}")
    if answers_ds - {ds}:
        problems.append(f"responses named candidates_ds {sorted(answers_ds)}")
    return Check("served model, index and candidates are of one ds", not problems,
                 "; ".join(problems) or f"ds {ds}: model {model}, index {index}")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    import math

    if not values:
        return float("nan")
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


def answers(probe: list[tuple], p99_bound_ms: float) -> list[Check]:
    """probe: (user_id, status, n_items, latency_ms) for every sampled user."""
    bad = [(u, s, n) for u, s, n, _ in probe if s != 200 or n <= 0]
    lat = [ms for _, s, _, ms in probe if s == 200]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    return [Check("every sampled user gets an answer", not bad and bool(probe),
                  f"{len(probe) - len(bad)}/{len(probe)} answered with items"
                  + (f"; failed: {bad[:5]}" if bad else "")),
            Check(f"p99 latency under {p99_bound_ms:.0f} ms", bool(lat) and p99 <= p99_bound_ms,
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lat)} requests")]


def traffic(records: list[tuple]) -> Check:
    """Background traffic of the day: (t, latency_ms, outcome, retried_s)."""
    unanswered = [r for r in records if r[2] != "ok"]
    retried = [r[3] for r in records if r[3] and r[3] > 0.5]
    return Check("background traffic: every request answered", not unanswered,
                 f"{len(records) - len(unanswered)}/{len(records)} ok"
                 + (f", {len(retried)} after client retries (longest {max(retried):.1f} s)" if retried else "")
                 + (f"; not ok: {sorted({r[2] for r in unanswered})}" if unanswered else ""))


def stored_once(acked: set[str], stored_ids: list[str]) -> list[Check]:
    dup = len(stored_ids) - len(set(stored_ids))
    missing = acked - set(stored_ids)
    return [Check("no acknowledged event missing from RocksDB", not missing,
                  f"{len(acked) - len(missing)}/{len(acked)} acknowledged events stored"
                  + (f"; missing e.g. {sorted(missing)[:3]}" if missing else "")),
            Check("no event stored twice", dup == 0, f"{len(stored_ids)} stored, {dup} duplicates")]


def retention(min_ts_us: int | None, cutoff_us: int | None, count: int) -> Check:
    ok = cutoff_us is None or min_ts_us is None or min_ts_us >= cutoff_us
    return Check("RocksDB holds only events after the batch cutoff", ok,
                 f"{count} events, oldest ts {min_ts_us}, cutoff {cutoff_us}")


def candidates_cover(active: set[int], covered: dict[str, set[int]], ds: str) -> Check:
    """Every user active on the published ds has candidates in every arm."""
    missing = {arm: active - users for arm, users in covered.items() if active - users}
    return Check("candidates for every active user of the published ds", bool(covered) and not missing,
                 f"ds {ds}: {len(active)} active users, arms {sorted(covered)}"
                 + (f"; missing {({a: len(m) for a, m in missing.items()})}" if missing else ""))


def dead_lettered(markers: list[str], dlq_values: list[bytes], sent: int) -> Check:
    """Each bad message carries its own marker; each must be in the DLQ at least once."""
    heads = [v[:4096] for v in dlq_values]
    missing = [m for m in markers if not any(m.encode() in h for h in heads)]
    return Check("every bad message is in the DLQ", not missing and len(markers) == sent,
                 f"{sent - len(missing)}/{sent} bad messages of the day found in the DLQ "
                 f"({len(dlq_values)} DLQ records in all)" + (f"; missing {missing}" if missing else ""))


def outcome(expect_published: bool, run_state: str, published_ds: str | None, ds: str,
            previous_ds: str | None, publish_state: str | None) -> Check:
    """A refused day must not reach users (an invariant). A healthy day should be published,
    but the gate refusing it is a decision, not an outage: reported as an expectation."""
    if expect_published:
        ok = run_state == "success" and published_ds == ds
        name, want = EXPECT_PUBLISHED, f"run success and ds {ds} published"
    else:
        ok = publish_state not in ("success", "running") and published_ds == previous_ds
        name, want = REFUSED_NOT_PUBLISHED, f"publish not run and ds {previous_ds} still published"
    return Check(name, ok, f"want {want}; got run {run_state}, publish {publish_state}, "
                           f"published {published_ds}")


EXPECT_PUBLISHED = "expectation: a healthy day is published"
REFUSED_NOT_PUBLISHED = "the refused day is not published; the previous day keeps serving"


def consumer_up(exits: list) -> Check:
    return Check("consumer never exited on its own", not exits,
                 "no unexpected exits" if not exits else
                 f"{len(exits)} unexpected exit(s), return codes {[rc for _, rc in exits][:5]}")
