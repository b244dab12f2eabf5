"""`runner completion bash|zsh|fish`, run by the real shells (issue 15)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = """\
version: 1
derivations:
  alpha:
    builder: /bin/sh
    args: ["-c", "echo a > $out"]
  beta:
    builder: /bin/sh
    args: ["-c", "echo b > $out"]
"""


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """`runner` on PATH as a user has it, running this checkout; a spec in the cwd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "runner"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m runner \"$@\"\n")
    wrapper.chmod(0o755)
    (tmp_path / "pipe.yaml").write_text(SPEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def _script(shell: str, env: dict[str, str], cwd: Path) -> Path:
    proc = subprocess.run(["runner", "completion", shell], env=env, cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path = cwd / f"completion.{shell}"
    path.write_text(proc.stdout)
    return path


BASH = """
source {script}
comp() {{
  COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=()
  _shtab_runner
  printf '%s\\n' "${{COMPREPLY[@]}}" | sort | tr '\\n' ' '; echo
}}
comp runner bu
comp runner build --keep-
comp runner build pipe.yaml ""
comp runner build pipe.yaml -k a
comp runner build --option max-j
comp runner check pipe.yaml ""
comp runner completion ""
comp runner build --sandbox r
"""


def test_bash_completes_commands_flags_settings_and_derivation_names(
        tmp_path: Path, shell_env: dict[str, str]) -> None:
    script = _script("bash", shell_env, tmp_path)
    proc = subprocess.run(["bash", "--norc", "-c", BASH.format(script=script)], env=shell_env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "build ",
        "--keep-failed --keep-going ",
        "alpha beta ",  # names of the spec on the line
        "alpha ",  # after a flag among the names
        "max-jobs ",  # setting names for --option
        "alpha beta ",
        "bash fish zsh ",
        "relaxed ",  # the setting's choices
    ]


def test_names_helper_follows_the_spec(tmp_path: Path, shell_env: dict[str, str]) -> None:
    proc = subprocess.run(["runner", "__complete-names", "pipe.yaml"], env=shell_env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "alpha\nbeta\n")


def _need(shell: str) -> str:
    found = shutil.which(shell)
    if found is None:  # .ci/run installs both
        pytest.skip(f"{shell} is not installed (apt-get install {shell})")
    return found


ZSH = """
autoload -U compinit; compinit -u -D
eval "$(runner completion zsh)"
print -r -- "registered: ${_comps[runner]}"
# Outside a completion widget compadd cannot run: print what it would be given.
compadd() { shift; print -r -- "names: ${(P)1}" }
words=(runner build pipe.yaml ""); CURRENT=4; _runner_names
"""


def test_zsh_script_parses_registers_and_finds_names(tmp_path: Path,
                                                     shell_env: dict[str, str]) -> None:
    zsh = _need("zsh")
    script = _script("zsh", shell_env, tmp_path)
    proc = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([zsh, "-f", "-c", ZSH], env=shell_env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["registered: _shtab_runner", "names: alpha beta"]


def test_fish_completes_names_and_settings(tmp_path: Path, shell_env: dict[str, str]) -> None:
    fish = _need("fish")
    script = _script("fish", shell_env, tmp_path)
    assert subprocess.run([fish, "--no-execute", str(script)]).returncode == 0

    def complete(line: str) -> list[str]:
        proc = subprocess.run([fish, "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                              env=shell_env, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return sorted(row.split("\t")[0] for row in proc.stdout.splitlines())

    assert complete("runner build pipe.yaml ") == ["alpha", "beta"]
    assert complete("runner build --option max-j") == ["max-jobs"]
    assert "build" in complete("runner bu")
