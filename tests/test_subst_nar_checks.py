"""What a cache sends must be exactly what its narinfo claims: no bytes after the NAR,
no tree the store cannot hold, and only hashes computed from what was written."""

from __future__ import annotations

import bz2
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.hashes import Hash
from runner.store.layout import STATE_MARKER
from runner.store.paths import hash_part, make_output_path
from runner.substituters.compression import compress
from runner.substituters.configure import open_substituters
from runner.substituters.narinfo import NarInfo, nar_url
from runner.substituters.signing import SecretKey
from runner.substituters.substitute import FAILED, SUBSTITUTED, substitute
from tests.subst_util import TwoStores, served, settings_for
from tests.test_nar import chain_nar

KEY = SecretKey.generate("team-cache-1")
PUB = KEY.public_key().to_string()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[TwoStores]:
    two = TwoStores(tmp_path / "s")
    yield two
    two.close()


def _compressed(data: bytes, compression: str) -> bytes:
    if compression == "bzip2":
        return bz2.compress(data)
    return b"".join(compress([data], compression))


def publish(cache: Path, path: str, sent: bytes, compression: str, claimed: bytes) -> None:
    """A signed narinfo for `path` whose NarHash/NarSize are those of `claimed`, pointing
    to `sent` (compressed); FileHash and FileSize are honest."""
    raw = _compressed(sent, compression)
    file_hash = Hash("sha256", hashlib.sha256(raw).digest())
    info = NarInfo(path=path, url=nar_url(file_hash, compression),
                   nar_hash=Hash("sha256", hashlib.sha256(claimed).digest()),
                   nar_size=len(claimed), compression=compression, file_hash=file_hash,
                   file_size=len(raw)).signed(KEY)
    (cache / "nar").mkdir(parents=True, exist_ok=True)
    (cache / info.url).write_bytes(raw)
    (cache / f"{hash_part(path)}.narinfo").write_text(info.to_text())
    (cache / "nix-cache-info").write_text(f"StoreDir: {os.path.dirname(path)}\n")


def _substitute(stores: TwoStores, path: str, url: str) -> tuple[str, list[str]]:
    b = stores.b or stores.fresh()
    settings = settings_for(stores.store_dir, stores.state_b, substituters=url,
                            trusted_public_keys=PUB)
    result = substitute(b, path, open_substituters(settings), settings, warn=lambda m: None)
    return result.status, [r.reason for r in result.rejections]


def _leftovers(stores: TwoStores) -> list[str]:
    assert stores.b is not None
    return [n for n in os.listdir(stores.store_dir) if not n.endswith(".lock")
            and n != STATE_MARKER and not stores.b.is_valid(f"{stores.store_dir}/{n}")]


NAR = chain_nar(3, leaf=b"the real contents")


@pytest.mark.parametrize("over_http", [False, True], ids=["file", "http"])
@pytest.mark.parametrize("compression", ["none", "xz", "zstd", "bzip2"])
def test_bytes_after_the_nar_are_refused(stores: TwoStores, tmp_path: Path,
                                         compression: str, over_http: bool) -> None:
    path = make_output_path("out", bytes(32), "trailing", stores.store_dir)
    cache = tmp_path / "cache"
    sent = NAR + b"\0" * 8 + b"junk after the archive"
    publish(cache, path, sent, compression, claimed=sent)  # NarHash covers the junk
    stores.fresh()
    if over_http:
        with served(str(cache)) as url:
            status, reasons = _substitute(stores, path, url)
    else:
        status, reasons = _substitute(stores, path, f"file://{cache}")
    assert (status, reasons) == (FAILED, ["bad-nar"])
    assert _leftovers(stores) == []


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_exact_nar_is_accepted_and_registered_with_its_own_hash(
        stores: TwoStores, tmp_path: Path, compression: str) -> None:
    """The control: the same cache without the junk delivers, and what is registered is
    the hash of the tree as written."""
    path = make_output_path("out", bytes(32), "trailing", stores.store_dir)
    publish(tmp_path / "cache", path, NAR, compression, claimed=NAR)
    status, _ = _substitute(stores, path, f"file://{tmp_path / 'cache'}")
    assert status == SUBSTITUTED
    assert stores.b is not None
    info = stores.b.query_path_info(path)
    assert info is not None and info.nar_size == len(NAR)
    assert info.nar_hash.digest == hashlib.sha256(NAR).digest()
    assert Path(path, "d", "d", "d", "f").read_bytes() == b"the real contents"


def test_nar_deeper_than_the_store_can_hold_is_refused_cleanly(
        stores: TwoStores, tmp_path: Path) -> None:
    path = make_output_path("out", bytes(32), "deep", stores.store_dir)
    deep = chain_nar(2600)  # paths past PATH_MAX once unpacked
    publish(tmp_path / "cache", path, deep, "zstd", claimed=deep)
    status, reasons = _substitute(stores, path, f"file://{tmp_path / 'cache'}")
    assert (status, reasons) == (FAILED, ["path-too-long"])
    assert _leftovers(stores) == []  # no `.tmp-*` dir, no half tree


def test_deep_nar_with_a_wrong_hash_leaves_nothing(stores: TwoStores, tmp_path: Path) -> None:
    """Rejected after unpacking (a tree deeper than the recursion limit): still cleaned."""
    path = make_output_path("out", bytes(32), "deep", stores.store_dir)
    deep = chain_nar(1100)
    publish(tmp_path / "cache", path, deep, "none", claimed=chain_nar(1100, leaf=b"other"))
    status, reasons = _substitute(stores, path, f"file://{tmp_path / 'cache'}")
    assert (status, reasons) == (FAILED, ["hash-mismatch"])
    assert _leftovers(stores) == []
