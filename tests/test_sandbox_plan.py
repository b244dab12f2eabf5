"""The sandbox plan as a pure function, and the policy that decides whether to sandbox."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError
from runner.sandbox import SandboxPlan, make_plan, use_sandbox
from runner.sandbox.plan import BuildIds, Mount, default_ids
from runner.settings import Settings

STORE = "/nix/store"
IN = f"{STORE}/0123456789abcdfghijklmnpqrsvwxyz-in"
OUT = f"{STORE}/0123456789abcdfghijklmnpqrsvwxyz-out"


def _settings(**overrides: Any) -> Settings:
    return Settings.load(environ={}, config_file=Path("/nonexistent")).with_overrides(**overrides)


def _plan(**kw: Any) -> SandboxPlan:
    args: dict[str, Any] = dict(argv=["/bin/sh", "-c", "true"], env={"out": OUT},
                                build_dir="/tmp/b", store_dir=STORE, closure=[IN], outputs=[OUT],
                                fixed_output=False, settings=_settings(), ids=default_ids())
    return make_plan(**{**args, **kw})


def _by_target(plan: SandboxPlan) -> dict[str, Mount]:
    return {m.target: m for m in plan.mounts}


def test_same_inputs_same_plan() -> None:
    assert _plan() == _plan()


def test_layout() -> None:
    plan = _plan()
    mounts = _by_target(plan)
    assert plan.mounts[0] == Mount("tmpfs", "/", data="mode=0755")
    assert mounts["/build"] == Mount("bind", "/build", source="/tmp/b", writable=True)
    assert plan.staging_dir == f"{STORE}/.sandbox-{os.path.basename(OUT)}"
    assert mounts[STORE].source == plan.staging_store == f"{plan.staging_dir}/store"
    assert mounts[STORE].writable
    assert plan.inputs == (IN,) and IN not in mounts  # read-only, in the store view
    assert mounts[STORE].kind == "store" and mounts[STORE].data == f"{plan.staging_dir}/work"
    assert mounts["/tmp"].writable and mounts["/dev/shm"].writable
    assert not mounts["/dev"].writable
    assert mounts["/proc"].kind == "proc" and mounts["/dev/pts"].kind == "devpts"
    assert {m.source for m in plan.mounts if m.kind == "device"} == {
        "/dev/full", "/dev/null", "/dev/random", "/dev/tty", "/dev/urandom", "/dev/zero"}
    for path in ("/bin", "/usr", "/lib", "/lib32", "/lib64", "/etc/alternatives"):
        assert mounts[path] == Mount("bind", path, source=path, optional=True)
    assert plan.cwd == "/build" and plan.hostname == "localhost"
    assert plan.argv == ("/bin/sh", "-c", "true") and plan.env == {"out": OUT}
    assert plan.outputs == (OUT,)


def test_an_output_in_the_closure_stays_writable() -> None:
    assert _plan(closure=[IN, OUT]) == _plan()


def test_parents_are_mounted_before_children() -> None:
    targets = [m.target for m in _plan(store_dir="/tmp/s/store", closure=["/tmp/s/store/x-in"],
                                       outputs=["/tmp/s/store/x-out"]).mounts]
    for i, target in enumerate(targets):
        for parent in targets[i + 1:]:
            assert not target.startswith(parent.rstrip("/") + "/"), (target, parent)


def test_identity_and_id_maps() -> None:
    plan = _plan()
    mounts = _by_target(plan)
    if os.geteuid() == 0:
        assert (plan.build_uid, plan.build_gid) == (30001, 30000)
        assert not plan.user_namespace and plan.uid_map == ""
    else:
        assert (plan.build_uid, plan.build_gid) == (1000, 100)
        assert plan.uid_map == f"1000 {os.geteuid()} 1\n"
        assert plan.gid_map == f"100 {os.getegid()} 1\n"
    assert (plan.owner_uid, plan.owner_gid) == (os.geteuid(), os.getegid())
    assert f"nixbld:x:{plan.build_uid}:{plan.build_gid}:" in mounts["/etc/passwd"].data
    assert f"nixbld:!:{plan.build_gid}:" in mounts["/etc/group"].data


def test_root_and_rootless_plans_from_explicit_ids() -> None:
    """The plan is pure: the ids are arguments, so both shapes are tested on any host."""
    root = _plan(ids=BuildIds(False, 30042, 30000, 0, 0))
    assert (root.build_uid, root.build_gid, root.owner_uid) == (30042, 30000, 0)
    assert not root.user_namespace and root.uid_map == root.gid_map == ""
    assert "nixbld:x:30042:30000:" in _by_target(root)["/etc/passwd"].data
    rootless = _plan(ids=BuildIds(True, 1000, 100, 4321, 8765))
    assert rootless.user_namespace
    assert (rootless.uid_map, rootless.gid_map) == ("1000 4321 1\n", "100 8765 1\n")
    assert (rootless.owner_uid, rootless.owner_gid) == (4321, 8765)
    # Everything but identity is the same.
    strip: dict[str, Any] = {"uid_map": "", "gid_map": "", "user_namespace": False, "build_uid": 0,
             "build_gid": 0, "owner_uid": 0, "owner_gid": 0}
    assert (dataclasses.replace(root, mounts=(), **strip)
            == dataclasses.replace(rootless, mounts=(), **strip))
    assert _plan(ids=BuildIds(False, 30042, 30000, 0, 0)) == root


def test_fixed_output_builds_deny_unix_sockets() -> None:
    assert _plan(fixed_output=True).deny_unix_sockets
    assert not _plan().deny_unix_sockets


def test_spec_paths_carry_the_resolved_check() -> None:
    plan = _plan(settings=_settings(allowed_spec_sandbox_paths=["/srv/"]),
                 env={"out": OUT, "__sandboxPaths": "/data=/srv/x"})
    assert _by_target(plan)["/data"].within == ("/srv",)


def test_network_only_for_fixed_output() -> None:
    plain, fixed = _plan(), _plan(fixed_output=True)
    assert plain.private_network and not fixed.private_network
    assert _by_target(plain)["/etc/hosts"].kind == "file"
    assert "/etc/resolv.conf" not in _by_target(plain)
    assert _by_target(fixed)["/etc/resolv.conf"] == Mount(
        "bind", "/etc/resolv.conf", source="/etc/resolv.conf", optional=True)
    assert _by_target(fixed)["/etc/hosts"].kind == "bind"


def test_sandbox_paths_setting_forms() -> None:
    plan = _plan(settings=_settings(sandbox_paths=["/usr", "/opt/x=/srv/y", "/maybe?"]))
    mounts = _by_target(plan)
    assert mounts["/opt/x"] == Mount("bind", "/opt/x", source="/srv/y", optional=True)
    assert mounts["/maybe"].source == "/maybe"
    assert "/bin" not in mounts


def test_spec_sandbox_paths_need_permission() -> None:
    env = {"__sandboxPaths": "/srv/data/set1 /tools=/srv/tools"}
    with pytest.raises(RunnerError) as e:
        _plan(env=env, settings=_settings(allowed_spec_sandbox_paths=["/srv/data"]))
    assert e.value.reason == "sandbox-path-not-allowed"
    assert "/srv/tools" in e.value.message
    plan = _plan(env=env, settings=_settings(allowed_spec_sandbox_paths=["/srv/data/",
                                                                         "/srv/tools"]))
    assert _by_target(plan)["/tools"].source == "/srv/tools"
    assert not _by_target(plan)["/srv/data/set1"].writable
    with pytest.raises(RunnerError) as e:  # a prefix of a name is not a parent
        _plan(env={"__sandboxPaths": "/srv/database"},
              settings=_settings(allowed_spec_sandbox_paths=["/srv/data"]))
    assert e.value.reason == "sandbox-path-not-allowed"


@pytest.mark.parametrize("bad", [
    dict(outputs=["/elsewhere/x-out"]),
    dict(closure=[f"{STORE}/x-in/sub"]),
    dict(build_dir="relative"),
    dict(argv=[]),
    dict(settings=_settings(sandbox_paths=["/tmp"])),
])
def test_bad_requests_are_runner_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(RunnerError) as e:
        _plan(**bad)
    assert e.value.reason == "sandbox-setup"


def test_policy_off_and_relaxed() -> None:
    assert use_sandbox({}, _settings(sandbox="off")) is False
    assert use_sandbox({"__noChroot": "1"}, _settings(sandbox="relaxed")) is False
    with pytest.raises(RunnerError) as e:
        use_sandbox({"__noChroot": "1"}, _settings(sandbox="on"))
    assert e.value.reason == "sandbox-not-allowed"


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/user"), reason="no namespaces here")
def test_policy_on_uses_the_sandbox_where_it_works() -> None:
    from runner.sandbox import probe

    if probe() is not None:
        pytest.skip(f"namespaces unavailable on this machine: {probe()}")
    assert use_sandbox({}, _settings(sandbox="on")) is True
    assert use_sandbox({"__noChroot": ""}, _settings(sandbox="relaxed")) is True
