"""What every bench script shares: the workload graphs, the spec and Nix expression
written for them, and how runner (and Nix) are run and measured.

Imported by bench/run.py, bench/instantiate.py and bench/daemon_noop.py (the
directory of the script run is on `sys.path`).

Every node is `/bin/sh -c 'echo i DEPS > $out'`: wide-N has no edges, chain-N one per
node, layered LxW sparse two per node, dense every node of the layer before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUNNER = [sys.executable, "-m", "runner"]
Graph = list[list[int]]  # node -> its dependencies


@dataclass(frozen=True)
class Workload:
    name: str
    graph: Graph
    files: int = 0  # > 0: a derivation over an input tree of this many files


def wide(n: int) -> Graph:
    return [[] for _ in range(n)]


def chain(n: int) -> Graph:
    return [[i - 1] if i else [] for i in range(n)]


def layered(layers: int, width: int, dense: bool) -> Graph:
    graph: Graph = []
    for layer in range(layers):
        for col in range(width):
            if layer == 0:
                graph.append([])
                continue
            prev = (layer - 1) * width
            deps = (
                list(range(prev, prev + width))
                if dense
                else sorted({prev + col, prev + (col + 1) % width})
            )
            graph.append(deps)
    return graph


def parse_workload(name: str) -> Workload:
    """`wide-N`, `chain-N`, `dense-LxW`, `sparse-LxW`, `files-N`."""
    kind, _, size = name.partition("-")
    try:
        if kind == "wide":
            return Workload(name, wide(int(size)))
        if kind == "chain":
            return Workload(name, chain(int(size)))
        if kind in ("dense", "sparse"):
            layers, width = (int(x) for x in size.split("x"))
            return Workload(name, layered(layers, width, kind == "dense"))
        if kind == "files":
            return Workload(name, wide(1), files=int(size))
    except ValueError:
        pass
    raise SystemExit(f"error: unknown workload '{name}'")


def _script(i: int, deps: list[int], files: bool) -> str:
    refs = " ".join(f"${{{{ d{d} }}}}" for d in deps)
    if files:
        return "ls ${{ src }} | wc -l > $out"
    return f"echo {i} {refs} > $out" if refs else f"echo {i} > $out"


def write_spec(w: Workload, root: Path) -> Path:
    """`root/spec.yaml` (and `root/tree` for a files workload)."""
    lines = ["version: 1"]
    if w.files:
        tree = root / "tree"
        tree.mkdir()
        for i in range(w.files):
            sub = tree / f"d{i % 100}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.txt").write_text(f"file {i}\n")
        lines += ["inputs:", "  src: ./tree"]
    lines.append("derivations:")
    for i, deps in enumerate(w.graph):
        lines += [
            f"  d{i}:",
            "    builder: /bin/sh",
            f"    args: [\"-c\", \"{_script(i, deps, bool(w.files))}\"]",
        ]
    spec = root / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def write_nix(w: Workload, root: Path) -> Path:
    """`root/default.nix`: the same derivations for nix-build."""
    out = ["rec {"]
    for i, deps in enumerate(w.graph):
        refs = " ".join(f"${{d{d}}}" for d in deps)
        cmd = f"echo {i} {refs} > $out" if refs else f"echo {i} > $out"
        if w.files:
            cmd = f"ls ${{{root / 'tree'}}} | wc -l > $out"
        path = ' PATH = "/usr/bin:/bin";' if w.files else ""  # runner's default; Nix has none
        out.append(
            f'  d{i} = derivation {{ name = "d{i}"; builder = "/bin/sh"; '
            f'args = ["-c" "{cmd}"]; system = builtins.currentSystem;{path} }};'
        )
    out.append("}")
    path = root / "default.nix"
    path.write_text("\n".join(out) + "\n")
    return path


class Usage:
    """The largest peak RSS (KiB) of any command `run` since `reset`."""

    peak_kb = 0

    @classmethod
    def reset(cls) -> None:
        cls.peak_kb = 0


def run(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Run `argv` to completion (stdout discarded); CPU seconds (user + system) of it
    and its children. A failure ends the bench with the command's last stderr."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        Usage.peak_kb = max(Usage.peak_kb, usage.ru_maxrss)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
            raise SystemExit(f"error: benchmark command failed: {' '.join(argv[:6])} …")
    return usage.ru_utime + usage.ru_stime


def runner_env(work: Path) -> dict[str, str]:
    """As installed: byte-code cached (pip compiles it), here in the work dir so the
    tree stays clean; PYTHONDONTWRITEBYTECODE would recompile every module every run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env
