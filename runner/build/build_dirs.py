"""Build directories: fresh and private for every build, recycled when a build leaves
its directory empty.

Every build dir lives in `<build-dir or $TMPDIR>/runner-builds-<uid>`, a 0700
directory of runner's user, checked each run: a builder that opens up the
modes of its own dir (`chmod 777 /build`) still leaves it unreachable to other
local users (docs/security.md, class 4). The directory that holds it must be
runner's or root's, and writable by nobody else unless sticky (`/tmp`); else
the build is refused, as another user could swap the private dir.

Making and removing a directory costs more than a trivial build itself on
some disks, so an empty used directory is renamed for its next build
instead (a rename is cheap). One that is not empty is removed in the
background; `close()` removes the spares.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile

from runner.build.background import Background
from runner.errors import RunnerError
from runner.settings import Settings
from runner.store import fdtree
from runner.store.canonicalise import remove_tree

PREFIX = "runner-build-"
PRIVATE_PREFIX = "runner-builds-"


def private_parent(top: str) -> str:
    """`top/runner-builds-<euid>`, made or checked to be ours and 0700.

    Raises RunnerError(reason="unsafe-build-dir") when someone else could
    replace it: `top` owned by another user, or writable by others and not sticky.
    """
    euid = os.geteuid()
    os.makedirs(top, mode=0o700, exist_ok=True)
    st = os.stat(top)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (euid, 0):
        raise RunnerError(f"build-dir '{top}' belongs to uid {st.st_uid}, not to this "
                          "user or root; refusing to build there", reason="unsafe-build-dir")
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise RunnerError(f"build-dir '{top}' is writable by other users (mode {mode:o}) "
                          "and not sticky; refusing to build there", reason="unsafe-build-dir")
    path = os.path.join(top, f"{PRIVATE_PREFIX}{euid}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, fdtree.DIR_FLAGS)
    except OSError as e:  # a symlink (ELOOP) or not a directory
        raise RunnerError(f"build-dir '{path}' is not a directory of ours: {e.strerror}",
                          reason="unsafe-build-dir") from None
    try:
        own = os.fstat(fd)
        if own.st_uid != euid:
            raise RunnerError(f"build-dir '{path}' belongs to uid {own.st_uid}; refusing "
                              "to build there", reason="unsafe-build-dir")
        if stat.S_IMODE(own.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def restrict_tree(path: str) -> None:
    """A kept build dir: runner's user's again, without group or other write bits."""
    uid, gid = os.geteuid(), os.getegid()
    parent_fd, name = fdtree.open_parent(path)
    try:
        for ev in fdtree.Walk(parent_fd, name):
            if ev.kind == "leave" or stat.S_ISLNK(ev.st.st_mode):
                if ev.kind != "leave" and uid == 0:
                    os.chown(ev.name, uid, gid, dir_fd=ev.fd, follow_symlinks=False)
                continue
            own = ev.fd if ev.kind == "enter" else os.open(ev.name, fdtree.PATH_FLAGS,
                                                           dir_fd=ev.fd)
            try:
                if fdtree.ident(os.fstat(own)) != fdtree.ident(ev.st):
                    raise fdtree.TreeMoved(0, "file replaced", ev.name)
                if uid == 0 and (ev.st.st_uid, ev.st.st_gid) != (uid, gid):
                    os.chown(f"/proc/self/fd/{own}", uid, gid)
                mode = stat.S_IMODE(ev.st.st_mode)
                if mode & 0o022 or (uid == 0 and mode & 0o7000):
                    fdtree.chmod_fd(own, mode & 0o755)
            finally:
                if own != ev.fd:
                    os.close(own)
    finally:
        os.close(parent_fd)


class BuildDirs:
    def __init__(self, settings: Settings, background: Background) -> None:
        self._top = settings.text("build-dir") or tempfile.gettempdir()
        self._parent = ""  # made and checked at the first build
        self._background = background
        self._spare: list[str] = []

    def take(self, name: str) -> str:
        """An empty directory only this build uses, named after `name`."""
        while self._spare:
            spare = self._spare.pop()
            fresh = os.path.join(self._parent, f"{PREFIX}{name}-{secrets.token_hex(4)}")
            try:
                os.rename(spare, fresh)  # fails if `fresh` exists: never share a dir
            except OSError:
                self._background.submit(remove_tree, spare)
                continue
            return fresh
        if not self._parent:
            self._parent = private_parent(self._top)
        return tempfile.mkdtemp(prefix=f"{PREFIX}{name}-", dir=self._parent)

    def give_back(self, path: str) -> None:
        """The build is over: keep `path` for the next build if it is empty, else remove
        it (in the background)."""
        try:
            os.chmod(path, 0o700)  # the builder may have changed it
            empty = not os.listdir(path)
        except OSError:
            empty = False
        if empty:
            self._spare.append(path)
        else:
            self._background.submit(remove_tree, path)

    def keep(self, path: str) -> None:
        """A failed build's dir kept for inspection (`-K`): no longer writable by others."""
        restrict_tree(path)

    def close(self) -> None:
        for path in self._spare:
            self._background.submit(remove_tree, path)
        self._spare.clear()
