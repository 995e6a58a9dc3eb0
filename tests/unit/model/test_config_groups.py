"""Every PinRecConfig field has a group (issue 14 point 6), docs/model.md lists the same groups,
and the grouped print shows the effective values with the rules' reasons."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from pinrec_model.config import PinRecConfig, preset
from pinrec_model.config_groups import CONFIG_GROUPS, TRAINING_GROUP, format_config, grouped, missing_groups
from pinrec_model.defaults import DataShape, default_rules
from pinrec_model.training import TrainConfig

DOCS = Path(__file__).resolve().parents[3] / "docs" / "model.md"


def test_every_field_has_a_group_and_every_group_entry_is_a_field():
    assert missing_groups() == []
    assert set(CONFIG_GROUPS) == set(PinRecConfig.__dataclass_fields__)


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
    # a saved config.json is the flat dict: it loads as it always did, unknown keys ignored
    assert PinRecConfig.from_json({**cfg.to_json(), "some_future_field": 1}) == cfg
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
