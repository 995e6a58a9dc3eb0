"""The README's measured figures are the evidence's: a fresh render from bench/results/ equals the
README's table (bench/report.py). Edit a figure by re-running its command, then `pinrec bench report --write`."""
import json

import pytest

from bench import report


def test_readme_table_equals_a_fresh_render_of_the_evidence():
    assert report.readme_block(report.README.read_text()) == report.render(), \
        "README's measured figures differ from bench/results/: run `pinrec bench report --write`"


def test_repeated_runs_render_as_median_and_range(tmp_path):
    for i, v in enumerate([3.0, 5.0, 4.0]):
        (tmp_path / f"r{i}.json").write_text(json.dumps({"a": {"p99": v}}))
    fig = report.Figure("p99", "r*.json", "a.p99", "{:.1f} ms", "cmd", "here")
    assert report.cell(fig, report.values(fig, tmp_path)) == "median 4.0 ms (min–max 3.0 ms – 5.0 ms, 3 runs)"


def test_a_figure_without_evidence_is_an_error_naming_the_command(tmp_path):
    fig = report.Figure("x", "missing*.json", "a", "{}", "pinrec bench x --json missing.json", "here")
    with pytest.raises(FileNotFoundError, match="pinrec bench x"):
        report.values(fig, tmp_path)
