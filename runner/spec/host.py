"""The host's Nix system string: the default `system` of a derivation. Its own small
module so that the eval cache can key on it without importing the spec model."""

from __future__ import annotations

import os
import sys


def host_system() -> str:
    """The host's Nix system string, e.g. `x86_64-linux` or `aarch64-darwin`."""
    machine = os.uname().machine.lower()  # what platform.machine() returns, without `platform`
    machine = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686"}.get(machine, machine)
    kernel = "darwin" if sys.platform == "darwin" else sys.platform.rstrip("0123456789")
    return f"{machine}-{kernel}"
