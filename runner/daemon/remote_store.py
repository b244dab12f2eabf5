"""A store reached through a worker-protocol daemon (`runner daemon` or Nix's own
`nix-daemon`): the query and add subset of `LocalStore`'s API, one connection.

This is the client half of docs/daemon.md; the CLI does not use it yet
(`--store unix://…` is future work). Queries that touch many paths use the
protocol's batched operations (query-valid-paths), not one round trip each.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from runner.daemon.client import Client, DaemonError
from runner.daemon.protocol import Op
from runner.errors import RunnerError
from runner.store import nar
from runner.store.hashes import Hash
from runner.store.path_info import PathInfo

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
            reason = "invalid-path" if "is not valid" in e.message else "daemon"
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
            raise RunnerError(f"path '{path}' is not valid", reason="invalid-path")
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

    def add_path(self, src: str, name: str) -> str:
        w = self.client.writer
        w.u64(Op.ADD_TO_STORE).text(name).text("fixed:r:sha256").texts([]).u64(0)
        for chunk in nar.dump(src):
            w.u64(len(chunk)).raw(chunk)
        w.u64(0)
        self._call_reply()
        path = self.client.reader.text()
        self._skip_info()
        return path

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

    def build(self, targets: Iterable[str]) -> None:
        """Realise `drv!out…` / plain paths on the daemon (build-paths)."""
        self.client.writer.u64(Op.BUILD_PATHS).texts(list(targets)).u64(0)
        self._call_reply()
        self.client.reader.u64()
