"""Very deep test trees, and taking them apart so pytest's (recursive) clean-up of
old temp dirs never meets them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def make_chain(top: Path, depth: int, name: str = "d") -> Path:
    """`top/d/d/…/d`, `depth` levels below `top` (os.makedirs itself recurses)."""
    here = top
    here.mkdir(exist_ok=True)
    for _ in range(depth):
        here = here / name
        here.mkdir()
    return here


def flatten(top: Path, into: Path, name: str = "d") -> None:
    """Move every level of a `top/d/d/…` chain up into a fresh dir under `into`."""
    holder = Path(tempfile.mkdtemp(prefix="flat-", dir=into))
    level = 0
    while (top / name).is_dir() and not (top / name).is_symlink():
        os.chmod(top, 0o755)
        flat = holder / str(level)
        os.rename(top / name, flat)
        top, level = flat, level + 1
