"""What `pinrec demo` shows: recommendations beside recent history, and the Markdown report
(step timings as a table and a PNG, plus every PNG the jobs left under <lake>/runs)."""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path


def token_label(item_id: int, item_type: str, query_text: str | None) -> str:
    """How a person reads a history token: a query by its text (its id is a 63-bit hash of it)."""
    if item_type == "query":
        return f"query {json.dumps(query_text, ensure_ascii=False)}" if query_text else f"query #{item_id}"
    return f"item {item_id}"


def query_texts(tables, query_ids) -> dict[int, str]:
    """Query id -> its text. Sequences keep only the id (the hash of the normalised text); the
    text lives on the query's events in `events`, so it is read back from there."""
    import pyarrow.compute as pc

    ids = sorted({int(i) for i in query_ids})
    if not ids:
        return {}
    t = tables.read("events", columns=["item_id", "query_text"],
                    filter=(pc.field("item_type") == "query") & pc.field("item_id").isin(ids)
                    & pc.field("query_text").is_valid())
    return dict(zip(t.column("item_id").to_pylist(), t.column("query_text").to_pylist()))


def recent_history(lake: Path, ds: str, fresh_ds: str, user_id: int, k: int = 5) -> list[str]:
    """The user's last k batch events (sequences@ds) and every fresh event of fresh_ds, queries
    shown as their text."""
    import pyarrow.compute as pc

    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    from pinrec.core.sequences_store import read_sequences

    t = DeltaRsTables(Lake.at(lake))
    seqs = read_sequences(t, ds)
    seq = seqs.filter(pc.equal(seqs.column("user_id"), user_id)).to_pylist()
    lines = []
    if seq:
        row = seq[0]
        items = row.get("item_ids") or []
        types = row.get("item_types") or ["pin"] * len(items)
        actions = row.get("actions") or [""] * len(items)
        last = list(zip(items, types, actions))[-k:]
        texts = query_texts(t, [i for i, ty, _ in last if ty == "query"])
        lines += [f"batch  {a:<16} {token_label(i, ty, texts.get(i))}" for i, ty, a in last]
    fresh = t.read("events", ds=[fresh_ds], filter=pc.field("user_id") == user_id,
                   columns=["item_id", "item_type", "query_text", "action", "ts"]).sort_by("ts").to_pylist()
    lines += [f"fresh  {e['action']:<16} {token_label(e['item_id'], e['item_type'], e['query_text'])}"
              for e in fresh[-k:]]
    return lines


def pick_users(lake: Path, ds: str, fresh_ds: str, n: int) -> list[int]:
    """Users with both a batch sequence and fresh events: where the merge has work to do."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.layout import Lake

    t = DeltaRsTables(Lake.at(lake))
    from pinrec.core.sequences_store import read_sequences

    batch = set(read_sequences(t, ds, columns=["user_id"])["user_id"].to_pylist())
    fresh = t.read("events", ds=[fresh_ds], columns=["user_id"])["user_id"].to_pylist()
    counts: dict[int, int] = {}
    for u in fresh:
        if u in batch:
            counts[u] = counts.get(u, 0) + 1
    ranked = sorted(counts, key=lambda u: (-counts[u], u))
    return (ranked or sorted(batch))[:n]


def fetch(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _rows(response: dict) -> list[dict]:
    for key in ("recommendations", "items", "candidates", "results"):
        if isinstance(response.get(key), list):
            return response[key]
    return []


def show_recommendations(cfg, base_url: str, token: str, n: int = 10) -> list[dict]:
    shown = []
    for user in pick_users(cfg.lake, cfg.ds, cfg.fresh_ds, cfg.show_users):
        response = fetch(f"{base_url}/v1/recommendations/{user}?n={n}&arm=balanced", token)
        history = recent_history(cfg.lake, cfg.ds, cfg.fresh_ds, user)
        recs = _rows(response)
        print(f"\n=== user {user} " + "=" * 60)
        print("recent history (oldest first)".ljust(44) + "| merged recommendations (arm balanced)")
        left = history or ["(no history)"]
        right = [" ".join(f"{k}={v}" for k, v in r.items() if k in ("item_id", "score", "outcome",
                                                                   "source", "sources"))
                 for r in recs] or [json.dumps(response)[:80]]
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            print(f"{a:<44}| {b}")
        extra = {k: v for k, v in response.items() if not isinstance(v, list)}
        if extra:
            print(f"response: {json.dumps(extra)[:200]}")
        shown.append({"user_id": user, "history": history, "response": response})
    out = cfg.out / "report" / "recommendations.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(shown, indent=2, default=str))
    return shown


def plot_timings(steps: list[tuple[str, float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, s) for n, s, _ in steps if n != "total"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh([n for n, _ in rows][::-1], [s for _, s in rows][::-1], color="#3b7dd8")
    ax.set_xlabel("seconds")
    ax.set_title("pinrec demo: time per step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(cfg, steps: list[tuple[str, float, str]]) -> Path:
    rep = cfg.out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    plot_timings(steps, rep / "step_timings.png")
    plots = []
    runs = cfg.lake / "runs"
    for png in sorted(runs.rglob("*.png")) if runs.exists() else []:
        dest = rep / ("runs-" + "-".join(png.relative_to(runs).parts))
        shutil.copyfile(png, dest)
        plots.append(dest.name)
    lines = [
        "# PinRec demo report", "",
        f"Lake: `{cfg.lake}`; batch day ds={cfg.ds}; fresh events replayed from {cfg.fresh_ds}; "
        f"model version `{cfg.model_version}`.", "",
        "| step | seconds | status |", "|---|---:|---|",
        *[f"| {n} | {s:.1f} | {st} |" for n, s, st in steps], "",
        "![time per step](step_timings.png)", "",
    ]
    gate = cfg.lake / "runs" / "gate" / f"{cfg.ds}.json"
    if gate.exists():
        g = json.loads(gate.read_text())
        lines += ["## Quality gate", "", f"{'PASSED' if g['passed'] else 'FAILED'}: {g['reason']}", ""]
    recs = rep / "recommendations.json"
    if recs.exists():
        lines += ["## Recommendations", ""]
        for r in json.loads(recs.read_text()):
            items = [str(x.get("item_id")) for x in _rows(r["response"])][:10]
            lines += [f"- user {r['user_id']}: history `{'; '.join(r['history'][-3:])}` -> "
                      f"items {', '.join(items) or '(none)'}"]
        lines.append("")
    if (rep / "arms" / "index.html").exists():
        lines += ["## Arms (closed loop)", "", "What each arm earned: [arms/index.html](arms/index.html)",
                  "", "![realised mix vs budget](arms/mix_vs_budget.png)", ""]
    if plots:
        lines += ["## Plots from the jobs", "", *[f"![{p}]({p})" for p in plots], ""]
    path = rep / "report.md"
    path.write_text("\n".join(lines))
    return path
