"""The sandbox plan: what a build sees, as a pure function of its inputs.

`make_plan` decides every mount, the user and group the builder runs as, the
hostname and whether the network is private. It touches no file: host paths
that may be missing are marked `optional` and the executor skips them.
docs/sandbox.md is the contract this module implements.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from runner.errors import RunnerError

BUILD_TOP = "/build"
HOSTNAME = "localhost"

# As root there is no user namespace: the builder runs as this host uid/gid,
# Nix's first build user (nixbld1) and group (nixbld). Nothing else uses them.
ROOT_BUILD_UID = 30001
ROOT_BUILD_GID = 30000
# In a user namespace the builder is 1000:100 inside, as in Nix.
USERNS_BUILD_UID = 1000
USERNS_BUILD_GID = 100

DEVICES = ("/dev/full", "/dev/null", "/dev/random", "/dev/tty", "/dev/urandom", "/dev/zero")
DEV_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
             ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
             ("/dev/ptmx", "pts/ptmx"))
# What a fixed-output build gets from the host besides the network.
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/services", "/etc/nsswitch.conf")
# The derivation attribute a spec's `sandbox-paths` key becomes (docs/spec-format.md).
SPEC_PATHS_ATTR = "__sandboxPaths"

# "store": the writable store dir showing the plan's `inputs` read-only; `source`
# the staging store (where outputs land), `data` the staging dir's overlay work dir.
MountKind = Literal["tmpfs", "bind", "device", "proc", "devpts", "file", "symlink", "store"]


class SettingsLike(Protocol):
    """The part of `runner.settings.Settings` the plan reads."""

    def text(self, name: str) -> str: ...

    def flag(self, name: str) -> bool: ...

    def strings(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class Mount:
    """One step of building the sandbox's root, applied in order.

    `target` is the path inside; `source` a host path (bind, device); `data`
    the tmpfs options, a file's text or a symlink's target.
    """

    kind: MountKind
    target: str
    source: str = ""
    data: str = ""
    writable: bool = False
    optional: bool = False  # skipped when the host source does not exist
    # A spec's path: its resolved host source must lie under one of these
    # (resolved) prefixes, checked again on what is actually bound.
    within: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildIds:
    """Who the builder runs as and who owns the outputs afterwards (host ids).

    `user_namespace`: the builder is `build_uid:build_gid` inside a one-id user
    namespace mapped to the owner (runner not root); else those are host ids.
    """

    user_namespace: bool
    build_uid: int
    build_gid: int
    owner_uid: int
    owner_gid: int


def default_ids(build_uid: int = ROOT_BUILD_UID, build_gid: int = ROOT_BUILD_GID) -> BuildIds:
    """This process's ids: as root, the host build uid given (one per build slot:
    `runner.sandbox.uidpool`); otherwise a user namespace."""
    owner_uid, owner_gid = os.geteuid(), os.getegid()
    if owner_uid == 0:
        return BuildIds(False, build_uid, build_gid, 0, owner_gid)
    return BuildIds(True, USERNS_BUILD_UID, USERNS_BUILD_GID, owner_uid, owner_gid)


@dataclass(frozen=True)
class SandboxPlan:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    hostname: str
    private_network: bool
    user_namespace: bool
    uid_map: str  # written to /proc/self/uid_map; empty without a user namespace
    gid_map: str
    build_uid: int  # the builder's ids as seen inside (host ids when running as root)
    build_gid: int
    owner_uid: int  # host ids that the outputs belong to afterwards
    owner_gid: int
    mounts: tuple[Mount, ...]
    store_dir: str
    staging_dir: str  # 0700 host dir holding `staging_store`; removed after the build
    staging_store: str  # host dir shown at store_dir; outputs are copied out of it
    build_dir: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()  # the input closure: each read-only at its own path
    deny_unix_sockets: bool = False  # seccomp: no AF_UNIX sockets (fixed-output builds)


def make_plan(
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    build_dir: str,
    store_dir: str,
    closure: Iterable[str],
    outputs: Iterable[str],
    fixed_output: bool,
    settings: SettingsLike,
    ids: BuildIds,
) -> SandboxPlan:
    """The sandbox for one build. Depends only on its arguments: `ids` says who
    builds (the caller's `default_ids()`), so root and rootless plans can be made
    on any machine."""
    if not argv:
        raise RunnerError("sandbox: empty builder command", reason="sandbox-setup")
    store_dir = _absolute(store_dir, "store dir")
    build_dir = _absolute(build_dir, "build dir")
    outputs_t = tuple(sorted({_store_child(p, store_dir, "output") for p in outputs}))
    # An output is never also an input (it is rebuilt), so it is not bound read-only.
    closure_t = tuple(sorted({_store_child(p, store_dir, "input") for p in closure}
                             - set(outputs_t)))
    as_root = not ids.user_namespace
    uid, gid = ids.build_uid, ids.build_gid
    owner_uid, owner_gid = ids.owner_uid, ids.owner_gid
    key = posixpath.basename(outputs_t[0] if outputs_t else build_dir)

    mounts: list[Mount] = [
        Mount("tmpfs", "/", data="mode=0755"),
        Mount("tmpfs", "/tmp", data="mode=1777", writable=True),
        Mount("tmpfs", "/dev", data="mode=0755"),
        *(Mount("device", d, source=d, writable=True) for d in DEVICES),
        Mount("tmpfs", "/dev/shm", data="mode=1777", writable=True),
        Mount("devpts", "/dev/pts"),
        *(Mount("symlink", link, data=target) for link, target in DEV_LINKS),
        Mount("proc", "/proc"),
        Mount("file", "/etc/passwd", data=_passwd(uid, gid)),
        Mount("file", "/etc/group", data=_group(gid)),
    ]
    if fixed_output:
        mounts += [Mount("bind", f, source=f, optional=True) for f in NETWORK_FILES]
    else:
        mounts.append(Mount("file", "/etc/hosts", data="127.0.0.1 localhost\n::1 localhost\n"))
    mounts += _host_paths(settings, env)
    mounts.append(Mount("bind", BUILD_TOP, source=build_dir, writable=True))
    staging = f"{store_dir}/.sandbox-{key}"
    mounts.append(Mount("store", store_dir, source=f"{staging}/store", data=f"{staging}/work",
                        writable=True))
    _check_unique(mounts)
    # Parents before children; the sort is stable, so equal depths keep the order above.
    mounts.sort(key=lambda m: 0 if m.target == "/" else m.target.count("/"))

    return SandboxPlan(
        argv=tuple(argv),
        env=dict(env),
        cwd=BUILD_TOP,
        hostname=HOSTNAME,
        private_network=not fixed_output,
        user_namespace=not as_root,
        uid_map="" if as_root else f"{uid} {owner_uid} 1\n",
        gid_map="" if as_root else f"{gid} {owner_gid} 1\n",
        build_uid=uid,
        build_gid=gid,
        owner_uid=owner_uid,
        owner_gid=owner_gid,
        mounts=tuple(mounts),
        store_dir=store_dir,
        staging_dir=staging,
        staging_store=f"{staging}/store",
        build_dir=build_dir,
        outputs=outputs_t,
        inputs=closure_t,
        deny_unix_sockets=fixed_output,
    )


def exec_candidates(plan: SandboxPlan) -> list[str]:
    """Where the builder is looked for, as Popen would (PATH from the plan's env)."""
    exe = plan.argv[0]
    if posixpath.dirname(exe):
        return [exe]
    return [posixpath.join(d, exe) for d in os.get_exec_path(dict(plan.env))]


def _host_paths(settings: SettingsLike, env: Mapping[str, str]) -> list[Mount]:
    """Read-only binds from `sandbox-paths`, plus the spec's own where allowed."""
    mounts = [_host_path(entry) for entry in settings.strings("sandbox-paths")]
    allowed = [a.rstrip("/") or "/" for a in settings.strings("allowed-spec-sandbox-paths")]
    for entry in env.get(SPEC_PATHS_ATTR, "").split():
        mount = _host_path(entry)
        if not any(_is_within(mount.source, a) for a in allowed):
            raise not_allowed(mount.source)
        # The string check is not enough (a symlink under an allowed prefix can
        # point anywhere): the executor resolves the source and checks again.
        mounts.append(replace(mount, within=tuple(allowed)))
    return mounts


def not_allowed(source: str, real: str = "") -> RunnerError:
    where = f" (which resolves to '{real}')" if real and real != source else ""
    return RunnerError(
        f"sandbox path '{source}'{where} is not allowed; "
        "add it to 'allowed-spec-sandbox-paths' to permit it",
        reason="sandbox-path-not-allowed",
    )


def _host_path(entry: str) -> Mount:
    """`PATH`, `INSIDE=HOST`; a trailing `?` (Nix's optional mark) is accepted."""
    entry = entry.rstrip("?")
    target, sep, source = entry.partition("=")
    if not sep:
        source = target
    target = _absolute(target, "sandbox path")
    source = _absolute(source, "sandbox path")
    return Mount("bind", target, source=source, optional=True)


def _check_unique(mounts: list[Mount]) -> None:
    seen: set[str] = set()
    for m in mounts:
        if m.target in seen:
            raise RunnerError(f"sandbox: '{m.target}' is mounted twice", reason="sandbox-setup")
        seen.add(m.target)


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise RunnerError(f"sandbox: {what} '{path}' is not absolute", reason="sandbox-setup")
    return posixpath.normpath(path).replace("//", "/")


def _store_child(path: str, store_dir: str, what: str) -> str:
    name = path[len(store_dir) + 1:]
    if (path.startswith(store_dir) and path[len(store_dir):len(store_dir) + 1] == "/"
            and name not in ("", ".", "..") and "/" not in name):
        return path  # already a normal child: most of a large closure, so no normpath
    path = _absolute(path, what)
    if posixpath.dirname(path) != store_dir:
        raise RunnerError(f"sandbox: {what} '{path}' is not in the store {store_dir}",
                          reason="sandbox-setup")
    return path


def _is_within(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _passwd(uid: int, gid: int) -> str:
    return (
        "root:x:0:0:Nix build user:/build:/noshell\n"
        f"nixbld:x:{uid}:{gid}:Nix build user:/build:/noshell\n"
        "nobody:x:65534:65534:Nobody:/:/noshell\n"
    )


def _group(gid: int) -> str:
    return f"root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n"
