"""Check roots: the latest passing result of each check of each repository, kept as GC roots.

`runner check` roots what its passing checks built, as `result` links root builds,
so `runner gc` does not throw away the results the next commit's checks reuse:

    <state>/gcroots/checks/<base32 sha1 of the repository dir>/
        .repository             symlink to the repository (work-tree root) dir
        <check>/<output>        symlink into the store: a direct GC root

The collector sees the output links like any direct root under `gcroots/`. A
repository whose dir is gone has its roots released by the next `runner gc`;
`runner check --forget` releases one repository's roots at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.store import base32
from runner.store.paths import is_in_store
from runner.store.roots import gc_lock, replace_symlink, roots_dir

CHECKS_DIR = "checks"
REPOSITORY_LINK = ".repository"  # a dot: no check name has one


@dataclass(frozen=True)
class CheckRoot:
    repository: str  # the repository dir the check ran in
    check: str
    output: str
    store_path: str
    link: str  # the root symlink under `gcroots/checks/`
    repository_exists: bool

    def to_json(self) -> dict[str, object]:
        return {"repository": self.repository, "check": self.check, "output": self.output,
                "repositoryExists": self.repository_exists}


def checks_roots_dir(state_dir: str) -> str:
    return os.path.join(roots_dir(state_dir), CHECKS_DIR)


def repository_dir(state_dir: str, repository: str) -> str:
    key = base32.encode(hashlib.sha1(os.path.abspath(repository).encode()).digest())
    return os.path.join(checks_roots_dir(state_dir), key)


def keep_results(store_dir: str, state_dir: str, repository: str,
                 results: Mapping[str, Mapping[str, str]]) -> None:
    """Root `results` (check -> output name -> store path) as `repository`'s latest.

    A check's previous root is replaced; checks not in `results` keep theirs. The
    caller holds temporary roots for the paths (it just built or found them)."""
    if not results:
        return
    repository = os.path.abspath(repository)
    top = repository_dir(state_dir, repository)
    with gc_lock(state_dir, exclusive=False, notice=sys.stderr):
        _symlink(repository, os.path.join(top, REPOSITORY_LINK))
        for check, outputs in results.items():
            directory = os.path.join(top, check)
            for output, path in outputs.items():
                if not is_in_store(path, store_dir):
                    raise RunnerError(f"cannot root '{path}': it is not in the store",
                                      reason="bad-root")
                _symlink(path, os.path.join(directory, output))
            for stale in set(_list(directory)) - set(outputs):
                if ".tmp-" in stale:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, stale))


def list_roots(state_dir: str, repository: str | None = None) -> list[CheckRoot]:
    """Every check root (of `repository` only, when given), sorted."""
    base = checks_roots_dir(state_dir)
    tops = ([repository_dir(state_dir, repository)] if repository is not None
            else [os.path.join(base, name) for name in sorted(_list(base))])
    found: list[CheckRoot] = []
    for top in tops:
        try:
            repo = os.readlink(os.path.join(top, REPOSITORY_LINK))
        except OSError:
            continue  # half-written or not ours: nothing to describe
        exists = os.path.isdir(repo)
        for check in sorted(_list(top)):
            directory = os.path.join(top, check)
            if "." in check or not os.path.isdir(directory):
                continue
            for output in sorted(_list(directory)):
                if ".tmp-" in output:
                    continue  # another process's symlink being renamed into place
                link = os.path.join(directory, output)
                try:
                    target = os.readlink(link)
                except OSError:
                    continue
                found.append(CheckRoot(repo, check, output, target, link, exists))
    return found


def forget(state_dir: str, repository: str) -> list[CheckRoot]:
    """Release `repository`'s check roots; returns what was released."""
    released = list_roots(state_dir, repository)
    _remove(repository_dir(state_dir, repository))
    return released


def gone_repositories(state_dir: str) -> list[tuple[str, str]]:
    """(entry under `gcroots/checks/`, repository) for each repository dir that no
    longer exists."""
    base = checks_roots_dir(state_dir)
    gone: list[tuple[str, str]] = []
    for name in sorted(_list(base)):
        top = os.path.join(base, name)
        try:
            repo = os.readlink(os.path.join(top, REPOSITORY_LINK))
        except OSError:
            continue
        if not os.path.isdir(repo):
            gone.append((top, repo))
    return gone


def release(top: str) -> None:
    """Remove one repository's entry (call with the GC lock held exclusively)."""
    _remove(top)


def _remove(top: str) -> None:
    try:
        shutil.rmtree(top)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RunnerError(f"cannot remove the check roots '{top}': {e.strerror}",
                          reason="io") from None


def _list(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _symlink(target: str, link: str) -> None:
    replace_symlink(target, link, "the check root")
