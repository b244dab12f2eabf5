"""Which store a command talks to: the `store` setting (`local`, `daemon`,
`unix://PATH`, `auto`), resolved as Nix resolves its `store = auto`."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from runner.errors import RunnerError
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.daemon.remote_store import RemoteStore


def daemon_socket(settings: Settings) -> str | None:
    """The daemon socket to use, or None for the local store."""
    value = settings.text("store").strip()
    if value in ("", "local"):
        return None
    default = os.path.join(settings.state_dir, "daemon-socket", "socket")
    if value == "daemon":
        return default
    if value.startswith("unix://"):
        path = value[len("unix://"):].split("?", 1)[0]
        if not path:
            raise RunnerError("store 'unix://' names no socket", reason="bad-setting")
        return os.path.abspath(path)
    if value == "auto":
        # As Nix: a user who cannot write the store goes through the daemon, if one listens.
        return default if not _writable(settings.store_dir) and _is_socket(default) else None
    raise RunnerError(f"unknown store '{value}' (expected local, daemon, unix://PATH or auto)",
                      reason="bad-setting")


def _writable(directory: str) -> bool:
    probe = directory
    while not os.path.exists(probe):  # a store not created yet: whoever may create it
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.access(probe, os.W_OK)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False



def open_remote(settings: Settings, socket_path: str) -> RemoteStore:
    """A connection to the daemon on `socket_path`, for the settings' store directory."""
    from runner.daemon.remote_store import RemoteStore

    return RemoteStore(socket_path, settings.store_dir)
