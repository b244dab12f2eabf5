"""The store's SQLite database: opened in WAL mode, created and migrated under a lock.

The schema version lives in `PRAGMA user_version`. `MIGRATIONS[i]` takes a
database from version `i` to `i + 1`; each runs in one transaction together
with the version bump, so a crash leaves either the old or the new version.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runner.errors import RunnerError
from runner.store.layout import DB_FILE


def _sql(name: str) -> str:
    from importlib import resources  # only to create or migrate a database

    return resources.files("runner.store").joinpath(name).read_text(encoding="utf-8")


def _schema_v1() -> str:
    return _sql("schema.sql")


def _schema_v2() -> str:
    return _sql("schema_v2.sql")


def _schema_v3() -> str:
    return _sql("schema_v3.sql")


MIGRATIONS = (_schema_v1, _schema_v2, _schema_v3)
SCHEMA_VERSION = len(MIGRATIONS)

# How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_SECONDS = 60.0


def db_path(state_dir: str) -> str:
    return os.path.join(state_dir, *DB_FILE)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


class Database:
    """One connection; `transaction()` groups writes (nestable, outermost commits)."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self._depth = 0

    @classmethod
    def open(cls, state_dir: str) -> Database:
        path = db_path(state_dir)
        if os.path.exists(path):
            # The common case: an up-to-date database needs no lock.
            conn = _connect(path)
            if _current_version(conn, path) == SCHEMA_VERSION:
                return cls(conn, path)
            conn.close()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RunnerError(f"cannot open the store database in '{state_dir}': {e.strerror}",
                              reason="db") from None
        try:
            # Serialise creation and migration between processes.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            conn = _connect(path)
            try:
                _migrate(conn, path)
            except BaseException:
                conn.close()
                raise
        finally:
            os.close(lock_fd)
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; inner uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        # IMMEDIATE takes the write lock up front, so the busy timeout applies
        # instead of a deferred read transaction failing to upgrade.
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self._depth = 0
            if self.conn.in_transaction:
                self.conn.rollback()
            raise
        self._depth = 0
        self.conn.commit()


def _connect(path: str) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               cached_statements=256)
        set_wal(conn)
        # NORMAL in WAL mode syncs at checkpoints, not on every commit.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as e:
        raise RunnerError(f"cannot open the store database '{path}': {e}", reason="db") from None
    return conn


def set_wal(conn: sqlite3.Connection) -> None:
    """Switching the journal mode can answer SQLITE_BUSY at once, without the busy
    handler, while another process opens the same new database: retry for a while."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _current_version(conn: sqlite3.Connection, path: str) -> int:
    try:
        return schema_version(conn)
    except sqlite3.Error as e:
        conn.close()
        raise RunnerError(f"cannot read the store database '{path}': {e}", reason="db") from None


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    try:
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise RunnerError(
                f"the store database '{path}' has schema version {version}, newer than "
                f"this runner supports ({SCHEMA_VERSION}); upgrade runner",
                reason="db-too-new",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]()
            # executescript runs outside Python's transaction handling, so the
            # BEGIN/COMMIT pair makes the migration and its version bump atomic.
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\n"
                               "COMMIT;")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.rollback()
        raise RunnerError(f"cannot set up the store database '{path}': {e}",
                          reason="db") from None


@contextmanager
def open_side_db(state_dir: str, file: str, schema: str, what: str
                 ) -> Iterator[sqlite3.Connection]:
    """A small database beside the store's in the state dir (build history, test history):
    created with `schema` on first use, WAL, closed on exit. A busy or unreadable one is a
    one-line error naming it as `what`."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, file)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        conn.execute(f"pragma busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        set_wal(conn)  # retries a concurrent first opener's lock
        conn.execute("pragma synchronous = normal")
        conn.executescript(schema)
        yield conn
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise RunnerError(f"{what} '{path}' is busy: {e}", reason="busy") from None
        raise RunnerError(f"{what} '{path}' is unreadable ({e}); delete it to start "
                          "a new one", reason="bad-history") from None
    finally:
        conn.close()
