"""A store reached through a worker-protocol daemon (`runner daemon` or Nix's own
`nix-daemon`): the query and add subset of `LocalStore`'s API, one connection.

This is the client half of docs/daemon.md: runner's commands use it under
`--store daemon` / `--store unix://PATH` (runner.daemon.store_choice). Queries that
touch many paths use the protocol's batched operations (query-valid-paths), not one round trip each.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from types import TracebackType

from runner.daemon.client import Client, DaemonError
from runner.daemon.protocol import Op
from runner.errors import NOT_VALID, RunnerError, raise_not_valid
from runner.reasons import Reason
from runner.store import nar
from runner.store.derivation import Derivation
from runner.store.hashes import Hash
from runner.store.path_info import PathInfo
from runner.store.paths import make_text_path

_CHUNK = 64 * 1024


class RemoteStore:
    def __init__(self, socket_path: str, store_dir: str) -> None:
        self.store_dir = store_dir
        try:
            self.client = Client(socket_path).connect()
        except OSError as e:
            raise RunnerError(f"cannot connect to the daemon at '{socket_path}': {e.strerror}",
                              reason="daemon") from None
        except DaemonError as e:
            raise RunnerError(f"the daemon at '{socket_path}' refused the connection: "
                              f"{e.message}", reason="daemon") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, op: Op, *texts: str) -> None:
        self.client.writer.u64(op)
        for text in texts:
            self.client.writer.text(text)
        try:
            self.client.process_stderr()
        except DaemonError as e:
            reason = Reason.INVALID_PATH if NOT_VALID in e.message else Reason.DAEMON
            raise RunnerError(e.message, reason=reason) from None

    # ------------------------------------------------------------ queries

    def is_valid(self, path: str) -> bool:
        self._call(Op.IS_VALID_PATH, path)
        return self.client.reader.flag()

    def valid_paths(self, paths: Iterable[str]) -> set[str]:
        self.client.writer.u64(Op.QUERY_VALID_PATHS).texts(sorted(set(paths))).u64(0)
        self._call_reply()
        return set(self.client.reader.texts())

    def query_path_info(self, path: str) -> PathInfo | None:
        self._call(Op.QUERY_PATH_INFO, path)
        r = self.client.reader
        if not r.flag():
            return None
        deriver, nar_hash, refs = r.text(), r.text(), r.texts()
        registration_time, nar_size = r.u64(), r.u64()
        r.u64()  # ultimate
        r.texts()  # signatures
        ca = r.text()
        return PathInfo(path, Hash.parse(nar_hash, "sha256"), nar_size, frozenset(refs),
                        deriver or None, registration_time, ca or None)

    def _valid_info(self, path: str) -> PathInfo:
        info = self.query_path_info(path)
        if info is None:
            raise_not_valid(path)
        return info

    def query_references(self, path: str) -> set[str]:
        return set(self._valid_info(path).references)

    def query_referrers(self, path: str) -> set[str]:
        self._call(Op.QUERY_REFERRERS, path)
        return set(self.client.reader.texts())

    def query_valid_derivers(self, path: str) -> set[str]:
        self._call(Op.QUERY_VALID_DERIVERS, path)
        return set(self.client.reader.texts())

    def query_derivation_outputs(self, drv_path: str) -> dict[str, str]:
        self._call(Op.QUERY_DERIVATION_OUTPUT_MAP, drv_path)
        r = self.client.reader
        pairs = [(r.text(), r.text()) for _ in range(r.u64())]
        return {name: path for name, path in pairs if path}

    def query_deriver(self, path: str) -> str | None:
        return self._valid_info(path).deriver

    def compute_closure(self, paths: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(dict.fromkeys(paths))
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            todo.extend(self._valid_info(path).references - seen)
        return seen

    def restore(self, path: str, dest: str) -> None:
        """Unpack the daemon's NAR of the valid `path` at `dest` (which must not exist)."""
        self._valid_info(path)
        self._call(Op.NAR_FROM_PATH, path)
        nar.restore(self.client.reader.exact, dest)  # reads exactly the NAR

    # ------------------------------------------------------------ adding

    def add_text(self, name: str, text: str | bytes, references: Iterable[str] = ()) -> str:
        data = text.encode("utf-8") if isinstance(text, str) else text
        w = self.client.writer
        w.u64(Op.ADD_TO_STORE).text(name).text("text:sha256").texts(sorted(set(references)))
        w.u64(0)
        for i in range(0, len(data), _CHUNK):
            w.u64(len(data[i:i + _CHUNK])).raw(data[i:i + _CHUNK])
        w.u64(0)
        self._call_reply()
        path = self.client.reader.text()
        self._skip_info()
        return path

    def add_path(self, src: str, name: str | None = None, exclude: nar.Exclude | None = None
                 ) -> str:
        """Add a file or tree as a source path (as LocalStore.add_path)."""
        name = name or os.path.basename(os.path.normpath(os.path.abspath(src)))
        w = self.client.writer
        w.u64(Op.ADD_TO_STORE).text(name).text("fixed:r:sha256").texts([]).u64(0)
        for chunk in nar.dump(src, exclude):
            w.u64(len(chunk)).raw(chunk)
        w.u64(0)
        self._call_reply()
        path = self.client.reader.text()
        self._skip_info()
        return path

    def write_derivations(self, drvs: Sequence[Derivation]) -> list[str]:
        """Add `.drv` files (each after those it needs) as text paths: their paths are
        computed here, one query-valid-paths finds the missing ones, only those are sent."""
        texts: dict[str, tuple[Derivation, frozenset[str]]] = {}
        for drv in drvs:
            data = drv.data
            refs = frozenset((*drv.input_srcs, *drv.input_drvs))
            path = make_text_path(drv.name + ".drv", hashlib.sha256(data).digest(), refs,
                                  self.store_dir)
            texts[path] = (drv, refs)
        valid = self.valid_paths(texts)
        for path, (drv, refs) in texts.items():
            if path not in valid:
                added = self.add_text(drv.name + ".drv", drv.data, refs)
                if added != path:
                    raise RunnerError(f"the daemon stored '{drv.name}.drv' as '{added}', "
                                      f"expected '{path}'", reason="bad-drv")
        return list(texts)

    def add_indirect_root(self, link: str) -> None:
        """Register the symlink `link` (absolute) as a GC root on the daemon's side."""
        self._call(Op.ADD_INDIRECT_ROOT, link)
        self.client.reader.u64()

    def query_missing(self, targets: Iterable[str]
                      ) -> tuple[list[str], list[str], list[str], int, int]:
        """What realising `targets` needs: (derivations to build, paths to substitute,
        paths nobody can produce, download bytes, unpacked NAR bytes)."""
        self.client.writer.u64(Op.QUERY_MISSING).texts(list(targets))
        self._call_reply()
        r = self.client.reader
        return r.texts(), r.texts(), r.texts(), r.u64(), r.u64()

    def find_roots(self) -> dict[str, str]:
        """The daemon's GC roots: link (or process) -> store path."""
        self.client.writer.u64(Op.FIND_ROOTS)
        self._call_reply()
        r = self.client.reader
        return dict((r.text(), r.text()) for _ in range(r.u64()))

    def collect_garbage(self, action: int, paths: Iterable[str] = (), max_freed: int = 0
                        ) -> tuple[list[str], int]:
        """Nix's collect-garbage: action 0 live, 1 dead, 2 delete dead, 3 delete `paths`.
        Returns the paths (reported or deleted) and the bytes freed."""
        w = self.client.writer
        w.u64(Op.COLLECT_GARBAGE).u64(action).texts(sorted(paths)).u64(0)
        w.u64(max_freed or (1 << 64) - 1).u64(0).u64(0).u64(0)
        self._call_reply()
        r = self.client.reader
        found, freed = r.texts(), r.u64()
        r.u64()
        return found, freed

    def _call_reply(self) -> None:
        try:
            self.client.process_stderr()
        except DaemonError as e:
            raise RunnerError(e.message, reason="daemon") from None

    def _skip_info(self) -> None:
        r = self.client.reader
        r.text(), r.text(), r.texts(), r.u64(), r.u64(), r.u64(), r.texts(), r.text()

    def add_temp_root(self, path: str) -> None:
        self._call(Op.ADD_TEMP_ROOT, path)
        self.client.reader.u64()

    def build(self, targets: Iterable[str], mode: int = 0) -> None:
        """Realise `drv!out…` / plain paths on the daemon (build-paths; mode 0 normal,
        1 repair, 2 check). A failure raises RunnerError(reason="build-failed") whose
        message is the daemon's."""
        self.client.writer.u64(Op.BUILD_PATHS).texts(list(targets)).u64(mode)
        try:
            self.client.process_stderr()
        except DaemonError as e:
            raise RunnerError(e.message, reason="build-failed") from None
        self.client.reader.u64()
