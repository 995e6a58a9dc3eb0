"""The realtime store: engagement events since the batch cutoff, in RocksDB on local disk.

One writer process (the consumer) opens it read-write; serving opens a *secondary* instance that
follows the writer's WAL (`catch_up`). Writes go in one WriteBatch with the WAL on, so a
kill -9 loses nothing that `apply` returned for (DESIGN.md §4: with the WAL off ≈700k were lost).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from pinrec.core.events import Event
from streaming.events import decode, encode_key, encode_value, key_bounds, key_ts


def _options():
    from rocksdict import Options

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.increase_parallelism(2)
    return opts


class RealtimeStore:
    def __init__(self, db, path: Path, read_only: bool):
        self._db = db
        self.path = path
        self.read_only = read_only

    @staticmethod
    def open(path: str | Path) -> "RealtimeStore":
        from rocksdict import Rdict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        return RealtimeStore(Rdict(str(path), options=_options()), path, read_only=False)

    @staticmethod
    def open_secondary(path: str | Path, secondary_dir: str | Path) -> "RealtimeStore":
        """A reader that follows a live writer; call `catch_up()` to see newer writes."""
        from rocksdict import AccessType, Options, Rdict

        path = Path(path)
        if not (path / "CURRENT").exists():
            # Serving may start before the consumer ever ran: create an empty store to follow.
            RealtimeStore.open(path).close()
        Path(secondary_dir).mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.set_max_open_files(-1)  # required for secondary instances
        db = Rdict(str(path), options=opts,
                   access_type=AccessType.secondary(str(secondary_dir)))
        return RealtimeStore(db, path, read_only=True)

    def catch_up(self) -> None:
        self._db.try_catch_up_with_primary()

    def apply(self, events: Iterable[Event]) -> int:
        """Write the events in one atomic WriteBatch with the WAL; returns how many were written.

        Idempotent: a re-delivered event has the same key and overwrites itself."""
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        n = 0
        for e in events:
            wb.put(encode_key(e.user_id, e.ts_us, e.event_id), encode_value(e))
            n += 1
        if n:
            self._write(wb)
        return n

    # A key no event can have (events' keys are 24 bytes), written and deleted in one batch.
    _PROBE_KEY = b"\xff" * 8 + b"pinrec-write-probe"

    def probe(self) -> None:
        """Raise if the store cannot take a write right now (disk full, I/O error, closed).

        One WriteBatch puts and deletes a key outside the event key space, through the same
        WAL path as `apply`, so it leaves nothing a reader can see. The consumer asks this
        when a single event failed to store: the event is to blame only if the store is fine."""
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        wb.put(self._PROBE_KEY, b"")
        wb.delete(self._PROBE_KEY)
        self._write(wb)

    def _write(self, wb) -> None:
        """The one place writes reach RocksDB (WAL on)."""
        self._db.write(wb)

    def tail(self, user_id: int, since_us: int = 0, limit: int | None = None) -> list[Event]:
        """The user's events with ts >= since_us, chronological; the newest `limit` if given.

        One reverse scan from the end of the user's key range, stopping at `since_us` or `limit`."""
        lo, hi = key_bounds(user_id, since_us)
        out = []
        it = self._db.iter()
        it.seek_for_prev(hi)
        while it.valid():
            k = it.key()
            if k < lo:
                break
            if k < hi:
                out.append(decode(k, it.value()))
                if limit is not None and len(out) >= limit:
                    break
            it.prev()
        del it
        out.reverse()
        return out

    def scan(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self._db.items()

    def count(self) -> int:
        return sum(1 for _ in self._db.keys())

    def sweep(self, cutoff_us: int, batch: int = 10_000) -> int:
        """Delete every event with ts < cutoff_us (already absorbed by the batch layer).

        Keys are user-major, so this is one full scan; it runs in the writer (consumer) process."""
        from rocksdict import WriteBatch

        removed = 0
        wb, pending = WriteBatch(raw_mode=True), 0
        for k in self._db.keys():
            if key_ts(k) < cutoff_us:
                wb.delete(k)
                pending += 1
                if pending >= batch:
                    self._db.write(wb)
                    removed += pending
                    wb, pending = WriteBatch(raw_mode=True), 0
        if pending:
            self._db.write(wb)
            removed += pending
        return removed

    def close(self) -> None:
        self._db.close()
