"""The default rules produce the documented configuration for a given data shape (docs/model.md,
"Default rules"), and explicit flags win over them."""
import argparse
from pathlib import Path

import numpy as np
import pytest

from pinrec_model.defaults import DataShape, data_shape, default_rules, max_len_rule, schedule_epochs


def shape(users=22_363, items=12_101, events=198_502, p50=6.0, p90=15.0):
    return DataShape(users, items, events, p50, p90)


DOCS = Path(__file__).resolve().parents[3] / "docs" / "model.md"

# The documented shapes (docs/model.md, "Default rules") and what the rules must give for each:
# name -> (DataShape, max_len, max_positions, full_softmax, dropout, warm-up steps, schedule epochs).
DOCUMENTED = {
    "tiny (CI)": (DataShape(60, 40, 720, 12.0, 12.0), 50, 114, True, 0.5, 50, 400),
    "Beauty": (DataShape(22_363, 12_101, 198_502, 6.0, 14.0), 50, 114, True, 0.5, 88, 23),
    "Sports": (DataShape(35_598, 18_357, 296_337, 6.0, 13.0), 50, 114, True, 0.5, 140, 20),
    "Toys": (DataShape(19_412, 11_924, 167_597, 6.0, 14.0), 50, 114, True, 0.5, 76, 27),
    "Yelp": (DataShape(30_431, 20_033, 316_354, 7.0, 19.0), 50, 114, True, 0.5, 119, 20),
    "LastFM (long sequences)": (DataShape(1_090, 3_646, 52_551, 19.0, 123.1), 130, 194, True, 0.5, 50, 400),
    "large catalogue, dense": (DataShape(2_000_000, 500_000, 40_000_000, 15.0, 45.0), 50, 114, False, 0.2, 1000, 20),
    "long and large": (DataShape(1_000_000, 5_000_000, 400_000_000, 180.0, 420.0), 200, 264, False, 0.2, 1000, 20),
}
ARCHITECTURE = {"d_model": 128, "emb_dim": 128, "id_dim": 128, "d_ff": 512, "item_tower": "id_mlp",
                "logits": "dot", "input_proj": False}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_each_documented_shape_gets_the_documented_config(name):
    sh, max_len, max_positions, full, dropout, warmup, epochs = DOCUMENTED[name]
    r = default_rules(sh)
    assert r.model == {**ARCHITECTURE, "head": "none", "max_len": max_len, "max_positions": max_positions,
                       "full_softmax": full, "dropout": dropout}
    # the schedule runs to its end: patience is the whole schedule
    assert r.train == {"batch_size": 256, "epochs": epochs, "patience": epochs, "max_seconds": 540.0,
                       "warmup_steps": warmup}
    assert set(r.why) == {"architecture", "max_len", "full_softmax", "dropout", "training"}  # each has a reason


@pytest.mark.parametrize("variant", ["uc", "sasrec", "pinnerformer", "oc", "mt_oc"])
def test_conditioned_variants_keep_the_code_architecture_and_batch(variant):
    r = default_rules(shape(), variant)
    if variant in ("oc", "mt_oc"):  # the MLP head and batch 128 their figures were measured on
        assert not set(ARCHITECTURE) & set(r.model) and "head" not in r.model
        assert (r.train["batch_size"], r.train["epochs"], r.train["warmup_steps"]) == (128, 20, 175)
    else:
        assert {k: r.model[k] for k in ARCHITECTURE} == ARCHITECTURE and r.model["head"] == "none"
        assert r.train["batch_size"] == 256


@pytest.mark.parametrize("steps,epochs", [(1, 400), (5, 400), (6, 334), (88, 23), (100, 20), (10_000, 20)])
def test_the_schedule_spans_2000_steps_within_20_to_400_epochs(steps, epochs):
    assert schedule_epochs(steps) == epochs


def test_every_variant_builds_under_the_rules():
    """The rules' architecture is valid for each variant (SASRec: the ID tower, no features)."""
    from jobs.train import model_config
    from pinrec.core.contracts import PINTEREST_ACTIONS

    for v in ("uc", "oc", "mt_oc", "pinnerformer", "sasrec"):
        cfg = model_config(_args("--variant", v), PINTEREST_ACTIONS, default_rules(shape(), v))
        expected = {"sasrec": "id", "oc": "hashed_mlp", "mt_oc": "hashed_mlp"}.get(v, "id_mlp")
        assert cfg.item_tower == expected and cfg.d_model == (64 if v in ("oc", "mt_oc") else 128), v


def _docs_rows() -> dict[str, list[str]]:
    """docs/model.md's shape table: name -> its cells."""
    text = DOCS.read_text()
    table = text[text.index("| data shape | users |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_docs_table_is_what_the_rules_give():
    rows = _docs_rows()
    assert set(rows) == set(DOCUMENTED)
    for name, (sh, max_len, max_positions, full, dropout, warmup, _) in DOCUMENTED.items():
        r = default_rules(sh)
        p90 = f"{sh.p90_len:g}"
        assert rows[name] == [name, f"{sh.users:,}", f"{sh.items:,}", f"{sh.events:,}", f"{sh.p50_len:g} / {p90}",
                              str(r.model["max_len"]), str(r.model["max_positions"]),
                              "full" if r.model["full_softmax"] else "sampled + logQ", f"{r.model['dropout']:g}",
                              str(r.train["warmup_steps"]),
                              f"{r.train['epochs']} / {r.train['patience']} / {r.train['max_seconds']:g} s"], name


@pytest.mark.parametrize("p90,expected", [(0, 50), (49, 50), (51, 60), (123, 130), (199.5, 200), (5000, 200)])
def test_max_len_is_p90_rounded_up_to_ten_within_bounds(p90, expected):
    assert max_len_rule(shape(p90=p90)) == expected


def test_data_shape_from_lengths():
    s = data_shape(np.array([1, 2, 3, 4, 10]), 7)
    assert (s.users, s.items, s.events, s.p50_len) == (5, 7, 20, 3.0)
    assert s.p90_len == pytest.approx(7.6)


def _args(*argv):
    from jobs.train import add_model_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(list(argv))


def test_explicit_flags_and_set_win_over_the_rules():
    from jobs.train import model_config, train_config
    from pinrec.core.contracts import PINTEREST_ACTIONS

    rules = default_rules(shape(), "mt_oc")  # the CLI's default variant
    a = _args("--epochs", "3", "--set", "dropout=0.1", "--no-full-softmax")
    cfg, tc = model_config(a, PINTEREST_ACTIONS, rules), train_config(a, rules)
    assert (cfg.dropout, cfg.full_softmax, cfg.max_len) == (0.1, False, 50)  # max_len from the rules
    assert (tc.epochs, tc.patience, tc.max_seconds, tc.warmup_steps, tc.batch_size) == (3, 20, 540.0, 175, 128)
    off = _args()
    cfg0, tc0 = model_config(off, PINTEREST_ACTIONS), train_config(off)
    assert (cfg0.dropout, cfg0.full_softmax, tc0.epochs, tc0.patience, tc0.max_seconds) == (0.1, False, 20, 5, None)
    assert (cfg0.d_model, cfg0.head, tc0.batch_size) == (64, "mlp", 128)  # the code defaults, rules off
    assert train_config(_args("--batch-size", "64"), rules).batch_size == 64
    assert train_config(_args("--max-seconds", "0"), rules).max_seconds is None  # 0 = no time budget
