"""`runner daemon` as a subprocess over the test's store, and Nix 2.8's clients pointed at it."""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """A running `runner daemon`; its stderr lines arrive in `self.lines` (a queue)."""

    def __init__(self, socket_path: str, *options: str, env: dict[str, str] | None = None,
                 ) -> None:
        self.socket = socket_path
        opts = [a for name, value in _pairs(options) for a in ("--option", name, value)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "daemon", "--socket", socket_path, *opts],
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        first = self.proc.stderr.readline() if self.proc.stderr else ""
        self.log.append(first)
        if "listening on" not in first:
            raise AssertionError(f"daemon did not start: {first}{self.proc.stderr.read()}")  # type: ignore[union-attr]
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The next daemon log line containing `text` (the tests' synchronisation marker)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if text in line:
                return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Seen once in CI (test_daemon_trust, py311): say what it was waiting for.
            raise AssertionError(f"the daemon did not stop within 60 s; its log:\n"
                                 f"{''.join(self.log)}{_process_tree(self.proc.pid)}") from None

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: SIGTERM ends the connections too
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pairs(options: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(options[i], options[i + 1]) for i in range(0, len(options), 2)]


def nix_env(root: Path, store_dir: str) -> dict[str, str]:
    """An environment for Nix's clients: the runner store's dir, nothing from the host."""
    conf = root / "nix-etc"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "nix.conf").write_text("substituters =\nexperimental-features = nix-command\n"
                                   "sandbox = false\n")
    home = root / "nix-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "NIX_STORE_DIR": store_dir, "NIX_CONF_DIR": str(conf),
            "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
            "NIX_STATE_DIR": str(root / "nix-var"), "NIX_LOG_DIR": str(root / "nix-log")}


def nix_local_store(root: Path, store_dir: str) -> str:
    """A Nix store with the same store dir as runner's, its files kept elsewhere."""
    return (f"local?store={store_dir}&real={root / 'nix-real'}&state={root / 'nix-state'}"
            f"&log={root / 'nix-logs'}")


def as_user(user: str, cmd: list[str]) -> list[str]:
    """`cmd` run as `user` (its uid, primary group and groups)."""
    gid = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", "--", *cmd]


def run_nix(env: dict[str, str], *argv: str, check: bool = True, user: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    cmd = list(argv)
    if user is not None:
        cmd = as_user(user, cmd)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}")
    return proc


class NixDaemon:
    """Nix 2.8's `nix-daemon` over a throwaway Nix store with the given store dir, on a
    socket the test listens on itself (socket activation: ready without waiting)."""

    def __init__(self, root: Path, store_dir: str, *, builds: bool = False) -> None:
        """`builds`: let its builders run /bin/sh (a store whose files live elsewhere
        builds in Nix's chroot; the host's /bin, /usr, /lib… are mounted in)."""
        root.mkdir(parents=True, exist_ok=True)
        self.socket = str(root / "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket)
        listener.listen(16)
        fd = listener.fileno()
        env = nix_env(root, store_dir)
        if builds:
            paths = " ".join(p for p in ("/bin", "/usr", "/lib", "/lib64", "/lib32")
                             if os.path.exists(p))
            env["NIX_CONFIG"] = f"sandbox-paths = {paths}\n"
        self.proc = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec nix-daemon --option store "$0"',
             nix_local_store(root, store_dir)],
            preexec_fn=lambda: os.dup2(fd, 3), pass_fds=[3], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listener.close()

    def __enter__(self) -> str:
        return self.socket

    def __exit__(self, *exc: object) -> None:
        # Its connection processes are in their own sessions: end them by pid first.
        for child in _children(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _process_tree(pid: int) -> str:
    """Each process under `pid` with its state and what it waits in (wchan)."""
    lines = []
    for p in [pid, *_children(pid)]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = Path(f"/proc/{p}/wchan").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        lines.append(f"  pid {p} {stat} in {wchan}: {cmd[:120]}")
    return "processes:\n" + "\n".join(lines)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def interpreter_runnable_by(user: str) -> str | None:
    """Why `user` cannot run this interpreter (None: it can). A pyenv or tox interpreter
    under a 0700 home is out of another user's reach, and so is its libpython; .ci/run
    opens the path to it (`o+x`), a developer's machine may not have."""
    proc = subprocess.run(as_user(user, [sys.executable, "-c", "pass"]), capture_output=True,
                          text=True, timeout=60)
    if proc.returncode == 0:
        return None
    return (f"{sys.executable} cannot be run by {user} here ({proc.stderr.strip()[-200:]}); "
            ".ci/run makes it reachable")


@contextlib.contextmanager
def reachable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory a throwaway user can reach (pytest's tmp dirs are private to
    root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def readable_site_packages(to: Path) -> Path:
    """Copy runner's installed dependencies (recursively) to `to`, where another user can
    read them: a tox venv lives in a root-only `.tox`, and the base interpreter's own
    site-packages may lack them. Put the result on that user's PYTHONPATH."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    wanted = ["runner"]
    while wanted:
        name = wanted.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                wanted.append(req.name)
        if key == "runner":
            continue  # this checkout is on PYTHONPATH itself
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0].endswith(".dist-info") or ".." in file.parts or not source.is_file():
                continue
            target = to / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for path in [to, *to.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return to
