"""A shared store: root runs `runner daemon`, an unprivileged user (created for the
test) uses runner's own client. The store stays root's; the user builds through the
daemon (sandboxed), cannot write the store, and may import unsigned paths or collect
garbage only once trusted."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.local_store import LocalStore
from tests.daemon_harness import (
    ROOT,
    Daemon,
    as_user,
    interpreter_runnable_by,
    reachable_dir,
    readable_site_packages,
)
from tests.security_env import throwaway_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd to create a throwaway user")

SPEC = """\
version: 1
derivations:
  hello:
    builder: /bin/sh
    args: ["-c", "echo hello from the sandbox; mkdir $out;
                  cat /proc/sys/kernel/hostname > $out/host"]
"""


@pytest.fixture
def user() -> Iterator[str]:
    for account in throwaway_user():
        why = interpreter_runnable_by(account.name)
        if why is not None:
            pytest.skip(why)
        yield account.name


@pytest.fixture
def shared() -> Iterator[Path]:
    """Store, state and the user's home where the throwaway user can reach them."""
    with reachable_dir("runner-multiuser-") as path:
        for sub in ("store", "state"):
            (path / sub).mkdir(mode=0o755)
        readable_site_packages(path / "site")
        yield path


def _env(shared: Path, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": f"{ROOT}:{shared / 'site'}",
            "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data"),
            "RUNNER_STORE_DIR": str(shared / "store"),
            "RUNNER_STATE_DIR": str(shared / "state")}


def _runner(shared: Path, user: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    home = shared / (user or "root-home")
    home.mkdir(exist_ok=True)
    if user is not None:
        shutil.chown(home, user)
    cmd = [sys.executable, "-m", "runner", *argv]
    return subprocess.run(as_user(user, cmd) if user else cmd, env=_env(shared, home),
                          cwd=home, capture_output=True, text=True, timeout=120, check=False)


def _daemon(shared: Path, *options: str) -> Daemon:
    """On the default socket, so that the clients' `store = auto` finds it."""
    return Daemon(str(shared / "state" / "daemon-socket" / "socket"), *options,
                  env={"RUNNER_STORE_DIR": str(shared / "store"),
                       "RUNNER_STATE_DIR": str(shared / "state")})


def _unsigned_cache(shared: Path) -> str:
    """A store path in an unsigned file:// cache, then deleted from the store."""
    (shared / "data").write_text("from an unsigned cache\n")
    path = _runner(shared, None, "store", "add", str(shared / "data"))
    assert path.returncode == 0, path.stderr
    stored = path.stdout.strip()
    cache = f"file://{shared / 'cache'}"
    done = _runner(shared, None, "copy", "--to", cache, stored)
    assert done.returncode == 0, done.stderr
    for root, dirs, files in os.walk(shared / "cache"):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755)
    gone = _runner(shared, None, "store", "delete", stored)
    assert gone.returncode == 0, gone.stderr
    return stored


def test_untrusted_user_builds_through_the_daemon_and_nothing_more(
        user: str, shared: Path) -> None:
    spec = shared / "spec.yaml"
    spec.write_text(SPEC)
    stored = _unsigned_cache(shared)
    with _daemon(shared) as d:
        # No --store: the store is not writable by the user and the socket exists (auto).
        built = _runner(shared, user, "build", str(spec))
        assert built.returncode == 0, built.stderr
        out = built.stdout.strip()
        d.wait_for(f"user {user}")
        with LocalStore(str(shared / "store"), str(shared / "state")) as store:
            assert store.is_valid(out)  # registered by the daemon
        assert os.stat(out).st_uid == 0  # the store stays the daemon's
        assert os.readlink(shared / user / "result") == out
        # Built in the sandbox (its hostname), not on the host.
        assert socket.gethostname() != "localhost"
        assert Path(out, "host").read_text().strip() == "localhost"
        # The no-op build: the user's own eval cache (the daemon's state dir is not
        # theirs), one validity query to the daemon.
        again = _runner(shared, user, "build", str(spec))
        assert again.returncode == 0 and again.stdout.strip() == out, again.stderr
        assert "0 built, 1 cached through the daemon" in again.stderr
        assert list((shared / user / "cache" / "runner" / "daemon-client").iterdir())
        # Its log and its path info, through the daemon too.
        log = _runner(shared, user, "log", str(shared / user / "result"))
        assert (log.returncode, log.stdout) == (0, "hello from the sandbox\n"), log.stderr
        info = _runner(shared, user, "store", "path-info", out)
        assert info.returncode == 0 and info.stdout.startswith(out), info.stderr
        # Writing into the store directly: denied by the file system.
        direct = _runner(shared, user, "store", "add", str(spec))
        assert direct.returncode != 0 and direct.stderr.startswith("error: ")
        assert "Traceback" not in direct.stderr
        assert not any(p.name.endswith("-spec.yaml") for p in (shared / "store").iterdir())
        # An unsigned import and garbage collection: refused to the untrusted user.
        imp = _runner(shared, user, "copy", "--from", f"file://{shared / 'cache'}",
                      "--no-check-sigs", stored)
        assert imp.returncode != 0 and not os.path.exists(stored), imp.stderr
        assert "ignoring the client-specified setting" in imp.stderr
        assert "no substituter has it" in imp.stderr
        gc = _runner(shared, user, "gc")
        assert gc.returncode != 0 and "not privileged to delete store paths" in gc.stderr
        assert os.path.exists(out)
        assert d.stop() == 0


def test_trusted_user_may_import_unsigned_paths_and_collect_garbage(
        user: str, shared: Path) -> None:
    stored = _unsigned_cache(shared)
    with _daemon(shared, "trusted-users", f"root {user}") as d:
        imp = _runner(shared, user, "copy", "--from", f"file://{shared / 'cache'}",
                      "--no-check-sigs", stored)
        assert imp.returncode == 0, imp.stderr
        d.wait_for(f"user {user} (trusted)")
        with LocalStore(str(shared / "store"), str(shared / "state")) as store:
            assert store.is_valid(stored)
        gc = _runner(shared, user, "gc")
        assert gc.returncode == 0, gc.stderr
        assert stored in gc.stdout.split() and not os.path.exists(stored)
        assert d.stop() == 0
