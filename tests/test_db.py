"""The store database: creation, WAL, migrations, transactions, bad files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from runner.errors import RunnerError
from runner.store import db
from runner.store.db import SCHEMA_VERSION, Database, db_path, schema_version


def test_creates_db_in_state_dir_with_wal_and_foreign_keys(state_dir: str) -> None:
    database = Database.open(state_dir)
    assert database.path == os.path.join(state_dir, "db", "db.sqlite")
    assert os.path.isfile(database.path)
    assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert database.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert schema_version(database.conn) == SCHEMA_VERSION
    tables = {row[0] for row in database.execute("select name from sqlite_master")}
    assert {"ValidPaths", "Refs", "DerivationOutputs", "FailedPaths"} <= tables
    database.close()


def test_reopen_keeps_data(state_dir: str) -> None:
    first = Database.open(state_dir)
    with first.transaction():
        first.execute("insert into FailedPaths(path, time) values ('/x', 1)")
    first.close()
    second = Database.open(state_dir)
    assert second.execute("select path from FailedPaths").fetchall() == [("/x",)]
    assert schema_version(second.conn) == SCHEMA_VERSION


def test_transaction_rolls_back_on_error(state_dir: str) -> None:
    database = Database.open(state_dir)
    with pytest.raises(ValueError), database.transaction():
        database.execute("insert into FailedPaths(path, time) values ('/x', 1)")
        with database.transaction():  # nested joins the outer one
            database.execute("insert into FailedPaths(path, time) values ('/y', 1)")
        raise ValueError("boom")
    assert database.execute("select count(*) from FailedPaths").fetchone()[0] == 0
    assert not database.conn.in_transaction


def test_nested_transaction_commits_with_outer(state_dir: str) -> None:
    database = Database.open(state_dir)
    with database.transaction():
        with database.transaction():
            database.execute("insert into FailedPaths(path, time) values ('/y', 1)")
        assert database.conn.in_transaction
    assert not database.conn.in_transaction
    other = sqlite3.connect(db_path(state_dir))
    assert other.execute("select path from FailedPaths").fetchall() == [("/y",)]


def test_foreign_keys_enforced(state_dir: str) -> None:
    database = Database.open(state_dir)
    with pytest.raises(sqlite3.IntegrityError), database.transaction():
        database.execute("insert into Refs(referrer, reference) values (1, 2)")


def test_newer_schema_is_refused(state_dir: str) -> None:
    Database.open(state_dir).close()
    conn = sqlite3.connect(db_path(state_dir))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RunnerError) as info:
        Database.open(state_dir)
    assert info.value.reason == "db-too-new"


def test_migrations_run_in_order_and_only_once(
    state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database.open(state_dir).close()
    monkeypatch.setattr(db, "MIGRATIONS", (*db.MIGRATIONS, lambda: "create table Extra (x);"))
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    database = Database.open(state_dir)
    assert schema_version(database.conn) == SCHEMA_VERSION + 1
    database.execute("insert into Extra values (1)")
    database.close()
    Database.open(state_dir).close()  # would fail ("table Extra already exists") if rerun


def test_failing_migration_leaves_old_version(
    state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database.open(state_dir).close()
    bad = "create table Half (x); this is not sql;"
    monkeypatch.setattr(db, "MIGRATIONS", (*db.MIGRATIONS, lambda: bad))
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RunnerError) as info:
        Database.open(state_dir)
    assert info.value.reason == "db"
    conn = sqlite3.connect(db_path(state_dir))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {row[0] for row in conn.execute("select name from sqlite_master")}
    assert "Half" not in names


def test_corrupt_db_file_is_a_runner_error(state_dir: str) -> None:
    os.makedirs(os.path.join(state_dir, "db"))
    with open(db_path(state_dir), "wb") as f:
        f.write(b"this is not an sqlite database" * 100)
    with pytest.raises(RunnerError) as info:
        Database.open(state_dir)
    assert info.value.reason == "db"


def test_unwritable_state_dir_is_a_runner_error() -> None:
    with pytest.raises(RunnerError) as info:
        Database.open("/proc/definitely/not/here")
    assert info.value.reason == "db"


def test_concurrent_creation_by_processes(state_dir: str) -> None:
    script = (
        "import sys; from runner.store.db import Database; "
        "d = Database.open(sys.argv[1]); "
        "d.execute('select count(*) from ValidPaths').fetchone(); d.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, state_dir], stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    database = Database.open(state_dir)
    assert schema_version(database.conn) == SCHEMA_VERSION
