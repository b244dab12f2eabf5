"""Remembered "this cache does not have that path" answers, with a time to live.

A build asks every substituter about every missing output; without this, a
run over a large spec repeats hundreds of doomed HTTP requests. Kept in
`<state-dir>/narinfo-cache.sqlite` (a cache: deleting it is always safe).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from runner.errors import RunnerError
from runner.store.db import set_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS negative_narinfo (
    cache TEXT NOT NULL,
    hash_part TEXT NOT NULL,
    time INTEGER NOT NULL,
    PRIMARY KEY (cache, hash_part)
)
"""


class NegativeCache:
    def __init__(self, state_dir: str, ttl: int) -> None:
        self.ttl = ttl
        self._path = os.path.join(state_dir, "narinfo-cache.sqlite")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
                conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
                set_wal(conn)  # retries a concurrent first opener's lock
                conn.execute("PRAGMA synchronous=NORMAL")  # a cache: no fsync per answer
                conn.execute(_SCHEMA)
            except (OSError, sqlite3.Error) as e:
                raise RunnerError(f"cannot open narinfo cache '{self._path}': {e}",
                                  reason="io") from None
            self._conn = conn
        return self._conn

    def is_missing(self, cache: str, hash_part: str) -> bool:
        """True when `cache` said it lacks the path less than `ttl` seconds ago."""
        if self.ttl <= 0:
            return False
        try:
            with self._lock:
                row = self._db().execute(
                    "SELECT time FROM negative_narinfo WHERE cache = ? AND hash_part = ?",
                    (cache, hash_part)).fetchone()
        except sqlite3.Error:
            return False  # a broken cache file only costs a lookup
        return row is not None and time.time() - row[0] < self.ttl

    def record_missing(self, cache: str, hash_part: str) -> None:
        if self.ttl <= 0:
            return
        try:
            with self._lock:
                self._db().execute(
                    "INSERT OR REPLACE INTO negative_narinfo (cache, hash_part, time) "
                    "VALUES (?, ?, ?)", (cache, hash_part, int(time.time())))
        except sqlite3.Error:
            pass

    def forget(self, cache: str, hash_part: str) -> None:
        try:
            with self._lock:
                self._db().execute(
                    "DELETE FROM negative_narinfo WHERE cache = ? AND hash_part = ?",
                    (cache, hash_part))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
