"""The groups are part of PinRecConfig's definition (issue 14 point 6): the derived field -> group
map covers exactly its fields, `groups()` round-trips, the defaults are those of the flat class it
replaced, docs/model.md lists the same groups, and the grouped print shows the effective values
with the rules' reasons."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from pinrec_model.config import SETTINGS_GROUPS, PinRecConfig, preset
from pinrec_model.config_groups import CONFIG_GROUPS, TRAINING_GROUP, format_config, grouped
from pinrec_model.defaults import DataShape, default_rules
from pinrec_model.training import TrainConfig

DOCS = Path(__file__).resolve().parents[3] / "docs" / "model.md"


# Every field's default as the flat PinRecConfig defined it before the groups (read from that code,
# commit ea7ea6b): the grouping moved fields, it must not change one default or type.
FLAT_DEFAULTS = {
    "variant": "uc", "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "dropout": 0.1,
    "emb_dim": 64, "max_len": 50, "max_positions": 128, "feature_dim": 32, "use_features": True,
    "id_dim": 64, "id_buckets": 65536, "id_hashes": 2, "n_actions": 6, "n_item_types": 2,
    "n_surfaces": 3, "logit_scale": 20.0, "full_softmax": False, "logq_correction": True,
    "logq_on_positive": False, "n_random_negatives": 256, "max_in_batch_negatives": 1024,
    "cms_width": 65536, "cms_depth": 4, "t_lim": 4, "window": 2, "window_unit": "steps",
    "window_max_tokens": 16, "t_lim_unit": "steps", "t_lim_s": 300, "lookahead_tokens": 32,
    "window_loss": "min", "tokens_per_step": 4, "num_embeddings": 16, "item_tower": "hashed_mlp",
    "id_hash": "universal", "logits": "cosine", "head": "mlp", "input_proj": True, "time_age": True,
}


def test_defaults_and_types_are_those_of_the_flat_config():
    fields = dataclasses.fields(PinRecConfig)
    assert {f.name: f.default for f in fields} == FLAT_DEFAULTS
    # `--set key=value` casts by the annotation: it must still name the default's type
    assert {f.name: f.type for f in fields} == {k: type(v).__name__ for k, v in FLAT_DEFAULTS.items()}


def test_derived_groups_cover_exactly_the_fields_once_each():
    names = [f.name for f in dataclasses.fields(PinRecConfig)]
    assert list(CONFIG_GROUPS) == names  # to_json writes the fields in print order
    per_group = [f.name for g in SETTINGS_GROUPS for f in dataclasses.fields(g)]
    assert per_group == names  # each field in exactly one group
    assert [g.GROUP for g in SETTINGS_GROUPS] == ["variant", "item tower", "sequence model", "head",
                                                  "objective", "generation"]


def test_groups_round_trip_to_the_same_config():
    for cfg in (PinRecConfig(), preset("paper", variant="mt_oc", head="add", emb_dim=768, dropout=0.3)):
        groups = cfg.groups()
        assert list(groups) == [g.GROUP for g in SETTINGS_GROUPS]
        assert [type(s) for s in groups.values()] == list(SETTINGS_GROUPS)
        merged = {k: v for s in groups.values() for k, v in dataclasses.asdict(s).items()}
        assert PinRecConfig(**merged) == cfg
    assert PinRecConfig(dropout=0.3).groups()["sequence model"].dropout == 0.3


def test_docs_list_each_group_with_exactly_its_fields():
    text = DOCS.read_text()
    table = text[text.index("| group | `PinRecConfig` fields"):]
    documented = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        group, cell = [c.strip() for c in line.strip("|").split("|")]
        if group != TRAINING_GROUP:
            documented[group] = re.findall(r"`(\w+)`", cell)
    by_group: dict[str, list[str]] = {}
    for f, g in CONFIG_GROUPS.items():
        by_group.setdefault(g, []).append(f)
    assert documented == by_group  # same groups, same fields, same order


def _report(cfg, tc, rules):
    from jobs.train import config_report

    return config_report(cfg, tc, rules)


def test_grouped_keeps_every_value_and_old_configs_still_load():
    cfg, tc = preset("small", variant="mt_oc", dropout=0.3), TrainConfig(epochs=7)
    g = grouped(_report(cfg, tc, None))
    assert list(g) == ["variant", "item tower", "sequence model", "head", "objective", "generation", "training"]
    flat = {k: v for grp, fields in g.items() if grp != TRAINING_GROUP for k, v in fields.items()}
    assert flat == cfg.to_json() and g["sequence model"]["dropout"] == 0.3
    assert g["training"]["epochs"] == 7
    # a saved config.json is the flat dict: it loads as it always did, unknown keys ignored (GROUP,
    # a class attribute of the groups, is no field either)
    assert PinRecConfig.from_json({**cfg.to_json(), "some_future_field": 1, "GROUP": "x"}) == cfg
    assert grouped({"model": {"some_future_field": 1}}) == {"other": {"some_future_field": 1}}


def test_format_marks_rule_values_with_their_reason_and_explicit_ones_as_given():
    from jobs.train import add_model_args, model_config, train_config
    from pinrec.core.contracts import PINTEREST_ACTIONS

    p = argparse.ArgumentParser()
    add_model_args(p)
    args = p.parse_args(["--variant", "uc", "--set", "dropout=0.1"])
    rules = default_rules(DataShape(1_090, 3_646, 52_551, 19.0, 123.1))  # LastFM
    text = format_config(_report(model_config(args, PINTEREST_ACTIONS, rules), train_config(args, rules), rules))
    lines = text.splitlines()
    assert "[sequence model]" in lines and "[training]" in lines
    max_len = next(ln for ln in lines if ln.strip().startswith("max_len ="))
    assert max_len.startswith("  max_len = 130  # rule: p90 history length 123 -> 130")
    dropout = next(ln for ln in lines if ln.strip().startswith("dropout ="))
    assert dropout == "  dropout = 0.1  # given explicitly (the rule would give 0.5)"
    assert "  warmup_steps = 50  # rule: " in "\n".join(lines)
    assert "  n_layers = 2" in lines  # a plain code default: no note
