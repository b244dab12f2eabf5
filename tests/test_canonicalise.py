"""Canonicalisation of build outputs: read-only, mtime 1, never touching foreign files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runner.store.canonicalise import canonicalise


def test_a_file_linked_from_outside_is_copied_not_taken_over(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    before = victim.stat()
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    os.link(victim, out / "sub" / "stolen")
    (out / "own").write_text("mine")
    os.link(out / "own", out / "own-again")  # links inside the tree stay shared
    canonicalise(str(out))
    after = victim.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert (out / "sub" / "stolen").read_text() == "secret"
    assert (out / "sub" / "stolen").stat().st_ino != after.st_ino
    assert stat.S_IMODE((out / "sub" / "stolen").stat().st_mode) == 0o444
    assert (out / "own").stat().st_ino == (out / "own-again").stat().st_ino
    sub = (out / "sub").stat()
    assert sub.st_mtime == 1 and stat.S_IMODE(sub.st_mode) == 0o555
