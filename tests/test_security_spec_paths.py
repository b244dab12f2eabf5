"""Class 6: `allowed-spec-sandbox-paths` is checked on what is bound, not on the string
(docs/security.md)."""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError
from runner.sandbox import executor, libc
from runner.sandbox import probe as sandbox_probe
from runner.sandbox.child import Step
from runner.sandbox.plan import SPEC_PATHS_ATTR, Mount
from tests.security_env import Settings, start

pytestmark = pytest.mark.skipif(sys.platform != "linux" or sandbox_probe() is not None,
                                reason=f"no sandbox here: {sandbox_probe()}")

READ = 'cat /shared/secret.txt > "$out" 2>&1 || echo unreadable > "$out"'


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path, Settings]]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "real").mkdir(parents=True)
    (allowed / "real" / "secret.txt").write_text("allowed data")
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    yield allowed, outside, Settings(**{"allowed-spec-sandbox-paths": [str(allowed)]})


def _unchecked(m: Mount) -> Step | None:
    """The protection off: bind where the symlink leads, as the string check allowed."""
    real = os.path.realpath(m.source)
    return Step(m, real, stat.S_ISDIR(os.stat(real).st_mode))


def test_a_symlink_under_an_allowed_prefix_cannot_bind_outside_it(
        tmp_path: Path, layout: tuple[Path, Path, Settings],
        monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, outside, settings = layout
    os.symlink(outside, allowed / "link")
    env = {SPEC_PATHS_ATTR: f"/shared={allowed}/link"}
    with pytest.raises(RunnerError) as e:
        start(tmp_path, READ, env=env, settings=settings)
    assert e.value.reason == "sandbox-path-not-allowed"
    assert f"resolves to '{outside}'" in e.value.message
    # A real directory under the prefix is bound.
    good = start(tmp_path, READ, env={SPEC_PATHS_ATTR: f"/shared={allowed}/real"},
                 settings=settings, name="good")
    assert good.finish()[0] == 0
    assert Path(good.out).read_text() == "allowed data"
    # Control: with the string check alone, the builder reads the host's secret.
    monkeypatch.setattr(executor, "_resolve_spec_path", _unchecked)
    leak = start(tmp_path, READ, env=env, settings=settings, name="leak")
    assert leak.finish()[0] == 0
    assert Path(leak.out).read_text() == "host secret"


def _swap_before_bind(monkeypatch: pytest.MonkeyPatch, allowed: Path, outside: Path) -> None:
    """Test-only fault injection: in the sandbox's child (a fork of this process: no fork
    server), just before the spec path is bound, replace it by a symlink outside."""
    real_mount = libc.mount

    def mount(source: str | None, target: str, *args: Any) -> None:
        if target.endswith("/shared") and source and source.endswith("/allowed/real"):
            os.rename(source, source + ".moved")
            os.symlink("/old" + str(outside), source)
        real_mount(source, target, *args)

    monkeypatch.setattr(libc, "mount", mount)


def test_a_path_swapped_after_the_check_is_not_bound(
        tmp_path: Path, layout: tuple[Path, Path, Settings],
        monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, outside, settings = layout
    env = {SPEC_PATHS_ATTR: f"/shared={allowed}/real"}
    _swap_before_bind(monkeypatch, allowed, outside)
    with pytest.raises(RunnerError) as e:
        start(tmp_path, READ, env=env, settings=settings, fork_server=False)
    assert "changed while being bound" in e.value.message and e.value.reason == "sandbox-setup"
    # Control: without the check on what was bound, the swap leaks the secret.
    os.unlink(allowed / "real")
    os.rename(allowed / "real.moved", allowed / "real")
    real_resolve = executor._resolve_spec_path
    monkeypatch.setattr(executor, "_resolve_spec_path",
                        lambda m: None if (step := real_resolve(m)) is None
                        else dataclasses.replace(step, ident=None))
    leak = start(tmp_path, READ, env=env, settings=settings, fork_server=False, name="leak")
    assert leak.finish()[0] == 0
    assert Path(leak.out).read_text() == "host secret"
