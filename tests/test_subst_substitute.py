"""Substitution end to end: store A → cache (file and HTTP) → empty store B, and every way
a cache can lie or fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import nar
from runner.store.layout import STATE_MARKER
from runner.store.path_info import PathInfo
from runner.store.paths import hash_part, make_output_path
from runner.substituters import narinfo
from runner.substituters.base import Substituter, SubstituterDecl
from runner.substituters.configure import open_substituters, open_transport
from runner.substituters.serve import StoreSource
from runner.substituters.signing import SecretKey
from runner.substituters.substitute import (
    FAILED,
    NO_SUBSTITUTE,
    SUBSTITUTED,
    SubstituteResult,
    find_offer,
    substitute,
)
from runner.substituters.writer import copy_to_cache
from tests.subst_util import (
    TwoStores,
    closed_port,
    hung_server,
    make_output,
    nar_bytes,
    served,
    settings_for,
)

KEY = SecretKey.generate("team-cache-1")
PUB = KEY.public_key().to_string()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[TwoStores]:
    two = TwoStores(tmp_path / "s")
    yield two
    two.close()


def _closure(stores: TwoStores) -> tuple[str, str, str]:
    """A CA source, an output referring to it, and an output referring to both."""
    src_dir = stores.root / "src"
    src_dir.mkdir()
    (src_dir / "hello.txt").write_text("hello\n")
    src = stores.a.add_path(str(src_dir))
    lib = make_output(stores.a, "lib", "library", (src,))
    app = make_output(stores.a, "app", "application", (lib, src))
    return src, lib, app


def _fill(stores: TwoStores, paths: list[str], compression: str = "xz",
          key: SecretKey | None = KEY) -> str:
    cache = stores.root / f"cache-{compression}"
    copy_to_cache(stores.a, paths, open_transport(f"file://{cache}"), compression=compression,
                  sign_key=key)
    return f"file://{cache}"


def _subs(stores: TwoStores, *urls: str, warnings: list[str] | None = None,
          declared: tuple[SubstituterDecl, ...] = (), programs: tuple[str, ...] = (),
          **options: str) -> tuple[list[Substituter], Settings]:
    options.setdefault("trusted_public_keys", PUB)
    settings = settings_for(stores.store_dir, stores.state_b, substituters=" ".join(urls),
                            **options)
    warn = (warnings if warnings is not None else []).append
    return open_substituters(settings, declared, warn=warn, trusted_programs=programs), settings


def _run(stores: TwoStores, path: str, *urls: str, warnings: list[str] | None = None,
         declared: tuple[SubstituterDecl, ...] = (), programs: tuple[str, ...] = (),
         **options: str) -> SubstituteResult:
    b = stores.b or stores.fresh()
    subs, settings = _subs(stores, *urls, warnings=warnings, declared=declared,
                           programs=programs, **options)
    warn = (warnings if warnings is not None else []).append
    return substitute(b, path, subs, settings, warn=warn)


def _no_leftovers(stores: TwoStores) -> None:
    """Nothing but valid paths in the store dir: no temp dirs, no half-unpacked trees."""
    assert stores.b is not None
    for name in os.listdir(stores.store_dir):
        assert (name.endswith(".lock") or name == STATE_MARKER
                or stores.b.is_valid(f"{stores.store_dir}/{name}")), name


@pytest.mark.parametrize("compression", ["xz", "zstd", "none"])
def test_file_cache_round_trip_is_identical(stores: TwoStores, compression: str) -> None:
    src, lib, app = _closure(stores)
    url = _fill(stores, [app], compression)
    result = _run(stores, app, url)
    assert result.status == SUBSTITUTED and result.substituter == url
    assert result.substituted == (src, lib, app)  # references first
    assert stores.b is not None
    for path in (src, lib, app):
        assert nar_bytes(path) == nar_bytes(stores.old(path))
        info = stores.b.query_path_info(path)
        assert info is not None and info.references == stores.b.query_references(path)
    assert stores.b.query_references(app) == {lib, src}
    assert os.stat(os.path.join(app, "data")).st_mtime == 1
    assert _run(stores, app, url).status == "valid"


def test_http_cache_served_from_a_directory(stores: TwoStores) -> None:
    _, _, app = _closure(stores)
    url = _fill(stores, [app])
    with served(url[len("file://"):]) as http:
        result = _run(stores, app, http)
    assert result.status == SUBSTITUTED, result.describe()
    assert nar_bytes(app) == nar_bytes(stores.old(app))


def test_http_cache_served_from_a_store_signs_on_the_fly(stores: TwoStores) -> None:
    src, lib, app = _closure(stores)
    b = stores.fresh()
    source = StoreSource(stores.store_dir, str(stores.root / "state-a"), KEY,
                         real_dir=str(stores.root / "old-store"))
    with served(source) as http:
        text = open_transport(http).read(f"{hash_part(app)}.narinfo")
        assert text is not None and b"Sig: team-cache-1:" in text and b"Compression: none" in text
        assert open_transport(http).read(f"{'0' * 32}.narinfo") is None
        result = _run(stores, app, http)
    assert result.status == SUBSTITUTED, result.describe()
    assert result.substituted == (src, lib, app)
    for path in (src, lib, app):
        assert b.is_valid(path) and nar_bytes(path) == nar_bytes(stores.old(path))


def test_wrong_store_dir_is_skipped_with_a_warning(stores: TwoStores, tmp_path: Path) -> None:
    _, _, app = _closure(stores)
    url = _fill(stores, [app])
    Path(url[7:], "nix-cache-info").write_text("StoreDir: /nix/store\n")
    warnings: list[str] = []
    result = _run(stores, app, url, warnings=warnings)
    assert result.status == NO_SUBSTITUTE
    assert len(warnings) == 1 and "/nix/store" in warnings[0] and url in warnings[0]


def _narinfo_path(url: str, path: str) -> Path:
    return Path(url[len("file://"):], f"{hash_part(path)}.narinfo")


def _rewrite(url: str, path: str, sign: SecretKey | None, **changes: object) -> None:
    p = _narinfo_path(url, path)
    info = narinfo.parse(p.read_text(), os.path.dirname(path), "t")
    info = narinfo.NarInfo(**{**info.__dict__, "sigs": (), **changes})
    if sign is not None:
        info = info.signed(sign)
    p.write_text(info.to_text())


def test_tampered_nar_is_rejected(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib], "none")
    nar_file = Path(url[7:], narinfo.parse(_narinfo_path(url, lib).read_text(),
                                           stores.store_dir, "t").url)
    data = nar_file.read_bytes().replace(b"library", b"LIBRARY")
    nar_file.chmod(0o644)
    nar_file.write_bytes(data)
    _rewrite(url, lib, KEY, file_hash=None, file_size=None)  # only the NAR hash can tell
    result = _run(stores, lib, url)
    assert result.status == FAILED
    assert [r.reason for r in result.rejections] == ["hash-mismatch"]
    assert url in result.describe() and lib in result.describe()
    _no_leftovers(stores)


def test_tampered_compressed_file_is_rejected(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib], "xz")
    info = narinfo.parse(_narinfo_path(url, lib).read_text(), stores.store_dir, "t")
    nar_file = Path(url[7:], info.url)
    nar_file.chmod(0o644)
    data = bytearray(nar_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    nar_file.write_bytes(bytes(data))
    result = _run(stores, lib, url)
    assert result.status == FAILED
    assert result.rejections[0].reason in ("bad-nar", "hash-mismatch")
    _no_leftovers(stores)


def test_wrong_nar_hash_is_rejected_even_when_signed(stores: TwoStores) -> None:
    src, lib, _ = _closure(stores)
    url = _fill(stores, [lib])
    other = stores.a.query_path_info(src)
    assert other is not None
    _rewrite(url, lib, KEY, nar_hash=other.nar_hash)
    result = _run(stores, lib, url)
    assert [r.reason for r in result.rejections] == ["hash-mismatch"]
    assert "NAR hash mismatch" in result.describe()
    assert stores.b is not None and not stores.b.is_valid(lib)


def test_unsigned_path_is_rejected_before_download(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib], key=None)
    for nar_file in Path(url[7:], "nar").iterdir():
        nar_file.unlink()  # never fetched: trust is checked first
    result = _run(stores, lib, url)
    assert [r.reason for r in result.rejections] == ["unsigned"]
    assert "not signed" in result.describe() and url in result.describe()


def test_bad_signature_is_rejected(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib])
    text = _narinfo_path(url, lib).read_text()
    info = narinfo.parse(text, stores.store_dir, "t")
    forged = narinfo.NarInfo(**{**info.__dict__, "nar_size": info.nar_size + 1}).signed(KEY)
    _narinfo_path(url, lib).write_text(
        narinfo.NarInfo(**{**info.__dict__, "sigs": forged.sigs}).to_text())
    result = _run(stores, lib, url)
    assert [r.reason for r in result.rejections] == ["bad-signature"]


def test_untrusted_key_is_rejected(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib], key=SecretKey.generate("someone-else"))
    result = _run(stores, lib, url)
    assert [r.reason for r in result.rejections] == ["untrusted-key"]
    assert "'someone-else'" in result.describe()
    assert _run(stores, lib, url, require_sigs="false").status == SUBSTITUTED


def test_trusted_url_parameter_skips_signatures(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    url = _fill(stores, [lib], key=None)
    assert _run(stores, lib, url + "?trusted=1").status == SUBSTITUTED


def test_spec_declared_keys_need_the_users_trust(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    other = SecretKey.generate("spec-cache-1")
    url = _fill(stores, [lib], key=other)
    warnings: list[str] = []
    decl = SubstituterDecl(url=url, trusted_public_keys=(other.public_key().to_string(),),
                           origin="spec.yaml:3:5")
    result = _run(stores, lib, warnings=warnings, declared=(decl,))
    assert [r.reason for r in result.rejections] == ["untrusted-key"]
    assert any("spec.yaml:3:5" in w and "spec-cache-1" in w for w in warnings)
    both = f"{PUB} {other.public_key().to_string()}"
    assert _run(stores, lib, declared=(decl,), trusted_public_keys=both).status == SUBSTITUTED


def test_content_addressed_paths_need_no_signature(stores: TwoStores) -> None:
    src, lib, _ = _closure(stores)
    url = _fill(stores, [src, lib], key=None)
    assert _run(stores, src, url).status == SUBSTITUTED
    # A CA field that does not compute the path vouches for nothing.
    result = _run(stores, lib, url)
    assert [r.reason for r in result.rejections] == ["unsigned"]
    _rewrite(url, lib, None, ca=narinfo.parse(_narinfo_path(url, src).read_text(),
                                              stores.store_dir, "t").ca)
    assert [r.reason for r in _run(stores, lib, url).rejections] == ["unsigned"]


def test_next_cache_is_tried_after_a_rejection(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    bad = _fill(stores, [lib], "zstd", key=SecretKey.generate("evil"))
    good = _fill(stores, [lib], "xz")
    result = _run(stores, lib, bad, good)
    assert result.status == SUBSTITUTED and result.substituter == good
    assert [r.reason for r in result.rejections] == ["untrusted-key"]


def test_dry_run_offer_and_substitution_choose_alike(stores: TwoStores) -> None:
    """`find_offer` (--dry-run) and `substitute` walk the same offers: an untrusted one and
    an unreadable narinfo are passed over by both, for the same cache."""
    _, lib, _ = _closure(stores)
    untrusted = _fill(stores, [lib], "zstd", key=SecretKey.generate("evil"))
    unreadable = _fill(stores, [lib], "none")
    _narinfo_path(unreadable, lib).write_text("StorePath: nonsense\n")
    good = _fill(stores, [lib], "xz")
    b = stores.fresh()
    subs, settings = _subs(stores, untrusted, unreadable, good)
    offer = find_offer(b, lib, subs, settings)
    assert offer is not None and offer.compression == "xz"
    result = substitute(b, lib, subs, settings)
    assert result.substituter == good
    assert [r.reason for r in result.rejections] == ["untrusted-key", "bad-narinfo"]


def test_missing_reference_gives_incomplete_closure(stores: TwoStores) -> None:
    src, lib, app = _closure(stores)
    url = _fill(stores, [app])
    _narinfo_path(url, src).unlink()
    result = _run(stores, app, url)
    assert result.status == "incomplete-closure"
    assert stores.b is not None and not stores.b.is_valid(app) and not stores.b.is_valid(lib)


def test_down_and_hung_caches_are_skipped(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    good = _fill(stores, [lib])
    down = f"http://127.0.0.1:{closed_port()}?retries=0"
    warnings: list[str] = []
    with hung_server() as hung:
        slow = hung + "?timeout=0.2&retries=0"
        b = stores.fresh()
        subs, settings = _subs(stores, down, slow, good, warnings=warnings)
        result = substitute(b, lib, subs, settings, warn=warnings.append)
        assert result.status == SUBSTITUTED and result.substituter == good
        assert len(warnings) == 2 and "timed out" in warnings[1]
        # Reported once: later lookups skip them silently.
        absent = f"{stores.store_dir}/{'0' * 32}-absent"
        assert substitute(b, absent, subs, settings,
                          warn=warnings.append).status == NO_SUBSTITUTE
        assert len(warnings) == 2
        subs, settings = _subs(stores, slow, good, substituter_errors="fail")
        with pytest.raises(RunnerError) as e:
            substitute(b, absent, subs, settings)
        assert e.value.reason == "substituter-down" and hung in e.value.message


def test_negative_lookups_are_remembered_for_http(stores: TwoStores) -> None:
    _, lib, app = _closure(stores)
    url = _fill(stores, [lib], "xz")
    later = _fill(stores, [app], "zstd")
    with served(url[7:]) as http:
        assert _run(stores, app, http).status == NO_SUBSTITUTE
        shutil.copytree(later[7:], url[7:], dirs_exist_ok=True)
        assert _run(stores, app, http).status == NO_SUBSTITUTE  # remembered
        assert _run(stores, app, http, narinfo_cache_negative_ttl="0").status == SUBSTITUTED


PROGRAM = """\
import json, shutil, sys, os
root, action, path = sys.argv[1], sys.argv[2], sys.argv[3]
base = os.path.join(root, os.path.basename(path))
if os.path.exists(os.path.join(root, "broken")):
    print("the backend is on fire", file=sys.stderr)
    sys.exit(3)
if action == "query":
    if not os.path.exists(base + ".json"):
        sys.exit(1)
    print(open(base + ".json").read())
elif action == "fetch":
    shutil.copyfile(base + ".nar", sys.argv[4])
"""


def _program(stores: TwoStores, paths: tuple[str, ...]) -> SubstituterDecl:
    root = stores.root / "prog-data"
    root.mkdir()
    (stores.root / "prog.py").write_text(PROGRAM)
    for path in paths:
        info = stores.a.query_path_info(path)
        assert info is not None
        signed = narinfo.NarInfo(path=path, url="", nar_hash=info.nar_hash,
                                 nar_size=info.nar_size, references=info.references).signed(KEY)
        doc = {"narHash": str(info.nar_hash), "narSize": info.nar_size,
               "references": sorted(info.references), "deriver": None, "sigs": list(signed.sigs)}
        (root / f"{os.path.basename(path)}.json").write_text(json.dumps(doc))
        (root / f"{os.path.basename(path)}.nar").write_bytes(nar_bytes(path))
    return SubstituterDecl(command=(sys.executable, str(stores.root / "prog.py"), str(root)),
                           origin="spec.yaml:9:5")


def test_substituter_program(stores: TwoStores) -> None:
    src, lib, app = _closure(stores)
    decl = _program(stores, (src, lib, app))
    result = _run(stores, app, declared=(decl,), programs=(sys.executable,))
    assert result.status == SUBSTITUTED, result.describe()
    assert result.substituted == (src, lib, app)
    assert nar_bytes(app) == nar_bytes(stores.old(app))


def test_substituter_program_is_verified_like_a_cache(stores: TwoStores) -> None:
    src, lib, _ = _closure(stores)
    decl = _program(stores, (src, lib))
    nar_file = stores.root / "prog-data" / f"{os.path.basename(lib)}.nar"
    nar_file.write_bytes(nar_file.read_bytes().replace(b"library", b"LIBRARY"))
    result = _run(stores, lib, declared=(decl,), programs=(sys.executable,))
    assert [r.reason for r in result.rejections] == ["hash-mismatch"]
    assert decl.label in result.describe()
    (stores.root / "prog-data" / "broken").write_text("")
    warnings: list[str] = []
    assert _run(stores, lib, declared=(decl,), warnings=warnings,
                programs=(sys.executable,)).status == NO_SUBSTITUTE
    assert len(warnings) == 1 and "on fire" in warnings[0]


def _marked_program(stores: TwoStores) -> tuple[Path, Path]:
    """An executable that leaves a mark whenever it is run (and has nothing)."""
    mark = stores.root / "ran"
    prog = stores.root / "bin" / "fetch-artifact"
    prog.parent.mkdir()
    prog.write_text(f"#!/bin/sh\necho \"$@\" >> '{mark}'\nexit 1\n")
    prog.chmod(0o755)
    return prog, mark


def test_spec_declared_program_does_not_run_unless_the_user_trusts_it(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    prog, mark = _marked_program(stores)
    decl = SubstituterDecl(command=(str(prog), "--bucket", "b"), origin="spec.yaml:3:5")
    b = stores.fresh()
    warnings: list[str] = []
    subs, settings = _subs(stores, declared=(decl,), warnings=warnings)
    assert subs == []
    assert warnings == [f"ignoring substituter program '{prog}' declared in spec.yaml:3:5: "
                        "not in trusted-substituter-commands"]
    assert substitute(b, lib, subs, settings).status == NO_SUBSTITUTE
    assert find_offer(b, lib, subs, settings) is None  # what --dry-run asks
    assert not mark.exists()
    # Listed (here through a symlink to it: paths are compared resolved), it runs.
    alias = stores.root / "alias"
    alias.symlink_to(prog)
    subs, settings = _subs(stores, declared=(decl,), programs=(str(alias),))
    assert find_offer(b, lib, subs, settings) is None
    assert mark.read_text() == f"--bucket b query {lib}\n"
    # The user's own declarations need no allow-list.
    mark.unlink()
    own = SubstituterDecl(command=(str(prog),))
    subs, settings = _subs(stores, declared=(own,))
    assert substitute(b, lib, subs, settings).status == NO_SUBSTITUTE
    assert mark.read_text() == f"query {lib}\n"


def test_trusted_substituter_commands_setting(stores: TwoStores) -> None:
    _, lib, _ = _closure(stores)
    prog, mark = _marked_program(stores)
    decl = SubstituterDecl(command=(str(prog),), origin="spec.yaml:3:5")
    b = stores.fresh()
    settings = settings_for(stores.store_dir, stores.state_b,
                            trusted_substituter_commands=str(prog))
    assert len(open_substituters(settings, (decl,))) == 1
    assert substitute(b, lib, open_substituters(settings, (decl,)),
                      settings).status == NO_SUBSTITUTE
    assert mark.exists()


def test_caches_are_asked_by_priority(stores: TwoStores) -> None:
    _, lib, app = _closure(stores)
    first = _fill(stores, [app], "zstd")
    second = _fill(stores, [app], "xz")
    Path(second[7:], "nix-cache-info").write_text(f"StoreDir: {stores.store_dir}\n"
                                                  "Priority: 10\n")
    assert _run(stores, lib, first, second).substituter == second
    # Equal priorities keep the declared order; ?priority= overrides the cache's own.
    assert _run(stores, app, f"{first}?priority=10", second).substituter == first


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999/", "http://cache:80x/",
                                 "http://h:abc/", "file://[x/y"])
def test_malformed_urls_are_one_line_errors(stores: TwoStores, url: str) -> None:
    with pytest.raises(RunnerError) as e:
        _subs(stores, url)
    assert e.value.reason == "bad-url"
    assert e.value.message.startswith(f"setting 'substituters': store URL '{url}' is malformed")
    with pytest.raises(RunnerError) as e:
        _subs(stores, declared=(SubstituterDecl(url=url, origin="spec.yaml:4:9"),))
    assert e.value.message.startswith(f"spec.yaml:4:9: store URL '{url}'")
    assert "\n" not in e.value.message


UPLOAD = r"""
import os, resource, sys
from runner.substituters.configure import open_transport
from tests.subst_util import served
root, mib = sys.argv[1], int(sys.argv[2])
block = os.urandom(1 << 20)
with served(root, writable=True) as http:
    transport = open_transport(http)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    transport.write("nar/" + "1" * 52 + ".nar", (block for _ in range(mib)))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_http_upload_is_streamed(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    proc = subprocess.run([sys.executable, "-c", UPLOAD, str(tmp_path / "cache"), "96"],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent.parent)
    assert int(proc.stdout) < 32, f"RSS grew by {proc.stdout.strip()} MiB for a 96 MiB upload"
    assert (tmp_path / "cache" / "nar" / f"{'1' * 52}.nar").stat().st_size == 96 << 20


def test_nar_that_fails_mid_stream_is_a_broken_transfer(stores: TwoStores) -> None:
    path = make_output_path("out", bytes(32), "half", stores.store_dir)
    os.makedirs(path)
    Path(path, "big").write_bytes(os.urandom(1 << 20))  # sent before "fifo" fails
    Path(path, "fifo").write_text("")
    nar_hash, nar_size = nar.hash_path(path)
    info = PathInfo(path, nar_hash, nar_size, frozenset())
    stores.a.register_valid_paths([info])
    os.unlink(Path(path, "fifo"))
    os.mkfifo(Path(path, "fifo"))  # now the NAR cannot be made past "big"
    source = StoreSource(stores.store_dir, str(stores.root / "state-a"))
    with served(source) as http:
        port = int(http.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            url = f"/nar/{hash_part(path)}-{info.nar_hash.base32()}.nar"
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = b""
            while data := sock.recv(1 << 16):  # the server must close the connection
                received += data
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {info.nar_size}".encode() in head
    assert 1 << 20 < len(body) < info.nar_size
    assert b"HTTP/1.1 500" not in body and b"unsupported type" not in body
