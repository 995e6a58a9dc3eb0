"""Which part of the model each setting configures, and the effective configuration as a person
reads it (issue 14 point 6: "config you can see").

The groups are part of the definition: pinrec_model/config.py defines each group's settings in
its own dataclass (`ItemTowerSettings`, ...) with its GROUP name, and `PinRecConfig` inherits them
all, staying one flat dataclass so every saved `config.json` loads and every `--set key=value`
keeps its key. CONFIG_GROUPS here is derived from those classes, never spelled out.
`pinrec train --print-config` and `pinrec eval --print-config` print through `format_config`;
docs/model.md lists the same groups, and a unit test fails when that table and the code disagree.

Pure: dictionaries in, text out.
"""
from __future__ import annotations

import dataclasses

from pinrec_model.config import SETTINGS_GROUPS

# PinRecConfig field -> group, groups in print order, fields in their class's order.
CONFIG_GROUPS: dict[str, str] = {f.name: g.GROUP for g in SETTINGS_GROUPS
                                 for f in dataclasses.fields(g)}
# TrainConfig's fields (pinrec_model/training.py) all print under this group.
TRAINING_GROUP = "training"

# The rule (pinrec_model/defaults.py, Rules.why) that explains a setting the rules derive.
WHY_KEY = {"max_positions": "max_len", "epochs": "training", "patience": "training",
           "max_seconds": "training", "warmup_steps": "training", "batch_size": "architecture",
           **{k: "architecture" for k in ("d_model", "emb_dim", "id_dim", "d_ff", "item_tower", "logits",
                                          "input_proj", "head")}}


def grouped(report: dict) -> dict[str, dict]:
    """A config report ({"model": flat PinRecConfig dict, "train": TrainConfig dict, ...}, as
    saved in config.json and eval JSONs) -> {group: {field: value}}, groups in print order.
    A field this code does not know (a newer config) is kept, under "other"."""
    model = report.get("model", {})
    out: dict[str, dict] = {g: {} for g in dict.fromkeys(CONFIG_GROUPS.values())}
    for k, g in CONFIG_GROUPS.items():  # in the groups' order, whatever order the report has
        if k in model:
            out[g][k] = model[k]
    for k in model.keys() - CONFIG_GROUPS.keys():
        out.setdefault("other", {})[k] = model[k]
    if report.get("train"):
        out[TRAINING_GROUP] = dict(report["train"])
    return {g: fields for g, fields in out.items() if fields}


def format_config(report: dict) -> str:
    """The effective configuration, grouped, each rule-derived value marked with its reason and
    each value given explicitly over a rule marked as such."""
    rules = report.get("rules") or {}
    derived = {**rules.get("model", {}), **rules.get("train", {})}
    why = rules.get("why", {})
    lines = ["effective configuration (groups: pinrec_model/config_groups.py; rules: "
             + ("pinrec_model/defaults.py" if rules else "off") + ")"]
    for group, fields in grouped(report).items():
        lines.append(f"[{group}]")
        for k, v in fields.items():
            note = ""
            if k in derived:
                reason = why.get(WHY_KEY.get(k, k), "")
                note = (f"  # rule: {reason}" if v == derived[k]
                        else f"  # given explicitly (the rule would give {derived[k]!r})")
            lines.append(f"  {k} = {v!r}{note}")
    return "\n".join(lines)
