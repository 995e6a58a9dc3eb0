"""What a person reads: libraries quiet unless --verbose; query tokens shown as their text."""
from __future__ import annotations

import logging

import pytest

from pinrec.cli import build_parser, configure_logging
from pinrec.core.contracts import normalise_query, query_item_id
from pinrec.demo_report import query_texts, token_label


@pytest.fixture
def restore_levels():
    names = ["", "kafka", "py4j", "streaming", "jobs", "pinrec"]
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


def test_libraries_log_at_warning_unless_verbose(restore_levels):
    configure_logging(verbose=False)
    assert logging.getLogger("kafka.conn").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("py4j.clientserver").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("streaming.consumer").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("jobs.sequences").getEffectiveLevel() == logging.INFO
    configure_logging(verbose=True)
    assert logging.getLogger("kafka.conn").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("streaming.consumer").getEffectiveLevel() == logging.DEBUG


def test_verbose_is_accepted_before_or_after_the_command():
    p = build_parser()
    assert p.parse_known_args(["--verbose", "maintenance", "--tables", "events"])[0].verbose is True
    assert p.parse_known_args(["maintenance", "-v", "--tables", "events"])[0].verbose is True
    assert not getattr(p.parse_known_args(["maintenance", "--tables", "events"])[0], "verbose", False)


def test_query_tokens_read_as_their_text(tmp_path):
    from pinrec.core.lake import DeltaRsTables
    from pinrec.cli import main as pinrec
    from pinrec.core.layout import Lake

    lake = tmp_path / "lake"
    assert pinrec(["data", "synth", "--users", "30", "--days", "2", "--items", "200", "--lake", str(lake)]) == 0
    tables = DeltaRsTables(Lake.at(lake))
    ev = tables.read("events", columns=["item_id", "item_type", "query_text"]).to_pylist()
    queries = {e["item_id"]: e["query_text"] for e in ev if e["item_type"] == "query"}
    assert queries, "the synthetic lake has search queries"
    some = sorted(queries)[:5]
    texts = query_texts(tables, some + [12345])  # a pin id has no text
    assert texts == {i: queries[i] for i in some}
    for i, text in texts.items():
        assert query_item_id(text) == i  # the id is the hash of the text: the text is the token
        assert token_label(i, "query", text) == f'query "{text}"' and str(i) not in token_label(i, "query", text)
    assert token_label(7, "pin", None) == "item 7"
    assert token_label(9, "query", None) == "query #9"  # text unknown: say it is a query
    assert normalise_query("  Red  SHOES ") == "red shoes"
