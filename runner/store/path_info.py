"""The records the store database hands out: valid-path metadata and cached failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.store.hashes import Hash


@dataclass(frozen=True)
class PathInfo:
    """What the store knows about one valid path (Nix's ValidPathInfo)."""

    path: str
    nar_hash: Hash
    nar_size: int
    references: frozenset[str] = field(default_factory=frozenset)
    deriver: str | None = None
    registration_time: int = 0  # 0: "now" when registered
    ca: str | None = None  # content address, e.g. "fixed:r:sha256:<base32>"

    def to_json(self) -> dict[str, object]:
        """The shape `runner store path-info --json` prints (Nix's field names)."""
        return {
            "path": self.path,
            "narHash": self.nar_hash.to_string(),
            "narSize": self.nar_size,
            "references": sorted(self.references),
            "deriver": self.deriver,
            "registrationTime": self.registration_time,
            "ca": self.ca,
        }


@dataclass(frozen=True)
class FailureRecord:
    """A cached permanent build failure of one output path."""

    path: str
    time: int
    exit_status: int | None
    drv_path: str | None
    log_tail: str
