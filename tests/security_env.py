"""What the security tests (tests/test_security_*.py) share: a throwaway local user
to attack with, running probes as someone, and sandboxed builds started in-process.

docs/security.md lists every attack class with its defence and its tests.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox import spawn
from runner.sandbox.plan import SandboxPlan, default_ids, make_plan
from runner.sandbox.served import ServedProcess
from runner.settings import DEFAULT_SANDBOX_PATHS

REPO = Path(__file__).resolve().parents[1]
HASH = "0123456789abcdfghijklmnpqrsvwxyz"


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return as_ids(self.uid, self.gid, *argv, **kw)


def as_ids(uid: int, gid: int, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def throwaway_user() -> Iterator[User]:
    """A real local account for the attacker, deleted afterwards (root only)."""
    if os.geteuid() != 0:
        pytest.skip("creating a local attacker account needs root")
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd and setpriv are needed to create and become an attacker")
    name = f"rnatk{secrets.token_hex(4)}"
    made = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/false",
                           "--user-group", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd cannot create an account here: {made.stderr.strip()}")
    try:
        ids = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
        gids = subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True)
        yield User(name, int(ids.stdout), int(gids.stdout))
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def probe(user: User, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python `code` as `user` (the system Python: ours may be under /root)."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return user.run(python, "-I", "-c", code, *args)


class Settings:
    def __init__(self, **extra: Any) -> None:
        self.values = {"sandbox-paths": DEFAULT_SANDBOX_PATHS,
                       "allowed-spec-sandbox-paths": [], **extra}

    def text(self, name: str) -> str:
        return str(self.values[name])

    def flag(self, name: str) -> bool:
        return bool(self.values[name])

    def strings(self, name: str) -> list[str]:
        return list(self.values[name])


@dataclasses.dataclass
class Build:
    plan: SandboxPlan
    proc: ServedProcess | subprocess.Popen[bytes]
    out: str
    build_dir: Path

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def finish(self) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.wait(), ((out or b"") + (err or b"")).decode(errors="replace")


def start(work: Path, script: str, *, fixed_output: bool = False, build_uid: int | None = None,
          env: dict[str, str] | None = None, name: str = "out",
          settings: Settings | None = None, fork_server: bool | None = None) -> Build:
    """A sandboxed `/bin/sh -c script` with `$out` in `work/store`; stdout is a pipe.

    The build dir holds a FIFO `go` the builder can wait on (`read x < /build/go`)."""
    store, build = work / "store", work / f"build-{name}"
    store.mkdir(exist_ok=True)
    build.mkdir()
    os.mkfifo(build / "go", 0o666)
    out = f"{store}/{HASH}-{name}"
    full_env = {"PATH": "/usr/bin:/bin", "out": out, **(env or {})}
    ids = default_ids(build_uid) if build_uid is not None else None
    plan = make_plan(argv=["/bin/sh", "-c", script], env=full_env, build_dir=str(build),
                     store_dir=str(store), closure=[], outputs=[out], fixed_output=fixed_output,
                     settings=settings or Settings(), ids=ids or default_ids())
    proc = spawn(plan, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 fork_server=fork_server)
    return Build(plan, proc, out, build)


def release(build: Build) -> None:
    """Let a builder waiting on `/build/go` go on."""
    with open(build.build_dir / "go", "w") as f:
        f.write("go\n")


def tree_state(paths: Sequence[Path]) -> list[tuple[str, int, int, int]]:
    """(path, uid, mode, mtime) of each path: what a victim wants left alone."""
    out = []
    for p in paths:
        st = p.lstat()
        out.append((str(p), st.st_uid, st.st_mode, st.st_mtime_ns))
    return out


def public_tmp() -> Iterator[Path]:
    """A 0755 work dir under the system temp dir (pytest's tmp_path is root-only, so
    an attacker account could not even reach its own victims there)."""
    import tempfile

    from runner.store.canonicalise import remove_tree

    work = Path(tempfile.mkdtemp(prefix="runner-security-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        remove_tree(str(work))
