"""Signatures recorded for valid paths (table `PathSignatures`, schema v3): what
`nix copy` brings along and `add-signatures` adds, handed out by query-path-info."""

from __future__ import annotations

from collections.abc import Iterable

from runner.errors import RunnerError, raise_not_valid
from runner.store.local_store import LocalStore


def query(store: LocalStore, path: str) -> list[str]:
    row = store.db.execute(
        "select s.sigs from PathSignatures s join ValidPaths v on v.id = s.id"
        " where v.path = ?", (path,)).fetchone()
    return sorted(row[0].split()) if row is not None else []


def add(store: LocalStore, path: str, sigs: Iterable[str]) -> None:
    """Merge `sigs` into those of the valid `path` (duplicates dropped)."""
    new = {s for s in sigs if s}
    if any(len(s.split()) != 1 for s in new):
        raise RunnerError("a signature must not contain whitespace", reason="bad-signature")
    if not new:
        return
    with store.db.transaction() as conn:
        row = conn.execute("select id from ValidPaths where path = ?", (path,)).fetchone()
        if row is None:
            raise_not_valid(path)
        old = conn.execute("select sigs from PathSignatures where id = ?", (row[0],)).fetchone()
        merged = new | set(old[0].split() if old else ())
        conn.execute("insert or replace into PathSignatures (id, sigs) values (?, ?)",
                     (row[0], " ".join(sorted(merged))))
