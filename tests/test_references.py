from __future__ import annotations

import hashlib
from pathlib import Path

from runner.store import base32
from runner.store.nar import CHUNK
from runner.store.references import scan


def fake_hash(i: int) -> str:
    return base32.encode(hashlib.sha256(str(i).encode()).digest()[:20])


def test_finds_hashes_in_contents_links_and_names(tmp_path: Path) -> None:
    h = [fake_hash(i) for i in range(6)]
    root = tmp_path / "out"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(f"#!/nix/store/{h[0]}-sh/bin/sh\n".encode())
    (root / "lib").symlink_to(f"/nix/store/{h[1]}-lib/lib")
    (root / f"{h[2]}-named").write_bytes(b"")
    (root / "partial").write_bytes(h[3][:31].encode() + b"!" + h[3][1:].encode())
    assert scan(root, h) == {h[0], h[1], h[2]}


def test_nothing_wanted_or_nothing_found(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(fake_hash(1).encode())
    assert scan(f, []) == set()
    assert scan(f, [fake_hash(2)]) == set()
    assert scan(f, ["short"]) == set()
    assert scan(f, [fake_hash(1)]) == {fake_hash(1)}


def test_hash_inside_longer_base32_run(tmp_path: Path) -> None:
    h = fake_hash(7)
    f = tmp_path / "f"
    f.write_bytes(b"0123" + h.encode() + b"abcd" * 10 + b"\n")
    assert scan(f, [h, fake_hash(8)]) == {h}
    # A long run with few candidates takes the per-candidate path.
    f.write_bytes(b"0" * 100_000 + h.encode() + b"1" * 1000)
    assert scan(f, [h]) == {h}


def test_hash_straddling_every_chunk_offset(tmp_path: Path) -> None:
    wanted = []
    for k in range(1, 32):
        h = fake_hash(100 + k)
        wanted.append(h)
        data = bytearray(b"\0" * (2 * CHUNK))
        start = CHUNK - k  # the file is read in CHUNK-sized pieces
        data[start : start + 32] = h.encode()
        (tmp_path / f"f{k:02}").write_bytes(bytes(data))
    assert scan(tmp_path, [*wanted, fake_hash(999)]) == set(wanted)


def test_many_candidates(tmp_path: Path) -> None:
    hashes = [fake_hash(i) for i in range(2000)]
    f = tmp_path / "f"
    f.write_bytes(b"\n".join(f"/nix/store/{h}-x".encode() for h in hashes[::3]))
    assert scan(f, hashes) == set(hashes[::3])
