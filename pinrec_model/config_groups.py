"""Which part of the model each setting configures, and the effective configuration as a person
reads it (issue 14 point 6: "config you can see").

`PinRecConfig` stays one flat dataclass, so every saved `config.json` loads and every `--set
key=value` keeps its key; CONFIG_GROUPS is the one place that says which part of the model a
field belongs to. `pinrec train --print-config` and `pinrec eval --print-config` print through
`format_config`; docs/model.md lists the same groups, and a unit test fails when a field of
PinRecConfig has no group here.

Pure: dictionaries in, text out.
"""
from __future__ import annotations

from pinrec_model.config import PinRecConfig

# PinRecConfig field -> group, in the order the groups are printed.
CONFIG_GROUPS: dict[str, str] = {
    # which paper variant: conditioning of the head (OC) and the multi-token objective (MT)
    "variant": "variant",
    # f_T: item features + hashed IDs -> the shared item space (paper 4.1)
    **dict.fromkeys(("item_tower", "feature_dim", "use_features", "id_dim", "id_buckets", "id_hashes",
                     "id_hash", "emb_dim", "n_item_types"), "item tower"),
    # the causal transformer over the history tokens (4.2)
    **dict.fromkeys(("d_model", "n_layers", "n_heads", "d_ff", "dropout", "max_len", "max_positions",
                     "input_proj", "time_age", "n_actions", "n_surfaces"), "sequence model"),
    # the output head: h (+ action / offset condition Phi) -> a query in the item space (4.3)
    **dict.fromkeys(("head", "logits", "logit_scale"), "head"),
    # the loss: full or sampled softmax, negatives, logQ (Eq. 2-3), multi-token targets (Eq. 5)
    **dict.fromkeys(("full_softmax", "logq_correction", "logq_on_positive", "n_random_negatives",
                     "max_in_batch_negatives", "cms_width", "cms_depth", "t_lim", "t_lim_unit", "t_lim_s",
                     "lookahead_tokens", "window", "window_unit", "window_max_tokens", "window_loss"),
                    "objective"),
    # serving-time generation defaults (4.4)
    **dict.fromkeys(("tokens_per_step", "num_embeddings"), "generation"),
}
# TrainConfig's fields (pinrec_model/training.py) all print under this group.
TRAINING_GROUP = "training"

# The rule (pinrec_model/defaults.py, Rules.why) that explains a setting the rules derive.
WHY_KEY = {"max_positions": "max_len", "epochs": "training", "patience": "training",
           "max_seconds": "training", "warmup_steps": "training", "batch_size": "training",
           **{k: "architecture" for k in ("d_model", "emb_dim", "id_dim", "d_ff", "item_tower", "logits",
                                          "input_proj", "head")}}


def missing_groups() -> list[str]:
    """PinRecConfig fields without a group (a unit test keeps this empty)."""
    return [f for f in PinRecConfig.__dataclass_fields__ if f not in CONFIG_GROUPS]


def grouped(report: dict) -> dict[str, dict]:
    """A config report ({"model": flat PinRecConfig dict, "train": TrainConfig dict, ...}, as
    saved in config.json and eval JSONs) -> {group: {field: value}}, groups in print order.
    A field this code does not know (a newer config) is kept, under "other"."""
    model = report.get("model", {})
    out: dict[str, dict] = {g: {} for g in dict.fromkeys(CONFIG_GROUPS.values())}
    for k, g in CONFIG_GROUPS.items():  # in this file's order, whatever order the report has
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
