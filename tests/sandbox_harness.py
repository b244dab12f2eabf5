"""Run one sandboxed build for the sandbox tests, in-process or as another user.

Imports nothing but the standard library and `runner`, so the tests can run it
as an unprivileged user with the system Python:
`python3 -m tests.sandbox_harness < request.json > result.json`.

A request names a work dir; the harness makes `<work>/store` (with a closure of
directories `<hash>-<name>` holding a file `data`, plus a store path `secret`
that is not in the closure) and `<work>/build`, runs the builder through
`make_plan` + `spawn`, and reports what happened on the host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.sandbox import make_plan, slots, spawn
from runner.sandbox.native import SPAWN_ENV
from runner.sandbox.plan import default_ids
from runner.sandbox.storeview import STORE_VIEW_ENV
from runner.settings import Settings
from runner.store import trash

FAKE_HASH = "0123456789abcdfghijklmnpqrsvwxyz"  # 32 characters, Nix's alphabet


def store_path(store: str, name: str) -> str:
    return f"{store}/{FAKE_HASH}-{name}"


def run(request: dict[str, Any]) -> dict[str, Any]:
    work = Path(request["work"])
    store, build = str(work / "store"), str(work / "build")
    os.makedirs(store, exist_ok=True)
    os.makedirs(build, exist_ok=True)
    closure = []
    for name, content in {**request.get("closure", {}), "secret": "top secret"}.items():
        path = store_path(store, name)
        os.makedirs(path, exist_ok=True)
        Path(path, "data").write_text(content)
        if name != "secret" or request.get("declare_secret"):  # the control declares it
            closure.append(path)
    for name, content in request.get("file_inputs", {}).items():  # store paths that are files
        Path(store_path(store, name)).write_text(content)
        closure.append(store_path(store, name))
    for name, target in request.get("link_inputs", {}).items():  # ... and symlinks
        if not os.path.islink(store_path(store, name)):
            os.symlink(target, store_path(store, name))
        closure.append(store_path(store, name))
    outputs = {name: store_path(store, name) for name in request.get("outputs", ["out"])}
    env = {
        "PATH": "/usr/bin:/bin", "HOME": "/homeless-shelter", "NIX_STORE": store,
        "NIX_BUILD_TOP": "/build", "TMPDIR": "/build", "PWD": "/build",
        **{name: store_path(store, name) for name in request.get("closure", {})},
        **{name: store_path(store, name) for name in request.get("file_inputs", {})},
        **{name: store_path(store, name) for name in request.get("link_inputs", {})},
        **outputs, **request.get("env", {}),
    }
    settings = Settings.load(environ={}, config_file=work / "no-config").with_overrides(
        **request.get("settings", {}))
    argv = request.get("argv") or ["/bin/sh", "-c", request["script"]]
    result: dict[str, Any] = {"store": store}
    view = request.get("store_view")  # force one way of making the store view
    if view:
        os.environ[STORE_VIEW_ENV] = view
    if request.get("spawn"):  # "python": the fork server, not the C spawn
        os.environ[SPAWN_ENV] = request["spawn"]
    try:
        plan = make_plan(argv=argv, env=env, build_dir=build, store_dir=store, closure=closure,
                         outputs=outputs.values(), fixed_output=request.get("fixed_output", False),
                         settings=settings, ids=default_ids())
        proc = spawn(plan, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except RunnerError as e:
        return {**result, "error": {"reason": e.reason, "message": e.message}}
    except OSError as e:
        return {**result, "error": {"reason": "oserror", "message": str(e)}}
    finally:
        if view:
            del os.environ[STORE_VIEW_ENV]
        if request.get("spawn"):
            del os.environ[SPAWN_ENV]
    if request.get("kill"):
        assert proc.stdout is not None
        first_line = proc.stdout.readline()
        result["first_line"] = first_line.decode()
        if request["kill"] == "group":
            # SIGKILL: the builder may be PID 1 of its namespace (runner/sandbox/native.py),
            # which ignores the other signals from outside it, as in Nix.
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    out, err = proc.communicate()
    slots.release()  # as the worker does before a run ends
    trash.drain()  # as the worker does before a run ends: no staging dir set aside is left
    marker = request.get("marker")
    survivors = processes_with(marker) if marker else []
    if request.get("kill"):  # the builder dies by its parent-death signal, a moment later
        deadline = time.monotonic() + 10
        while survivors and time.monotonic() < deadline:
            time.sleep(0.01)
            survivors = processes_with(marker) if marker else []
    result.update(
        returncode=proc.returncode, stdout=(out or b"").decode(errors="replace"),
        stderr=(err or b"").decode(errors="replace") + _exit_problem(proc),
        survivors=survivors,
        outputs={name: describe(path) for name, path in outputs.items()},
        store_listing=sorted(os.listdir(store)),
        build_listing=sorted(os.listdir(build)),
    )
    return result


def _exit_problem(proc: object) -> str:
    """What collecting the outputs met, where runner collects (no supervisor to say it)."""
    problem = getattr(proc, "exit_problem", None)
    return f"sandbox: cannot collect the outputs: {problem}\n" if problem else ""


def describe(path: str) -> dict[str, Any] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    info: dict[str, Any] = {"uid": st.st_uid, "gid": st.st_gid, "is_dir": os.path.isdir(path)}
    if os.path.isfile(path):
        info["content"] = Path(path).read_text(errors="replace")
    elif info["is_dir"]:
        info["files"] = {
            str(p.relative_to(path)): p.read_text(errors="replace")
            for p in sorted(Path(path).rglob("*")) if p.is_file()
        }
    return info


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
