"""The rehearsal's report: report.json (everything) and report.md (a table per day)."""
from __future__ import annotations

import json
from pathlib import Path


OUTCOME_NAMES = ("expectation: a healthy day is published",
                 "the refused day is not published; the previous day keeps serving",
                 "day outcome as expected")


def is_expectation(check: dict, fault: str) -> bool:
    """Expectations are reported but do not fail the rehearsal (reports written before the
    split named the healthy-day outcome "day outcome as expected")."""
    name = check["name"]
    return name.startswith("expectation:") or (name == "day outcome as expected"
                                                and fault != "broken_model")


def _gate_line(gate: dict | None) -> str:
    if not gate:
        return "no gate record"
    keys = ("passed", "candidate_recall", "serving_recall", "difference", "ci95", "reason")
    return "; ".join(f"{k} {gate[k]}" for k in keys if k in gate)


def day_markdown(d: dict) -> list[str]:
    ok = all(c["ok"] or is_expectation(c, d["fault"]) for c in d["checks"])
    unmet = [c["name"] for c in d["checks"] if not c["ok"] and is_expectation(c, d["fault"])]
    lines = [f"### {d['ds']}: {d['fault']} ({'all invariants held' if ok else 'INVARIANT BROKEN'}"
             f"{'; expectation not met' if unmet else ''})",
             "", f"*Fault:* {d['description']}. *Run:* `{d['run_id']}` {d['run_state']} "
             f"in {d['seconds']:.0f} s.", "", "*What happened:*", ""]
    lines += [f"- {n}" for n in d["notes"]]
    lines += ["", f"*Quality gate:* {_gate_line(d.get('gate'))}", "",
              "| invariant | held | detail |", "|---|---|---|"]
    for c in d["checks"]:
        detail = c["detail"].replace("|", "\\|").replace("\n", " ")
        held = "yes" if c["ok"] else ("not met (expectation)" if is_expectation(c, d["fault"]) else "**NO**")
        lines.append(f"| {c['name']} | {held} | {detail} |")
    return lines + [""]


def markdown(result: dict) -> str:
    cfg = result["config"]
    days = [result["bootstrap"]] + result["days"] if result.get("bootstrap") else result["days"]
    broken = sum(1 for d in days for c in d["checks"] if not c["ok"] and not is_expectation(c, d["fault"]))
    unmet = sum(1 for d in days for c in d["checks"] if not c["ok"] and is_expectation(c, d["fault"]))
    lines = ["# Rehearsal of production days", "",
             f"`pinrec rehearse --days {len(result['days'])}`: {len(result['days'])} days plus a "
             f"bootstrap day through the real Airflow scheduler; wall time {result['wall_s']:.0f} s; "
             f"{'every invariant held' if not broken else f'{broken} invariant check(s) broke'}"
             f"{f'; {unmet} expectation(s) not met' if unmet else ''}.", "",
             f"Lake: {cfg['users']} synthetic users, {cfg['items']} items, history from "
             f"{cfg['start']}; DAG conf {json.dumps(cfg['dag_conf'])} (quality gate at its default "
             f"threshold); p99 bound {cfg['p99_ms']:.0f} ms.", "",
             "| day | fault | run | published | invariants |", "|---|---|---|---|---|"]
    for d in days:
        bad = [c["name"] for c in d["checks"] if not c["ok"] and not is_expectation(c, d["fault"])]
        unmet_d = [c["name"] for c in d["checks"] if not c["ok"] and is_expectation(c, d["fault"])]
        pub = next((c["detail"] for c in d["checks"] if c["name"] in OUTCOME_NAMES), "")
        lines.append(f"| {d['ds']} | {d['fault']} | {d['run_state']} | {pub.split('got ')[-1]} | "
                     f"{'all held' if not bad else 'BROKEN: ' + ', '.join(bad)}"
                     f"{'; not met: ' + ', '.join(unmet_d) if unmet_d else ''} |")
    lines.append("")
    for d in days:
        lines += day_markdown(d)
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "report.json", out / "report.md"
    j.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    m.write_text(markdown(result))
    return j, m
