"""CPU regeneration in worker processes, off the HTTP server's GIL.

Why a process: torch and Faiss release the GIL inside each op, but a regeneration is a few
hundred short ops, and every one must take the GIL back. In the server process that GIL is
busy with the other requests' Python (parse, RocksDB tail, blend, JSON), so each op waits up
to a switch interval for it — measured: a 15 ms regeneration took 20-29 ms p50 and ~50 ms
p99 beside one Python thread 20-40 % busy (the convoy effect). A worker has its own GIL; the
server sends the newest max_len events as plain tuples over a pipe and gets (item, score,
outcome) tuples back (~0.1 ms).

`RegenPool` has the in-process `Regenerator`'s interface (`regenerate`, `compute_ms`,
`wait_ms`); `worker_ms` is the model call inside the worker, `compute_ms` the round trip.
A worker that dies is replaced in the background; a request that finds no worker free within
`wait_timeout_s` (or whose worker died) raises `RegenerationFailed`, and the service then
answers from the precomputed candidates with a note (never a 500).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pinrec.core.budgets import Budget
from pinrec.core.events import Event
from serving.candidates import Rec
from serving.regenerate import split_history


class RegenerationFailed(RuntimeError):
    """This request could not regenerate (worker busy past the deadline, or died)."""


def _worker_main(conn, lake_root: str, release, threads: int) -> None:
    """Worker process: load the model + index `release` names, then answer requests until None."""
    # Before torch/Faiss are imported: one OpenMP thread (2 cores shared with the server).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import gc

    from serving.regenerate import load_regenerator

    try:
        regen, why = load_regenerator(lake_root, release, threads)
    except Exception as e:  # the parent reports it; nothing to serve
        conn.send(("unavailable", f"worker failed to load: {type(e).__name__}: {e}"))
        return
    if regen is None:
        conn.send(("unavailable", why))
        return
    gc.freeze()  # the loaded model/features are permanent: keep them out of every collection
    conn.send(("ready", regen.version, regen.max_len))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the server went away
            return
        if msg is None:
            return
        user_id, cols, seen_before, budget, n = msg
        t0 = time.perf_counter()
        try:
            recs = regen.generate(user_id, cols, seen_before, budget, n)
            conn.send(("ok", [tuple(r[:3]) for r in recs], (time.perf_counter() - t0) * 1e3))
        except Exception as e:  # a bad request must not kill the worker
            conn.send(("error", f"{type(e).__name__}: {e}", 0.0))


@dataclass
class _Worker:
    proc: object
    conn: object


def _spawn(lake_root: Path, release, threads: int,
           start_timeout_s: float) -> tuple[_Worker | None, tuple]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that runs threads and RocksDB
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, str(lake_root), release, threads),
                       daemon=True, name="pinrec-regen")
    proc.start()
    child.close()
    if not parent.poll(start_timeout_s):
        proc.kill()
        proc.join()
        return None, ("unavailable", f"regeneration worker did not start within {start_timeout_s:.0f} s")
    try:
        hello = parent.recv()
    except EOFError:
        proc.join(5)
        return None, ("unavailable", f"regeneration worker exited with {proc.exitcode} while loading")
    if hello[0] != "ready":
        proc.join(5)
        return None, hello
    return _Worker(proc, parent), hello


@dataclass
class RegenPool:
    lake_root: Path
    # The release (pinrec.core.lake_releases.Release) whose model and index every worker loads, a
    # replacement too: a worker respawned after a publish must still match the snapshot's
    # candidates; the next reload starts a new pool for the new release.
    release: object
    version: str
    max_len: int
    threads: int = 1
    wait_timeout_s: float = 1.0   # a safety valve under overload, not a latency target
    reply_timeout_s: float = 30.0  # a worker silent this long is treated as dead
    start_timeout_s: float = 300.0
    _idle: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _all: list = field(default_factory=list, repr=False)
    _closed: bool = False

    def __post_init__(self):
        self._lock = threading.Lock()
        self.compute_ms: list[float] = []   # round trip to the worker, without the wait
        self.wait_ms: list[float] = []      # waiting for a free worker
        self.worker_ms: list[float] = []    # the model call inside the worker
        self.failures = 0

    @staticmethod
    def start(lake_root, release, workers: int = 1, threads: int = 1,
              start_timeout_s: float = 300.0) -> tuple["RegenPool | None", str]:
        """(pool, why-not): workers for the model and index of `release`, started in parallel;
        None with the reason when nothing is published to regenerate with."""
        results: list = [None] * workers

        def one(i):
            results[i] = _spawn(Path(lake_root), release, threads, start_timeout_s)

        ths = [threading.Thread(target=one, args=(i,)) for i in range(workers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        ready = [(w, hello) for w, hello in results if w is not None]
        if len(ready) < workers:
            for w, _ in ready:
                _stop(w)
            return None, next(hello[1] for w, hello in results if w is None)
        _, version, max_len = ready[0][1]
        pool = RegenPool(Path(lake_root), release, version, max_len, threads,
                         start_timeout_s=start_timeout_s)
        for w, _ in ready:
            pool._all.append(w)
            pool._idle.put(w)
        return pool, ""

    def regenerate(self, user_id: int, history: Sequence[Event], budget: Budget,
                   n: int) -> list[Rec]:
        cols, seen_before = split_history(history, self.max_len)
        t0 = time.perf_counter()
        try:
            w = self._idle.get(timeout=self.wait_timeout_s)
        except queue.Empty:
            raise RegenerationFailed(f"no regeneration worker free within "
                                     f"{self.wait_timeout_s:.1f} s") from None
        t1 = time.perf_counter()
        try:
            w.conn.send((user_id, cols, seen_before, budget, n))  # a Budget pickles as a value
            if not w.conn.poll(self.reply_timeout_s):
                raise TimeoutError(f"no answer in {self.reply_timeout_s:.0f} s")
            reply = w.conn.recv()
        except (EOFError, OSError) as e:  # TimeoutError is an OSError
            self._replace(w)
            raise RegenerationFailed(f"regeneration worker died ({type(e).__name__}: {e}); "
                                     f"a new one is starting") from None
        self._idle.put(w)
        t2 = time.perf_counter()
        status, payload, worker_ms = reply
        if status != "ok":
            raise RegenerationFailed(f"regeneration failed in the worker: {payload}")
        with self._lock:
            for lst, v in ((self.wait_ms, (t1 - t0) * 1e3), (self.compute_ms, (t2 - t1) * 1e3),
                           (self.worker_ms, worker_ms)):
                lst.append(v)
                if len(lst) > 50_000:
                    del lst[:10_000]
        return [Rec(i, s, o, "regenerated") for i, s, o in payload]

    def _replace(self, dead: _Worker) -> None:
        """Start a replacement in the background; requests meanwhile use the other workers
        (or give up after wait_timeout_s and serve precomputed candidates)."""
        with self._lock:
            self.failures += 1
            self._all = [x for x in self._all if x is not dead]  # close() must not wait for it
        _stop(dead, grace_s=0.0)  # dead or hung: no goodbye; this runs on a request's thread

        def respawn():
            w, _ = _spawn(self.lake_root, self.release, self.threads, self.start_timeout_s)
            if w is None:
                return
            with self._lock:
                if self._closed:
                    _stop(w)
                    return
                self._all.append(w)
            self._idle.put(w)

        threading.Thread(target=respawn, daemon=True, name="pinrec-regen-respawn").start()

    def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop every worker; requests still in flight finish first (up to drain_timeout_s)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
        deadline = time.monotonic() + drain_timeout_s
        for _ in workers:
            try:
                self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        for w in workers:
            _stop(w)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._all]


def _stop(w: _Worker, grace_s: float = 5.0) -> None:
    try:
        w.conn.send(None)
    except (OSError, ValueError):
        pass
    w.proc.join(grace_s)
    if w.proc.is_alive():
        w.proc.kill()
        w.proc.join(5)
    w.conn.close()
