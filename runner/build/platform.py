"""Which derivations this machine can build: its `system`, as Nix decides it."""

from __future__ import annotations

from runner.settings import Settings

# What a host can also run natively (Nix's default `extra-platforms`).
EXTRA_PLATFORMS = {"x86_64-linux": ("i686-linux",)}


def local_platform_refusal(system: str, drv_path: str, settings: Settings) -> str | None:
    """Why `drv_path` cannot be built here, or None."""
    host = settings.text("system")
    if system == host or system in EXTRA_PLATFORMS.get(host, ()):
        return None
    return (f"a '{system}' is required to build '{drv_path}', but I am a '{host}' "
            "(set 'remote-builders' to build it elsewhere)")
