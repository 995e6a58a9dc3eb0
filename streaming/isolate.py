"""Find the records that make a batch fail, by bisection, so the rest of the batch goes on.

`isolate(items, attempt)` runs `attempt` on the whole batch; when it raises, it runs it on each
half, and so on down to single items. A single item that still fails is a *leaf failure*: the
caller's `on_leaf_failure(item, exc)` decides whether that is the record's fault (return: the
item is reported as failed and the bisection goes on) or the system's (raise: everything stops,
nothing is reported). `attempt` must be idempotent, because items of a failing half are retried
(the consumer's RocksDB writes are: a re-written event overwrites itself).

With one bad record among n, this costs about 2·log2(n) extra attempts (≈ 18 for 500).
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def isolate(items: Sequence[T], attempt: Callable[[Sequence[T]], R],
            on_leaf_failure: Callable[[T, Exception], None] = lambda _i, _e: None
            ) -> tuple[list[R], list[tuple[T, Exception]]]:
    """-> (results of the attempts that succeeded, [(item, exception)] of the failing items)."""
    if not items:
        return [], []
    try:
        return [attempt(items)], []
    except Exception as e:  # the batch failed: find out which items are to blame
        if len(items) == 1:
            on_leaf_failure(items[0], e)
            return [], [(items[0], e)]
    mid = len(items) // 2
    ok_a, bad_a = isolate(items[:mid], attempt, on_leaf_failure)
    ok_b, bad_b = isolate(items[mid:], attempt, on_leaf_failure)
    return ok_a + ok_b, bad_a + bad_b
