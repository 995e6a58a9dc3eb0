"""`pinrec outcomes --ds D`: what each arm's served lists and candidates earned on day D.

Reads `served` (partition D), the pin engagements of `events` in the attribution window, the
`candidates` the served lists came from (the partition named by the served rows, else the newest
one <= D), the users' histories (`sequences` at that ds) and the catalogue (`items`). Writes one
`arm_outcomes` row per (D, arm, outcome), outcome in the action vocabulary plus "all", by
replacing partition D (a re-run gives the same rows, never duplicates).

Who counts for an arm: users served on D under an *assigned* arm (the stable hash), and users
not served on D, assigned by the same `TrafficSplit`. Users served only under a *requested* arm
are left out entirely (they chose their arm, so they do not compare like with like).

Definitions (row (arm, a); "all" sums over actions):
- served_impressions / served_users: served items conditioned on outcome a, and their users;
- engaged_items / engaged_users: served (user, item) pairs whose first engagement within
  `attribution_days` after the item was served took action a, and their users;
- engagement_rate = engaged_items(a) / all served impressions of the arm (ratio of sums);
- realised_share = engaged_items(a) / engaged_items(all): the realised action mix, next to
  budget_share (the arm's budget for a);
- candidate_recall = share of the arm's users' pin engagements with action a in the window
  [D 00:00, D + attribution_days) that were among their candidates for the arm;
- coverage = distinct candidate items conditioned on a / pins in the catalogue;
- novelty = share of candidate (user, item) pairs conditioned on a not in the user's history.
Every rate carries a 95 % interval: percentile bootstrap over users (Poisson weights, a fixed
seed per (ds, arm), so a re-run writes the same numbers).
"""
from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from pinrec.core.contracts import DAY_US, PINTEREST_ACTIONS, cutoff_us, parse_ds
from pinrec.core.experiments import ARM_OUTCOMES_SCHEMA, DEFAULT_SALT, TrafficSplit

ACTIONS = PINTEREST_ACTIONS.engagement_actions
OUTCOMES = (*ACTIONS, "all")


@dataclass(frozen=True)
class OutcomesConfig:
    lake: str
    ds: str
    attribution_days: int = 1
    traffic: tuple[tuple[str, float], ...] = ()  # empty: an even split over the candidates' arms
    salt: str = DEFAULT_SALT
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        parse_ds(self.ds)
        if self.attribution_days < 1:
            raise ValueError(f"--attribution-days must be >= 1, got {self.attribution_days}")


@dataclass(frozen=True)
class Inputs:
    """What one day's outcomes are computed from (Arrow tables, timestamps as int64 µs)."""

    served: pa.Table      # SERVED_SCHEMA columns user_id, arm, arm_source, item_id, outcome, served_at
    events: pa.Table      # user_id, item_id, action, ts: pin engagements from D 00:00 on
    candidates: pa.Table  # user_id, arm, item_id, outcome
    history: pa.Table     # user_id, item_id: the users' histories at the candidates' ds
    budgets: dict         # arm -> {action: share}
    catalogue: int        # pins in the catalogue


# -- read (the only I/O besides the write) -----------------------------------------------------

def window_days(ds: str, attribution_days: int) -> list[str]:
    """The `events` partitions an impression of day `ds` may earn engagements in."""
    first = parse_ds(ds)
    return [(first + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(attribution_days + 1)]


def _as_us(t: pa.Table, col: str) -> pa.Table:
    i = t.schema.get_field_index(col)
    return t.set_column(i, col, t.column(col).cast(pa.int64()))


def read_inputs(tables, cfg: OutcomesConfig) -> Inputs:
    import pyarrow.compute as pc

    served = pa.table({"user_id": pa.array([], pa.int64()), "arm": pa.array([], pa.string()),
                       "arm_source": pa.array([], pa.string()), "item_id": pa.array([], pa.int64()),
                       "outcome": pa.array([], pa.string()), "served_at": pa.array([], pa.int64()),
                       "candidates_ds": pa.array([], pa.string())})
    if tables.exists("served") and cfg.ds in tables.partitions("served"):
        served = _as_us(tables.read("served", [cfg.ds], columns=served.column_names), "served_at")
    cands_ds = _candidates_ds(tables, served, cfg.ds)
    candidates = pa.table({"user_id": pa.array([], pa.int64()), "arm": pa.array([], pa.string()),
                           "item_id": pa.array([], pa.int64()), "outcome": pa.array([], pa.string())})
    budgets: dict[str, dict[str, float]] = {}
    if cands_ds is not None:
        full = tables.read("candidates", [cands_ds],
                           columns=["user_id", "arm", "item_id", "outcome", "budget"])
        candidates = full.select(["user_id", "arm", "item_id", "outcome"])
        arms, first = np.unique(np.asarray(full.column("arm").to_pylist(), object), return_index=True)
        budgets = {str(a): json.loads(full.column("budget")[int(i)].as_py() or "{}")
                   for a, i in zip(arms, first)}
    parts = [d for d in window_days(cfg.ds, cfg.attribution_days)
             if tables.exists("events") and d in tables.partitions("events")]
    events = pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64()),
                       "action": pa.array([], pa.string()), "ts": pa.array([], pa.int64())})
    if parts:
        events = _as_us(tables.read("events", parts, columns=["user_id", "item_id", "action", "ts"],
                                    filter=pc.field("item_type") == "pin"), "ts")
    history = pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64())})
    from pinrec.core.sequences_store import latest_sequences_ds, read_sequences

    seq_ds = latest_sequences_ds(tables, at_most=cands_ds) if cands_ds else None
    if seq_ds is not None:
        seq = read_sequences(tables, seq_ds, columns=["user_id", "item_ids"])
        lengths = pc.list_value_length(seq.column("item_ids")).fill_null(0).to_numpy()
        history = pa.table({"user_id": np.repeat(seq.column("user_id").to_numpy(), lengths),
                            "item_id": pc.list_flatten(seq.column("item_ids"))})
    return Inputs(served, events, candidates, history, budgets, _catalogue(tables, cfg.ds, candidates))


def _candidates_ds(tables, served: pa.Table, ds: str) -> str | None:
    """The candidates the served lists came from (their most frequent `candidates_ds`), else
    the newest candidates partition on or before ds."""
    named = [d for d in served.column("candidates_ds").to_pylist() if d]
    if named:
        values, counts = np.unique(np.asarray(named, object), return_counts=True)
        return str(values[np.argmax(counts)])
    return tables.latest_partition("candidates", at_most=ds) if tables.exists("candidates") else None


def _catalogue(tables, ds: str, candidates: pa.Table) -> int:
    import pyarrow.compute as pc

    items_ds = tables.latest_partition("items", at_most=ds) if tables.exists("items") else None
    if items_ds is not None:
        return tables.dataset("items", [items_ds]).count_rows(filter=pc.field("item_type") == "pin")
    return len(pc.unique(candidates.column("item_id")))  # no items table: what the arms know


# -- pure transforms ---------------------------------------------------------------------------

def user_arms(inp: Inputs, split: TrafficSplit) -> pa.Table:
    """(user_id, arm) of every user in the comparison: the served, assigned arm; else the
    split's arm for users with candidates or engagements; users served only under a requested
    arm are not in it."""
    import pyarrow.compute as pc

    s = inp.served
    assigned = s.filter(pc.and_(pc.equal(s.column("arm_source"), "assigned"),
                                pc.not_equal(s.column("arm"), "")))
    pairs = assigned.group_by(["user_id", "arm"]).aggregate([])
    taken = set(s.column("user_id").to_pylist())
    rest = sorted((set(inp.candidates.column("user_id").to_pylist())
                   | set(inp.events.column("user_id").to_pylist())) - taken)
    split_arms = pa.table({"user_id": pa.array(rest, pa.int64()),
                           "arm": pa.array([split.arm_of(u) for u in rest], pa.string())})
    return pa.concat_tables([pairs.select(["user_id", "arm"]).cast(split_arms.schema), split_arms])


def user_frame(inp: Inputs, split: TrafficSplit, ds: str, attribution_days: int):
    """One row per (user, arm) with the counts every rate is a ratio of sums of:
    imp, imp__a (impressions conditioned on a), eng, eng__a (attributed engagements by action),
    win, win__a (window engagements), hit, hit__a (of those, among the arm's candidates)."""
    import duckdb

    start = int(parse_ds(ds).timestamp()) * 1_000_000
    con = duckdb.connect()
    for name, t in (("served", inp.served), ("events", inp.events), ("cands", inp.candidates),
                    ("arms", user_arms(inp, split))):
        con.register(name, t)
    # one pivot per kind of count; actions as columns
    sums = lambda prefix, col: ", ".join(  # noqa: E731
        f"count(*) FILTER (WHERE {col} = '{a}') AS {prefix}__{a}" for a in ACTIONS)
    sql = f"""
    WITH s AS (SELECT v.* FROM served v JOIN arms USING (user_id, arm)
               WHERE v.arm_source = 'assigned'),
    first_serve AS (SELECT user_id, arm, item_id, min(served_at) AS t FROM s GROUP BY ALL),
    attributed AS (
        SELECT f.user_id, f.arm, f.item_id, arg_min(e.action, e.ts) AS action
        FROM first_serve f JOIN events e
          ON e.user_id = f.user_id AND e.item_id = f.item_id
         AND e.ts >= f.t AND e.ts < f.t + {attribution_days * DAY_US}
        GROUP BY ALL),
    win AS (SELECT a.user_id, a.arm, e.item_id, e.action,
                   EXISTS (SELECT 1 FROM cands c WHERE c.user_id = a.user_id AND c.arm = a.arm
                           AND c.item_id = e.item_id) AS hit
            FROM arms a JOIN events e USING (user_id)
            WHERE e.ts >= {start} AND e.ts < {start + attribution_days * DAY_US}),
    imp AS (SELECT user_id, arm, count(*) AS imp, {sums('imp', 'outcome')} FROM s GROUP BY ALL),
    eng AS (SELECT user_id, arm, count(*) AS eng, {sums('eng', 'action')} FROM attributed GROUP BY ALL),
    w AS (SELECT user_id, arm, count(*) AS win, {sums('win', 'action')},
                 count(*) FILTER (WHERE hit) AS hit,
                 {", ".join(f"count(*) FILTER (WHERE hit AND action = '{a}') AS hit__{a}" for a in ACTIONS)}
          FROM win GROUP BY ALL)
    SELECT * FROM arms LEFT JOIN imp USING (user_id, arm) LEFT JOIN eng USING (user_id, arm)
                       LEFT JOIN w USING (user_id, arm)
    ORDER BY user_id
    """
    frame = con.sql(sql).df()
    con.close()
    counts = [c for c in frame.columns if c not in ("user_id", "arm")]
    frame[counts] = frame[counts].fillna(0).astype(np.int64)
    return frame


def bootstrap_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator):
    """Ratio of sums with a 95 % percentile bootstrap over users (Poisson(1) weights).

    num, den: [U, K] counts per user and metric -> (point [K], lo [K], hi [K]); NaN where the
    denominator is zero."""
    import warnings

    num, den = num.astype(np.float64), den.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no denominator at all
        point = num.sum(0) / den.sum(0)
        reps = _replicates(num, den, n_boot, rng)  # [B, K]
        lo, hi = np.nanpercentile(reps, [2.5, 97.5], axis=0) if len(num) else (point, point)
    return point, lo, hi


def _replicates(num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    step = max(1, int(2e7 // max(1, len(num))))  # bound the [b, U] weight matrix
    for b0 in range(0, n_boot, step):
        w = rng.poisson(1.0, (min(step, n_boot - b0), len(num))).astype(np.float64)  # [b, U]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((w @ num) / (w @ den))  # [b, K]
    return np.concatenate(out) if out else np.full((0, num.shape[1]), np.nan)


def bootstrap_difference(num_a, den_a, num_b, den_b, n_boot: int, rng: np.random.Generator):
    """ratio(b) - ratio(a) for two arms (disjoint users, so resampled independently), with a
    95 % percentile bootstrap interval. Each argument: [U] counts of one arm's users."""
    col = lambda x: np.asarray(x, np.float64)[:, None]  # noqa: E731  [U] -> [U, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        point = col(num_b).sum() / col(den_b).sum() - col(num_a).sum() / col(den_a).sum()
        diff = (_replicates(col(num_b), col(den_b), n_boot, rng)
                - _replicates(col(num_a), col(den_a), n_boot, rng))[:, 0]
    lo, hi = np.nanpercentile(diff, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def arm_seed(seed: int, ds: str, arm: str) -> int:
    return zlib.crc32(f"{seed}:{ds}:{arm}".encode())


def candidate_stats(inp: Inputs, arms: pa.Table) -> dict[tuple[str, str], tuple[float, float]]:
    """(arm, outcome) -> (coverage, novelty) over the candidates of the users assigned to it."""
    import duckdb

    con = duckdb.connect()
    con.register("cands", inp.candidates)
    con.register("arms", arms)
    con.register("hist", inp.history)
    rows = con.sql("""
        WITH c AS (SELECT c.arm, coalesce(c.outcome, 'any') AS outcome, c.user_id, c.item_id,
                          h.user_id IS NULL AS novel
                   FROM cands c JOIN arms a USING (user_id, arm)
                   LEFT JOIN (SELECT DISTINCT user_id, item_id FROM hist) h USING (user_id, item_id))
        SELECT arm, outcome, count(DISTINCT item_id), avg(novel::DOUBLE) FROM c GROUP BY ALL
        UNION ALL
        SELECT arm, 'all', count(DISTINCT item_id), avg(novel::DOUBLE) FROM c GROUP BY ALL
    """).fetchall()
    con.close()
    cat = max(1, inp.catalogue)
    return {(arm, out): (distinct / cat, novel) for arm, out, distinct, novel in rows}


def build_arm_outcomes(inp: Inputs, cfg: OutcomesConfig, split: TrafficSplit,
                       computed_at: datetime) -> pa.Table:
    frame = user_frame(inp, split, cfg.ds, cfg.attribution_days)
    stats = candidate_stats(inp, user_arms(inp, split))
    rows = []
    for arm in sorted(set(frame["arm"]) | set(inp.budgets)):
        f = frame[frame["arm"] == arm]
        suffix = [f"__{a}" for a in ACTIONS] + [""]  # per action, then "all"
        pick = lambda prefix: f[[prefix + s for s in suffix]].to_numpy()  # noqa: E731  [U, 6]
        imp_all = np.repeat(f[["imp"]].to_numpy(), len(suffix), axis=1)
        eng_all = np.repeat(f[["eng"]].to_numpy(), len(suffix), axis=1)
        rng = np.random.default_rng(arm_seed(cfg.seed, cfg.ds, arm))
        # one bootstrap for all three rates, so their intervals use the same resamples
        num = np.concatenate([pick("eng"), pick("eng"), pick("hit")], axis=1)
        den = np.concatenate([imp_all, eng_all, pick("win")], axis=1)
        point, lo, hi = bootstrap_ratios(num, den, cfg.bootstrap, rng)
        k = len(suffix)
        budget = inp.budgets.get(arm, {})
        for j, outcome in enumerate(OUTCOMES):
            imp_col, eng_col = "imp" + suffix[j], "eng" + suffix[j]
            cov, nov = stats.get((arm, outcome), (None, None))
            rows.append({
                "ds": cfg.ds, "arm": arm, "outcome": outcome,
                "budget_share": 1.0 if outcome == "all" else float(budget.get(outcome, 0.0)),
                "served_impressions": int(f[imp_col].sum()),
                "served_users": int((f[imp_col] > 0).sum()),
                "engaged_items": int(f[eng_col].sum()), "engaged_users": int((f[eng_col] > 0).sum()),
                **{f"{name}{end}": _num(v[i * k + j])
                   for i, name in enumerate(("engagement_rate", "realised_share", "candidate_recall"))
                   for end, v in (("", point), ("_lo", lo), ("_hi", hi))},
                "coverage": cov, "novelty": nov, "attribution_days": cfg.attribution_days,
                "computed_at": computed_at,
            })
    return pa.Table.from_pylist(rows, schema=ARM_OUTCOMES_SCHEMA)


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def traffic_split(cfg: OutcomesConfig, inp: Inputs) -> TrafficSplit:
    if cfg.traffic:
        return TrafficSplit.of(dict(cfg.traffic), cfg.salt)
    arms = sorted(inp.budgets) or sorted(set(inp.served.column("arm").to_pylist()) - {""})
    if not arms:
        raise ValueError(f"no candidates on or before {cfg.ds}, no served arms and no --traffic: "
                         "there are no arms to assign users to; run `pinrec score` first or pass "
                         "--traffic")
    return TrafficSplit.even(arms, cfg.salt)


# -- entry point -------------------------------------------------------------------------------

def run_job(cfg: OutcomesConfig, now: datetime | None = None) -> pa.Table:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    tables = DeltaRsTables(Lake.at(cfg.lake))
    inp = read_inputs(tables, cfg)
    if inp.served.num_rows == 0 and inp.candidates.num_rows == 0:
        raise NothingToMeasure(f"nothing to measure for ds={cfg.ds}: no `served` rows on that day and no "
                               f"`candidates` on or before it under {cfg.lake}")
    out = build_arm_outcomes(inp, cfg, traffic_split(cfg, inp), now or datetime.now(timezone.utc))
    tables.replace_partitions("arm_outcomes", out, [cfg.ds])
    newest = tables.latest_partition("events")
    window_end = cutoff_us(cfg.ds) + cfg.attribution_days * DAY_US
    if newest is None or cutoff_us(newest) < window_end:
        print(f"outcomes: note: the attribution window of {cfg.ds} ends after the newest events "
              f"partition ({newest}); re-run when it has landed (the job replaces its partition)")
    return out


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_ds_arg, add_lake_arg

    add_ds_arg(p)
    add_lake_arg(p)
    p.add_argument("--attribution-days", type=int, default=1,
                   help="days after an impression whose engagements it earns (default 1)")
    p.add_argument("--traffic", default=None, metavar="JSON",
                   help='traffic shares of the arms, e.g. \'{"balanced": 0.5, "repin": 0.5}\' '
                        "(default: an even split over the arms of the candidates)")
    p.add_argument("--salt", default=DEFAULT_SALT, help="experiment salt of the arm assignment")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")


# `pinrec outcomes` exits with this when the day has nothing to measure (the pipeline's first
# days: nothing was served or scored yet); the DAG's task maps it to "skipped", not "failed".
EXIT_NOTHING_TO_MEASURE = 99


class NothingToMeasure(ValueError):
    pass


def run(args: argparse.Namespace) -> int:
    try:
        traffic = tuple(sorted(json.loads(args.traffic).items())) if args.traffic else ()
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"--traffic {args.traffic!r} is not a JSON object of arm -> share") from None
    cfg = OutcomesConfig(args.lake, args.ds, args.attribution_days, traffic, args.salt,
                         args.bootstrap)
    import pyarrow.compute as pc

    try:
        out = run_job(cfg)
    except NothingToMeasure as e:
        print(f"pinrec outcomes: {e}; nothing written (exit {EXIT_NOTHING_TO_MEASURE}: skipped)")
        return EXIT_NOTHING_TO_MEASURE
    for r in out.filter(pc.equal(out.column("outcome"), "all")).to_pylist():
        print(f"outcomes {cfg.ds} arm {r['arm']}: {r['served_impressions']} impressions to "
              f"{r['served_users']} users, {r['engaged_items']} engaged, rate "
              f"{_fmt(r['engagement_rate'])} [{_fmt(r['engagement_rate_lo'])}, "
              f"{_fmt(r['engagement_rate_hi'])}], candidate recall {_fmt(r['candidate_recall'])}")
    print(f"outcomes: {out.num_rows} rows -> arm_outcomes ds={cfg.ds}")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
