"""runner against public test vectors written by other Nix implementations.

The vectors (NixOS/nix, tvix nix-compat, go-nix; see SOURCES.md there) are not part
of this repository: CI places a copy of `shared/` beside the checkout, so they live in
`<checkout>/../shared/conformance`. RUNNER_CONFORMANCE_DIR overrides that place (for a
worktree elsewhere). Without the directory the whole module is skipped, naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError
from runner.store import base32

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(
    os.environ.get("RUNNER_CONFORMANCE_DIR") or ROOT.parent / "shared" / "conformance"
)
VECTORS = CONFORMANCE / "vectors"
EMBEDDED = VECTORS / "embedded"
STORE = "/nix/store"

if not EMBEDDED.is_dir():
    pytest.skip(
        f"conformance vectors not found: {EMBEDDED} is missing (they are not part of the "
        "repository; place shared/ beside the checkout or set RUNNER_CONFORMANCE_DIR)",
        allow_module_level=True,
    )


def _json(name: str) -> Any:
    return json.loads((EMBEDDED / name).read_text())


def _cases(items: list[dict[str, Any]], key: str) -> list[Any]:
    return [pytest.param(item, id=item[key]) for item in items]


# --- 1. nixbase32 -----------------------------------------------------------------------

_B32 = _json("nixbase32.json")["cases"]


@pytest.mark.parametrize("case", _cases([c for c in _B32 if c["hex"] is not None], "name"))
def test_nixbase32_encode_decode(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    assert base32.encode(raw) == case["enc"]
    assert base32.decode(case["enc"]) == raw


@pytest.mark.parametrize("case", _cases([c for c in _B32 if c["hex"] is None], "name"))
def test_nixbase32_decode_rejects(case: dict[str, Any]) -> None:
    with pytest.raises(RunnerError) as info:
        base32.decode(case["enc"])
    assert info.value.reason == "bad-hash"
