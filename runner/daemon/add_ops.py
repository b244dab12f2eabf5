"""Operations that add paths: NARs with metadata (checked for trust), content-addressed data,
signatures."""

from __future__ import annotations

from collections.abc import Callable

from runner.daemon import importer, signatures
from runner.daemon.protocol import (
    STDERR_READ,
    Op,
)
from runner.daemon.session import Session
from runner.daemon.wire import MAX_TEXT, FramedReader, ProtocolError, Reader
from runner.errors import RunnerError
from runner.reasons import Reason
from runner.store.hashes import Hash
from runner.store.path_info import PathInfo
from runner.substituters.narinfo import NarInfo


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
        if e.reason == Reason.BAD_NAR:  # the stream is out of step: end the connection
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
        importer.check_trust(info, s.store.store_dir, s.settings.strings("trusted-public-keys"),
                             s.settings.flag("require-sigs"))


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
        if s.minor < 21 or e.reason == Reason.BAD_NAR:
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


HANDLERS: dict[int, Callable[[Session], None]] = {
    Op.ADD_TO_STORE: _add_to_store,
    Op.ADD_TEXT_TO_STORE: _add_text_to_store,
    Op.ADD_TO_STORE_NAR: _add_to_store_nar,
    Op.ADD_MULTIPLE_TO_STORE: _add_multiple_to_store,
    Op.ADD_SIGNATURES: _add_signatures,
    Op.REGISTER_DRV_OUTPUT: _register_drv_output,
    Op.ADD_BUILD_LOG: _add_build_log,
}
