"""What retries leave behind: which derivations passed only on a retry (`runner store flaky
list`), and how many attempts a cached failure had (`failed 3/3 attempts`).

Its own SQLite file, `<state>/tests.sqlite` (WAL, busy timeout), as the build history
is: the store database's schema and migrations stay out of it, and a lost file only
loses these notes. A failure's note is read only next to the store's failure record
of the same derivation, so a stale note never invents a failure.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from runner.store.db import open_side_db

FILE = "tests.sqlite"

_SCHEMA = """
create table if not exists flaky (
    spec text not null, name text not null, drv_path text not null,
    passes integer not null, last_time real not null,
    last_attempt integer not null, attempts integer not null,
    primary key (spec, name, drv_path)) without rowid;
create table if not exists failed_attempts (
    drv_path text primary key, failed integer not null, attempts integer not null,
    time real not null) without rowid;
"""


@dataclass(frozen=True)
class FlakyEntry:
    """A derivation that passed only on a retry, `passes` times."""

    spec: str
    name: str
    drv_path: str
    passes: int
    last_time: float
    last_attempt: int  # the attempt that passed, last time
    attempts: int

    def to_json(self) -> dict[str, object]:
        return {"spec": self.spec, "name": self.name, "drvPath": self.drv_path,
                "flakyPasses": self.passes, "lastTime": round(self.last_time, 3),
                "lastPassedOnAttempt": self.last_attempt, "attempts": self.attempts}


@contextlib.contextmanager
def _open(state_dir: str) -> Iterator[sqlite3.Connection]:
    with open_side_db(state_dir, FILE, _SCHEMA, "test history") as conn:
        yield conn


def record_flaky(state_dir: str, spec: str, name: str, drv_path: str, attempt: int,
                 attempts: int) -> None:
    with _open(state_dir) as conn:
        conn.execute(
            "insert into flaky values (?, ?, ?, 1, ?, ?, ?) on conflict (spec, name, drv_path)"
            " do update set passes = passes + 1, last_time = excluded.last_time,"
            " last_attempt = excluded.last_attempt, attempts = excluded.attempts",
            (spec, name, drv_path, time.time(), attempt, attempts))


def list_flaky(state_dir: str) -> list[FlakyEntry]:
    """Flakiest first (most passes on a retry), then the most recent."""
    if not os.path.exists(os.path.join(state_dir, FILE)):
        return []
    with _open(state_dir) as conn:
        rows = conn.execute("select spec, name, drv_path, passes, last_time, last_attempt,"
                            " attempts from flaky order by passes desc, last_time desc,"
                            " spec, name").fetchall()
    return [FlakyEntry(*row) for row in rows]


def record_failed_attempts(state_dir: str, drv_path: str, failed: int, attempts: int) -> None:
    """Note how many attempts a cached failure had; a one-attempt failure drops an old
    note (without creating the file: most failures never had retries)."""
    if attempts <= 1:
        if os.path.exists(os.path.join(state_dir, FILE)):
            with _open(state_dir) as conn:
                conn.execute("delete from failed_attempts where drv_path = ?", (drv_path,))
        return
    with _open(state_dir) as conn:
        conn.execute("insert or replace into failed_attempts values (?, ?, ?, ?)",
                     (drv_path, failed, attempts, time.time()))


def failed_attempts(state_dir: str, drv_path: str) -> tuple[int, int] | None:
    """(failed, allowed) of the last all-attempts failure of `drv_path`, if recorded."""
    if not os.path.exists(os.path.join(state_dir, FILE)):
        return None
    with _open(state_dir) as conn:
        row = conn.execute("select failed, attempts from failed_attempts where drv_path = ?",
                           (drv_path,)).fetchone()
    return (int(row[0]), int(row[1])) if row else None
