"""Our formats against real Nix 2.8: derivations, store paths, NARs and hashes."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.store.derivation import (
    Derivation,
    DerivationOutput,
    derivation_path,
    fill_output_paths,
    hash_derivation_modulo,
    parse,
    unparse,
)
from runner.store.hashes import Hash, hash_file
from runner.store.nar import dump, hash_path, restore
from runner.store.paths import make_source_path, make_text_path
from tests.nix_oracle import NixOracle
from tests.test_nar import make_tree

pytestmark = pytest.mark.nix


@dataclass(frozen=True)
class Ref:
    """The path of output `output` of the derivation named `name` in the same case."""

    name: str
    output: str = "out"


@dataclass(frozen=True)
class TextFile:
    """`builtins.toFile name text`: a text store path that becomes an input source."""

    name: str
    text: str


@dataclass(frozen=True)
class Src:
    """A local path copied into the store as a `source` path (`${/abs/path}` in Nix)."""

    path: str


Part = str | Ref | TextFile | Src
Value = Part | tuple[Part, ...] | list[object] | bool | int | None


@dataclass
class Case:
    """Derivations built in order; the last one is the one compared."""

    drvs: dict[str, dict[str, Value]] = field(default_factory=dict)


def nix_string(s: str) -> str:
    escaped = (
        s.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def nix_part(part: Part) -> str:
    if isinstance(part, Ref):
        return "${" + f"{part.name}.{part.output}" + "}"
    if isinstance(part, TextFile):
        return "${" + f"builtins.toFile {nix_string(part.name)} {nix_string(part.text)}" + "}"
    if isinstance(part, Src):
        return "${" + part.path + "}"
    return nix_string(part)[1:-1]


def nix_value(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[ " + " ".join(nix_value(x) for x in v) + " ]"
    parts = v if isinstance(v, tuple) else (v,)
    return '"' + "".join(nix_part(p) for p in parts) + '"'


def nix_expr(case: Case) -> str:
    bindings = []
    for name, attrs in case.drvs.items():
        body = " ".join(f"{nix_string(k)} = {nix_value(v)};" for k, v in attrs.items())
        bindings.append(f"{name} = derivation {{ {body} }};")
    last = list(case.drvs)[-1]
    return f"let {' '.join(bindings)} in {last}"


class Ours:
    """A minimal model of the `derivation` builtin on top of our store functions."""

    def __init__(self, store_dir: str) -> None:
        self.store_dir = store_dir
        self.drvs: dict[str, Derivation] = {}  # by .drv path
        self.by_name: dict[str, tuple[str, Derivation]] = {}
        self.cache: dict[str, bytes] = {}

    def coerce(self, v: object, ctx: tuple[dict[str, set[str]], set[str]]) -> str:
        if v is None or v is False:
            return ""
        if v is True:
            return "1"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return " ".join(self.coerce(x, ctx) for x in v)
        parts = v if isinstance(v, tuple) else (v,)
        out = []
        for part in parts:
            if isinstance(part, Ref):
                drv_path, drv = self.by_name[part.name]
                ctx[0].setdefault(drv_path, set()).add(part.output)
                out.append(drv.outputs[part.output].path)
            elif isinstance(part, TextFile):
                digest = hashlib.sha256(part.text.encode()).digest()
                path = make_text_path(part.name, digest, [], self.store_dir)
                ctx[1].add(path)
                out.append(path)
            elif isinstance(part, Src):
                nar_hash, _ = hash_path(part.path)
                path = make_source_path(Path(part.path).name, nar_hash.digest, self.store_dir)
                ctx[1].add(path)
                out.append(path)
            else:
                out.append(part)
        return "".join(out)

    def add(self, key: str, attrs: dict[str, Value]) -> tuple[str, Derivation]:
        ctx: tuple[dict[str, set[str]], set[str]] = ({}, set())
        env = {k: self.coerce(v, ctx) for k, v in attrs.items() if k != "args"}
        args = [self.coerce(a, ctx) for a in attrs.get("args", [])]  # type: ignore[union-attr]
        names = env["outputs"].split() if "outputs" in attrs else ["out"]
        outputs = {n: DerivationOutput("") for n in names}
        if "outputHash" in attrs:
            algo = env.get("outputHashAlgo") or None
            digest = Hash.parse(env["outputHash"], algo)
            mode = "r:" if env.get("outputHashMode") == "recursive" else ""
            outputs = {"out": DerivationOutput("", mode + digest.algo, digest.hex())}
        drv = Derivation(outputs, ctx[0], ctx[1], env["system"], env["builder"], args, env)
        drv = fill_output_paths(drv, self.store_dir, self.drvs.__getitem__, self.cache)
        path = derivation_path(drv, self.store_dir)
        self.drvs[path] = drv
        self.by_name[key] = (path, drv)
        return path, drv


def base(name: str, **extra: Value) -> dict[str, Value]:
    return {"name": name, "system": "x86_64-linux", "builder": "/bin/sh", **extra}


EMPTY_SRI = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
EMPTY_SHA1_HEX = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
EMPTY_SHA512 = hashlib.sha512(b"").digest()

CASES: dict[str, Case] = {
    "minimal": Case({"a": base("hello")}),
    "args": Case({"a": base("args", args=["-c", "echo hi > $out", ""])}),
    "multiple-outputs": Case({"a": base("multi", outputs=["out", "dev", "doc"])}),
    "outputs-unsorted": Case({"a": base("unsorted", outputs=["lib", "bin", "out"])}),
    "no-out-output": Case({"a": base("noout", outputs=["bin"])}),
    "explicit-out": Case({"a": base("explicit", outputs=["out"])}),
    "escapes": Case(
        {"a": base("esc", msg='quote " backslash \\ nl \n cr \r tab \t dollar ${x} $y')}
    ),
    "escapes-in-args": Case({"a": base("escargs", args=['a"b', "c\\d", "e\nf", "\t"])}),
    "unicode": Case({"a": base("uni", greeting="héllo wörld ✓ 日本語 🎉", args=["ünï"])}),
    "coercions": Case(
        {"a": base("coerce", t=True, f=False, n=None, i=42, neg=-7, l=["a", 1, True, None])}
    ),
    "empty-values": Case({"a": base("empty", e="", args=[])}),
    "fixed-flat-sri": Case({"a": base("ff", outputHash=EMPTY_SRI, outputHashMode="flat")}),
    "fixed-flat-default-mode": Case({"a": base("ffd", outputHash=EMPTY_SRI)}),
    "fixed-recursive-sha256": Case(
        {"a": base("fr", outputHash=EMPTY_SRI, outputHashMode="recursive")}
    ),
    "fixed-sha1-hex": Case({"a": base("f1", outputHash=EMPTY_SHA1_HEX, outputHashAlgo="sha1")}),
    "fixed-sha1-recursive": Case(
        {
            "a": base(
                "f1r",
                outputHash=EMPTY_SHA1_HEX,
                outputHashAlgo="sha1",
                outputHashMode="recursive",
            )
        }
    ),
    "fixed-sha512-base32": Case(
        {
            "a": base(
                "f512",
                outputHash=Hash("sha512", EMPTY_SHA512).base32(),
                outputHashAlgo="sha512",
            )
        }
    ),
    "fixed-sha256-base32-prefixed": Case(
        {"a": base("fb32", outputHash=Hash.parse(EMPTY_SRI).to_string("base32"))}
    ),
    "fixed-md5": Case(
        {"a": base("fmd5", outputHash=hashlib.md5(b"").hexdigest(), outputHashAlgo="md5")}
    ),
    "chain": Case(
        {
            "a": base("a"),
            "b": base("b", dep=(Ref("a"),)),
            "c": base("c", args=["-c", ("cat ", Ref("b"), " > $out")]),
        }
    ),
    "multi-output-dep": Case(
        {
            "a": base("lib", outputs=["out", "dev"]),
            "b": base("user", x=(Ref("a", "dev"),), y=(Ref("a"),)),
        }
    ),
    "fixed-dep": Case(
        {
            "f": base("src", outputHash=EMPTY_SRI, outputHashMode="recursive"),
            "b": base("consumer", src=(Ref("f"),)),
        }
    ),
    "fixed-deps-same-output": Case(
        {
            "f": base("same", outputHash=EMPTY_SRI, args=["one"]),
            "g": base("same", outputHash=EMPTY_SRI, args=["two"]),
            "b": base("both", x=(Ref("f"), Ref("g"))),
        }
    ),
    "builder-is-dep": Case(
        {"a": base("tool"), "b": {**base("usetool"), "builder": (Ref("a"), "/bin/run")}}
    ),
    "text-file-input": Case({"a": base("txt", script=(TextFile("script.sh", "echo hi\n"),))}),
    "diamond": Case(
        {
            "a": base("a"),
            "b": base("b", d=(Ref("a"),)),
            "c": base("c", d=(Ref("a"),), outputs=["out", "man"]),
            "d": base("d", d=(Ref("b"), " ", Ref("c", "man"), Ref("c"))),
        }
    ),
    "long-name": Case({"a": base("n" * 200)}),
    "odd-name-chars": Case({"a": base("a+b-c.d_e?f=g")}),
}


def SOURCE_CASE(tmp: Path) -> Case:
    tree = make_tree(tmp / "my-src", big=1000)
    single = tmp / "script.sh"
    single.write_bytes(b"#!/bin/sh\n")
    return Case(
        {
            "a": base("srcs", src=(Src(str(tree)),), args=[(Src(str(single)),)]),
            "b": base("again", x=(Ref("a"), Src(str(single)))),
        }
    )


@pytest.mark.parametrize("case_id", [*sorted(CASES), "source-inputs"])
def test_derivation_matches_nix(oracle: NixOracle, tmp_path: Path, case_id: str) -> None:
    case = SOURCE_CASE(tmp_path) if case_id == "source-inputs" else CASES[case_id]
    [printed] = oracle.instantiate(nix_expr(case))
    nix_drv_path = printed.split("!")[0]  # Nix appends "!<output>" when there is no "out"
    ours = Ours(oracle.store_dir)
    for key, attrs in case.drvs.items():
        our_path, our_drv = ours.add(key, attrs)
    nix_bytes = Path(nix_drv_path).read_bytes()
    assert unparse(our_drv).encode() == nix_bytes
    assert our_path == nix_drv_path
    # And Nix's own file: parse round-trips and our hashing reproduces its paths.
    nix_drv = parse(nix_bytes, nix_drv_path)
    assert unparse(nix_drv).encode() == nix_bytes
    assert derivation_path(nix_drv, oracle.store_dir) == nix_drv_path

    def load(path: str) -> Derivation:
        return parse(Path(path).read_bytes(), path)

    assert fill_output_paths(nix_drv, oracle.store_dir, load, {}) == nix_drv
    for dep in nix_drv.input_drvs:
        assert dep in ours.drvs
    assert len(hash_derivation_modulo(nix_drv, load, {})) == 32


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree", big=5 * 1024 * 1024 + 7)


def test_nar_matches_nix(oracle: NixOracle, tree: Path, tmp_path: Path) -> None:
    # A file name that is not UTF-8: names are bytes in a NAR.
    with open(os.path.join(os.fsencode(tree), b"raw-\xff\xfe-name"), "wb") as f:
        f.write(b"bytes")
    nix_nar = oracle.dump(tree)
    assert b"".join(dump(tree)) == nix_nar
    restore(io.BytesIO(nix_nar).read, tmp_path / "restored")
    assert oracle.dump(tmp_path / "restored") == nix_nar
    assert b"".join(dump(tree / "bin" / "run")) == oracle.dump(tree / "bin" / "run")
    assert b"".join(dump(tree / "empty-file")) == oracle.dump(tree / "empty-file")
    assert b"".join(dump(tree / "bin" / "link")) == oracle.dump(tree / "bin" / "link")


def test_source_paths_match_nix(oracle: NixOracle, tree: Path, tmp_path: Path) -> None:
    for path in (tree, tree / "big", tree / "empty-dir", tree / "bin" / "run"):
        nar_hash, _ = hash_path(path)
        ours = make_source_path(path.name, nar_hash.digest, oracle.store_dir)
        assert ours == oracle.add(path)


def test_hashes_match_nix_hash(oracle: NixOracle, tree: Path) -> None:
    nar_hash, size = hash_path(tree)
    assert oracle.hash("--type", "sha256", str(tree)) == nar_hash.hex()
    assert oracle.hash("--type", "sha256", "--base32", str(tree)) == nar_hash.base32()
    big = tree / "big"
    for algo in ("md5", "sha1", "sha256", "sha512"):
        flat = hash_file(algo, big)
        assert oracle.hash("--type", algo, "--flat", str(big)) == flat.hex()
        assert oracle.hash("--type", algo, "--flat", "--base32", str(big)) == flat.base32()
        assert oracle.hash("--type", algo, "--to-base32", flat.hex()) == flat.base32()
        assert oracle.hash("--type", algo, "--to-base16", flat.base32()) == flat.hex()
    assert size == len(oracle.dump(tree))
    for algo in ("md5", "sha1", "sha512"):
        assert oracle.hash("--type", algo, str(tree)) == hash_path(tree, algo)[0].hex()
