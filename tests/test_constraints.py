"""The test and lint environments are pinned: a dependency's release cannot turn main red."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition(";")[0].strip().partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[_name(name)] = version
    return pins


def test_every_dependency_of_the_test_and_lint_envs_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in ("test", "lint"):
        wanted += project["optional-dependencies"][extra]
    pins = _pins()
    missing = sorted(_name(r) for r in wanted if _name(r) not in pins)
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_the_package_keeps_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    exact = [r for r in project["dependencies"] if "==" in r]
    assert not exact, f"pyproject.toml pins a runtime dependency exactly: {exact}"


def test_tox_installs_with_the_constraints() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert "PIP_CONSTRAINT = {toxinidir}/constraints.txt" in tox["testenv"]["setenv"]
