"""send_confirmed: an answer counts only with an offset; the rest is re-sent, then raises.

A scripted producer stands in for the broker here: a real one cannot be made to answer offset -1
on demand (the real case, a Tansu restart, is tests/integration/test_stream_broker_restart.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from streaming.produce import Unconfirmed, send_confirmed


class Future:
    def __init__(self, outcome):
        self.outcome = outcome

    def get(self, timeout=None):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return SimpleNamespace(offset=self.outcome)


class ScriptedProducer:
    """Answers each send from a script keyed by (value, attempt): an offset, -1 or an error."""

    def __init__(self, script):
        self.script, self.sent = script, []

    def send(self, topic, key=None, value=None, headers=None):
        attempt = sum(1 for v, _ in self.sent if v == value)
        self.sent.append((value, headers))
        return Future(self.script.get((value, attempt), 7))

    def flush(self, timeout=None):
        pass


def test_offset_minus_one_and_errors_are_sent_again():
    p = ScriptedProducer({(b"a", 0): -1, (b"b", 0): RuntimeError("broker gone"), (b"b", 1): -1})
    n = send_confirmed(p, "t", [(b"k", b"a"), (b"k", b"b", [("h", b"1")]), (b"k", b"c")])
    assert n == 3
    assert [v for v, _ in p.sent] == [b"a", b"b", b"c", b"a", b"b", b"b"]
    assert p.sent[-1][1] == [("h", b"1")]  # headers travel with the re-send


def test_never_confirmed_raises_and_names_the_topic():
    p = ScriptedProducer({(b"a", i): -1 for i in range(3)})
    with pytest.raises(Unconfirmed, match="1 records to topic 'dlq'"):
        send_confirmed(p, "dlq", [(b"k", b"a")], attempts=3)
    assert len(p.sent) == 3
