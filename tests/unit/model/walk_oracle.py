"""The per-user selection walk that served requests before the vectorised selection
(batch_generation.select_candidates) became the one implementation: kept as the test oracle
the vectorised selection must equal (test_batch_generation). Not used by any production path."""
from __future__ import annotations

import numpy as np

from pinrec_model.api import Candidate


def select_walk(plans, scores: np.ndarray, ids: np.ndarray, seen: list[set], n: int) -> list[list[Candidate]]:
    """Per user, plan entry by plan entry, take the entry's best `quota` results not yet seen
    (history or chosen); fill what de-duplication took away from the over-fetched tails, best
    score first; order by score. scores/ids: one row per plan entry of every user, in order."""
    by_score = lambda c: -c[1]
    out, qi = [], 0
    for b, plan in enumerate(plans):
        seen_b = seen[b]
        chosen, rest = [], []  # (item id, score, outcome) tuples
        for name, _, quota in plan:
            got, pos = 0, 0
            row_i = ids[qi]
            # Stop at the quota: the over-fetched tail is only read when a fill is needed. Rows
            # are read as Python lists a window at a time (most walks end within the quota).
            w = min(len(row_i), 2 * quota + 8)
            lst = row_i[:w].tolist()
            while got < quota:
                if pos == len(lst):
                    if len(lst) == len(row_i):
                        break
                    lst = row_i.tolist()
                i = lst[pos]
                if i >= 0 and i not in seen_b:
                    chosen.append((i, float(scores[qi, pos]), name))
                    seen_b.add(i)
                    got += 1
                pos += 1
            rest.append((qi, pos, name))
            qi += 1
        # Over-fetched results fill what de-duplication took away, best score first.
        if len(chosen) < n:
            spare = [(i, s, name) for q, start, name in rest
                     for s, i in zip(scores[q, start:].tolist(), ids[q, start:].tolist()) if i >= 0]
            for c in sorted(spare, key=by_score):
                if len(chosen) >= n:
                    break
                if c[0] not in seen_b:
                    chosen.append(c)
                    seen_b.add(c[0])
        chosen.sort(key=by_score)
        out.append(list(map(Candidate._make, chosen[:n])))
    return out
