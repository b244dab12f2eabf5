"""Class 4: other local users cannot reach build state (build dirs, staging dirs, kept
failed dirs), and a build-dir someone else controls is refused (docs/security.md)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.build.background import Background
from runner.build.build_dirs import BuildDirs
from runner.errors import RunnerError
from runner.sandbox import probe as sandbox_probe
from runner.settings import Settings
from tests import security_env
from tests.security_env import REPO, User, release, start

pytestmark = pytest.mark.skipif(sys.platform != "linux" or sandbox_probe() is not None,
                                reason=f"no sandbox here: {sandbox_probe()}")

_WRITE = "import sys; open(sys.argv[1], 'w').write('attacker was here')"


@pytest.fixture
def attacker() -> Iterator[User]:
    yield from security_env.throwaway_user()


@pytest.fixture
def work() -> Iterator[Path]:
    yield from security_env.public_tmp()


def _dirs(build_dir: Path) -> BuildDirs:
    settings = Settings.load(environ={}, config_file=build_dir / "no-config").with_overrides(
        **{"build-dir": str(build_dir)})
    return BuildDirs(settings, Background(lambda _: None))


def test_outputs_being_built_are_unreachable_to_local_users(work: Path,
                                                            attacker: User) -> None:
    build = start(work, 'mkdir "$out"; chmod 777 "$out"; echo genuine > "$out/f"; '
                            'chmod 666 "$out/f"; echo ready; read x < /build/go')
    try:
        assert build.line() == "ready"
        staged = os.path.join(build.plan.staging_store, os.path.basename(build.out), "f")
        assert stat.S_IMODE(os.stat(staged).st_mode) == 0o666  # the builder opened it
        refused = security_env.probe(attacker, _WRITE, staged)
        assert refused.returncode != 0 and "PermissionError" in refused.stderr
        # Control: with the staging dir's 0700 off, the same probe writes the output.
        os.chmod(build.plan.staging_dir, 0o755)
        reached = security_env.probe(attacker, _WRITE, staged)
        assert reached.returncode == 0, reached.stderr
    finally:
        release(build)
        build.finish()
    assert Path(build.out, "f").read_text() == "attacker was here"  # the control's write


def test_build_dirs_opened_by_the_builder_stay_private(work: Path, attacker: User) -> None:
    top = work / "builds"
    top.mkdir(mode=0o755)
    dirs = _dirs(top)
    build_dir = Path(dirs.take("x"))
    # What a builder does to its own dir: open everything up.
    os.chmod(build_dir, 0o777)
    (build_dir / "f").write_text("state")
    os.chmod(build_dir / "f", 0o666)
    parent = build_dir.parent
    assert parent.name == f"runner-builds-{os.geteuid()}"
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700 and parent.stat().st_uid == 0
    refused = security_env.probe(attacker, _WRITE, str(build_dir / "f"))
    assert refused.returncode != 0 and "PermissionError" in refused.stderr
    # Control: without the private parent, the same probe gets in.
    os.chmod(parent, 0o755)
    reached = security_env.probe(attacker, _WRITE, str(build_dir / "f"))
    assert reached.returncode == 0, reached.stderr
    os.chmod(parent, 0o700)
    # A private dir that was opened up is closed again at the next run.
    assert Path(_dirs(top).take("y")).parent == parent
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700


def test_a_build_dir_someone_else_controls_is_refused(work: Path, attacker: User) -> None:
    os.chmod(work, 0o1777)  # like /tmp: anyone may make a dir here
    theirs = work / "theirs"
    assert attacker.run("mkdir", "-m", "777", str(theirs)).returncode == 0
    with pytest.raises(RunnerError) as e:
        _dirs(theirs).take("x")
    assert e.value.reason == "unsafe-build-dir" and f"uid {attacker.uid}" in e.value.message

    open_dir = work / "open"  # root's but writable by all, not sticky
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(RunnerError) as e:
        _dirs(open_dir).take("x")
    assert e.value.reason == "unsafe-build-dir"

    sticky = work / "sticky"  # like /tmp: fine, unless the attacker got there first
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    squatted = sticky / f"runner-builds-{os.geteuid()}"
    assert attacker.run("mkdir", "-m", "700", str(squatted)).returncode == 0
    with pytest.raises(RunnerError) as e:
        _dirs(sticky).take("x")
    assert e.value.reason == "unsafe-build-dir"
    # Control: the same sticky dir without the squatter is used.
    os.rmdir(squatted)
    assert Path(_dirs(sticky).take("x")).parent == squatted
    assert squatted.stat().st_uid == os.geteuid()


FAILING = """version: 1
derivations:
  opened:
    builder: /bin/sh
    args:
      - -c
      - >-
        chmod 777 /build; mkdir /build/sub; chmod 777 /build/sub;
        echo x > /build/sub/f; chmod 4777 /build/sub/f; ln -s /etc/shadow /build/link;
        stat -c 'mode=%a' /build /build/sub/f; exit 1
"""


@pytest.mark.slow
def test_kept_failed_build_dirs_lose_group_and_other_write(tmp_path: Path,
                                                           store_dir: str) -> None:
    (tmp_path / "spec.yaml").write_text(FAILING)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "build", "--no-out-link", "--sandbox=on", "-K",
         "-L", str(tmp_path / "spec.yaml")], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert done.returncode != 0
    # Control: the builder did open its dir up (the probe below would see it).
    assert "mode=777" in done.stderr and "mode=4777" in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if "keeping build directory" in x]
    kept = Path(line.split("'")[1])
    for path in (kept, *kept.rglob("*")):
        st = path.lstat()
        assert st.st_uid == os.geteuid(), path
        if not path.is_symlink():
            assert stat.S_IMODE(st.st_mode) & 0o7022 == 0, (path, oct(st.st_mode))
    assert os.readlink(kept / "link") == "/etc/shadow"
    assert Path("/etc/shadow").stat().st_uid == 0
