"""Read-only operations: validity, path info, references, derivations, NARs, substitutes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from runner.daemon import substitution
from runner.daemon.protocol import Op
from runner.daemon.session import Session
from runner.store import nar
from runner.substituters.narinfo import NarInfo


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


HANDLERS: dict[int, Callable[[Session], None]] = {
    Op.IS_VALID_PATH: _is_valid_path,
    Op.HAS_SUBSTITUTES: _has_substitutes,
    Op.QUERY_PATH_HASH: _query_path_hash,
    Op.QUERY_REFERENCES: _path_set_query(lambda s, p: s.valid_info(p).references),
    Op.QUERY_REFERRERS: _path_set_query(lambda s, p: s.store.query_referrers(p)),
    Op.QUERY_VALID_DERIVERS: _path_set_query(lambda s, p: s.store.query_valid_derivers(p)),
    Op.QUERY_DERIVATION_OUTPUTS: _path_set_query( lambda s, p: _derivation_outputs(s, p).values()),
    Op.QUERY_DERIVATION_OUTPUT_NAMES: _path_set_query(lambda s, p: _derivation_outputs(s, p)),
    Op.QUERY_DERIVATION_OUTPUT_MAP: _query_derivation_output_map,
    Op.QUERY_DERIVER: _query_deriver,
    Op.QUERY_PATH_FROM_HASH_PART: _query_path_from_hash_part,
    Op.QUERY_SUBSTITUTABLE_PATH_INFO: _query_substitutable_path_info,
    Op.QUERY_ALL_VALID_PATHS: _query_all_valid_paths,
    Op.QUERY_FAILED_PATHS: _query_failed_paths,
    Op.CLEAR_FAILED_PATHS: _clear_failed_paths,
    Op.QUERY_PATH_INFO: _query_path_info,
    Op.QUERY_SUBSTITUTABLE_PATH_INFOS: _query_substitutable_path_infos,
    Op.QUERY_VALID_PATHS: _query_valid_paths,
    Op.QUERY_SUBSTITUTABLE_PATHS: _query_substitutable_paths,
    Op.NAR_FROM_PATH: _nar_from_path,
    Op.QUERY_MISSING: _query_missing,
    Op.QUERY_REALISATION: _query_realisation,
}
