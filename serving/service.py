"""RecommendationService: signals + serving store + merge, behind one `recommend` call.

All I/O happens at construction (loading the stores) and in the RocksDB tail read; the merge
itself is pure (`serving.merge`). Time enters as `now_us` from the caller.
"""
from __future__ import annotations

import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pinrec.core.experiments import TrafficSplit

from serving.candidates import CandidateStore, load_candidate_store
from pinrec.core.budgets import NO_BUDGET
from serving.merge import blend, needs_popularity, sources_of
from serving.regen_worker import RegenerationFailed
from serving.signals import BatchSequences, load_batch_sequences, merge_history

if TYPE_CHECKING:
    from pinrec.core.lake_releases import Release
    from serving.served_log import ServedLogConfig

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
    reload_every_s: float = 60.0        # how often to look for newly published batch outputs
    torch_threads: int = 1
    # Regeneration worker processes (serving/regen_worker.py: off the server's GIL); 0 runs
    # it in the server process (one-shot tools, tests).
    regen_workers: int = 0
    # Who gets which arm when a request names none (pinrec/core/experiments.py); None: every such
    # request gets the default arm ("control", else the first published arm).
    traffic: TrafficSplit | None = None
    served_log: "ServedLogConfig | None" = None  # None: responses are not logged to Kafka


@dataclass(frozen=True)
class Snapshot:
    """Everything loaded from the lake, swapped as one object so a request never mixes two
    days' outputs (candidates of one ds with sequences of another)."""

    key: tuple
    candidates: CandidateStore
    sequences: BatchSequences
    regenerator: object | None
    regen_unavailable: str


def lake_state(lake: Path) -> tuple[tuple, "Release | None"]:
    """(key, release): what serving depends on. The release (model, index, candidates ds) is
    one read of the lake's release record, so its parts always belong to the same publish; the
    key adds the newest sequences ds. Key: (candidates ds, sequences ds, model version, index
    version), the versions as strings ("None" when unpublished): serving/http_api.py's health
    reads them at [2] and [3]."""
    from pinrec.core.lake import DeltaRsTables
    from pinrec.core.sequences_store import latest_sequences_ds
    from pinrec.core.layout import Lake, current_release

    lk = Lake.at(lake)
    rel = current_release(lk)
    model, index, cands = (rel.model, rel.index, rel.candidates_ds) if rel else (None, None, None)
    return (cands, latest_sequences_ds(DeltaRsTables(lk)), str(model), str(index)), rel


def lake_key(lake: Path) -> tuple:
    return lake_state(lake)[0]


def load_snapshot(cfg: ServingConfig, attempts: int = 5) -> Snapshot:
    """Load the parts one release names, then check the lake's key again: the release's model,
    index and candidates belong together by construction, but the sequences are read as the
    newest partition, and a publish that landed meanwhile should be served at once, so the load
    starts over while the key moves."""
    for _ in range(attempts - 1):
        key, release = lake_state(cfg.lake)
        snap = _load_parts(cfg, key, release)
        if lake_key(cfg.lake) == key:
            return snap
        close_regenerator(snap.regenerator)
    return _load_parts(cfg, *lake_state(cfg.lake))  # publishing that often: the next poll reloads


def _load_parts(cfg: ServingConfig, key: tuple, release: "Release | None") -> Snapshot:
    regen, why = None, "disabled by configuration"
    if cfg.regenerate and cfg.regen_workers > 0:
        from serving.regen_worker import RegenPool

        regen, why = RegenPool.start(cfg.lake, release, cfg.regen_workers, cfg.torch_threads)
    elif cfg.regenerate:
        from serving.regenerate import load_regenerator

        regen, why = load_regenerator(cfg.lake, release, cfg.torch_threads)
    candidates = load_candidate_store(cfg.lake, release.candidates_ds if release else None)
    return Snapshot(key, candidates, load_batch_sequences(cfg.lake), regen,
                    "" if regen is not None else why)


def close_regenerator(regen) -> None:
    if regen is not None and hasattr(regen, "close"):
        regen.close()


def default_arm(candidates: CandidateStore) -> str | None:
    arms = sorted(candidates.arms)
    return "control" if "control" in arms else (arms[0] if arms else None)


def assign_arm(traffic: TrafficSplit | None, candidates: CandidateStore, user_id: int) -> str | None:
    """The arm of a request that names none: by the traffic split's stable hash of the user id,
    else the default arm. Pure: the same user gets the same arm on every replica and day."""
    return traffic.arm_of(user_id) if traffic is not None else default_arm(candidates)


def check_traffic(traffic: TrafficSplit | None, candidates: CandidateStore) -> None:
    """Refuse to start with traffic for arms the published candidates do not have."""
    if traffic is None or not candidates.arms:
        return
    missing = sorted(a for a, share in traffic.shares if share > 0 and a not in candidates.arms)
    if missing:
        raise ValueError(f"--traffic gives traffic to arms {missing} that the published candidates "
                         f"(ds {candidates.ds}) do not have; published arms: {sorted(candidates.arms)}. "
                         "Fix the traffic shares or score and publish those arms first")


class RecommendationService:
    def __init__(self, cfg: ServingConfig, snapshot: Snapshot, stores: list, served_log=None):
        self.cfg = cfg
        self.snapshot = snapshot
        self.stores = stores
        self.served_log = served_log
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # The request path reads `self.snapshot` once; these are for health checks and tools.
    candidates = property(lambda self: self.snapshot.candidates)
    sequences = property(lambda self: self.snapshot.sequences)
    regenerator = property(lambda self: self.snapshot.regenerator)
    regen_unavailable = property(lambda self: self.snapshot.regen_unavailable)

    @staticmethod
    def load(cfg: ServingConfig) -> "RecommendationService":
        from streaming.store import RealtimeStore

        sec = cfg.secondary_dir or Path(tempfile.mkdtemp(prefix="pinrec-rocksdb-secondary-"))
        stores = [RealtimeStore.open_secondary(p, sec / f"shard-{i}")
                  for i, p in enumerate(cfg.db_paths)]
        snapshot = load_snapshot(cfg)
        check_traffic(cfg.traffic, snapshot.candidates)
        served_log = None
        if cfg.served_log is not None:
            from serving.served_log import ServedLog

            served_log = ServedLog(cfg.served_log).start()
        svc = RecommendationService(cfg, snapshot, stores, served_log)
        svc.start_background()
        return svc

    def reload_if_changed(self) -> bool:
        """Load newly published batch outputs (a new candidates ds, sequences partition, model
        or index) and swap them in; requests in flight keep the snapshot they started with."""
        if lake_key(self.cfg.lake) == self.snapshot.key:
            return False
        old, self.snapshot = self.snapshot, load_snapshot(self.cfg)
        try:
            check_traffic(self.cfg.traffic, self.snapshot.candidates)
        except ValueError as e:  # keep serving: those users get popularity, logged with their arm
            import logging

            logging.getLogger("pinrec.serve").warning("after reload: %s", e)
        close_regenerator(old.regenerator)  # waits for the requests still using it
        return True

    def start_background(self) -> None:
        """Follow the consumer's writes every `catch_up_ms` and the lake every
        `reload_every_s`, off the request path."""
        def follow():
            while not self._stop.wait(self.cfg.catch_up_ms / 1000):
                for store in self.stores:
                    store.catch_up()

        def reload():
            import logging

            while not self._stop.wait(self.cfg.reload_every_s):
                try:
                    if self.reload_if_changed():
                        logging.getLogger("pinrec.serve").info("reloaded %s", self.snapshot.key)
                except Exception as e:  # keep serving the old snapshot; say why
                    logging.getLogger("pinrec.serve").warning("reload failed, keeping the "
                                                              "current snapshot: %s", e)

        for name, fn in (("rocksdb-follower", follow), ("lake-reloader", reload)):
            t = threading.Thread(target=fn, daemon=True, name=name)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for store in self.stores:
            store.close()
        close_regenerator(self.snapshot.regenerator)
        if self.served_log is not None:
            self.served_log.close()  # drains what is buffered, for a bounded time

    def tail(self, user_id: int, since_us: int) -> list:
        if len(self.stores) == 1:
            return self.stores[0].tail(user_id, since_us=since_us)
        events = {e.event_id: e for store in self.stores for e in store.tail(user_id, since_us=since_us)}
        return sorted(events.values(), key=lambda e: (e.ts_us, e.event_id))

    @property
    def default_arm(self) -> str | None:
        return default_arm(self.candidates)

    def validate(self, n: int, arm: str | None, candidates: CandidateStore | None = None) -> str | None:
        candidates = candidates or self.candidates
        if not 1 <= n <= MAX_N:
            raise BadRequest(f"n must be between 1 and {MAX_N}, got {n}")
        arm = arm or default_arm(candidates)
        if candidates.arms and arm not in candidates.arms:
            raise BadRequest(f"unknown arm {arm!r}; known arms: {sorted(candidates.arms)}")
        return arm

    def recommend(self, user_id: int, n: int = 50, arm: str | None = None,
                  query: str | None = None, now_us: int | None = None) -> dict:
        """The response for one request; logged to the served topic when logging is on.
        A request that names an arm is `requested` (left out of the arm comparison); one that
        names none is `assigned` an arm by the traffic split."""
        t0 = time.perf_counter()
        snap = self.snapshot  # one consistent set of batch outputs for the whole request
        if arm:
            arm, arm_source = self.validate(n, arm, snap.candidates), "requested"
        else:
            self.validate(n, None, snap.candidates)
            arm, arm_source = assign_arm(self.cfg.traffic, snap.candidates, user_id), "assigned"
        now_us = now_us if now_us is not None else int(time.time() * 1e6)
        out = self._respond(snap, user_id, n, arm, query, now_us)
        out["arm_source"] = arm_source
        out["request_id"] = uuid.uuid4().hex
        if self.served_log is not None:
            self.served_log.log(out, now_us)  # O(1); encoding and sending are off this thread
        out["took_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return out

    def _respond(self, snap: Snapshot, user_id: int, n: int, arm: str | None, query: str | None,
                 now_us: int) -> dict:
        cands, seqs, regenerator = snap.candidates, snap.sequences, snap.regenerator
        cutoff = seqs.cutoff_us
        tail = self.tail(user_id, cutoff or 0)
        engaged = {e.item_id for e in tail if e.item_type == "pin"}
        budget = cands.arms.get(arm, NO_BUDGET) if arm else NO_BUDGET
        # Per outcome a response uses its quota, plus what engaged items remove, plus slack
        # for outcomes that run short (the blend fills those from the others).
        limits = {a: 2 * q + len(engaged) for a, q in budget.quotas(n).items()}
        pre = cands.get(user_id, arm, limits, default_limit=n + len(engaged)) if arm else []
        regen, notes = [], []
        fresh = bool(tail) or bool(query and query.strip())
        if fresh and regenerator is not None and budget:
            history = merge_history(seqs.events(user_id), tail, cutoff,
                                    self.cfg.max_history, query, now_us)
            try:
                regen = regenerator.regenerate(user_id, history, budget, n)
            except RegenerationFailed as e:  # serve the precomputed blend rather than a 500
                notes.append(f"regeneration skipped: {e}")
        elif fresh and regenerator is None:
            notes.append(f"regeneration unavailable: {snap.regen_unavailable}")
        popular = (cands.popularity(2 * n, engaged)  # spare for de-duplication
                   if needs_popularity(pre, regen, engaged, n) else [])
        items = blend(pre, regen, popular, engaged, budget, n, self.cfg.regen_share)
        sources = sources_of(items, engaged, bool(tail), query)
        fallback = bool(items) and all(r.source == "popularity" for r in items)
        return {
            "user_id": user_id, "arm": arm, "n": len(items),
            "fallback": "popularity" if fallback else None,
            "sources": sources,
            "candidates_ds": cands.ds, "sequences_ds": seqs.ds,
            "fresh_events": len(tail),
            "notes": notes,
            "items": [{"item_id": r.item_id, "score": round(r.score, 6), "outcome": r.outcome,
                       "source": r.source} for r in items],
        }
