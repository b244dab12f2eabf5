"""One client connection: its session state and the operations it may ask for.

An operation reads its arguments, then "starts work" (log messages may flow
from here on), does it, "stops work" (`STDERR_LAST`, or `STDERR_ERROR` and
the message) and writes its result. A `RunnerError` while working is sent to
the client and the connection goes on; bad framing while reading arguments
leaves the stream out of step, so the error is sent and the connection ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import NoReturn

from runner.daemon import importer, signatures, substitution
from runner.daemon.options import ClientOptions, read_options
from runner.daemon.protocol import (
    STDERR_LAST,
    STDERR_NEXT,
    STDERR_READ,
    Op,
    minor,
    write_error,
)
from runner.daemon.trust import Peer
from runner.daemon.wire import MAX_TEXT, FramedReader, ProtocolError, Reader, Writer
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.hashes import Hash
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.store.paths import parse_store_path
from runner.substituters.base import Substituter
from runner.substituters.narinfo import NarInfo

UINT64_MAX = (1 << 64) - 1
# GC actions, as Nix numbers them.
GC_RETURN_LIVE, GC_RETURN_DEAD, GC_DELETE_DEAD, GC_DELETE_SPECIFIC = range(4)


class Session:
    """The state of one connection, served by one process (see server.py)."""

    def __init__(self, reader: Reader, writer: Writer, version: int, peer: Peer,
                 store: LocalStore, settings: Settings) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.minor = minor(version)
        self.peer = peer
        self.store = store
        self.settings = settings
        self.options = ClientOptions()
        self.substituter_cache: tuple[object, list[Substituter]] | None = None
        self._working = False

    # ------------------------------------------------------------ the stderr channel

    def start_work(self) -> None:
        self._working = True

    def stop_work(self) -> None:
        self._working = False
        self.writer.u64(STDERR_LAST)

    def log(self, message: str) -> None:
        """A line for the client's stderr (dropped outside an operation, as it cannot be sent)."""
        if self._working:
            self.writer.u64(STDERR_NEXT).text(message.rstrip("\n") + "\n")
            self.writer.flush()

    def fail(self, error: RunnerError) -> None:
        """Report `error` to the client as the end of the current operation."""
        self._working = False
        write_error(self.writer, self.version, error.message)
        self.writer.flush()

    def serve(self) -> None:
        """Answer operations until the client hangs up (or breaks the framing)."""
        while not self.reader.at_eof():
            code = self.reader.u64()
            handler = _HANDLERS.get(code)
            if handler is None:
                # Its arguments are unknown, so the stream cannot be resynchronised.
                raise ProtocolError(f"invalid operation {code}")
            try:
                handler(self)
            except ProtocolError:
                raise
            except RunnerError as e:
                if not self._working:
                    raise  # failed while reading arguments: the stream is out of step
                self.fail(e)
            self.writer.flush()

    # ------------------------------------------------------------ argument helpers

    def path(self, text: str) -> str:
        parse_store_path(text, self.store.store_dir)
        return text

    def paths(self, texts: Iterable[str]) -> list[str]:
        return [self.path(t) for t in texts]

    def require_trust(self, what: str) -> None:
        if not self.peer.trusted:
            raise RunnerError(f"you are not privileged to {what} (setting trusted-users)",
                              reason="not-trusted")

    def valid_info(self, path: str) -> PathInfo:
        info = self.store.query_path_info(path)
        if info is None:
            raise RunnerError(f"path '{path}' is not valid", reason="invalid-path")
        return info

    def write_info(self, info: PathInfo, *, include_path: bool) -> None:
        w = self.writer
        if include_path:
            w.text(info.path)
        w.text(info.deriver or "").text(info.nar_hash.hex())
        w.texts(sorted(info.references))
        w.u64(info.registration_time).u64(info.nar_size)
        if self.minor >= 16:
            # never "ultimate": runner does not record which paths it built itself
            w.flag(False).texts(signatures.query(self.store, info.path)).text(info.ca or "")


# ------------------------------------------------------------ queries


def _is_valid_path(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    valid = s.store.is_valid(s.path(text))
    s.stop_work()
    s.writer.flag(valid)


def _query_valid_paths(s: Session) -> None:
    texts = s.reader.texts()
    substitute = s.reader.flag() if s.minor >= 27 else False
    s.start_work()
    if substitute:
        substitution.ensure_valid(s, s.paths(texts), strict=False)
    valid = s.store.valid_paths(s.paths(texts))
    s.stop_work()
    s.writer.texts(sorted(valid))


def _query_all_valid_paths(s: Session) -> None:
    s.start_work()
    rows = s.store.db.execute("select path from ValidPaths order by path").fetchall()
    s.stop_work()
    s.writer.texts(row[0] for row in rows)


def _query_path_info(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    info = s.store.query_path_info(s.path(text))
    if info is None and s.minor < 17:
        s.valid_info(text)  # raises: old clients expect an error
    s.stop_work()
    if s.minor >= 17:
        s.writer.flag(info is not None)
    if info is not None:
        s.write_info(info, include_path=False)


def _query_path_hash(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    info = s.valid_info(s.path(text))
    s.stop_work()
    s.writer.text(info.nar_hash.hex())


def _path_set_query(query: Callable[[Session, str], Iterable[str]]) -> Callable[[Session], None]:
    def handler(s: Session) -> None:
        text = s.reader.text()
        s.start_work()
        result = sorted(query(s, s.path(text)))
        s.stop_work()
        s.writer.texts(result)
    return handler


def _derivation_outputs(s: Session, path: str) -> dict[str, str]:
    s.valid_info(path)
    return s.store.query_derivation_outputs(path)


def _query_derivation_output_map(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    outputs = _derivation_outputs(s, s.path(text))
    s.stop_work()
    s.writer.u64(len(outputs))
    for name in sorted(outputs):
        s.writer.text(name).text(outputs[name])


def _query_deriver(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    info = s.valid_info(s.path(text))
    s.stop_work()
    s.writer.text(info.deriver or "")


def _query_path_from_hash_part(s: Session) -> None:
    hash_part = s.reader.text()
    s.start_work()
    path = s.store.query_path_from_hash_part(hash_part) if hash_part else None
    s.stop_work()
    s.writer.text(path or "")


def _nar_from_path(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    path = s.valid_info(s.path(text)).path
    s.stop_work()
    for chunk in nar.dump(path):
        s.writer.raw(chunk)


def _query_substitutable_paths(s: Session) -> None:
    texts = s.reader.texts()
    s.start_work()
    found = substitution.offers(s, s.paths(texts))
    s.stop_work()
    s.writer.texts(sorted(found))


def _has_substitutes(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    found = substitution.offers(s, [s.path(text)])
    s.stop_work()
    s.writer.flag(bool(found))


def _write_offer(s: Session, info: NarInfo) -> None:
    s.writer.text(info.deriver or "").texts(sorted(info.references))
    s.writer.u64(info.file_size or 0).u64(info.nar_size)


def _query_substitutable_path_infos(s: Session) -> None:
    count = s.reader.num(1 << 24, "list length")
    texts = []
    for _ in range(count):
        texts.append(s.reader.text())
        if s.minor >= 22:
            s.reader.text()  # content address: runner asks for the path itself
    s.start_work()
    found = substitution.offers(s, s.paths(texts))
    s.stop_work()
    s.writer.u64(len(found))
    for path in sorted(found):
        s.writer.text(path)
        _write_offer(s, found[path])


def _query_substitutable_path_info(s: Session) -> None:
    text = s.reader.text()
    s.start_work()
    found = substitution.offers(s, [s.path(text)])
    s.stop_work()
    s.writer.flag(bool(found))
    if found:
        _write_offer(s, found[text])


def _query_realisation(s: Session) -> None:
    s.reader.text()
    s.start_work()
    s.stop_work()
    s.writer.texts([])  # no content-addressed derivations: nothing is ever realised


def _query_failed_paths(s: Session) -> None:
    s.start_work()
    failed = [f.path for f in s.store.list_failures()]
    s.stop_work()
    s.writer.texts(failed)


def _clear_failed_paths(s: Session) -> None:
    texts = s.reader.texts()
    s.start_work()
    s.require_trust("clear cached build failures")
    s.store.clear_failures(s.paths(texts))
    s.stop_work()
    s.writer.u64(1)


def _query_missing(s: Session) -> None:
    from runner.daemon.building import parse_derived_paths, query_missing

    texts = s.reader.texts()
    s.start_work()
    missing = query_missing(s.store, parse_derived_paths(s.store.store_dir, texts),
                            lambda path: substitution.offers(s, [path]).get(path))
    s.stop_work()
    s.writer.texts(sorted(missing.will_build)).texts(sorted(missing.will_substitute))
    s.writer.texts(sorted(missing.unknown)).u64(missing.download_size).u64(missing.nar_size)


# ------------------------------------------------------------ adding


def _read_framed(s: Session, consume: Callable[[FramedReader], None]) -> None:
    """Run `consume` on the framed stream that follows; when it fails for a reason of
    ours, skip the rest of the stream so the connection stays in step."""
    framed = FramedReader(s.reader)
    try:
        consume(framed)
    except ProtocolError:
        raise
    except RunnerError:
        framed.drain()
        raise
    framed.drain()


def _add_to_store(s: Session) -> None:
    if s.minor >= 25:
        name = s.reader.text()
        method = s.reader.text()
        refs = s.reader.texts()
        repair = s.reader.flag()
        s.start_work()
        result: list[PathInfo] = []

        def consume(framed: FramedReader) -> None:
            if repair:
                s.require_trust("repair paths")
            if method.startswith("text:"):
                data = bytearray()
                while chunk := framed.read(1 << 16):
                    data += chunk
                    if len(data) > MAX_TEXT:
                        raise RunnerError("text is too large", reason="too-large")
                result.append(importer.add_text(s.store, name, bytes(data), s.paths(refs)))
                return
            recursive, algo = _parse_fixed_method(method)
            result.append(importer.add_fixed(s.store, name, recursive, algo, framed.read,
                                             s.paths(refs)))

        _read_framed(s, consume)
        s.stop_work()
        s.write_info(result[0], include_path=True)
        return
    # Older clients: name, "fixed" flag, recursive flag, algorithm, then a NAR inline.
    name = s.reader.text()
    fixed = s.reader.flag()
    recursive = s.reader.u64() == 1
    algo = s.reader.text()
    if not fixed:
        algo, recursive = "sha256", True
    s.start_work()
    try:
        info = importer.add_fixed(s.store, name, recursive, algo, s.reader.exact,
                                  flat_is_nar=True)
    except RunnerError as e:
        if e.reason == "bad-nar":  # the stream is out of step: end the connection
            raise ProtocolError(e.message) from None
        raise
    s.stop_work()
    s.writer.text(info.path)


def _parse_fixed_method(method: str) -> tuple[bool, str]:
    if not method.startswith("fixed:"):
        raise RunnerError(f"unknown content-address method '{method}'", reason="bad-ca")
    rest = method[len("fixed:"):]
    recursive = rest.startswith("r:")
    algo = rest[2:] if recursive else rest
    if algo not in ("md5", "sha1", "sha256", "sha512"):
        raise RunnerError(f"unknown hash algorithm '{algo}'", reason="bad-hash")
    return recursive, algo


def _add_text_to_store(s: Session) -> None:
    name = s.reader.text()
    data = s.reader.data(MAX_TEXT)
    refs = s.reader.texts()
    s.start_work()
    info = importer.add_text(s.store, name, data, s.paths(refs))
    s.stop_work()
    s.writer.text(info.path)


def _read_nar_info(r: Reader, *, with_path: bool, path: str = "") -> tuple[NarInfo, int]:
    """The path metadata of add-to-store-nar / add-multiple-to-store (not checked yet)."""
    if with_path:
        path = r.text()
    deriver = r.text()
    nar_hash = r.text()
    refs = r.texts()
    registration_time = r.u64()
    nar_size = r.u64()
    r.u64()  # ultimate: a client's claim to have built it is not believed
    sigs = r.texts()
    ca = r.text()
    try:
        parsed_hash = Hash.parse(nar_hash, "sha256")
    except RunnerError as e:
        raise RunnerError(f"bad NAR hash for '{path}': {e.message}", reason="bad-hash") from None
    info = NarInfo(path=path, url="", nar_hash=parsed_hash, nar_size=nar_size,
                   references=frozenset(refs), deriver=deriver or None, sigs=tuple(sigs),
                   ca=ca or None)
    return info, registration_time


def _check_info(s: Session, info: NarInfo, check_sigs: bool) -> None:
    s.path(info.path)
    s.paths(info.references)
    if info.deriver:
        s.path(info.deriver)
    if check_sigs:
        importer.check_trust(info, s.store.store_dir, s.settings.get("trusted-public-keys"),
                             bool(s.settings.get("require-sigs")))


def _import(s: Session, info: NarInfo, registration_time: int, read: Callable[[int], bytes],
            repair: bool) -> None:
    importer.import_nar(s.store, info, read, registration_time=registration_time,
                        repair=repair)


def _add_to_store_nar(s: Session) -> None:
    path = s.reader.text()
    info, when = _read_nar_info(s.reader, with_path=False, path=path)
    repair = s.reader.flag()
    check_sigs = not (s.reader.flag() and s.peer.trusted)
    if s.minor >= 23:
        s.start_work()

        def consume(framed: FramedReader) -> None:
            if repair:
                s.require_trust("repair paths")
            _check_info(s, info, check_sigs)
            _import(s, info, when, framed.read, repair)

        _read_framed(s, consume)
        s.stop_work()
        return
    s.start_work()
    read = _TunnelRead(s).read if s.minor >= 21 else s.reader.exact
    try:
        if repair:
            s.require_trust("repair paths")
        _check_info(s, info, check_sigs)
        _import(s, info, when, read, repair)
    except RunnerError as e:
        if s.minor < 21 or e.reason == "bad-nar":
            # The NAR may be partly unread and is inline: the stream is out of step.
            raise ProtocolError(e.message) from None
        raise
    s.stop_work()


class _TunnelRead:
    """Minor 21-22: the daemon asks for NAR bytes with `STDERR_READ n`."""

    def __init__(self, s: Session) -> None:
        self._s = s

    def read(self, n: int) -> bytes:
        self._s.writer.u64(STDERR_READ).u64(n)
        self._s.writer.flush()
        data = self._s.reader.data(n)
        if not data:
            raise ProtocolError("unexpected end-of-file")
        return data


def _add_multiple_to_store(s: Session) -> None:
    repair = s.reader.flag()
    check_sigs = not (s.reader.flag() and s.peer.trusted)
    s.start_work()

    def consume(framed: FramedReader) -> None:
        if repair:
            s.require_trust("repair paths")
        inner = _FramedAsReader(framed)
        count = inner.u64()
        for _ in range(count):
            info, when = _read_nar_info(inner, with_path=True)
            _check_info(s, info, check_sigs)
            _import(s, info, when, inner.exact, repair)

    _read_framed(s, consume)
    s.stop_work()


class _FramedAsReader(Reader):
    """The protocol's field reading over a framed stream (add-multiple-to-store)."""

    def __init__(self, framed: FramedReader) -> None:
        self._framed = framed
        self._buf = bytearray()

    def _fill(self, want: int) -> None:
        while len(self._buf) < want:
            chunk = self._framed.read(want - len(self._buf))
            if not chunk:
                raise ProtocolError("unexpected end of the framed stream")
            self._buf += chunk


def _add_signatures(s: Session) -> None:
    text = s.reader.text()
    sigs = s.reader.texts()
    s.start_work()
    s.require_trust("add signatures")
    signatures.add(s.store, s.valid_info(s.path(text)).path, sigs)
    s.stop_work()
    s.writer.u64(1)


def _add_build_log(s: Session) -> None:
    s.reader.text()
    s.start_work()
    _read_framed(s, lambda framed: s.require_trust("add build logs"))
    raise RunnerError("runner's store keeps only the logs of its own builds",
                      reason="unsupported")


def _register_drv_output(s: Session) -> None:
    s.reader.text()
    if s.minor < 31:
        s.reader.text()
    s.start_work()
    raise RunnerError("content-addressed derivations are not supported", reason="unsupported")


# ------------------------------------------------------------ roots and GC


def _add_temp_root(s: Session) -> None:
    from runner.store.roots import add_temp_root

    text = s.reader.text()
    s.start_work()
    add_temp_root(s.store.state_dir, s.path(text))
    s.stop_work()
    s.writer.u64(1)


def _add_indirect_root(s: Session) -> None:
    from runner.store.roots import add_indirect_root, gc_lock

    link = s.reader.text()
    s.start_work()
    if not os.path.isabs(link):
        raise RunnerError(f"indirect root '{link}' is not an absolute path", reason="bad-root")
    with gc_lock(s.store.state_dir, exclusive=False):
        add_indirect_root(s.store.state_dir, link)
    s.stop_work()
    s.writer.u64(1)


def _sync_with_gc(s: Session) -> None:
    s.start_work()
    s.stop_work()
    s.writer.u64(1)


def _find_roots(s: Session) -> None:
    from runner.store.roots import find_roots, gc_lock, read_temp_roots

    s.start_work()
    with gc_lock(s.store.state_dir, exclusive=True):
        roots = find_roots(s.store.store_dir, s.store.state_dir)
        temp = read_temp_roots(s.store.state_dir)
    s.stop_work()
    pairs = sorted((link, path) for path, links in roots.items() for link in links)
    for path, owners in temp.items():
        pairs.extend(("{temp}" if not s.peer.trusted else f"{{{o}}}", path)
                     for o in sorted(owners))
    s.writer.u64(len(pairs))
    for link, path in pairs:
        s.writer.text(link).text(path)


def _collect_garbage(s: Session) -> None:
    from runner.store.gc import GCOptions, collect_garbage, delete_paths

    action = s.reader.num(3, "GC action")
    texts = s.reader.texts()
    ignore_liveness = s.reader.flag()
    max_freed = s.reader.u64()
    for _ in range(3):
        s.reader.u64()  # obsolete fields
    s.start_work()
    if ignore_liveness:
        raise RunnerError("you are not allowed to ignore liveness", reason="not-trusted")
    if action in (GC_DELETE_DEAD, GC_DELETE_SPECIFIC):
        s.require_trust("delete store paths")
    if action == GC_DELETE_SPECIFIC:
        result = delete_paths(s.store, s.paths(texts))
        paths = [*result.deleted, *result.leftovers]
    else:
        limit = None if max_freed == UINT64_MAX else max_freed
        result = collect_garbage(s.store, GCOptions(
            dry_run=action != GC_DELETE_DEAD, max_freed=limit))
        paths = result.deleted
        if action == GC_RETURN_LIVE:
            rows = s.store.db.execute("select path from ValidPaths").fetchall()
            paths = sorted({row[0] for row in rows} - set(result.deleted))
    s.stop_work()
    s.writer.texts(paths).u64(result.bytes_freed).u64(0)


# ------------------------------------------------------------ maintenance and options


def _optimise_store(s: Session) -> None:
    from runner.store.optimise import optimise_store

    s.start_work()
    s.log(optimise_store(s.store).summary())
    s.stop_work()
    s.writer.u64(1)


def _verify_store(s: Session) -> None:
    from runner.store.verify import verify_store

    check_contents = s.reader.flag()
    repair = s.reader.flag()
    s.start_work()
    if repair:
        s.require_trust("repair paths")
    rebuild = None
    if repair:
        from runner.build.repair import repair_paths

        def rebuild(paths: list[str]) -> list[str]:
            return repair_paths(s.store, paths, s.settings, warn=s.log)
    report = verify_store(s.store, check_contents=check_contents, repair=repair,
                          rebuild=rebuild)
    for line in report.problems:
        s.log(f"problem: {line}")
    s.stop_work()
    s.writer.flag(not report.ok)


def _set_options(s: Session) -> None:
    options = read_options(s.reader, s.minor)
    s.start_work()
    s.options = options
    s.settings = options.apply(s.settings, trusted=s.peer.trusted, warn=s.log)
    s.stop_work()


def _unsupported(name: str, read_args: Callable[[Reader], object]) -> Callable[[Session], None]:
    """An obsolete operation whose arguments are known: refused, the connection goes on."""
    def handler(s: Session) -> NoReturn:
        read_args(s.reader)
        s.start_work()
        raise RunnerError(f"operation '{name}' is obsolete and not supported by this daemon",
                          reason="unsupported")
    return handler


def _build_op(name: str) -> Callable[[Session], None]:
    def handler(s: Session) -> None:
        from runner.daemon import building

        getattr(building, name)(s)
    return handler


_HANDLERS: dict[int, Callable[[Session], None]] = {
    Op.IS_VALID_PATH: _is_valid_path,
    Op.HAS_SUBSTITUTES: _has_substitutes,
    Op.QUERY_PATH_HASH: _query_path_hash,
    Op.QUERY_REFERENCES: _path_set_query(lambda s, p: s.valid_info(p).references),
    Op.QUERY_REFERRERS: _path_set_query(lambda s, p: s.store.query_referrers(p)),
    Op.QUERY_VALID_DERIVERS: _path_set_query(lambda s, p: s.store.query_valid_derivers(p)),
    Op.QUERY_DERIVATION_OUTPUTS: _path_set_query(
        lambda s, p: _derivation_outputs(s, p).values()),
    Op.QUERY_DERIVATION_OUTPUT_NAMES: _path_set_query(lambda s, p: _derivation_outputs(s, p)),
    Op.QUERY_DERIVATION_OUTPUT_MAP: _query_derivation_output_map,
    Op.QUERY_DERIVER: _query_deriver,
    Op.QUERY_PATH_FROM_HASH_PART: _query_path_from_hash_part,
    Op.ADD_TO_STORE: _add_to_store,
    Op.ADD_TEXT_TO_STORE: _add_text_to_store,
    Op.ADD_TO_STORE_NAR: _add_to_store_nar,
    Op.ADD_MULTIPLE_TO_STORE: _add_multiple_to_store,
    Op.BUILD_PATHS: _build_op("build_paths"),
    Op.BUILD_PATHS_WITH_RESULTS: _build_op("build_paths_with_results"),
    Op.BUILD_DERIVATION: _build_op("build_derivation"),
    Op.ENSURE_PATH: _build_op("ensure_path"),
    Op.ADD_TEMP_ROOT: _add_temp_root,
    Op.ADD_INDIRECT_ROOT: _add_indirect_root,
    Op.SYNC_WITH_GC: _sync_with_gc,
    Op.FIND_ROOTS: _find_roots,
    Op.EXPORT_PATH: _unsupported("export-path", lambda r: (r.text(), r.u64())),
    Op.SET_OPTIONS: _set_options,
    Op.COLLECT_GARBAGE: _collect_garbage,
    Op.QUERY_SUBSTITUTABLE_PATH_INFO: _query_substitutable_path_info,
    Op.QUERY_ALL_VALID_PATHS: _query_all_valid_paths,
    Op.QUERY_FAILED_PATHS: _query_failed_paths,
    Op.CLEAR_FAILED_PATHS: _clear_failed_paths,
    Op.QUERY_PATH_INFO: _query_path_info,
    Op.QUERY_SUBSTITUTABLE_PATH_INFOS: _query_substitutable_path_infos,
    Op.QUERY_VALID_PATHS: _query_valid_paths,
    Op.QUERY_SUBSTITUTABLE_PATHS: _query_substitutable_paths,
    Op.OPTIMISE_STORE: _optimise_store,
    Op.VERIFY_STORE: _verify_store,
    Op.ADD_SIGNATURES: _add_signatures,
    Op.NAR_FROM_PATH: _nar_from_path,
    Op.QUERY_MISSING: _query_missing,
    Op.REGISTER_DRV_OUTPUT: _register_drv_output,
    Op.QUERY_REALISATION: _query_realisation,
    Op.ADD_BUILD_LOG: _add_build_log,
}
