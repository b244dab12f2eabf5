"""Every test gets its own store, state, config and home: nothing touches the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nix_oracle import oracle  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "_runner"
    for sub in ("store", "state", "config", "home", "data", "cache"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setenv("RUNNER_STORE_DIR", str(root / "store"))
    monkeypatch.setenv("RUNNER_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(root / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.setenv("HOME", str(root / "home"))
    return root


@pytest.fixture
def store_dir(isolated_env: Path) -> str:
    return str(isolated_env / "store")


@pytest.fixture
def state_dir(isolated_env: Path) -> str:
    return str(isolated_env / "state")
