"""Whether one build runs sandboxed: the `sandbox` setting, `__noChroot`, the fallback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from runner.errors import RunnerError
from runner.sandbox.availability import probe
from runner.sandbox.plan import SettingsLike

_warned: set[str] = set()  # the probe's answer is per process, so is its warning


def _print_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def use_sandbox(drv_env: Mapping[str, str], settings: SettingsLike,
                warn: Callable[[str], None] = _print_warning) -> bool:
    """True to build in the sandbox; False to build as a plain child process.

    Raises `RunnerError` when the derivation or the machine cannot have what
    the settings demand. The fallback's warning goes to `warn`, once per process.
    """
    mode = settings.text("sandbox")
    if mode == "off":
        return False
    if drv_env.get("__noChroot") == "1":
        if mode == "relaxed":
            return False
        raise RunnerError(
            "derivation sets '__noChroot' (spec key 'no-chroot'), which needs "
            "'sandbox = relaxed' (--sandbox=relaxed)",
            reason="sandbox-not-allowed",
        )
    why = probe()
    if why is None:
        return True
    if not settings.flag("sandbox-fallback"):
        raise RunnerError(
            f"the build sandbox is unavailable: {why} (set 'sandbox-fallback = true' "
            "to build without it, or use '--sandbox=off')",
            reason="sandbox-unavailable",
        )
    if why not in _warned:
        _warned.add(why)
        warn(f"building without a sandbox: {why}")
    return False
