"""Build directories: fresh and private for every build, recycled when a build leaves
its directory empty.

Making and removing a directory costs more than a trivial build itself on
some disks, so an empty used directory is renamed for its next build
instead (a rename is cheap). One that is not empty is removed in the
background; `close()` removes the spares.
"""

from __future__ import annotations

import os
import secrets
import tempfile

from runner.build.background import Background
from runner.settings import Settings
from runner.store.canonicalise import remove_tree

PREFIX = "runner-build-"


class BuildDirs:
    def __init__(self, settings: Settings, background: Background) -> None:
        self._parent = str(settings.get("build-dir")) or tempfile.gettempdir()
        self._background = background
        self._spare: list[str] = []
        self._made_parent = False

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
        if not self._made_parent:
            os.makedirs(self._parent, exist_ok=True)
            self._made_parent = True
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

    def close(self) -> None:
        for path in self._spare:
            self._background.submit(remove_tree, path)
        self._spare.clear()
