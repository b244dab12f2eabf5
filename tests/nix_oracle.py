"""Real Nix 2.8 as the test oracle: evaluate expressions for any store dir.

Tests marked `nix` use `oracle`; it skips only when nix is not installed
(`.ci/run` installs it, so CI always runs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HAVE_NIX = shutil.which("nix-instantiate") is not None
needs_nix = pytest.mark.skipif(
    not HAVE_NIX, reason="nix-bin is not installed (.ci/run installs it)"
)


@dataclass
class NixOracle:
    """Runs Nix commands against a throwaway store rooted at `root`."""

    root: Path

    @property
    def store_dir(self) -> str:
        return str(self.root / "store")

    def env(self) -> dict[str, str]:
        conf = self.root / "etc"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "nix.conf").write_text(
            "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n"
        )
        return {
            **os.environ,
            "NIX_STORE_DIR": self.store_dir,
            "NIX_STATE_DIR": str(self.root / "var"),
            "NIX_LOG_DIR": str(self.root / "log"),
            "NIX_CONF_DIR": str(conf),
            "HOME": str(self.root / "home"),
        }

    def run(self, *argv: str, input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [*argv, "--option", "substituters", ""] if argv[0] != "nix-hash" else list(argv),
            env=self.env(),
            input=input,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{argv} failed: {proc.stderr.decode()}")
        return proc.stdout

    def instantiate(self, expr: str) -> list[str]:
        """`nix-instantiate -E expr` → the .drv paths it printed."""
        out = self.run("nix-instantiate", "-E", expr)
        return [line for line in out.decode().splitlines() if line]

    def instantiate_json(self, expr: str) -> object:
        return json.loads(self.run("nix-instantiate", "--eval", "--strict", "--json", "-E", expr))

    def add(self, path: str | Path) -> str:
        return self.run("nix-store", "--add", str(path)).decode().strip()

    def dump(self, path: str | Path) -> bytes:
        return self.run("nix-store", "--dump", str(path))

    def hash(self, *args: str) -> str:
        return self.run("nix-hash", *args).decode().strip()


@pytest.fixture
def oracle(tmp_path: Path) -> NixOracle:
    if not HAVE_NIX:
        pytest.skip("nix-bin is not installed (.ci/run installs it)")
    return NixOracle(tmp_path / "_nix")
