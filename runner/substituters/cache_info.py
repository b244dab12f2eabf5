"""`nix-cache-info`: the store dir a binary cache serves, and how to rank it."""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import RunnerError

DEFAULT_PRIORITY = 50  # Nix's default for binary caches


@dataclass(frozen=True)
class CacheInfo:
    store_dir: str
    want_mass_query: bool = False
    priority: int = DEFAULT_PRIORITY

    def to_text(self) -> str:
        return (f"StoreDir: {self.store_dir}\nWantMassQuery: {int(self.want_mass_query)}\n"
                f"Priority: {self.priority}\n")


def parse(text: str, origin: str) -> CacheInfo:
    """Unknown keys are ignored, as Nix does; a missing StoreDir is an error."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    store_dir = fields.get("StoreDir", "")
    if not store_dir.startswith("/"):
        raise RunnerError(f"'{origin}' has no valid StoreDir", reason="bad-cache-info")
    try:
        priority = int(fields.get("Priority", DEFAULT_PRIORITY))
    except ValueError:
        raise RunnerError(f"'{origin}': Priority '{fields['Priority']}' is not a number",
                          reason="bad-cache-info") from None
    return CacheInfo(store_dir.rstrip("/") or "/", fields.get("WantMassQuery") == "1", priority)
