"""The local store: files under `store_dir`, their metadata in `<state_dir>/db/db.sqlite`.

Adding is atomic: content is copied into a private temp dir inside the store,
canonicalised and hashed there, then renamed into place under the path's
lock and registered in one transaction. A crash at any moment leaves at most
an unregistered leftover (replaced by the next add, or swept by
`remove_stale_temp`), never a valid path with wrong contents.
"""

from __future__ import annotations

import collections
import errno
import graphlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Protocol, TypeVar

from runner.errors import RunnerError, raise_not_valid
from runner.store import derivation, drv_check, nar, tree_cache
from runner.store.canonicalise import (
    remove_tree,
    rename_tree,
)
from runner.store.db import Database
from runner.store.derivation import Derivation
from runner.store.hashes import Hash
from runner.store.layout import STATE_MARKER
from runner.store.locks import PathLocks
from runner.store.nar import Exclude
from runner.store.optimise import optimise_path
from runner.store.path_info import FailureRecord, PathInfo
from runner.store.paths import (
    make_source_path,
    make_text_path,
    parse_store_path,
    validate_name,
)
from runner.store.roots import TempRoots
from runner.store.staging import (
    TempDir,
    io_call,
    stage_bytes,
    stage_tree,
    write_text,
)

T = TypeVar("T")


class StoreSettings(Protocol):
    @property
    def store_dir(self) -> str: ...

    @property
    def state_dir(self) -> str: ...


# Called with each path just registered (auto-optimise passes `optimise_path`).
AfterRegister = Callable[["LocalStore", str], object]


def open_store(settings: StoreSettings) -> LocalStore:
    get = getattr(settings, "get", None)  # a full Settings, or just the two dirs
    auto_optimise = bool(get("auto-optimise")) if get is not None else False
    return LocalStore(settings.store_dir, settings.state_dir,
                      after_register=optimise_path if auto_optimise else None)


class LocalStore:
    def __init__(self, store_dir: str, state_dir: str, *,
                 after_register: AfterRegister | None = None, bind: bool = True,
                 temp_roots: TempRoots | None = None) -> None:
        """`bind=False` only to read a database whose files are elsewhere (`?real=`).
        `temp_roots`: share another store object's (a thread's own connection)."""
        self.store_dir = os.path.abspath(store_dir)
        self.state_dir = os.path.abspath(state_dir)
        # Hashes modulo of valid `.drv` paths (their content is fixed by the path).
        self._drv_hashes: dict[str, bytes] = {}
        self.after_register = after_register
        self._own_roots = temp_roots is None
        self.temp_roots = TempRoots(self.state_dir) if temp_roots is None else temp_roots
        try:
            os.makedirs(self.store_dir, exist_ok=True)
        except OSError as e:
            raise RunnerError(f"cannot create the store '{self.store_dir}': {e.strerror}",
                              reason="io") from None
        self.db = Database.open(self.state_dir)
        self._claim_state_dir()
        try:
            if bind:
                _claim_store_dir(self.store_dir, self.state_dir)
        except RunnerError:
            self.db.close()
            raise

    def _claim_state_dir(self) -> None:
        """One state dir, one store dir: the paths in the database are this store's."""
        row = self.db.execute("select value from Meta where name = 'storeDir'").fetchone()
        if row is None:
            with self.db.transaction() as conn:
                conn.execute("insert or ignore into Meta (name, value) values ('storeDir', ?)",
                             (self.store_dir,))
            row = self.db.execute("select value from Meta where name = 'storeDir'").fetchone()
        if row[0] != self.store_dir:
            self.db.close()
            raise RunnerError(
                f"the state dir '{self.state_dir}' belongs to the store '{row[0]}', not "
                f"'{self.store_dir}'; give each store its own state dir (--state-dir)",
                reason="store-mismatch")

    def close(self) -> None:
        """Close the database and drop this store's temporary roots."""
        self.db.close()
        if self._own_roots:
            self.temp_roots.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ adding

    def add_path(self, src: str, name: str | None = None, exclude: Exclude | None = None) -> str:
        """Copy a file or tree into the store as a `source` path (as `nix-store --add`).

        `exclude(relpath)` drops entries below `src`; relpaths use `/` and
        directories end in `/`, so gitignore-style patterns apply.
        """
        src = os.path.abspath(src)
        name = os.path.basename(src) if name is None else name
        validate_name(name)
        try:
            os.lstat(src)
        except OSError as e:
            raise RunnerError(f"cannot add '{src}' to the store: {e.strerror}",
                              reason="not-found") from None
        # An unchanged tree whose path is valid is neither copied nor read again.
        key, cacheable = io_call(f"cannot add '{src}' to the store", tree_cache.fingerprint, src,
                             exclude)
        if cacheable and (known := tree_cache.lookup(self.state_dir, key)) is not None:
            path = make_source_path(name, known[0].digest, self.store_dir)
            self.temp_roots.add_temp_root(path)  # see below
            if self.is_valid(path):
                return path
        with TempDir(self.store_dir) as tmp:
            staged = os.path.join(tmp.path, "x")
            nar_hash, nar_size = io_call(f"cannot add '{src}' to the store", stage_tree, src,
                                         staged, exclude)
            if cacheable:
                tree_cache.record(self.state_dir, key, nar_hash, nar_size)
            path = make_source_path(name, nar_hash.digest, self.store_dir)
            # Rooted before the validity check, so a concurrent GC cannot take it
            # away between here and its use by a build of this process.
            self.temp_roots.add_temp_root(path)
            self._install(staged, PathInfo(path, nar_hash, nar_size, ca=f"fixed:r:{nar_hash}"))
        return path

    def add_text(self, name: str, text: str, references: Iterable[str] = ()) -> str:
        """Store `text` as a text path (how `.drv` files are stored)."""
        references = frozenset(references)
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).digest()
        path = make_text_path(name, digest, references, self.store_dir)
        self.temp_roots.add_temp_root(path)  # see add_path
        if self.is_valid(path):
            return path
        missing = sorted(r for r in references if r != path and not self.is_valid(r))
        if missing:
            raise RunnerError(f"cannot add '{path}': its reference '{missing[0]}' is not valid",
                              reason="closure")
        with TempDir(self.store_dir) as tmp:
            staged = os.path.join(tmp.path, "x")
            nar_hash, nar_size = io_call(f"cannot write '{path}'", stage_bytes, data, staged)
            ca = f"text:{Hash('sha256', digest)}"
            self._install(staged, PathInfo(path, nar_hash, nar_size, references, ca=ca))
        return path

    def write_derivation(self, drv: Derivation) -> str:
        return self.write_derivations([drv])[0]

    def write_derivations(self, drvs: Sequence[Derivation]) -> list[str]:
        """Store `.drv` files (each after the derivations it needs): one lock round and
        one transaction for all that are missing, so instantiating N costs little more
        than one query when they are already valid."""
        texts: dict[str, tuple[bytes, bytes, frozenset[str], Derivation]] = {}
        paths = []
        for drv in drvs:
            data = drv.data
            digest = hashlib.sha256(data).digest()
            refs = frozenset((*drv.input_srcs, *drv.input_drvs))
            path = make_text_path(drv.name + ".drv", digest, refs, self.store_dir)
            texts[path] = (data, digest, refs, drv)
            paths.append(path)
        self.temp_roots.add_temp_roots(texts)  # see add_path
        valid = self.valid_paths(texts)
        missing = [p for p in texts if p not in valid]
        if missing:
            with PathLocks(missing):
                valid = self.valid_paths(missing)  # another process may have written some
                infos = []
                for path in (p for p in missing if p not in valid):
                    data, digest, refs, _ = texts[path]
                    # Invalid, so whatever is there is a leftover of an interrupted write.
                    io_call(f"cannot write '{path}'", write_text, path, data)
                    infos.append(PathInfo(path, *nar.hash_regular(data), refs,
                                          ca=f"text:{Hash('sha256', digest)}"))
                self._register(infos, {p: texts[p][3] for p in missing})
        return paths

    def read_derivation(self, path: str) -> Derivation:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise RunnerError(f"cannot read derivation '{path}': {e.strerror}",
                              reason="bad-drv") from None
        return derivation.parse(data, path)

    def _install(self, staged: str, info: PathInfo) -> None:
        """Move a canonicalised, hashed tree to `info.path` and register it."""
        if self.is_valid(info.path):
            return
        with PathLocks([info.path]):
            if self.is_valid(info.path):  # someone else finished it meanwhile
                return
            # Whatever is there is an unregistered leftover of an interrupted add.
            io_call(f"cannot remove the leftover '{info.path}'", remove_tree, info.path)
            io_call(f"cannot move '{info.path}' into place", rename_tree, staged, info.path)
            self.register_valid_paths([info])

    # ------------------------------------------------------------ registering

    def register_valid_paths(self, infos: list[PathInfo]) -> None:
        """Make paths valid in one transaction.

        Every reference must already be valid or be in `infos` (the closure
        invariant); references among `infos` must not form a cycle. A
        registered path supersedes its cached failure.
        """
        self._register(infos, {})

    def _register(self, infos: list[PathInfo], drvs: Mapping[str, Derivation]) -> None:
        """`register_valid_paths`; `drvs` holds `.drv` files already parsed."""
        now = int(time.time())
        batch = {info.path for info in infos}
        new_hashes: dict[str, bytes] = {}  # kept only if the batch commits
        with self.db.transaction() as conn:
            for info in infos:
                parse_store_path(info.path, self.store_dir)
            conn.executemany(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ca)"
                " values (?, ?, ?, ?, ?, ?) on conflict (path) do update set"
                " hash = excluded.hash, narSize = excluded.narSize,"
                " deriver = coalesce(excluded.deriver, deriver), ca = excluded.ca",
                [(info.path, f"sha256:{info.nar_hash.hex()}", info.registration_time or now,
                  info.deriver, info.nar_size, info.ca) for info in infos],
            )
            # Every id the batch needs (its own paths and all their references) in
            # one query; a reference missing from it is not valid.
            wanted = set(batch)
            for info in infos:
                wanted.update(info.references)
            rows = conn.execute(
                "select v.path, v.id from ValidPaths v join json_each(?) j on v.path = j.value",
                (json.dumps(list(wanted)),))
            ids: dict[str, int] = {path: int(id_) for path, id_ in rows}
            refs: list[tuple[int, int]] = []
            outputs: list[tuple[int, str, str]] = []
            for info in infos:
                referrer = ids[info.path]
                for ref in info.references:
                    reference = ids.get(ref)
                    if reference is None:
                        raise RunnerError(
                            f"cannot register '{info.path}': its reference '{ref}' is not valid",
                            reason="closure",
                        )
                    refs.append((referrer, reference))
                if _is_derivation(info):
                    drv = drvs.get(info.path) or self.read_derivation(info.path)
                    self._check_drv(info.path, drv, drvs, new_hashes)
                    outputs.extend((referrer, output, out.path)
                                   for output, out in drv.outputs.items())
            conn.executemany("insert or ignore into Refs (referrer, reference) values (?, ?)",
                             refs)
            conn.executemany("insert or replace into DerivationOutputs (drv, id, path)"
                             " values (?, ?, ?)", outputs)
            conn.executemany("delete from FailedPaths where path = ?",
                             [(info.path,) for info in infos])
            _check_acyclic(infos, batch)
        self._drv_hashes.update(new_hashes)
        if self.after_register is not None:
            for info in infos:
                self.after_register(self, info.path)

    def _check_drv(self, path: str, drv: Derivation, drvs: Mapping[str, Derivation],
                   new_hashes: dict[str, bytes]) -> None:
        """Nix's output check of a `.drv` being registered (drv_check); its input
        derivations must be valid or in the batch (rows already inserted)."""

        def load(input_path: str) -> Derivation:
            if not self.is_valid(input_path):
                raise RunnerError(f"derivation '{path}' has input derivation '{input_path}', "
                                  "which this store does not hold", reason="bad-drv")
            return drvs.get(input_path) or self.read_derivation(input_path)

        drv_check.check_outputs(drv, path, self.store_dir, load,
                                collections.ChainMap(new_hashes, self._drv_hashes))

    def _id(self, path: str) -> int | None:
        row = self.db.execute("select id from ValidPaths where path = ?", (path,)).fetchone()
        return None if row is None else int(row[0])

    # ------------------------------------------------------------ queries

    def is_valid(self, path: str) -> bool:
        return self._id(path) is not None

    def valid_paths(self, paths: Iterable[str]) -> set[str]:
        """Which of `paths` are valid, in one query."""
        rows = self.db.execute(
            "select v.path from ValidPaths v join json_each(?) j on v.path = j.value",
            (json.dumps(list(paths)),))
        return {row[0] for row in rows}

    def query_path_info(self, path: str) -> PathInfo | None:
        row = self.db.execute(
            "select id, hash, registrationTime, deriver, narSize, ca from ValidPaths"
            " where path = ?", (path,)).fetchone()
        if row is None:
            return None
        id_, nar_hash, reg_time, deriver, nar_size, ca = row
        return PathInfo(path, Hash.parse(nar_hash), nar_size or 0, self._references(id_),
                        deriver, reg_time, ca)

    def _references(self, id_: int) -> frozenset[str]:
        rows = self.db.execute(
            "select v.path from Refs r join ValidPaths v on v.id = r.reference"
            " where r.referrer = ?", (id_,))
        return frozenset(row[0] for row in rows)

    def query_references(self, path: str) -> set[str]:
        id_ = self._valid_id(path)
        return set(self._references(id_))

    def query_referrers(self, path: str) -> set[str]:
        id_ = self._valid_id(path)
        rows = self.db.execute(
            "select v.path from Refs r join ValidPaths v on v.id = r.referrer"
            " where r.reference = ?", (id_,))
        return {row[0] for row in rows}

    def query_path_from_hash_part(self, hash_part: str) -> str | None:
        """The valid path whose hash part is `hash_part` (a range scan on the path index)."""
        prefix = f"{self.store_dir}/{hash_part}-"
        row = self.db.execute("select path from ValidPaths where path >= ? order by path limit 1",
                              (prefix,)).fetchone()
        return row[0] if row is not None and row[0].startswith(prefix) else None

    def query_deriver(self, path: str) -> str | None:
        row = self.db.execute("select deriver from ValidPaths where path = ?", (path,)).fetchone()
        return None if row is None else row[0]

    def query_valid_derivers(self, path: str) -> set[str]:
        """The valid `.drv` paths that list `path` as an output."""
        rows = self.db.execute(
            "select v.path from DerivationOutputs d join ValidPaths v on v.id = d.drv"
            " where d.path = ?", (path,))
        return {row[0] for row in rows}

    def query_derivation_outputs(self, drv_path: str) -> dict[str, str]:
        """Output name → path of a valid derivation, from the DB."""
        id_ = self._valid_id(drv_path)
        rows = self.db.execute("select id, path from DerivationOutputs where drv = ?", (id_,))
        return {row[0]: row[1] for row in rows}

    def compute_closure(self, paths: Iterable[str]) -> set[str]:
        """`paths` and everything they reference, transitively (one recursive query)."""
        paths = list(dict.fromkeys(paths))
        for path in paths:
            self._valid_id(path)
        rows = self.db.execute(
            "with recursive closure(id) as ("
            " select v.id from ValidPaths v join json_each(?) j on v.path = j.value"
            " union select r.reference from Refs r join closure c on r.referrer = c.id)"
            " select v.path from ValidPaths v join closure c on v.id = c.id",
            (json.dumps(paths),))
        return {row[0] for row in rows}

    def _valid_id(self, path: str) -> int:
        id_ = self._id(path)
        if id_ is None:
            raise_not_valid(path)
        return id_

    # ------------------------------------------------------------ failures

    def register_failure(self, path: str, drv_path: str | None, exit_status: int | None,
                         log_tail: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "insert or replace into FailedPaths (path, time, exitStatus, drvPath, logTail)"
                " values (?, ?, ?, ?, ?)",
                (path, int(time.time()), exit_status, drv_path, log_tail))

    def query_failure(self, path: str) -> FailureRecord | None:
        row = self.db.execute(
            "select path, time, exitStatus, drvPath, logTail from FailedPaths where path = ?",
            (path,)).fetchone()
        return None if row is None else _failure(row)

    def list_failures(self) -> list[FailureRecord]:
        rows = self.db.execute(
            "select path, time, exitStatus, drvPath, logTail from FailedPaths order by path")
        return [_failure(row) for row in rows]

    def clear_failures(self, paths: Iterable[str] | None = None) -> int:
        """Forget cached failures (all, or of `paths`); returns how many were removed."""
        with self.db.transaction() as conn:
            if paths is None:
                return conn.execute("delete from FailedPaths").rowcount
            return sum(conn.execute("delete from FailedPaths where path = ?", (p,)).rowcount
                       for p in set(paths))

    # ------------------------------------------------------------ deleting

    def delete_path(self, path: str) -> None:
        """Invalidate and remove `path`; refused while other valid paths refer to it."""
        parse_store_path(path, self.store_dir)
        with PathLocks([path]):
            if self.is_valid(path):
                users = self.query_referrers(path) - {path}
                if users:
                    raise RunnerError(
                        f"cannot delete '{path}': it is still referenced by '{min(users)}'",
                        reason="in-use")
                with self.db.transaction() as conn:
                    conn.execute("delete from ValidPaths where path = ?", (path,))
            # Invalid first, then gone: a crash in between leaves an invalid leftover.
            io_call(f"cannot delete '{path}'", remove_tree, path)

    def remove_stale_temp(self) -> int:
        """Delete temp dirs of adds whose process died; returns how many."""
        removed = 0
        with os.scandir(self.store_dir) as entries:
            stale = [e.path for e in entries if e.name.startswith(TempDir.PREFIX)]
        for path in stale:
            if TempDir.is_abandoned(path):
                remove_tree(path)
                removed += 1
        return removed


def _claim_store_dir(store_dir: str, state_dir: str) -> None:
    """One store dir, one state dir: a second database on the same files would take the
    first one's paths for invalid leftovers (its GC deletes them, its builds overwrite
    them). The first store to open the dir names its state dir in a marker file."""
    marker = os.path.join(store_dir, STATE_MARKER)
    mine = os.path.realpath(state_dir)
    try:
        owner = _read_marker(marker)
        if owner is None:
            tmp = f"{marker}.{os.getpid()}-{threading.get_ident()}"
            write_text(tmp, (mine + "\n").encode())
            try:
                os.link(tmp, marker)  # atomic: of two first users, one wins
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            owner = _read_marker(marker) or mine
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return  # a store we cannot write to cannot be changed through us either
        raise RunnerError(f"cannot record the state dir of the store '{store_dir}' in "
                          f"'{marker}': {e.strerror}", reason="io") from None
    if owner != mine:
        raise RunnerError(
            f"the store '{store_dir}' belongs to the state dir '{owner}', not "
            f"'{state_dir}'; a store has exactly one database: use --state-dir {owner} "
            f"(if that state dir is gone for good, delete '{marker}')",
            reason="store-mismatch")


def _read_marker(marker: str) -> str | None:
    try:
        with open(marker, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _is_derivation(info: PathInfo) -> bool:
    # Every `.drv`, however it was added, as in Nix: a builder builds any valid `.drv`,
    # so one added as plain data (`nix-store --add x.drv`) is checked as well.
    return info.path.endswith(".drv")


def _check_acyclic(infos: list[PathInfo], batch: set[str]) -> None:
    graph = {i.path: {r for r in i.references if r in batch and r != i.path} for i in infos}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise RunnerError(f"cannot register paths that refer to each other: {cycle}",
                          reason="cycle") from None


def _failure(row: tuple[str, int, int | None, str | None, str | None]) -> FailureRecord:
    path, when, exit_status, drv_path, log_tail = row
    return FailureRecord(path, when, exit_status, drv_path, log_tail or "")
