"""A builder whose PATH tools are outside the sandbox's view is warned about, once per run:
a virtualenv-like dir whose `python3` links into a directory the sandbox hides made the
build silently run the system `python3`. Real sandboxed builds through `runner build`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runner.build.path_visibility import PathVisibility, find_hidden, is_visible
from runner.cli.main import run
from runner.sandbox import probe
from runner.settings import DEFAULT_SANDBOX_PATHS

needs_sandbox = pytest.mark.skipif(sys.platform != "linux" or probe() is not None,
                                   reason=f"no sandbox here: {probe()}")


def venv(root: Path) -> Path:
    """`root/venv/bin/python3` -> `root/hidden/bin/python3.11`, a script saying `venv`."""
    real = root / "hidden" / "bin" / "python3.11"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\necho venv\n")
    real.chmod(0o755)
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python3").symlink_to(real)
    for d in (root, root / "hidden", root / "venv"):
        d.chmod(0o755)  # the builder runs as another user
    return root / "venv"


def spec(tmp_path: Path, path: str) -> Path:
    text = f"""version: 1
defaults:
  builder: /bin/sh
  env: {{PATH: "{path}"}}
derivations:
  a:
    args: ["-c", "python3 -c 'print(\\"system\\")' > $out"]
  b:
    args: ["-c", "python3 -c 'print(\\"system\\")' > $out; echo b >> $out"]
"""
    (tmp_path / "s.yaml").write_text(text)
    return tmp_path / "s.yaml"


def build(capsys: pytest.CaptureFixture[str], spec_path: Path,
          shown: list[str]) -> tuple[list[str], list[str]]:
    paths = " ".join([*DEFAULT_SANDBOX_PATHS, *shown])
    assert run(["build", str(spec_path), "--no-out-link", "--sandbox=on",
                "--option", "sandbox-paths", paths]) == 0
    out, err = capsys.readouterr()
    said = [Path(p).read_text().split()[0] for p in out.split()]
    return said, [line for line in err.splitlines() if line.startswith("warning:")]


@needs_sandbox
def test_tool_linking_into_a_hidden_dir_is_warned_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = venv(tmp_path / "t")
    s = spec(tmp_path, f"{env}/bin:/usr/bin:/bin")
    said, warnings = build(capsys, s, [str(env)])
    assert said == ["system", "system"]  # the problem: the venv's python3 is not the one run
    hidden = tmp_path / "t" / "hidden"
    assert len(warnings) == 1, warnings  # two builds, one run: said once
    assert warnings[0].startswith(f"warning: '{env}/bin/python3' (PATH entry '{env}/bin' of ")
    assert (f"links to '{hidden}/bin/python3.11', which is not visible in the sandbox"
            in warnings[0])
    assert warnings[0].endswith(f"add '{hidden}' to the sandbox-paths setting to show it")


@needs_sandbox
def test_path_entry_not_visible_is_warned(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    env = venv(tmp_path / "t")
    said, warnings = build(capsys, spec(tmp_path, f"{env}/bin:/usr/bin:/bin"), [])
    assert said == ["system", "system"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: PATH entry '{env}/bin' of ")
    assert warnings[0].endswith(f"add '{env}/bin' to the sandbox-paths setting to show it")


@needs_sandbox
def test_visible_path_is_not_warned(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Control: with the target's dir shown too, the venv's python3 runs, and all is quiet.
    env = venv(tmp_path / "t")
    said, warnings = build(capsys, spec(tmp_path, f"{env}/bin:/usr/bin:/bin"),
                           [str(env), str(tmp_path / "t" / "hidden")])
    assert said == ["venv", "venv"]
    assert warnings == []


def test_find_hidden_on_a_list_of_visible_paths(tmp_path: Path) -> None:
    env = venv(tmp_path)
    hidden = str(tmp_path / "hidden")
    missing = str(tmp_path / "nowhere" / "bin")  # not on the host either: no concern
    found = find_hidden([f"{env}/bin", missing, "/usr/bin"], [str(env), "/usr", "/bin"])
    assert [(h.entry, h.tool, h.target) for h in found] == [
        (f"{env}/bin", f"{env}/bin/python3", f"{hidden}/bin/python3.11")]
    assert find_hidden([f"{env}/bin"], [str(env), hidden]) == []
    assert is_visible("/usr/bin/python3", ["/usr"]) and not is_visible("/usrx", ["/usr"])
    assert is_visible("/anything", ["/"])
    warned: list[str] = []
    check = PathVisibility(warned.append)
    for _ in range(2):
        check.check("x.drv", {"PATH": f"{env}/bin:{env}/bin"}, [str(env)])
    assert len(warned) == 1
    check.check("x.drv", {}, [])
    assert os.path.isdir(f"{env}/bin") and len(warned) == 1


def test_store_targets_depend_on_each_builds_closure(tmp_path: Path) -> None:
    # A tool linking into the store is visible only to builds whose closure holds its
    # store path; the host-side verdict is kept, the store side asked each time.
    store = tmp_path / "store"
    tool = store / "abc-tool" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tool").symlink_to(tool)
    warned: list[str] = []
    check = PathVisibility(warned.append, str(store))
    env = {"PATH": str(bin_dir)}
    check.check("with.drv", env, [str(tmp_path / "env"), str(store / "abc-tool")])
    assert warned == []
    check.check("without.drv", env, [str(tmp_path / "env")])
    assert len(warned) == 1 and f"links to '{tool}'" in warned[0]
    assert "'without.drv'" in warned[0]
    assert warned[0].endswith(f"make '{store / 'abc-tool'}' an input of the derivation "
                              "to show it")
    # A PATH entry inside a store path the build does not depend on.
    check.check("entry.drv", {"PATH": str(tool.parent)}, [str(tmp_path / "env")])
    assert warned[-1] == (f"PATH entry '{tool.parent}' of 'entry.drv' is not visible in the "
                          "sandbox, so its tools are not found there; make "
                          f"'{store / 'abc-tool'}' an input of the derivation to show it")
