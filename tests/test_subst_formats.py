"""Binary cache formats: narinfo, nix-cache-info, keys and signatures, compression."""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import subprocess
import sys

import pytest
import zstandard

from runner.errors import RunnerError
from runner.store.hashes import Hash
from runner.substituters import cache_info, narinfo
from runner.substituters.compression import DecompressingReader, compress
from runner.substituters.signing import (
    PublicKey,
    SecretKey,
    count_valid_signatures,
)

SD = "/nix/store"
# Written by Nix 2.8 (`nix copy --to file://…?secret-key=…`), key k1 below.
NIX_NARINFO = (
    """\
StorePath: /tmp/nx/store/n0vn7ywq3ik5hj4n6kaf6l2h9npl6gr2-f
URL: nar/09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d.nar.xz
Compression: xz
FileHash: sha256:09kxyd68d2nylk7ims23pj3i09s4nnv9p3dv6iij1q9canv42w6d
FileSize: 124
NarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
NarSize: 120
References: {empty}
Sig: k1:+8hZioXK6Y/n9E7DAK/6v0b59qzJZyDme38GCXOvYmNioWhJ/5OGzsMEG39qlZaBtrpjHZ0PtIvZmAxYobciBg==
CA: fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
"""
).format(empty="")
NIX_PUBLIC_KEY = "k1:Hx1clTNANGgh69G69C6koAnmXC0vTRsMZ+bu/6uz+LY="
P1 = f"{SD}/7rjj86a15146cq1d3qy068lml7n8ykzm-hello"
P2 = f"{SD}/ax5fj6rw2hbdjbhdkmj8dwm6w5r1hvaq-lib"
DRV = f"{SD}/g7ab7pkwjdlfq8rklkw0pmgd4r8b4c2v-hello.drv"


def _info(**changes: object) -> narinfo.NarInfo:
    base = narinfo.NarInfo(
        path=P1, url="nar/x.nar.xz", compression="xz",
        file_hash=Hash("sha256", bytes(32)), file_size=10,
        nar_hash=Hash("sha256", bytes(range(32))), nar_size=1234,
        references=frozenset({P1, P2}), deriver=DRV, ca=None)
    return narinfo.NarInfo(**{**base.__dict__, **changes})


def test_nix_narinfo_round_trips_byte_for_byte() -> None:
    info = narinfo.parse(NIX_NARINFO, "/tmp/nx/store", "test")
    assert info.nar_size == 120 and info.compression == "xz" and info.references == frozenset()
    assert info.ca is not None and info.ca.startswith("fixed:r:sha256:")
    assert info.to_text() == NIX_NARINFO


def test_nix_signature_verifies_with_our_fingerprint() -> None:
    info = narinfo.parse(NIX_NARINFO, "/tmp/nx/store", "test")
    keys = {"k1": PublicKey.parse(NIX_PUBLIC_KEY)}
    assert count_valid_signatures(info.fingerprint(), info.sigs, keys) == 1
    tampered = narinfo.NarInfo(**{**info.__dict__, "nar_size": 121})
    assert count_valid_signatures(tampered.fingerprint(), info.sigs, keys) == 0


def test_print_and_parse_with_references_and_deriver() -> None:
    key = SecretKey.generate("cache-1")
    info = _info().signed(key)
    text = info.to_text()
    refs = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello ax5fj6rw2hbdjbhdkmj8dwm6w5r1hvaq-lib"
    assert f"References: {refs}\n" in text
    assert "Deriver: g7ab7pkwjdlfq8rklkw0pmgd4r8b4c2v-hello.drv\n" in text
    assert narinfo.parse(text, SD, "t") == info
    assert info.fingerprint() == (
        f"1;{P1};sha256:{Hash('sha256', bytes(range(32))).base32()};1234;{P1},{P2}")


def test_signing_again_replaces_the_keys_old_signature() -> None:
    key = SecretKey.generate("cache-1")
    other = SecretKey.generate("other")
    info = _info().signed(key).signed(other).signed(key)
    assert len(info.sigs) == 2
    keys = {k.name: k.public_key() for k in (key, other)}
    assert count_valid_signatures(info.fingerprint(), info.sigs, keys) == 2


@pytest.mark.parametrize("text", [
    "",
    "StorePath: /nix/store/bad\nURL: u\nNarHash: sha256:" + "0" * 52 + "\nNarSize: 1\n",
    f"StorePath: {P1}\nNarHash: sha256:{'0' * 52}\nNarSize: 1\n",
    f"StorePath: {P1}\nURL: u\nNarHash: sha256:zz\nNarSize: 1\n",
    f"StorePath: {P1}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: -1\n",
    f"StorePath: {P1}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: 0\n",
    f"StorePath: {P1}\nURL: /etc/passwd\nNarHash: sha256:{'0' * 52}\nNarSize: 1\n",
    f"StorePath: {P1}\nURL: ../x\nNarHash: sha256:{'0' * 52}\nNarSize: 1\n",
    f"StorePath: {P1}\nURL: u\nCompression: br\nNarHash: sha256:{'0' * 52}\nNarSize: 1\n",
    f"StorePath: {P1}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: 1\nReferences: ../x\n",
    f"StorePath: {P1}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: 1\nNarSize: 2\n",
    f"StorePath: /other/store/{P1[11:]}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: 1\n",
    "garbage without colon\n",
])
def test_corrupt_narinfo_is_a_clear_error(text: str) -> None:
    with pytest.raises(RunnerError) as e:
        narinfo.parse(text, SD, "http://cache/x.narinfo")
    assert e.value.reason == "bad-narinfo"
    assert "http://cache/x.narinfo" in e.value.message


def test_missing_compression_means_bzip2_and_unknown_keys_are_ignored() -> None:
    text = f"StorePath: {P1}\nURL: u\nNarHash: sha256:{'0' * 52}\nNarSize: 1\nSystem: x\n"
    info = narinfo.parse(text, SD, "t")
    assert info.compression == "bzip2" and info.references == frozenset()


def test_cache_info() -> None:
    info = cache_info.parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n", "t")
    assert info == cache_info.CacheInfo("/nix/store", True, 40)
    assert cache_info.parse(info.to_text(), "t") == info
    assert cache_info.parse("StoreDir: /x/store", "t").priority == cache_info.DEFAULT_PRIORITY
    for bad in ("", "StoreDir: relative\n", "StoreDir: /s\nPriority: high\n"):
        with pytest.raises(RunnerError) as e:
            cache_info.parse(bad, "t")
        assert e.value.reason == "bad-cache-info"


def test_keys_round_trip_and_sign() -> None:
    key = SecretKey.generate("cache.example.org-1")
    assert SecretKey.parse(key.to_string()) == key
    public = PublicKey.parse(key.public_key().to_string())
    sig = key.sign("hello")
    name, _, _ = sig.partition(":")
    assert name == "cache.example.org-1"
    assert count_valid_signatures("hello", [sig], {name: public}) == 1
    assert count_valid_signatures("hellO", [sig], {name: public}) == 0
    assert count_valid_signatures("hello", ["cache.example.org-1:AAAA", "junk", ""],
                                  {name: public}) == 0


@pytest.mark.parametrize("text", [
    "", "nocolon", ":AAAA", "k:not base64!", "k:" + "A" * 44,
    "k:" + "A" * 88,  # 64 bytes whose halves do not match
])
def test_bad_secret_keys(text: str) -> None:
    with pytest.raises(RunnerError) as e:
        SecretKey.parse(text)
    assert e.value.reason == "bad-key"


@pytest.mark.parametrize("text", ["", "k:", "k:AAAA", "k:***"])
def test_bad_public_keys(text: str) -> None:
    with pytest.raises(RunnerError) as e:
        PublicKey.parse(text)
    assert e.value.reason == "bad-key"


def test_key_file_errors_name_the_file() -> None:
    with pytest.raises(RunnerError) as e:
        SecretKey.load("/nonexistent/key")
    assert e.value.reason == "bad-key" and "/nonexistent/key" in e.value.message


DATA = b"".join(hashlib.sha256(str(i % 300).encode()).digest() for i in range(8000))


@pytest.mark.parametrize("compression", ["none", "xz", "zstd"])
def test_compression_round_trip(compression: str) -> None:
    packed = b"".join(compress(iter([DATA[:1000], DATA[1000:]]), compression))
    raw = io.BytesIO(packed)
    reader = DecompressingReader(raw.read, compression, len(DATA))
    out = b"".join(iter(lambda: reader.read(7777), b""))
    assert out == DATA


@pytest.mark.parametrize("compression, packer", [
    ("xz", lzma.compress), ("zstd", zstandard.ZstdCompressor().compress), ("bzip2", bz2.compress),
])
def test_foreign_compressed_streams(compression: str, packer: object) -> None:
    packed = packer(DATA)  # type: ignore[operator]
    reader = DecompressingReader(io.BytesIO(packed).read, compression, len(DATA))
    assert reader.read(len(DATA) + 10) == DATA


@pytest.mark.parametrize("compression", ["xz", "zstd"])
def test_truncated_corrupt_or_oversized_streams_are_rejected(compression: str) -> None:
    packed = b"".join(compress(iter([DATA]), compression))
    cases = [
        (packed[: len(packed) // 2], len(DATA)),
        (packed[:20] + bytes(200) + packed[220:], len(DATA)),
        (packed, len(DATA) - 1),
    ]
    for data, limit in cases:
        reader = DecompressingReader(io.BytesIO(data).read, compression, limit)
        with pytest.raises(RunnerError) as e:
            while reader.read(65536):
                pass
        assert e.value.reason == "bad-nar"


BOMB = r"""
import bz2, lzma, resource, sys, zstandard
from runner.errors import RunnerError
from runner.substituters.compression import DecompressingReader
compression, mib = sys.argv[1], int(sys.argv[2])
zeros = bytes(16 << 20)
comp = {"zstd": lambda: zstandard.ZstdCompressor(level=1).compressobj(),
        "xz": lambda: lzma.LZMACompressor(preset=0), "bzip2": lambda: bz2.BZ2Compressor(9)}
c = comp[compression]()
bomb = b"".join(c.compress(zeros) for _ in range(mib // 16)) + c.flush()
del zeros, c
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pos = 0
def read_raw(n):
    global pos
    pos += n
    return bomb[pos - n:pos]
reader = DecompressingReader(read_raw, compression, 4 << 20)  # the narinfo claims 4 MiB
try:
    while reader.read(65536):
        pass
    print("accepted")
except RunnerError as e:
    print(e.reason, e.message)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MiB
"""


@pytest.mark.parametrize(("compression", "mib"), [("zstd", 1024), ("xz", 128), ("bzip2", 128)])
def test_decompression_bomb_is_cut_off_in_bounded_memory(compression: str, mib: int) -> None:
    proc = subprocess.run([sys.executable, "-c", BOMB, compression, str(mib)],
                          capture_output=True, text=True, check=True)
    verdict, growth = proc.stdout.splitlines()
    assert verdict == "bad-nar NAR is larger than the 4194304 bytes announced"
    assert int(growth) < 32, f"RSS grew by {growth} MiB for a {mib} MiB bomb"


@pytest.mark.parametrize("case", ["two-frames", "skippable", "trailing-garbage", "cut-in-header"])
def test_zstd_frame_structure(case: str) -> None:
    one = zstandard.ZstdCompressor(write_checksum=True).compress(DATA[:5000])
    two = zstandard.ZstdCompressor(write_content_size=False).compress(DATA[5000:])
    data = {"two-frames": one + two,
            "skippable": one + (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little")
            + b"abc" + two,
            "trailing-garbage": one + two + b"garbage!",
            "cut-in-header": one + two[:3]}[case]
    reader = DecompressingReader(io.BytesIO(data).read, "zstd", len(DATA))
    if case in ("two-frames", "skippable"):
        assert reader.read(len(DATA) + 1) == DATA
        return
    with pytest.raises(RunnerError) as e:
        reader.read(len(DATA) + 1)
    assert e.value.reason == "bad-nar"


@pytest.mark.parametrize("compression, packer", [("xz", lzma.compress), ("bzip2", bz2.compress)])
def test_data_after_the_stream_is_corrupt(compression: str, packer: object) -> None:
    packed = packer(DATA) + b"trailing"  # type: ignore[operator]
    reader = DecompressingReader(io.BytesIO(packed).read, compression, len(DATA))
    with pytest.raises(RunnerError) as e:
        while reader.read(65536):
            pass
    assert e.value.reason == "bad-nar"
