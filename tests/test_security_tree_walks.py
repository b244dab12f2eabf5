"""Class 3: root never follows a path a local user swapped mid-walk (docs/security.md).

The tree is what a builder leaves: world-writable. A real local account swaps one of
its directories for a symlink to a victim (a root-owned secret) at the worst moment:
right after root's walk has looked at the directory and decided it is one. The race
is made deterministic by a test-only hook on `os.stat`, which runs the swap as the
attacker once the walk has lstat'ed that directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.build.build_dirs import restrict_tree
from runner.sandbox.staging import chown_tree, copy_tree
from runner.store import fdtree
from runner.store.canonicalise import canonicalise, remove_tree
from tests import security_env
from tests.security_env import User

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

BUILD_UID, BUILD_GID = 30001, 30000
_SWAP = ("import os, sys; d, victim = sys.argv[1:]; os.rename(d, d + '.old'); "
         "os.symlink(victim, d)")


@pytest.fixture
def attacker() -> Iterator[User]:
    yield from security_env.throwaway_user()


@pytest.fixture
def work() -> Iterator[Path]:
    yield from security_env.public_tmp()


def _setup(work: Path) -> tuple[Path, Path, list[Path]]:
    """A builder's world-writable tree `t/sub/f`, and a root-only victim."""
    tree = work / "t"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("build")
    for p in (tree, tree / "sub"):
        os.chmod(p, 0o777)
    victim = work / "victim"
    victim.mkdir(mode=0o700)
    secret = victim / "shadow"
    secret.write_text("root's secret")
    os.chmod(secret, 0o600)
    return tree, victim, [victim, secret]


def _swapper(attacker: User | None, tree: Path, victim: Path) -> Callable[[], None]:
    """Swap `tree/sub` for a symlink to `victim`, once: as the attacker account, or
    (None) as root, standing for whoever may still write the directory."""
    done: list[bool] = []

    def swap() -> None:
        if done:
            return
        done.append(True)
        if attacker is None:
            os.rename(tree / "sub", tree / "sub.old")
            os.symlink(victim, tree / "sub")
            return
        swapped = security_env.probe(attacker, _SWAP, str(tree / "sub"), str(victim))
        assert swapped.returncode == 0, swapped.stderr

    return swap


def _swap_on_stat(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None],
                  tree: Path) -> None:
    """When root's walk lstat's `sub` (relative to a directory descriptor), swap it."""
    real_stat = os.stat

    def hooked_stat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        result = real_stat(path, *args, **kw)
        if path == "sub" and stat.S_ISDIR(result.st_mode):
            swap()
        return result

    monkeypatch.setattr(os, "stat", hooked_stat)


def _old_chown_tree(path: str, uid: int, gid: int) -> None:
    """The walk by path runner used before (kept here as the control's target)."""
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def _copy(tree: str) -> None:
    parent = os.open(os.path.dirname(tree), os.O_RDONLY | os.O_DIRECTORY)
    try:
        copy_tree(parent, "t", parent, "t-copy", (0, 0))
    finally:
        os.close(parent)


OPERATIONS: dict[str, Callable[[str], object]] = {
    "chown_tree": lambda t: chown_tree(t, BUILD_UID, BUILD_GID),
    "restrict_tree": restrict_tree,
    "canonicalise": canonicalise,
    "remove_tree": remove_tree,
    "copy_tree": _copy,
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_directory_swapped_for_a_symlink_mid_walk_is_not_followed(
        operation: str, work: Path, attacker: User, monkeypatch: pytest.MonkeyPatch) -> None:
    tree, victim, victims = _setup(work)
    before = security_env.tree_state(victims)
    # canonicalise and restrict_tree close a directory's modes as they enter it, so
    # the attacker could no longer swap; root stands in for a writer that still can.
    who = None if operation in ("canonicalise", "restrict_tree") else attacker
    swap = _swapper(who, tree, victim)
    _swap_on_stat(monkeypatch, swap, tree)
    # Refusing is fine (O_NOFOLLOW met the symlink); following is not.
    with contextlib.suppress(OSError):
        OPERATIONS[operation](str(tree))
    monkeypatch.undo()
    assert os.path.islink(tree / "sub"), "the swap never happened: the hook missed the walk"
    assert security_env.tree_state(victims) == before
    assert os.path.exists(victim / "shadow")
    if operation == "copy_tree" and (work / "t-copy").exists():
        assert not (work / "t-copy" / "sub" / "shadow").exists()


def test_control_a_walk_by_path_follows_the_swap(work: Path, attacker: User,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same swap against the old walk by path chowns the victim to the build user.

    os.walk checks `islink` before descending, then lists the directory by path: the
    attacker swaps in between (hooked: just before that listing)."""
    tree, victim, _ = _setup(work)
    swap = _swapper(attacker, tree, victim)
    real_scandir = os.scandir

    def hooked_scandir(path: Any = ".") -> Any:
        if str(path) == str(tree / "sub"):
            swap()
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", hooked_scandir)
    _old_chown_tree(str(tree), BUILD_UID, BUILD_GID)
    monkeypatch.undo()
    assert os.path.islink(tree / "sub")
    assert (victim / "shadow").stat().st_uid == BUILD_UID


def test_symlinks_already_in_the_tree_are_never_followed(work: Path) -> None:
    tree, victim, victims = _setup(work)
    os.symlink(victim, tree / "link")
    os.symlink(victim / "shadow", tree / "sub" / "flink")
    before = security_env.tree_state(victims)
    for operation in ("chown_tree", "restrict_tree", "canonicalise", "copy_tree"):
        OPERATIONS[operation](str(tree))
        assert security_env.tree_state(victims) == before, operation
    assert os.readlink(work / "t-copy" / "link") == str(victim)
    remove_tree(str(tree))
    assert security_env.tree_state(victims) == before
    assert not tree.exists()


def test_a_directory_moved_away_mid_walk_stops_the_walk(work: Path) -> None:
    """Climbing back with `..` checks it lands where it came from."""
    tree = work / "t"
    (tree / "a" / "b").mkdir(parents=True)
    parent = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk = iter(fdtree.Walk(parent, "t"))
        seen = []
        with pytest.raises(fdtree.TreeMoved):
            for ev in walk:
                seen.append((ev.kind, ev.name))
                if ev.kind == "enter" and ev.name == "b":
                    os.rename(tree / "a", work / "elsewhere")
    finally:
        os.close(parent)
    assert ("enter", "b") in seen
