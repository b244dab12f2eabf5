"""The REAPI servers the remote suite runs against, behind one small interface: tier 1
(buildbox-casd, `tests/remote_server.py`) and tier 2 (BuildGrid, `tests/buildgrid_server.py`)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.buildgrid_server import BuildGrid
from tests.remote_server import Casd, start_casd


class RemoteEndpoint:
    name = ""
    scale = 12  # derivations in the big scenario

    @property
    def url(self) -> str:
        raise NotImplementedError

    def executed(self) -> int | None:
        """Actions executed (not served from the ActionCache) so far; None: not known."""
        return None

    def action_root(self) -> int:
        """A pid whose descendants are the actions the server runs."""
        raise NotImplementedError

    def kill(self) -> None:
        """Kill the server as a crash would."""
        raise NotImplementedError

    def ensure_up(self) -> None:
        """Running again after `kill` (its URL may change)."""
        raise NotImplementedError


class CasdEndpoint(RemoteEndpoint):
    name = "casd"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.starts = 0
        self.casd: Casd = self._start()

    def _start(self) -> Casd:
        self.starts += 1
        return start_casd(self.root / f"casd{self.starts}", tcp=True)

    @property
    def url(self) -> str:
        return self.casd.url

    def action_root(self) -> int:
        return self.casd.proc.pid

    def kill(self) -> None:
        self.casd.kill_all()

    def ensure_up(self) -> None:
        if self.casd.proc.poll() is not None:
            self.casd = self._start()

    def stop(self) -> None:
        self.casd.stop()


class GridEndpoint(RemoteEndpoint):
    name = "buildgrid"
    scale = 50

    def __init__(self, grid: BuildGrid) -> None:
        self.grid = grid

    @property
    def url(self) -> str:
        return self.grid.url

    def executed(self) -> int | None:
        return self.grid.jobs()

    def action_root(self) -> int:
        assert self.grid.bot is not None
        return self.grid.bot.pid

    def kill(self) -> None:
        self.grid.kill_server()

    def ensure_up(self) -> None:
        if self.grid.server is None or self.grid.server.poll() is not None:
            self.grid.start_server()


def descendants(pid: int) -> list[str]:
    """Command lines of every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode())
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return found
