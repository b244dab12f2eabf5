"""Are these paths all valid? — the no-op build's one question, without `LocalStore`.

Importing `LocalStore` (derivations, NAR, optimise, path info…) costs ~20 ms, more
than the rest of a no-op `runner build`. This asks the same database the same way
(temporary roots first, then one batched query) and answers "no" whenever anything
is unusual (no database yet, a store dir or state dir that does not match, a schema
to migrate): the caller then takes the full path, which reports the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence

from runner.errors import RunnerError
from runner.store.db import Database, db_path
from runner.store.layout import STATE_MARKER
from runner.store.roots import TempRoots


@contextlib.contextmanager
def all_valid(store_dir: str, state_dir: str, paths: Sequence[str]) -> Iterator[bool]:
    """Whether every one of `paths` is valid; while the context is open they are
    temporary roots (a collector cannot delete them before they are linked)."""
    store_dir, state_dir = os.path.abspath(store_dir), os.path.abspath(state_dir)
    if not _plain(store_dir, state_dir):
        yield False
        return
    try:
        db = Database.open(state_dir)
    except RunnerError:
        yield False
        return
    roots = TempRoots(state_dir)
    try:
        row = db.execute("select value from Meta where name = 'storeDir'").fetchone()
        if row is None or row[0] != store_dir:
            yield False
            return
        roots.add_temp_roots(paths)  # before asking, as goals do
        unique = list(dict.fromkeys(paths))
        (count,) = db.execute(
            "select count(*) from ValidPaths v join json_each(?) j on v.path = j.value",
            (json.dumps(unique),)).fetchone()
        yield count == len(unique)
    finally:
        roots.close()
        db.close()


def _plain(store_dir: str, state_dir: str) -> bool:
    """An existing database, in the state dir the store's marker names (LocalStore
    creates and claims both; this does not)."""
    if not os.path.exists(db_path(state_dir)):
        return False
    try:
        with open(os.path.join(store_dir, STATE_MARKER), encoding="utf-8") as f:
            owner = f.read().strip()
    except OSError:
        return False
    return owner == os.path.realpath(state_dir)
