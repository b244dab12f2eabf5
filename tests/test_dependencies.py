"""Every runtime dependency the package declares is one runner imports (issue 15: `sh`
was declared and never used)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# Distribution name -> the module it provides, where they differ.
MODULE = {"pyyaml": "yaml", "pynacl": "nacl", "grpcio": "grpc", "protobuf": "google.protobuf"}


def test_every_declared_dependency_is_imported() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    source = "\n".join(p.read_text() for p in (ROOT / "runner").rglob("*.py"))
    unused = []
    for requirement in declared:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        module = re.escape(MODULE.get(name, name.replace("-", "_")))
        if not re.search(rf"^\s*(import|from) {module}\b", source, re.MULTILINE):
            unused.append(name)
    assert unused == []
