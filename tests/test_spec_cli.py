"""`runner validate | instantiate | show | graph` on good specs, through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.spec.load import load_spec
from runner.spec.translate import source_paths, translate
from runner.store.derivation import parse
from tests.nix_oracle import NixOracle
from tests.spec_cli import run_cli

ROOT = Path(__file__).parent.parent
GOOD = sorted([*(ROOT / "specs").glob("*.yaml"), *(ROOT / "tests/specs_good").glob("*.yaml")])


def _store_entries(store_dir: str) -> list[str]:
    return sorted(e for e in os.listdir(store_dir) if not e.startswith("."))


def test_there_are_example_specs() -> None:
    names = {p.name for p in GOOD}
    assert "hello.yaml" in names and len(GOOD) >= 5


@pytest.mark.parametrize("spec", GOOD, ids=[p.stem for p in GOOD])
def test_good_specs_validate_and_write_nothing(spec: Path, store_dir: str, state_dir: str) -> None:
    code, out, err = run_cli("validate", str(spec))
    assert (code, err) == (0, "")
    assert out.startswith(f"{spec}: ok")
    assert os.listdir(store_dir) == [] and os.listdir(state_dir) == []


def test_validate_reports_every_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nderivations: {a: {bulider: x}}\n")
    code, out, err = run_cli("validate", str(ROOT / "specs/hello.yaml"), str(bad), str(bad))
    assert code == 1
    assert "hello.yaml: ok" in out
    assert err.count(f"error: {bad}:2:19: unknown key 'bulider'") == 2


def test_instantiate_writes_what_translate_computes(store_dir: str) -> None:
    spec_path = ROOT / "tests/specs_good/everything.yaml"
    code, out, err = run_cli("instantiate", str(spec_path), "--json")
    assert (code, err) == (0, "")
    printed = json.loads(out)
    spec = load_spec(spec_path)
    expected = translate(spec, store_dir, source_paths(spec, store_dir))
    assert set(printed) == set(spec.derivations)
    for key, item in printed.items():
        assert item == {"drvPath": expected[key].drv_path, "outputs": expected[key].outputs}
        assert parse(Path(item["drvPath"]).read_bytes()) == expected[key].drv
    src = source_paths(spec, store_dir)["src"]
    assert src.endswith("-source") and sorted(os.listdir(src)) == ["main.py", "sub"]
    # Idempotent: a second run prints the same paths and adds nothing.
    before = _store_entries(store_dir)
    assert json.loads(run_cli("instantiate", str(spec_path), "--json")[1]) == printed
    assert _store_entries(store_dir) == before


def test_instantiate_applies_exclude(tmp_path: Path, store_dir: str) -> None:
    tree = tmp_path / "proj"
    for rel in ("a.py", "a.pyc", "__pycache__/x", "pkg/__pycache__/y", "pkg/b.py", "keep.txt"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(0o755)
    (tree / "link").symlink_to("keep.txt")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "version: 1\ninputs:\n  p: {path: ./proj, exclude: ['*.pyc', '__pycache__/']}\n"
        "derivations:\n  d: {builder: /bin/sh, args: ['${{ p }}']}\n"
    )
    code, _, err = run_cli("instantiate", str(spec_path))
    assert (code, err) == (0, "")
    spec = load_spec(spec_path)
    src = source_paths(spec, store_dir)["p"]  # hashed without copying; must agree with the copy
    found = sorted(
        os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs
    )
    assert found == ["a.py", "keep.txt", "link", "pkg/b.py", "run"]
    assert os.access(os.path.join(src, "run"), os.X_OK)


def test_instantiate_named_prints_one_path_per_name(store_dir: str) -> None:
    spec = ROOT / "specs/multi-output.yaml"
    code, out, _ = run_cli("instantiate", str(spec), "check", "hello")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("-check.drv") and lines[1].endswith("-hello.drv")
    # Dependencies were written too (check needs greeting, which needs hello).
    assert any(e.endswith("-greeting.drv") for e in _store_entries(store_dir))


def test_instantiate_unknown_name_suggests(store_dir: str) -> None:
    code, _, err = run_cli("instantiate", str(ROOT / "specs/hello.yaml"), "helo")
    assert code == 1
    assert "no derivation named 'helo' (did you mean 'hello'?)" in err
    assert _store_entries(store_dir) == []


def test_show_spec_and_drv_paths_agree(store_dir: str) -> None:
    spec = str(ROOT / "specs/multi-output.yaml")
    code, out, _ = run_cli("show", spec, "manual")
    assert code == 0
    from_spec = json.loads(out)
    (drv_path,) = from_spec
    assert _store_entries(store_dir) == []  # show does not write
    run_cli("instantiate", spec)
    code, out, _ = run_cli("show", drv_path)
    assert code == 0 and json.loads(out) == from_spec
    entry = from_spec[drv_path]
    assert list(entry["inputDrvs"].values()) == [["doc"]]
    assert entry["env"]["name"] == "manual"


def test_show_missing_drv_is_an_error(tmp_path: Path) -> None:
    code, _, err = run_cli("show", str(tmp_path / "nope.drv"))
    assert code == 1 and err.startswith("error: cannot read")


@pytest.mark.nix
def test_show_matches_nix_show_derivation(oracle: NixOracle, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\nderivations:\n"
        "  lib: {builder: /bin/sh, system: x86_64-linux, outputs: [out, dev]}\n"
        "  f: {builder: /bin/sh, system: x86_64-linux, args: ['${{ lib.dev }}'],\n"
        "      output-hash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=,\n"
        "      output-hash-mode: recursive}\n"
    )
    (drv,) = oracle.instantiate(
        'let lib = derivation { name = "lib"; builder = "/bin/sh"; system = "x86_64-linux";'
        ' outputs = ["out" "dev"]; }; in derivation { name = "f"; builder = "/bin/sh";'
        ' system = "x86_64-linux"; args = ["${lib.dev}"]; outputHashMode = "recursive";'
        ' outputHash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="; }'
    )
    nix = json.loads(oracle.run("nix", "show-derivation", drv))
    code, out, _ = run_cli("show", str(spec), "f", "--store-dir", oracle.store_dir)
    assert code == 0
    assert json.loads(out) == nix


@pytest.mark.parametrize("fmt", ["dot", "mermaid", "json"])
def test_graph_formats(fmt: str) -> None:
    code, out, err = run_cli("graph", str(ROOT / "specs/multi-output.yaml"), "--format", fmt)
    assert (code, err) == (0, "")
    if fmt == "json":
        graph = json.loads(out)
        assert {"from": "greeting", "to": "manual", "output": "doc"} in graph["edges"]
        assert {"from": "hello", "to": "greeting", "output": "out"} in graph["edges"]
        nodes = {n["id"] for n in graph["nodes"]}
        assert nodes == {"hello", "greet", "greeting", "manual", "check"}
    elif fmt == "dot":
        assert out.startswith("digraph spec {")
        assert '"greeting" -> "manual" [label="doc"];' in out
    else:
        assert out.startswith("graph LR")
        assert "n_greeting -->|doc| n_manual" in out


def test_derivation_without_out_stands_for_its_first_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(ROOT / "tests/specs_good/first-output.yaml")
    code, out, err = run_cli("show", spec)
    assert (code, err) == (0, ""), err
    shown = {Path(p).name.split("-", 1)[1]: d for p, d in json.loads(out).items()}
    a_outputs = shown["a.drv"]["outputs"]
    (deps,) = shown["b.drv"]["inputDrvs"].values()
    assert sorted(deps) == ["first", "second"]
    assert shown["b.drv"]["args"][1] == f"cat {a_outputs['second']['path']} " \
                                        f"{a_outputs['first']['path']} > $out"
    code, out, _ = run_cli("graph", spec, "--format", "json")
    assert {"from": "a", "to": "b", "output": "second"} in json.loads(out)["edges"]
    code, out, err = run_cli("build", "--sandbox=off", "--no-out-link", spec, "b")
    assert code == 0, err
    assert Path(out.strip()).read_text() == "2\n1\n"
