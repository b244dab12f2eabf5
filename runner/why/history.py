"""Build history: per spec and derivation name, the outcome of the last builds.

Kept in its own SQLite file, `<state>/history.sqlite` (WAL, busy timeout), so
concurrent runs can record at once and the store database's migrations are
not involved. Each run also archives the text of every `.drv` in the closure
of what it built: `runner why` can still compare with a success whose
derivations were collected since. History is bounded: the last `KEEP` outcomes
per name, plus always the newest success and the newest failure.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from runner.store.db import open_side_db

KEEP = 20
FILE = "history.sqlite"

_SCHEMA = """
create table if not exists runs (id integer primary key, time real not null);
create table if not exists outcomes (
    id integer primary key,
    run integer not null,
    store text not null,
    spec text not null,
    name text not null,
    drv_path text not null,
    ok integer not null,
    status text not null,
    time real not null);
create index if not exists outcomes_key on outcomes (store, spec, name, ok, id);
create index if not exists outcomes_run on outcomes (run);
create table if not exists run_drvs (
    run integer not null, drv_path text not null,
    primary key (run, drv_path)) without rowid;
create index if not exists run_drvs_path on run_drvs (drv_path);
create table if not exists drvs (path text primary key, text blob not null) without rowid;
"""


@dataclass(frozen=True)
class Outcome:
    """One recorded build of a spec's derivation."""

    spec: str
    name: str
    drv_path: str
    ok: bool
    status: str
    time: float

    def to_json(self) -> dict[str, object]:
        return {"drvPath": self.drv_path, "status": self.status, "time": round(self.time, 3)}


@contextlib.contextmanager
def open_history(state_dir: str) -> Iterator[sqlite3.Connection]:
    """The history database, created on first use; closed on exit."""
    with open_side_db(state_dir, FILE, _SCHEMA, "build history") as conn:
        yield conn


def record(state_dir: str, store_dir: str, outcomes: Iterable[tuple[str, str, str, str, bool]],
           closure: Callable[[set[str]], Iterable[tuple[str, bytes]]]) -> None:
    """Record one run: `outcomes` are (spec, name, drv path, status, ok); `closure(drv
    paths)` gives the (path, ATerm) of every derivation they depend on, themselves
    included. An outcome equal to the newest one of its name (same drv, same ok) only
    refreshes that one's time: a no-op build costs a query per name, not an archive."""
    now = time.time()
    with open_history(state_dir) as conn:
        fresh, same = [], []
        for row in outcomes:
            newest = conn.execute(
                "select id, drv_path, ok from outcomes where store = ? and spec = ? and name = ?"
                " order by id desc limit 1", (store_dir, row[0], row[1])).fetchone()
            if newest is not None and (newest[1], bool(newest[2])) == (row[2], row[4]):
                same.append(newest[0])
            else:
                fresh.append(row)
        texts = list(closure({row[2] for row in fresh})) if fresh else []
        conn.execute("begin immediate")
        try:
            conn.executemany("update outcomes set time = ? where id = ?",
                             [(now, id_) for id_ in same])
            if fresh:
                _insert(conn, store_dir, fresh, texts, now)
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise


def _insert(conn: sqlite3.Connection, store_dir: str,
            outcomes: list[tuple[str, str, str, str, bool]], texts: list[tuple[str, bytes]],
            now: float) -> None:
    run = conn.execute("insert into runs (time) values (?)", (now,)).lastrowid
    conn.executemany("insert or ignore into run_drvs (run, drv_path) values (?, ?)",
                     [(run, path) for path, _ in texts])
    for path, text in texts:
        if conn.execute("select 1 from drvs where path = ?", (path,)).fetchone() is None:
            conn.execute("insert into drvs (path, text) values (?, ?)",
                         (path, zlib.compress(text)))
    pruned = 0
    for spec, name, drv_path, status, ok in outcomes:
        conn.execute(
            "insert into outcomes (run, store, spec, name, drv_path, ok, status, time)"
            " values (?, ?, ?, ?, ?, ?, ?, ?)",
            (run, store_dir, spec, name, drv_path, int(ok), status, now))
        pruned += _prune(conn, store_dir, spec, name)
    if pruned:
        _sweep(conn)


def _prune(conn: sqlite3.Connection, store: str, spec: str, name: str) -> int:
    key = (store, spec, name)
    where = "store = ? and spec = ? and name = ?"
    return conn.execute(
        f"delete from outcomes where {where}"
        f" and id not in (select id from outcomes where {where} order by id desc limit {KEEP})"
        f" and id not in (select max(id) from outcomes where {where} group by ok)",
        key * 3).rowcount


def _sweep(conn: sqlite3.Connection) -> None:
    """Forget runs no outcome refers to any more, and derivation texts no run needs."""
    conn.execute("delete from runs where id not in (select run from outcomes)")
    conn.execute("delete from run_drvs where run not in (select id from runs)")
    conn.execute("delete from drvs where path not in (select drv_path from run_drvs)")


def last(state_dir: str, store_dir: str, spec: str, name: str, *, ok: bool) -> Outcome | None:
    """The newest recorded success (`ok`) or failure of `name` in `spec`."""
    if not os.path.exists(os.path.join(state_dir, FILE)):
        return None
    with open_history(state_dir) as conn:
        row = conn.execute(
            "select drv_path, status, time from outcomes where store = ? and spec = ?"
            " and name = ? and ok = ? order by id desc limit 1",
            (store_dir, spec, name, int(ok))).fetchone()
    return None if row is None else Outcome(spec, name, row[0], ok, row[1], row[2])


def outcomes(state_dir: str, store_dir: str, spec: str, name: str) -> list[Outcome]:
    """Every recorded outcome of `name` in `spec`, newest first."""
    if not os.path.exists(os.path.join(state_dir, FILE)):
        return []
    with open_history(state_dir) as conn:
        rows = conn.execute(
            "select drv_path, ok, status, time from outcomes where store = ? and spec = ?"
            " and name = ? order by id desc", (store_dir, spec, name)).fetchall()
    return [Outcome(spec, name, r[0], bool(r[1]), r[2], r[3]) for r in rows]


class Archive:
    """Derivation texts archived by past runs (read-only; one connection)."""

    def __init__(self, state_dir: str) -> None:
        self._conn: sqlite3.Connection | None = None
        self._stack = contextlib.ExitStack()
        if os.path.exists(os.path.join(state_dir, FILE)):
            self._conn = self._stack.enter_context(open_history(state_dir))

    def text(self, path: str) -> bytes | None:
        if self._conn is None:
            return None
        row = self._conn.execute("select text from drvs where path = ?", (path,)).fetchone()
        if row is None:
            return None
        try:
            return zlib.decompress(row[0])
        except zlib.error:
            return None  # a damaged archive entry: as if it were not archived

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
