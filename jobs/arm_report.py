"""`pinrec report arms --from D1 --to D2 --out DIR`: the arm comparison as a static HTML page.

The page (DIR/index.html, PNGs beside it, the numbers in DIR/arms.json):
- realised action mix vs budget per arm, pooled over the days (95 % bootstrap intervals);
- the difference of every arm from the baseline arm in each action's realised share, with its
  95 % interval: an interval that excludes zero is a difference the data supports;
- engagement rate per arm over the days, with each day's interval (from `arm_outcomes`);
- candidate recall per arm over the days, with intervals.

Per-day numbers come from the `arm_outcomes` table. The pooled numbers resample *users* (a user
keeps one arm on every day), so they are recomputed from the same per-user counts the outcomes
job uses (`jobs.outcomes.user_frame`), not averaged from daily rows.
"""
from __future__ import annotations

import argparse
import html
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from jobs.outcomes import (ACTIONS, OutcomesConfig, bootstrap_difference, bootstrap_ratios,
                           read_inputs, traffic_split, user_frame)
from pinrec.core.contracts import parse_ds
from pinrec.core.experiments import DEFAULT_SALT


@dataclass(frozen=True)
class ArmReportConfig:
    lake: str
    ds_from: str
    ds_to: str
    out: Path
    baseline: str | None = None   # default: "balanced" when present, else the first arm
    traffic: tuple[tuple[str, float], ...] = ()
    salt: str = DEFAULT_SALT
    bootstrap: int = 1000
    seed: int = 0

    def days(self) -> list[str]:
        a, b = parse_ds(self.ds_from), parse_ds(self.ds_to)
        if b < a:
            raise ValueError(f"--from {self.ds_from} is after --to {self.ds_to}; swap them")
        return [(a + timedelta(days=i)).strftime("%Y-%m-%d") for i in range((b - a).days + 1)]


def daily_rows(tables, days: list[str]) -> list[dict]:
    have = set(tables.partitions("arm_outcomes")) if tables.exists("arm_outcomes") else set()
    missing = [d for d in days if d not in have]
    if missing:
        raise ValueError(f"arm_outcomes has no rows for {missing}; run `pinrec outcomes --ds D` "
                         "for those days first")
    return tables.read("arm_outcomes", days).to_pylist()


def pooled_frame(tables, cfg: ArmReportConfig, days: list[str], attribution_days: int):
    """Per (user, arm) counts summed over the days (a user keeps their arm every day)."""
    import pandas as pd

    frames = []
    for ds in days:
        ocfg = OutcomesConfig(cfg.lake, ds, attribution_days, cfg.traffic, cfg.salt)
        inp = read_inputs(tables, ocfg)
        frames.append(user_frame(inp, traffic_split(ocfg, inp), ds, attribution_days))
    return pd.concat(frames).groupby(["user_id", "arm"], as_index=False).sum()


def pooled_stats(frame, arms: list[str], baseline: str, cfg: ArmReportConfig) -> dict:
    """Per arm: realised share of each action with its interval; per other arm: the difference
    from the baseline in each action's realised share, with its interval."""
    out: dict = {"arms": {}, "differences": {}}
    for k, arm in enumerate(arms):
        f = frame[frame["arm"] == arm]
        num = f[[f"eng__{a}" for a in ACTIONS]].to_numpy()
        den = np.repeat(f[["eng"]].to_numpy(), len(ACTIONS), axis=1)
        point, lo, hi = bootstrap_ratios(num, den, cfg.bootstrap, np.random.default_rng([cfg.seed, k]))
        out["arms"][arm] = {"users": int(len(f)), "served_users": int((f["imp"] > 0).sum()),
                            "engaged_items": int(f["eng"].sum()),
                            "realised_share": {a: _triple(point[i], lo[i], hi[i])
                                               for i, a in enumerate(ACTIONS)}}
    base = frame[frame["arm"] == baseline]
    for k, arm in enumerate(a for a in arms if a != baseline):
        f = frame[frame["arm"] == arm]
        rng = np.random.default_rng([cfg.seed, 100 + k])
        out["differences"][arm] = {
            a: dict(zip(("diff", "lo", "hi"), bootstrap_difference(
                base[f"eng__{a}"], base["eng"], f[f"eng__{a}"], f["eng"], cfg.bootstrap, rng)))
            for a in ACTIONS}
    return out


def _triple(p, lo, hi) -> dict:
    f = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    return {"value": f(p), "lo": f(lo), "hi": f(hi)}


# -- plots -------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mix(stats: dict, budgets: dict, path: Path) -> None:
    plt = _plt()
    arms = list(stats["arms"])
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.6), sharey=True, squeeze=False)
    x = np.arange(len(ACTIONS))
    for ax, arm in zip(axes[0], arms):
        s = stats["arms"][arm]["realised_share"]
        val = np.array([s[a]["value"] or 0 for a in ACTIONS])
        err = np.array([[val[i] - (s[a]["lo"] or 0), (s[a]["hi"] or 0) - val[i]]
                        for i, a in enumerate(ACTIONS)]).T.clip(0)
        ax.bar(x - 0.2, [budgets.get(arm, {}).get(a, 0.0) for a in ACTIONS], 0.4,
               color="#bbbbbb", label="budget")
        ax.bar(x + 0.2, val, 0.4, yerr=err, capsize=3, color="#3b7dd8", label="realised")
        ax.set_xticks(x, [a.replace("_", "\n") for a in ACTIONS], fontsize=8)
        ax.set_title(f"arm {arm}")
    axes[0][0].set_ylabel("share of engagements")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("realised action mix vs budget (95 % bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_daily(rows: list[dict], metric: str, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    arms = sorted({r["arm"] for r in rows})
    for i, arm in enumerate(arms):
        rs = sorted((r for r in rows if r["arm"] == arm and r["outcome"] == "all"), key=lambda r: r["ds"])
        days = [r["ds"] for r in rs]
        xs = np.arange(len(days)) + (i - (len(arms) - 1) / 2) * 0.06
        val = np.array([np.nan if r[metric] is None else r[metric] for r in rs])
        lo = np.array([np.nan if r[f"{metric}_lo"] is None else r[f"{metric}_lo"] for r in rs])
        hi = np.array([np.nan if r[f"{metric}_hi"] is None else r[f"{metric}_hi"] for r in rs])
        ax.errorbar(xs, val, yerr=np.vstack([val - lo, hi - val]).clip(0), marker="o", capsize=4,
                    label=f"arm {arm}")
        ax.set_xticks(np.arange(len(days)), days)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the page ----------------------------------------------------------------------------------

def render_html(cfg: ArmReportConfig, stats: dict, rows: list[dict], budgets: dict,
                baseline: str) -> str:
    e = html.escape
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    arm_rows = []
    for arm, s in stats["arms"].items():
        mix = ", ".join(f"{a} {pct(s['realised_share'][a]['value'])}" for a in ACTIONS
                        if (s["realised_share"][a]["value"] or 0) > 0)
        budget = ", ".join(f"{a} {pct(w)}" for a, w in budgets.get(arm, {}).items())
        arm_rows.append(f"<tr class='arm' data-arm='{e(arm)}'><td>{e(arm)}</td><td>{s['users']}</td>"
                        f"<td>{s['served_users']}</td><td>{s['engaged_items']}</td>"
                        f"<td>{e(budget)}</td><td>{e(mix)}</td></tr>")
    diff_rows = []
    for arm, d in stats["differences"].items():
        for a in ACTIONS:
            x = d[a]
            verdict = "excludes 0" if x["lo"] > 0 or x["hi"] < 0 else "includes 0"
            diff_rows.append(f"<tr data-arm='{e(arm)}' data-action='{a}'><td>{e(arm)} − {e(baseline)}"
                             f"</td><td>{a}</td><td>{100 * x['diff']:+.1f} pp</td><td>[{100 * x['lo']:+.1f}, "
                             f"{100 * x['hi']:+.1f}] pp</td><td>{verdict}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PinRec arms {e(cfg.ds_from)} to {e(cfg.ds_to)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{max-width:100%}}</style></head>
<body>
<h1>Arms: what each arm earned, {e(cfg.ds_from)} to {e(cfg.ds_to)}</h1>
<p>Users are compared by the arm the stable hash assigned them; users who requested an arm are
left out. Intervals are 95 % bootstrap intervals over users. Source: <code>arm_outcomes</code>
(per day) and the per-user counts behind it (pooled over the days).</p>
<h2>Arms</h2>
<table id="arms"><tr><th>arm</th><th>users</th><th>served users</th><th>engaged items</th>
<th>budget</th><th>realised mix</th></tr>
{''.join(arm_rows)}</table>
<h2>Realised action mix vs budget</h2>
<img src="mix_vs_budget.png" alt="realised action mix vs budget per arm">
<h2>Difference from the baseline arm ({e(baseline)}) in realised share</h2>
<table id="differences"><tr><th>arms</th><th>action</th><th>difference</th><th>95 % interval</th>
<th></th></tr>{''.join(diff_rows)}</table>
<h2>Engagement rate per arm over days</h2>
<img src="engagement_rate.png" alt="engagement rate per arm over days">
<h2>Candidate recall per arm over days</h2>
<img src="candidate_recall.png" alt="candidate recall per arm over days">
<p>Numbers: <a href="arms.json">arms.json</a>. Days: {len({r['ds'] for r in rows})}.</p>
</body></html>
"""


def write_report(cfg: ArmReportConfig) -> Path:
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    tables = DeltaRsTables(Lake.at(cfg.lake))
    days = cfg.days()
    rows = daily_rows(tables, days)
    arms = sorted({r["arm"] for r in rows})
    baseline = cfg.baseline or ("balanced" if "balanced" in arms else arms[0])
    if baseline not in arms:
        raise ValueError(f"--baseline {baseline!r} is not an arm of these days; arms: {arms}")
    budgets = {arm: {r["outcome"]: r["budget_share"] for r in rows
                     if r["arm"] == arm and r["outcome"] != "all" and r["budget_share"]}
               for arm in arms}
    frame = pooled_frame(tables, cfg, days, int(rows[0]["attribution_days"]))
    stats = pooled_stats(frame, arms, baseline, cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    plot_mix(stats, budgets, cfg.out / "mix_vs_budget.png")
    plot_daily(rows, "engagement_rate", "engagement rate per arm (95 % intervals)",
               cfg.out / "engagement_rate.png")
    plot_daily(rows, "candidate_recall", "candidate recall per arm (95 % intervals)",
               cfg.out / "candidate_recall.png")
    summary = {"from": cfg.ds_from, "to": cfg.ds_to, "baseline": baseline, "budgets": budgets,
               **stats, "daily": [{k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                   for k, v in r.items()} for r in rows]}
    (cfg.out / "arms.json").write_text(json.dumps(summary, indent=2))
    page = cfg.out / "index.html"
    page.write_text(render_html(cfg, stats, rows, budgets, baseline))
    return page


def configure(p: argparse.ArgumentParser) -> None:
    from pinrec.core.cli_args import add_lake_arg

    sub = p.add_subparsers(dest="report", metavar="REPORT", required=True)
    a = sub.add_parser("arms", help="arm comparison: realised mix vs budget, rates over days (HTML)")
    a.add_argument("--from", dest="ds_from", required=True, metavar="YYYY-MM-DD")
    a.add_argument("--to", dest="ds_to", required=True, metavar="YYYY-MM-DD")
    a.add_argument("--out", required=True, help="folder for index.html, the PNGs and arms.json")
    a.add_argument("--baseline", default=None, help="arm the others are compared with "
                                                    "(default: balanced, else the first arm)")
    a.add_argument("--traffic", default=None, metavar="JSON",
                   help="the traffic shares `pinrec outcomes` was given, if any")
    a.add_argument("--salt", default=DEFAULT_SALT)
    a.add_argument("--bootstrap", type=int, default=1000)
    add_lake_arg(a)


def run(args: argparse.Namespace) -> int:
    traffic = tuple(sorted(json.loads(args.traffic).items())) if args.traffic else ()
    cfg = ArmReportConfig(args.lake, args.ds_from, args.ds_to, Path(args.out), args.baseline,
                          traffic, args.salt, args.bootstrap)
    page = write_report(cfg)
    stats = json.loads((cfg.out / "arms.json").read_text())
    for arm, d in stats["differences"].items():
        for a in ACTIONS:
            x = d[a]
            if x["lo"] > 0 or x["hi"] < 0:
                print(f"report arms: {arm} - {stats['baseline']} realised {a} share "
                      f"{100 * x['diff']:+.1f} pp [{100 * x['lo']:+.1f}, {100 * x['hi']:+.1f}]")
    print(f"report arms: {page}")
    return 0
