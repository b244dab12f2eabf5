"""The environment a builder sees: the derivation's env plus a few variables, as in Nix."""

from __future__ import annotations

import hashlib
import os

from runner.build import structured_attrs
from runner.settings import Settings
from runner.store import base32
from runner.store.derivation import Derivation, encode

# Nix sets PATH=/path-not-set; specs use host tools, so we give a real default.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
HOMELESS = "/homeless-shelter"


def _cores(settings: Settings) -> int:
    cores = settings.number("cores")
    if cores:
        return cores
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def attr_file_name(attr: str) -> str:
    """Where a `passAsFile` attribute is written in the build dir (as Nix names it)."""
    return ".attr-" + base32.encode(hashlib.sha256(attr.encode()).digest())


def write_attr_files(drv: Derivation, build_dir: str) -> None:
    """Write the `passAsFile` attributes whose `<name>Path` variables `build_env` set,
    or a structured-attrs derivation's `.attrs.json`/`.attrs.sh`."""
    if structured_attrs.is_structured(drv):
        structured_attrs.write_files(drv, build_dir)
        return
    for name in set(drv.env.get("passAsFile", "").split()) & drv.env.keys():
        with open(os.path.join(build_dir, attr_file_name(name)), "wb") as f:
            f.write(encode(drv.env[name]))  # its bytes, UTF-8 or not


def build_env(drv: Derivation, build_top: str, settings: Settings) -> dict[str, str]:
    """Defaults first, then the derivation's env (which may override them), then the
    build-dir variables, which a derivation cannot override."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": HOMELESS,
        "NIX_STORE": settings.store_dir,
        "NIX_BUILD_CORES": str(_cores(settings)),
    }
    if structured_attrs.is_structured(drv):
        # As Nix 2.8: no attribute in the environment, only where the files are.
        env["NIX_ATTRS_SH_FILE"] = f"{build_top}/{structured_attrs.SH_FILE}"
        env["NIX_ATTRS_JSON_FILE"] = f"{build_top}/{structured_attrs.JSON_FILE}"
    else:
        as_files = set(drv.env.get("passAsFile", "").split())
        env.update((k, v) for k, v in drv.env.items() if k not in as_files)
        for name in as_files & drv.env.keys():
            env[name + "Path"] = f"{build_top}/{attr_file_name(name)}"
    if drv.is_fixed_output:
        # Fixed-output builds may see named host variables (proxies, say): their
        # result is checked against a hash, so impurity cannot leak into it.
        for name in drv.env.get("impureEnvVars", "").split():
            if name in os.environ:
                env[name] = os.environ[name]
    for name in ("NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"):
        env[name] = build_top
    env["NIX_LOG_FD"] = "2"
    env["TERM"] = "xterm-256color"
    return env
