"""Class 5: deep trees never crash runner (docs/security.md).

Tree operations walk by descriptors without recursion, so depth costs time and
memory, never a RecursionError or ENAMETOOLONG. A build whose output is deeper
than a path can name is refused cleanly, leaves nothing, and gc still works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox import probe as sandbox_probe
from runner.sandbox.staging import chown_tree, copy_tree
from runner.store.canonicalise import canonicalise, remove_tree
from runner.store.layout import STATE_MARKER
from tests import security_env
from tests.security_env import REPO

# "d/" * 2100 = 4,200 bytes: beyond PATH_MAX (4096) and the recursion limit (1000).
DEPTH = 2100
BUILD_DEPTH = 5000  # what the builder made


def _chain(top: Path, depth: int) -> None:
    """top/d/d/…/d/f, made by descriptors (by path it could not be made)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)


@pytest.fixture
def work() -> Iterator[Path]:
    yield from security_env.public_tmp()


def test_every_tree_operation_survives_a_deep_tree(work: Path) -> None:
    tree = work / "t"
    _chain(tree, DEPTH)
    # Control: the probe detects the problem, the old ways (os.walk, paths) cannot.
    with pytest.raises((RecursionError, OSError)):
        for _ in os.walk(tree):
            pass
        os.lstat(str(tree) + "/d" * DEPTH)
    chown_tree(str(tree), 30001, 30000)
    canonicalise(str(tree))
    parent = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        copy_tree(parent, "t", parent, "copy", None)
    finally:
        os.close(parent)
    for top in (tree, work / "copy"):
        remove_tree(str(top))
        assert not top.exists()
    assert os.listdir(work) == []


def _runner(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


DEEP_SPEC = """version: 1
derivations:
  deep:
    builder: /usr/bin/env
    args:
      - python3
      - -c
      - |
        import os
        os.mkdir(os.environ['out']); os.chdir(os.environ['out'])
        for _ in range({depth}): os.mkdir('d'); os.chdir('d')
        open('f', 'w').write('bottom')
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or sandbox_probe() is not None,
                    reason=f"no sandbox here: {sandbox_probe()}")
def test_a_deep_output_is_refused_cleanly_and_gc_still_works(tmp_path: Path,
                                                            store_dir: str) -> None:
    sandbox = "on"  # collection copies the tree: the longer way
    if shutil.which("python3") is None:
        pytest.skip("the builder needs python3")
    spec = tmp_path / "deep.yaml"
    spec.write_text(DEEP_SPEC.format(depth=BUILD_DEPTH))
    done = _runner("build", "--no-out-link", f"--sandbox={sandbox}", str(spec))
    assert done.returncode != 0
    assert "bytes or longer" in done.stderr and "is not acceptable" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    leftovers = [n for n in os.listdir(store_dir)
                 if n != STATE_MARKER and (n.endswith("-deep") or n.startswith("."))]
    assert [n for n in leftovers if not n.endswith(".drv")] in ([], [".links"]), leftovers
    # A crashed build's deep leftover (invalid) in the store does not block gc.
    leftover = Path(store_dir) / f"{security_env.HASH}-leftover"
    _chain(leftover, DEPTH)
    gc = _runner("gc")
    assert gc.returncode == 0, gc.stderr
    assert not leftover.exists()

    # Control: a tree as deep as a path can name is registered, then collected.
    spec.write_text(DEEP_SPEC.format(depth=1000))
    done = _runner("build", "--no-out-link", f"--sandbox={sandbox}", str(spec))
    assert done.returncode == 0, done.stderr
    [out] = [p for p in Path(store_dir).iterdir() if p.name.endswith("-deep")]
    assert Path(str(out) + "/d" * 1000 + "/f").read_text() == "bottom"
    gc = _runner("gc")
    assert gc.returncode == 0, gc.stderr
    assert not out.exists()
