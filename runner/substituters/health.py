"""Substituter health across runs: a cache that is down costs nothing after the first time.

Kept in `<state-dir>/substituter-health.sqlite` (WAL, shared by concurrent
runs; deleting it is always safe). A cache that failed to answer (connect
error, timeout, repeated 5xx) is **down** until its back-off ends: 60 s
after the first failure (`substituter-down-time`), doubling with each
failure in a row up to `substituter-down-max`. While down no run contacts
it; once the back-off is over, one quick probe decides, and a success
marks it up again. Each run also leaves its lookup and hit counts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass

from runner.errors import RunnerError
from runner.store.db import set_wal

FILE = "substituter-health.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS health (
    url TEXT PRIMARY KEY,
    down_since REAL,          -- NULL while up
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,  -- in a row; sets the back-off
    next_probe REAL,
    run TEXT,                 -- the run that last counted lookups
    lookups INTEGER NOT NULL DEFAULT 0,
    hits INTEGER NOT NULL DEFAULT 0
)
"""


class KnownDown(RunnerError):
    """A cache that an earlier run found down, still in its back-off: not contacted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="substituter-down")


@dataclass(frozen=True)
class Record:
    url: str
    down_since: float | None
    last_error: str | None
    failures: int
    next_probe: float | None
    lookups: int
    hits: int

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "state": "down" if self.is_down else "up"}


class Health:
    def __init__(self, state_dir: str, down_time: float, down_max: float) -> None:
        self.down_time = down_time
        self.down_max = max(down_max, down_time)
        self.path = os.path.join(state_dir, FILE)
        self._run = f"{os.getpid()}-{time.time_ns()}"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
                set_wal(conn)  # retries a concurrent first opener's lock
                # A cache of observations: no fsync per lookup (a crash loses a count).
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
            except (OSError, sqlite3.Error) as e:
                raise RunnerError(f"cannot open substituter health '{self.path}': {e}",
                                  reason="io") from None
            self._conn = conn
        return self._conn

    def _write(self, sql: str, args: tuple[object, ...] | dict[str, object]) -> None:
        try:
            with self._lock:
                self._db().execute(sql, args)
        except sqlite3.Error:
            pass  # health is an optimisation: a broken file only costs a probe

    def get(self, url: str) -> Record | None:
        try:
            with self._lock:
                row = self._db().execute(
                    "SELECT url, down_since, last_error, failures, next_probe, lookups, hits "
                    "FROM health WHERE url = ?", (url,)).fetchone()
        except sqlite3.Error:
            return None
        return Record(*row) if row else None

    def all(self) -> list[Record]:
        with self._lock:
            rows = self._db().execute(
                "SELECT url, down_since, last_error, failures, next_probe, lookups, hits "
                "FROM health ORDER BY url").fetchall()
        return [Record(*r) for r in rows]

    def mark_down(self, url: str, error: str) -> None:
        """One more failure in a row: down (still since the first), back-off doubled."""
        now = time.time()
        self._write(
            "INSERT INTO health (url, down_since, last_error, failures, next_probe) "
            "VALUES (:url, :now, :error, 1, :now + :wait) ON CONFLICT (url) DO UPDATE SET "
            "down_since = COALESCE(down_since, :now), last_error = :error, "
            "failures = failures + 1, "
            "next_probe = :now + MIN(:wait * (1 << MIN(failures, 30)), :most)",
            {"url": url, "now": now, "error": error, "wait": self.down_time,
             "most": self.down_max})

    def mark_up(self, url: str) -> None:
        self._write("UPDATE health SET down_since = NULL, failures = 0, next_probe = NULL "
                    "WHERE url = ? AND down_since IS NOT NULL", (url,))

    def count(self, url: str, hit: bool) -> None:
        """One lookup (a hit if the cache had the path) of this run."""
        self._write(
            "INSERT INTO health (url, run, lookups, hits) VALUES (:url, :run, 1, :hit) "
            "ON CONFLICT (url) DO UPDATE SET "
            "lookups = CASE WHEN run = :run THEN lookups + 1 ELSE 1 END, "
            "hits = CASE WHEN run = :run THEN hits + :hit ELSE :hit END, run = :run",
            {"url": url, "run": self._run, "hit": int(hit)})

    def reset(self, url: str | None = None) -> int:
        """Forget the records (of one URL, or all); returns how many were forgotten."""
        with self._lock:
            if url is None:
                cur = self._db().execute("DELETE FROM health")
            else:
                cur = self._db().execute("DELETE FROM health WHERE url = ?", (url,))
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def describe_down(record: Record, now: float | None = None) -> str:
    """`cache URL is down since TIME (LAST ERROR); skipped, next probe in N s`."""
    now = time.time() if now is None else now
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.down_since or now))
    wait = max(0, round((record.next_probe or now) - now))
    return (f"cache {record.url} is down since {since} ({record.last_error}); skipped, "
            f"next probe in {wait} s")
