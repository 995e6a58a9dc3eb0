"""RecommendationService: signals + serving store + merge, behind one `recommend` call.

All I/O happens at construction (loading the stores) and in the RocksDB tail read; the merge
itself is pure (`serving.merge`). Time enters as `now_us` from the caller.
"""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from serving.candidates import CandidateStore, load_candidate_store
from serving.merge import blend, quotas, sources_of
from serving.signals import BatchSequences, load_batch_sequences, merge_history

MAX_N = 1000


class BadRequest(ValueError):
    """A request the caller can fix; the HTTP layer maps it to 400."""


@dataclass(frozen=True)
class ServingConfig:
    lake: Path
    # One RocksDB per consumer (shard); a user's events may sit in several after a rebalance,
    # so the tail is read from all of them and merged (the merge rule de-duplicates).
    db_paths: tuple[Path, ...]
    secondary_dir: Path | None = None   # where the RocksDB secondaries keep their own files
    regenerate: bool = True
    regen_share: float = 0.5            # share of each outcome's quota from regenerated items
    max_history: int = 512
    catch_up_ms: float = 100.0          # how often the reader follows the consumer's writes
    torch_threads: int = 1


class RecommendationService:
    def __init__(self, cfg: ServingConfig, candidates: CandidateStore, sequences: BatchSequences,
                 stores: list, regenerator=None, regen_unavailable: str = ""):
        self.cfg = cfg
        self.candidates = candidates
        self.sequences = sequences
        self.stores = stores
        self.regenerator = regenerator
        self.regen_unavailable = regen_unavailable if regenerator is None else ""
        self._stop = threading.Event()
        self._follower = None

    @staticmethod
    def load(cfg: ServingConfig) -> "RecommendationService":
        from streaming.store import RealtimeStore

        sec = cfg.secondary_dir or Path(tempfile.mkdtemp(prefix="pinrec-rocksdb-secondary-"))
        stores = [RealtimeStore.open_secondary(p, sec / f"shard-{i}")
                  for i, p in enumerate(cfg.db_paths)]
        regen, why = None, "disabled by configuration"
        if cfg.regenerate:
            from serving.regenerate import load_regenerator

            regen, why = load_regenerator(cfg.lake, cfg.torch_threads)
        svc = RecommendationService(cfg, load_candidate_store(cfg.lake),
                                    load_batch_sequences(cfg.lake), stores, regen, why)
        svc.start_following()
        return svc

    def start_following(self) -> None:
        """Catch up with the consumer's writes every `catch_up_ms`, off the request path."""
        def loop():
            while not self._stop.wait(self.cfg.catch_up_ms / 1000):
                for store in self.stores:
                    store.catch_up()

        self._follower = threading.Thread(target=loop, daemon=True, name="rocksdb-follower")
        self._follower.start()

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(5)
        for store in self.stores:
            store.close()

    def tail(self, user_id: int, since_us: int) -> list:
        if len(self.stores) == 1:
            return self.stores[0].tail(user_id, since_us=since_us)
        events = {e.event_id: e for store in self.stores for e in store.tail(user_id, since_us=since_us)}
        return sorted(events.values(), key=lambda e: (e.ts_us, e.event_id))

    @property
    def default_arm(self) -> str | None:
        arms = sorted(self.candidates.arms)
        return "control" if "control" in arms else (arms[0] if arms else None)

    def validate(self, n: int, arm: str | None) -> str | None:
        if not 1 <= n <= MAX_N:
            raise BadRequest(f"n must be between 1 and {MAX_N}, got {n}")
        arm = arm or self.default_arm
        if self.candidates.arms and arm not in self.candidates.arms:
            raise BadRequest(f"unknown arm {arm!r}; known arms: {sorted(self.candidates.arms)}")
        return arm

    def recommend(self, user_id: int, n: int = 50, arm: str | None = None,
                  query: str | None = None, now_us: int | None = None) -> dict:
        t0 = time.perf_counter()
        arm = self.validate(n, arm)
        now_us = now_us if now_us is not None else int(time.time() * 1e6)
        cutoff = self.sequences.cutoff_us
        tail = self.tail(user_id, cutoff or 0)
        engaged = {e.item_id for e in tail if e.item_type == "pin"}
        budget = self.candidates.arms.get(arm, {}) if arm else {}
        # Per outcome a response uses its quota, plus what engaged items remove, plus slack
        # for outcomes that run short (the blend fills those from the others).
        limits = {a: 2 * q + len(engaged) for a, q in quotas(budget, n).items()}
        pre = self.candidates.get(user_id, arm, limits, default_limit=n + len(engaged)) if arm else []
        regen, notes = [], []
        fresh = bool(tail) or bool(query and query.strip())
        if fresh and self.regenerator is not None and budget:
            history = merge_history(self.sequences.events(user_id), tail, cutoff,
                                    self.cfg.max_history, query, now_us)
            regen = self.regenerator.regenerate(user_id, history, budget, n)
        elif fresh and self.regenerator is None:
            notes.append(f"regeneration unavailable: {self.regen_unavailable}")
        popular = self.candidates.popularity(2 * n, engaged)  # spare for de-duplication
        items = blend(pre, regen, popular, engaged, budget, n, self.cfg.regen_share)
        sources = sources_of(items, engaged, bool(tail), query)
        fallback = bool(items) and all(r.source == "popularity" for r in items)
        return {
            "user_id": user_id, "arm": arm, "n": len(items),
            "fallback": "popularity" if fallback else None,
            "sources": sources,
            "candidates_ds": self.candidates.ds, "sequences_ds": self.sequences.ds,
            "fresh_events": len(tail),
            "notes": notes,
            "items": [{"item_id": r.item_id, "score": round(r.score, 6), "outcome": r.outcome,
                       "source": r.source} for r in items],
            "took_ms": round((time.perf_counter() - t0) * 1e3, 3),
        }
