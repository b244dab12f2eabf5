"""Who may do what through the daemon: SO_PEERCRED decides the user, `allowed-users`
and `trusted-users` (Nix's names and defaults) decide what it may do. The unprivileged
user is created for the test and runs Nix's own client."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.daemon.client import Client
from runner.daemon.protocol import Op
from runner.store import nar
from runner.store.local_store import LocalStore
from tests.daemon_harness import Daemon, as_user, nix_env, reachable_dir, run_nix
from tests.nix_oracle import needs_nix
from tests.security_env import throwaway_user

pytestmark = [
    needs_nix,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                       reason="needs root and useradd to create a throwaway user"),
]


@pytest.fixture
def user() -> Iterator[str]:
    for account in throwaway_user():
        yield account.name


@pytest.fixture
def shared() -> Iterator[Path]:
    with reachable_dir("runner-daemon-") as path:
        yield path


def _env(shared: Path, store_dir: str) -> dict[str, str]:
    root = shared / "nix"
    root.mkdir(exist_ok=True)
    env = nix_env(root, store_dir)
    for sub in ("nix-home", "nix-var", "nix-log"):
        (root / sub).mkdir(exist_ok=True)
        (root / sub).chmod(0o777)
    return env


def _input_addressed_export(d: Daemon, store_dir: str, shared: Path, env: dict[str, str]
                            ) -> tuple[str, Path]:
    """An unsigned, input-addressed-looking path: added as root, exported, deleted again."""
    content = shared / "content"
    content.write_text("built somewhere")
    dump = b"".join(nar.dump(str(content)))
    path = f"{store_dir}/{'4' * 32}-unsigned"
    with Client(d.socket).connect() as c:
        c.writer.u64(Op.ADD_TO_STORE_NAR).text(path).text("")
        c.writer.text(hashlib.sha256(dump).hexdigest()).texts([])
        c.writer.u64(0).u64(len(dump)).u64(0).texts([]).text("").u64(0).u64(1)
        c.writer.u64(len(dump)).raw(dump).u64(0)
        c.process_stderr()
    ours = f"unix://{d.socket}"
    export = shared / "export"
    export.write_bytes(subprocess.run(["nix-store", "--store", ours, "--export", path],
                                      env=env, capture_output=True, check=True).stdout)
    export.chmod(0o644)
    run_nix(env, "nix-store", "--store", ours, "--delete", path)
    return path, export


def _import(env: dict[str, str], ours: str, export: Path, user: str | None
            ) -> subprocess.CompletedProcess[str]:
    cmd = ["nix-store", "--store", ours, "--import"]
    if user is not None:
        cmd = as_user(user, cmd)
    with open(export, "rb") as f:
        return subprocess.run(cmd, env=env, stdin=f, capture_output=True, text=True,
                              timeout=120, check=False)


def test_untrusted_user_is_limited(user: str, shared: Path, store_dir: str, state_dir: str
                                   ) -> None:
    env = _env(shared, store_dir)
    with Daemon(str(shared / "socket")) as d:
        ours = f"unix://{d.socket}"
        path, export = _input_addressed_export(d, store_dir, shared, env)
        # Content-addressed data is fine for anyone: its name proves its content.
        (shared / "file").write_text("anyone may add me")
        (shared / "file").chmod(0o644)
        added = run_nix(env, "nix-store", "--store", ours, "--add", str(shared / "file"),
                        user=user).stdout.strip()
        assert added.startswith(store_dir)
        d.wait_for(f"user {user}")  # the daemon saw who it was (SO_PEERCRED)
        # An unsigned input-addressed path is not.
        proc = _import(env, ours, export, user)
        assert proc.returncode != 0
        assert "lacks a signature by a trusted key" in proc.stderr
        with LocalStore(store_dir, state_dir) as store:
            assert not store.is_valid(path)
        # Neither are garbage collection nor repair; looking is.
        proc = run_nix(env, "nix-store", "--store", ours, "--gc", user=user, check=False)
        assert proc.returncode != 0 and "not privileged to delete store paths" in proc.stderr
        assert os.path.exists(added)
        dead = run_nix(env, "nix-store", "--store", ours, "--gc", "--print-dead", user=user)
        assert added in dead.stdout.split()
        proc = run_nix(env, "nix-store", "--store", ours, "--verify", "--repair", user=user,
                       check=False)
        assert proc.returncode != 0 and "not privileged to repair" in proc.stderr
        # Control: root, trusted by default, may do all of it.
        proc = _import(env, ours, export, None)
        assert proc.returncode == 0, proc.stderr
        with LocalStore(store_dir, state_dir) as store:
            assert store.is_valid(path)
        run_nix(env, "nix-store", "--store", ours, "--gc")
        assert not os.path.exists(added)
        assert d.stop() == 0


def test_trusted_users_and_allowed_users(user: str, shared: Path, store_dir: str,
                                         state_dir: str) -> None:
    env = _env(shared, store_dir)
    with Daemon(str(shared / "socket"), "trusted-users", f"root {user}") as d:
        ours = f"unix://{d.socket}"
        path, export = _input_addressed_export(d, store_dir, shared, env)
        proc = _import(env, ours, export, user)
        assert proc.returncode == 0, proc.stderr
        d.wait_for(f"user {user} (trusted)")
        with LocalStore(store_dir, state_dir) as store:
            assert store.is_valid(path)
        assert d.stop() == 0
    with Daemon(str(shared / "socket2"), "allowed-users", "root") as d:
        proc = run_nix(env, "nix-store", "--store", f"unix://{d.socket}", "--gc",
                       "--print-dead", user=user, check=False)
        assert proc.returncode != 0
        assert f"user '{user}' is not allowed to connect" in proc.stderr
        # Control: root is still allowed.
        run_nix(env, "nix-store", "--store", f"unix://{d.socket}", "--gc", "--print-dead")
        assert d.stop() == 0
