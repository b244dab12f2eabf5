"""A derivation as a REAPI Action: the pure part of remote execution.

The input root mirrors the local sandbox: `<store dir>/<each path of the input
closure>`, the build dir `/build` (the working directory), `/tmp` and the
`/etc` stubs. The remote worker supplies the host tools (`/bin`, `/usr`, …)
that specs use, as its own configuration (docs/remote.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from google.protobuf import duration_pb2

from runner.build.environment import attr_file_name, build_env
from runner.remote._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from runner.remote.digests import Blob, Key, digest, message_blob
from runner.remote.merkle import RootBuilder, Tree
from runner.settings import Settings
from runner.store.derivation import Derivation

BUILD_DIR = "build"  # relative to the input root, like the sandbox's /build
BUILD_TOP = "/" + BUILD_DIR
# As in the local sandbox's user namespace (Nix's nixbld 1000:100).
BUILD_UID = 1000
BUILD_GID = 100

_ISA = {"x86_64": "x86-64", "i686": "x86-32", "aarch64": "aarch64", "armv7l": "armv7l",
        "riscv64": "riscv64", "powerpc64le": "ppc64le"}
_OS = {"linux": "linux", "darwin": "macos", "freebsd": "freebsd"}


@dataclass(frozen=True)
class PreparedAction:
    action: re_pb2.Action
    action_key: Key
    command: re_pb2.Command
    blobs: Mapping[Key, Blob]  # everything the action needs in the CAS
    outputs: Mapping[str, str]  # Command output path -> store path


def remote_refusal(drv: Derivation) -> str | None:
    """Why this derivation must be built locally, or None."""
    env = drv.env
    if env.get("__noChroot") == "1":
        return "it asks for no sandbox (__noChroot)"
    if env.get("__sandboxPaths", "").strip() or env.get("sandboxPaths", "").strip():
        return "it asks for host paths in its sandbox (sandbox-paths)"
    if env.get("preferLocalBuild") == "1":
        return "it prefers a local build (prefer-local-build)"
    if platform_properties(drv.system, network=False) is None:
        return f"its system '{drv.system}' has no REAPI platform"
    try:
        "".join([drv.builder, *drv.args, *env.keys(), *env.values()]).encode("utf-8")
    except UnicodeEncodeError:  # bytes from a Nix-written .drv (Latin-1, CP1252)
        return "its builder, arguments or environment hold bytes that are not UTF-8"
    return None


def platform_properties(system: str, *, network: bool) -> dict[str, str] | None:
    """REAPI platform lexicon for a Nix system double such as `x86_64-linux`."""
    arch, _, os_name = system.partition("-")
    if arch not in _ISA or os_name not in _OS:
        return None
    return {
        "ISA": _ISA[arch],
        "OSFamily": _OS[os_name],
        "network": "on" if network else "off",
        "unixGID": str(BUILD_GID),
        "unixUID": str(BUILD_UID),
    }


def effective_timeout(settings: Settings, drv: Derivation) -> int:
    """The setting, tightened (never loosened) by the derivation's `timeout`."""
    limits = [settings.number("timeout")]
    with contextlib.suppress(ValueError):
        limits.append(int(drv.env.get("timeout", "0")))
    positive = [n for n in limits if n > 0]
    return min(positive) if positive else 0


def remote_env(drv: Derivation, settings: Settings) -> dict[str, str]:
    env = build_env(drv, BUILD_TOP, settings)
    # The local CPU count is no business of a remote worker, and the action's
    # digest must not depend on it: pass the setting as is (0 = all cores of
    # the builder, as Nix passes `cores`).
    env["NIX_BUILD_CORES"] = str(settings.number("cores"))
    return env


def output_path(store_path: str) -> str:
    """A store path relative to the working directory `/build`."""
    return "../" + store_path.lstrip("/")


def prepare_action(
    drv: Derivation, store_dir: str, closure: Collection[str],
    tree_of: Callable[[str], Tree], settings: Settings,
) -> PreparedAction:
    properties = platform_properties(drv.system, network=drv.is_fixed_output)
    if properties is None:
        raise ValueError(f"no REAPI platform for system '{drv.system}'")
    root = RootBuilder()
    root.add_dir(store_dir)
    root.add_dir(BUILD_DIR)
    root.add_dir("tmp")  # a private /tmp, also where a store below /tmp lives
    for path in sorted(closure):
        root.add_tree(path, tree_of(path))
    for name in set(drv.env.get("passAsFile", "").split()) & drv.env.keys():
        root.add_text(f"{BUILD_DIR}/{attr_file_name(name)}", drv.env[name])
    root.add_text("etc/passwd", f"root:x:0:0:Nix build user:{BUILD_TOP}:/noshell\n"
                  f"nixbld:x:{BUILD_UID}:{BUILD_GID}:Nix build user:{BUILD_TOP}:/noshell\n"
                  "nobody:x:65534:65534:Nobody:/:/noshell\n")
    root.add_text("etc/group", f"root:x:0:\nnixbld:!:{BUILD_GID}:\nnogroup:x:65534:\n")
    root.add_text("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")
    root_key = root.build()

    outputs = {output_path(out.path): out.path for out in drv.outputs.values()}
    platform = re_pb2.Platform(properties=[
        re_pb2.Platform.Property(name=k, value=v) for k, v in sorted(properties.items())])
    env = remote_env(drv, settings)
    command = re_pb2.Command(
        arguments=[drv.builder, *drv.args],
        environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=env[k])
                               for k in sorted(env)],
        output_paths=sorted(outputs),
        working_directory=BUILD_DIR,
        platform=platform,
    )
    command_blob = message_blob(command)
    action = re_pb2.Action(
        command_digest=digest(command_blob.key),
        input_root_digest=digest(root_key),
        # Impure derivations may give a different result each time: never cache.
        do_not_cache=drv.env.get("__impure") == "1",
        platform=platform,
    )
    if timeout := effective_timeout(settings, drv):
        action.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout))
    action_blob = message_blob(action)
    blobs = dict(root.blobs)
    blobs[command_blob.key] = command_blob
    blobs[action_blob.key] = action_blob
    return PreparedAction(action, action_blob.key, command, blobs, outputs)
