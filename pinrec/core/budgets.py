"""Arms and their budgets: parsed and validated once, at the edge, into frozen values.

An arm (an experiment group) is a named budget B over engagement actions: non-negative weights
that sum to 1 (paper §4.3.1). The paper allocates N items "deterministically or stochastically"
over the actions, "based on the expectation, each action a can deterministically be allocated
B(a)·N items"; we take the deterministic rule, made integral by the largest remainder, and use
it everywhere a budget is spent: generation (embeddings and items per action), the batch job's
selection and the serve-time merge. `Budget.quotas(n)` is that rule.

Where a budget enters: `pinrec gate params` (the DAG's params task), `pinrec score --arms`, and
serving when it loads a candidates partition. Everything inside trusts the value.

Stdlib only: the DAG file imports DEFAULT_ARMS (through pinrec.core.pipeline) at parse time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

# The one default set. `balanced` is the paper's Figure 3 budget; `repin` puts the whole budget
# on repins, so the closed loop (demo, `pinrec report arms`) can compare the two.
DEFAULT_ARMS: dict[str, dict[str, float]] = {
    "balanced": {"repin": 0.4, "grid_click": 0.4, "outbound_click": 0.1,
                 "long_grid_click": 0.05, "other": 0.05},
    "repin": {"repin": 1.0},
}
# Keys an arms file may carry for serving's traffic split (`pinrec serve --traffic`): not arms.
NOT_ARMS = ("traffic", "salt")


def largest_remainder(weights: Sequence[float], n: int) -> list[int]:
    """Integers proportional to `weights` that sum to n (Hamilton's method): floor each share of
    n, then give the units left to the largest remainders, ties to the lower index."""
    w = [float(x) for x in weights]
    total = sum(w)
    if n <= 0 or total <= 0:
        return [0] * len(w)
    share = [x / total * n for x in w]
    base = [math.floor(s) for s in share]
    left = n - sum(base)
    by_remainder = sorted(range(len(w)), key=lambda i: -(share[i] - base[i]))  # stable: ties by index
    for i in by_remainder[:left]:
        base[i] += 1
    return base


@dataclass(frozen=True)
class Budget:
    """B: (action, weight) pairs in the order given; weights non-negative, summing to 1."""

    weights: tuple[tuple[str, float], ...]

    @staticmethod
    def parse(raw, actions: Sequence[str], what: str = "budget") -> "Budget":
        """Check a {action: weight} mapping against the engagement `actions`; the message names
        `what` (e.g. "param 'arms': arm 'x'"), the bad value and the fix."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{what} must map actions to weights, e.g. {{\"repin\": 1.0}}, got {raw!r}")
        if not raw:
            raise ValueError(f"{what} is empty; give weights over actions, e.g. {{\"repin\": 1.0}}")
        out = []
        for a, w in raw.items():
            if a not in actions:
                raise ValueError(f"{what} names unknown action {a!r}; expected some of {list(actions)}")
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                raise ValueError(f"{what}: weight for {a!r} must be a non-negative number, got {w!r}")
            out.append((a, float(w)))
        total = sum(w for _, w in out)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"{what}: weights must sum to 1, got {total:.6f}: {dict(out)}")
        return Budget(tuple(out))

    @staticmethod
    def from_json(text: str | None) -> "Budget":
        """A budget as `pinrec score` stored it on a candidates row (checked when it was
        parsed there): serving reads it back once per partition, not per request."""
        return Budget(tuple((a, float(w)) for a, w in json.loads(text or "{}").items()))

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def to_json(self) -> str:
        """As stored on every candidates row (`budget` column)."""
        return json.dumps(self.as_dict(), sort_keys=True)

    def quotas(self, n: int) -> dict[str, int]:
        """B(a)·N made integral: n slots over the actions with positive weight, in budget order."""
        return dict(_quotas(self, n))

    def __bool__(self) -> bool:
        return bool(self.weights)


NO_BUDGET = Budget(())  # a request that names no arm: nothing to allocate


@lru_cache(maxsize=4096)  # serving asks per request; a handful of (budget, n) pairs exist
def _quotas(budget: Budget, n: int) -> tuple[tuple[str, int], ...]:
    names = [a for a, w in budget.weights if w > 0]
    if not names:
        return ()
    w = dict(budget.weights)
    return tuple(zip(names, largest_remainder([w[a] for a in names], n)))


@dataclass(frozen=True)
class Arms:
    """Arm name -> Budget, in name order (so every reader lists the arms the same way)."""

    budgets: tuple[tuple[str, Budget], ...]

    @staticmethod
    def parse(raw, actions: Sequence[str], what: str = "arms") -> "Arms":
        """{"arm": {"action": weight}, ...} (the keys `traffic` and `salt` are skipped: they are
        serving's traffic split) -> Arms, every budget checked."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{what} is not valid JSON ({e}); give e.g. "
                                 '{"balanced": {"repin": 0.5, "grid_click": 0.5}}') from None
        names = sorted(k for k in raw if k not in NOT_ARMS) if isinstance(raw, Mapping) else []
        if not names:
            raise ValueError(f"{what} must be a non-empty JSON object of arm name -> budget, e.g. "
                             '{"balanced": {"repin": 0.5, "grid_click": 0.5}}')
        return Arms(tuple((n, Budget.parse(raw[n], actions, f"{what}: arm {n!r}")) for n in names))

    @staticmethod
    def load(path: str | Path, actions: Sequence[str]) -> "Arms":
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"--arms {p} does not exist; write arm name -> budget as JSON, "
                                    f"e.g. {json.dumps(DEFAULT_ARMS)}") from None
        return Arms.parse(text, actions, f"--arms {p}")

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.budgets)

    def __len__(self) -> int:
        return len(self.budgets)

    def __getitem__(self, name: str) -> Budget:
        return dict(self.budgets)[name]

    def items(self):
        return iter(self.budgets)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: b.as_dict() for name, b in self.budgets}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    def head(self, k: int) -> "Arms":
        """The first k arms (benchmarks score fewer)."""
        return Arms(self.budgets[:k])
