"""One SQLite file used by many threads: writes are grouped, one transaction and one sync to disk for all
that are waiting, on a writer thread of their own; reads use pooled connections that never wait for it.

Grouping is what lets many concurrent requests (and a stream of outcomes) cost one commit instead of one
each, and keeps commits off the threads that must not stall: the event loop and the model's thread.
Each write runs in a savepoint, so one that fails (a conflict, an unknown job) leaves the others in its
group committed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from blipq.contract.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: How long a write waits for another connection's lock on the database before it fails.
BUSY_TIMEOUT_S = 30.0

T = TypeVar("T")

#: Writes committed together at most; more wait for the next round.
MAX_WRITES_PER_COMMIT = 512


@dataclass
class _Write(Generic[T]):
    operation: Callable[[sqlite3.Connection], T]
    future: Future[T] = field(default_factory=Future)


class SqliteFile:
    def __init__(self, path: Path, prepare: Callable[[sqlite3.Connection], None]) -> None:
        """Open `path` (WAL, full sync) and run `prepare` (schema, migrations) on it before any other use."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed write survives power loss, not only a process crash.
            self._db.execute("PRAGMA synchronous=FULL")
            prepare(self._db)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from None
        self._writes: queue.SimpleQueue[_Write[Any] | None] = queue.SimpleQueue()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_forever, name="blipq-store-writer", daemon=True)
        self._writer.start()

    def write(self, operation: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Run `operation` inside the next group's transaction; its future holds what it returned, once that
        is committed (or what it raised; StoreUnavailable when the commit failed)."""
        write: _Write[T] = _Write(operation)
        if not self._writer.is_alive():
            write.future.set_exception(StoreUnavailable(f"the store at {self.path} is closed"))
        else:
            self._writes.put(write)
        return write.future

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads only, sees every committed write."""
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = self._new_reader()
        try:
            yield db
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store error at {self.path}: {exc}") from None
        finally:
            self._readers.put(db)

    def close(self) -> None:
        """Commit the writes already queued, then close every connection."""
        if self._writer.is_alive():
            self._writes.put(None)
            self._writer.join()
        with self._readers_lock:
            for db in self._all_readers:
                db.close()
        self._db.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)

    def _new_reader(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            db.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store error at {self.path}: {exc}") from None
        with self._readers_lock:
            self._all_readers.append(db)
        return db

    def _write_forever(self) -> None:
        stopping = False
        while not stopping:
            first = self._writes.get()
            if first is None:
                break
            group: list[_Write[Any]] = [first]
            while len(group) < MAX_WRITES_PER_COMMIT:
                try:
                    write = self._writes.get_nowait()
                except queue.Empty:
                    break
                if write is None:
                    stopping = True
                    break
                group.append(write)
            self._commit(group)

    def _commit(self, group: list[_Write[Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []  # (succeeded, value or exception), one per write
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for write in group:
                self._db.execute("SAVEPOINT write")
                try:
                    value = write.operation(self._db)
                except Exception as exc:
                    self._db.execute("ROLLBACK TO write")
                    outcomes.append((False, self._error(exc)))
                else:
                    outcomes.append((True, value))
                self._db.execute("RELEASE write")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            log.warning("store commit of %d writes failed: %s", len(group), exc)
            failure = StoreUnavailable(f"store error at {self.path}: {exc}")
            for write in group:
                write.future.set_exception(failure)
            return
        for write, (succeeded, value) in zip(group, outcomes, strict=True):
            if succeeded:
                write.future.set_result(value)
            else:
                write.future.set_exception(value)

    def _error(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error):
            return StoreUnavailable(f"store error at {self.path}: {exc}")
        return exc
