"""Sending that knows what the broker stored: an answer counts only with an offset.

kafka-python resolves a send's future as a success whenever the broker answers with error 0.
Tansu 0.6 answers the requests in flight at its SIGTERM exit with error 0 and offset -1, and
some of those records are never stored (tests/integration/test_stream_broker_restart.py traced
every lost "acknowledged" message to such an answer). So a record is confirmed only when its
answer carries an offset; the rest are sent again (at least once: the consumer stores a re-sent
event once, by its event id), and a record that fails or stays unconfirmed raises.
"""
from __future__ import annotations

from typing import Iterable

Message = tuple  # (key, value) or (key, value, headers)


class Unconfirmed(RuntimeError):
    """Records the broker did not confirm after every attempt."""


def send_confirmed(producer, topic: str, messages: Iterable[Message], attempts: int = 5,
                   timeout_s: float = 60.0) -> int:
    """Send, flush, and re-send what came back without an offset; -> records confirmed."""
    pending = list(messages)
    confirmed = 0
    for _ in range(attempts):
        if not pending:
            break
        futures = [(m, producer.send(topic, key=m[0], value=m[1], headers=m[2] if len(m) > 2 else None))
                   for m in pending]
        producer.flush(timeout=timeout_s)
        pending = []
        for m, fut in futures:
            try:
                meta = fut.get(timeout=timeout_s)
            except Exception:  # a failed send: try it again, it raises below if it keeps failing
                pending.append(m)
                continue
            if meta.offset >= 0:
                confirmed += 1
            else:
                pending.append(m)
    if pending:
        raise Unconfirmed(f"{len(pending)} records to topic {topic!r} were not confirmed with an "
                          f"offset after {attempts} attempts; is the broker up? (nothing was "
                          f"committed past them, so they are retried on restart)")
    return confirmed
