"""Specs translate exactly as the same attributes given to Nix 2.8's `derivation`.

Each case is a spec and a hand-written Nix expression evaluating to the same
derivations (a list, in the order of `keys`); the .drv paths, output paths and
.drv bytes must be equal.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.spec.load import load_spec
from runner.spec.translate import source_paths, translate
from runner.store.derivation import parse, unparse
from tests.nix_oracle import NixOracle

SYS = "x86_64-linux"
FIXED_SRI = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
FIXED_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
FIXED_B32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
SHA1_HEX = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA512_SRI = (
    "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
)


@dataclass(frozen=True)
class Case:
    id: str
    spec: str
    nix: str  # a Nix list expression; `sys` and `src DIR` (a path under the case dir) in scope
    keys: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()  # (relpath, content); "->" content makes a symlink


def case(id: str, spec: str, nix: str, keys: str, files: tuple[tuple[str, str], ...] = ()) -> Case:
    return Case(id, textwrap.dedent(spec), nix, tuple(keys.split()), files)


CASES = [
    case("hello", """
        version: 1
        derivations:
          hello: {builder: /bin/sh, args: ["-c", "echo hello > $out"], system: x86_64-linux}
        """, """[(derivation { name = "hello"; builder = "/bin/sh";
                 args = ["-c" "echo hello > $out"]; system = sys; })]""", "hello"),
    case("arg-coercions", """
        version: 1
        derivations:
          a: {builder: /bin/sh, args: [1, -7, true, false, null, 2.5, ""], system: x86_64-linux}
        """, """[(derivation { name = "a"; builder = "/bin/sh";
                 args = [1 (-7) true false null 2.5 ""]; system = sys; })]""", "a"),
    case("env-coercions", """
        version: 1
        derivations:
          a:
            builder: /bin/sh
            system: x86_64-linux
            env: {T: true, F: false, N: null, I: 42, NEG: -3, FL: 0.1, BIG: 123456789.123456789,
                  L: [1, true, null, "x", false, 2.5], E: [], S: "", Z: 0}
        """, """[(derivation { name = "a"; builder = "/bin/sh"; system = sys;
                 T = true; F = false; N = null; I = 42; NEG = -3; FL = 0.1;
                 BIG = 123456789.123456789; L = [1 true null "x" false 2.5]; E = [];
                 S = ""; Z = 0; })]""", "a"),
    case("multiple-outputs", """
        version: 1
        derivations:
          m: {builder: /bin/sh, outputs: [out, doc, dev], system: x86_64-linux}
        """, """[(derivation { name = "m"; builder = "/bin/sh"; system = sys;
                 outputs = ["out" "doc" "dev"]; })]""", "m"),
    case("explicit-out", """
        version: 1
        derivations:
          m: {builder: /bin/sh, outputs: [out], system: x86_64-linux}
        """, """[(derivation { name = "m"; builder = "/bin/sh"; system = sys;
                 outputs = ["out"]; })]""", "m"),
    case("named-output-refs", """
        version: 1
        derivations:
          lib: {builder: /bin/sh, outputs: [out, dev, doc], system: x86_64-linux}
          app:
            builder: /bin/sh
            system: x86_64-linux
            args: ["-c", "cp ${{ lib.dev }}/x ${{lib.doc}} ${{ lib }} ${{ lib.out }} $out"]
        """, """let lib = derivation { name = "lib"; builder = "/bin/sh"; system = sys;
                                    outputs = ["out" "dev" "doc"]; };
           in [lib (derivation { name = "app"; builder = "/bin/sh"; system = sys;
                 args = ["-c" "cp ${lib.dev}/x ${lib.doc} ${lib} ${lib.out} $out"]; })]""",
        "lib app"),
    case("no-out-output-as-string", """
        version: 1
        derivations:
          a: {builder: /bin/sh, outputs: [second, first], system: x86_64-linux}
          b:
            builder: /bin/sh
            system: x86_64-linux
            args: ["${{ a }}", "${{ a.first }}"]
        """, """let a = derivation { name = "a"; builder = "/bin/sh"; system = sys;
                                  outputs = ["second" "first"]; };
           in [(derivation { name = "b"; builder = "/bin/sh"; system = sys;
                 args = ["${a}" "${a.first}"]; })]""",
        "b"),  # `a` itself nix-instantiate prints as `a.drv!second`; b's path covers it
    case("refs-in-builder-and-env", """
        version: 1
        derivations:
          tool: {builder: /bin/sh, system: x86_64-linux}
          use:
            builder: ${{ tool }}/bin/run
            system: x86_64-linux
            env: {TOOL: "${{ tool }}", BOTH: ["${{ tool }}", "x"]}
        """, """let tool = derivation { name = "tool"; builder = "/bin/sh"; system = sys; };
           in [tool (derivation { name = "use"; builder = "${tool}/bin/run"; system = sys;
                 TOOL = "${tool}"; BOTH = ["${tool}" "x"]; })]""", "tool use"),
    case("fixed-flat-sri", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{FIXED_SRI}"}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{FIXED_SRI}"; }})]""", "f"),
    case("fixed-recursive-sri", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{FIXED_SRI}",
              output-hash-mode: recursive}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{FIXED_SRI}"; outputHashMode = "recursive"; }})]""", "f"),
    case("fixed-hex", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{FIXED_HEX}",
              output-hash-algo: sha256, output-hash-mode: flat}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{FIXED_HEX}"; outputHashAlgo = "sha256";
                 outputHashMode = "flat"; }})]""", "f"),
    case("fixed-base32-recursive", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{FIXED_B32}",
              output-hash-algo: sha256, output-hash-mode: recursive}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{FIXED_B32}"; outputHashAlgo = "sha256";
                 outputHashMode = "recursive"; }})]""", "f"),
    case("fixed-sha1-flat", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{SHA1_HEX}",
              output-hash-algo: sha1}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{SHA1_HEX}"; outputHashAlgo = "sha1"; }})]""", "f"),
    case("fixed-sha512-recursive", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{SHA512_SRI}",
              output-hash-mode: recursive}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "{SHA512_SRI}"; outputHashMode = "recursive"; }})]""", "f"),
    case("fixed-prefixed-hash", f"""
        version: 1
        derivations:
          f: {{builder: /bin/sh, system: x86_64-linux, output-hash: "sha256:{FIXED_B32}"}}
        """, f"""[(derivation {{ name = "f"; builder = "/bin/sh"; system = sys;
                 outputHash = "sha256:{FIXED_B32}"; }})]""", "f"),
    case("depends-on-fixed", f"""
        version: 1
        derivations:
          fetch: {{builder: /bin/sh, system: x86_64-linux, output-hash: "{FIXED_SRI}",
                  args: ["-c", "fetch it"]}}
          build: {{builder: /bin/sh, system: x86_64-linux, args: ["${{{{ fetch }}}}"]}}
        """, f"""let fetch = derivation {{ name = "fetch"; builder = "/bin/sh"; system = sys;
                   outputHash = "{FIXED_SRI}"; args = ["-c" "fetch it"]; }};
           in [fetch (derivation {{ name = "build"; builder = "/bin/sh"; system = sys;
                 args = ["${{fetch}}"]; }})]""", "fetch build"),
    case("input-file", """
        version: 1
        inputs: {script: ./build.sh}
        derivations:
          a: {builder: /bin/sh, system: x86_64-linux, args: ["${{ script }}"]}
        """, """[(derivation { name = "a"; builder = "/bin/sh"; system = sys;
                 args = ["${src "build.sh"}"]; })]""", "a",
        files=(("build.sh", "echo hi > $out\n"),)),
    case("input-dir-exec-symlink", """
        version: 1
        inputs:
          tree: ./tree
          link: {path: ./tree/link}
        derivations:
          a:
            builder: /bin/sh
            system: x86_64-linux
            env: {TREE: "${{ tree }}", LINK: "${{ link }}"}
        """, """[(derivation { name = "a"; builder = "/bin/sh"; system = sys;
                 TREE = "${src "tree"}"; LINK = "${src "tree/link"}"; })]""", "a",
        files=(("tree/a.txt", "a\n"), ("tree/bin/run*", "#!/bin/sh\n"),
               ("tree/sub/deep/x", ""), ("tree/link", "-> a.txt"))),
    case("input-named-and-excluded", """
        version: 1
        inputs:
          src: {path: ./project, name: my-src, exclude: ["*.pyc", "__pycache__/"]}
        derivations:
          a: {builder: /bin/sh, system: x86_64-linux, args: ["${{ src }}"]}
        """, """let keep = p: t: builtins.match ".*\\\\.pyc" (baseNameOf p) == null
                               && !(t == "directory" && baseNameOf p == "__pycache__");
           in [(derivation { name = "a"; builder = "/bin/sh"; system = sys;
                 args = ["${builtins.path { path = /. + "${dir}/project"; name = "my-src";
                                            filter = keep; }}"]; })]""", "a",
        files=(("project/main.py", "print(1)\n"), ("project/main.pyc", "x"),
               ("project/__pycache__/m.pyc", "x"), ("project/pkg/__pycache__/n", "x"),
               ("project/pkg/mod.py", "")),
    ),
    case("imports", """
        version: 1
        imports: [./lib/common.yaml]
        derivations:
          app: {builder: /bin/sh, system: x86_64-linux, args: ["${{ base }}", "${{ data }}"]}
        """, """let base = derivation { name = "base"; builder = "/bin/sh"; system = sys; };
           in [base (derivation { name = "app"; builder = "/bin/sh"; system = sys;
                 args = ["${base}" "${src "lib/data.txt"}"]; })]""", "base app",
        files=(("lib/common.yaml", "version: 1\ninputs: {data: ./data.txt}\nderivations:\n"
                                   "  base: {builder: /bin/sh, system: x86_64-linux}\n"),
               ("lib/data.txt", "data\n"))),
    case("defaults", """
        version: 1
        defaults:
          builder: /bin/sh
          system: x86_64-linux
          args: ["-c", "true"]
          env: {LANG: C.UTF-8, KEEP: "1"}
        derivations:
          a: {}
          b: {args: ["-c", "false"], env: {KEEP: "2", MORE: yes}}
        """, """[(derivation { name = "a"; builder = "/bin/sh"; system = sys;
                   args = ["-c" "true"]; LANG = "C.UTF-8"; KEEP = "1"; })
                 (derivation { name = "b"; builder = "/bin/sh"; system = sys;
                   args = ["-c" "false"]; LANG = "C.UTF-8"; KEEP = "2"; MORE = "yes"; })]""",
        "a b"),
    case("unicode-and-escapes", """
        version: 1
        derivations:
          u:
            builder: /bin/sh
            system: x86_64-linux
            args: ["-c", "printf 'héllo\\twörld\\n' > $out", "quote\\"back\\\\slash"]
            env: {GREETING: "こんにちは 🌍", MULTI: "line1\\nline2\\r\\n", "weird key": x}
        """, """[(derivation { name = "u"; builder = "/bin/sh"; system = sys;
                 args = ["-c" "printf 'héllo\\twörld\\n' > $out" "quote\\"back\\\\slash"];
                 GREETING = "こんにちは 🌍"; MULTI = "line1\\nline2\\r\\n";
                 "weird key" = "x"; })]""", "u"),
    case("escapes-and-shell-vars", """
        version: 1
        derivations:
          e:
            builder: /bin/sh
            system: x86_64-linux
            args: ["-c", "echo $${{ not a ref }} $out ${out} $$out > $out"]
        """, """[(derivation { name = "e"; builder = "/bin/sh"; system = sys;
                 args = ["-c" "echo \\${{ not a ref }} $out \\${out} $$out > $out"]; })]""",
        "e"),
    case("nix-attributes", """
        version: 1
        derivations:
          dep: {builder: /bin/sh, system: x86_64-linux}
          x:
            builder: /bin/sh
            system: x86_64-linux
            allowed-references: [out, "${{ dep }}"]
            disallowed-references: ["${{ dep }}"]
            allowed-requisites: ["${{ dep }}"]
            disallowed-requisites: []
            prefer-local-build: true
            allow-substitutes: false
            impure-env-vars: [http_proxy, HTTPS_PROXY]
            sandbox-paths: [/etc/ssl]
            no-chroot: true
            required-system-features: [kvm, big-parallel]
            pass-as-file: [script]
            timeout: 3600
            max-silent-time: 60
            env: {script: "echo hi"}
        """, """let dep = derivation { name = "dep"; builder = "/bin/sh"; system = sys; };
           in [dep (derivation { name = "x"; builder = "/bin/sh"; system = sys;
                 allowedReferences = ["out" dep]; disallowedReferences = [dep];
                 allowedRequisites = [dep]; disallowedRequisites = [];
                 preferLocalBuild = true; allowSubstitutes = false;
                 impureEnvVars = ["http_proxy" "HTTPS_PROXY"]; __sandboxPaths = ["/etc/ssl"];
                 __noChroot = true; requiredSystemFeatures = ["kvm" "big-parallel"];
                 passAsFile = ["script"]; timeout = 3600; maxSilent = 60;
                 script = "echo hi"; })]""", "dep x"),
    case("diamond", """
        version: 1
        derivations:
          base: {builder: /bin/sh, system: x86_64-linux, outputs: [out, lib]}
          left: {builder: /bin/sh, system: x86_64-linux, args: ["${{ base.lib }}"]}
          right: {builder: /bin/sh, system: x86_64-linux, args: ["${{ base }}"]}
          top:
            builder: /bin/sh
            system: x86_64-linux
            args: ["${{ left }}", "${{ right }}", "${{ base.lib }}"]
        """, """let base = derivation { name = "base"; builder = "/bin/sh"; system = sys;
                                     outputs = ["out" "lib"]; };
               left = derivation { name = "left"; builder = "/bin/sh"; system = sys;
                                   args = ["${base.lib}"]; };
               right = derivation { name = "right"; builder = "/bin/sh"; system = sys;
                                    args = ["${base}"]; };
           in [base left right (derivation { name = "top"; builder = "/bin/sh";
                 system = sys; args = ["${left}" "${right}" "${base.lib}"]; })]""",
        "base left right top"),
    case("host-system-default", """
        version: 1
        derivations:
          h: {builder: /bin/sh}
        """, """[(derivation { name = "h"; builder = "/bin/sh";
                 system = builtins.currentSystem; })]""", "h"),
    case("name-override", """
        version: 1
        derivations:
          hello: {name: hello-2.12.1, builder: /bin/sh, system: x86_64-linux,
                  outputs: [out, man]}
          user: {builder: /bin/sh, system: x86_64-linux, args: ["${{ hello.man }}"]}
        """, """let h = derivation { name = "hello-2.12.1"; builder = "/bin/sh"; system = sys;
                                  outputs = ["out" "man"]; };
           in [h (derivation { name = "user"; builder = "/bin/sh"; system = sys;
                 args = ["${h.man}"]; })]""", "hello user"),
    case("yaml-features", """
        version: 1
        derivations:
          a: &base
            builder: /bin/sh
            system: x86_64-linux
            args:
              - -c
              - |
                echo one
                echo two > $out
          b:
            <<: *base
            env:
              FOLDED: >-
                folded
                text
              OCT: 0o17
              HEX: 0x1F
              NO: NO
              YES: yes
              TILDE: ~
        """,
        """let args = ["-c" "echo one\\necho two > $out\\n"]; in
           [(derivation { name = "a"; builder = "/bin/sh"; system = sys; inherit args; })
            (derivation { name = "b"; builder = "/bin/sh"; system = sys; inherit args;
                 FOLDED = "folded text"; OCT = 15; HEX = 31; NO = "NO"; YES = "yes";
                 TILDE = null; })]""", "a b"),
]


def _write_files(root: Path, files: tuple[tuple[str, str], ...]) -> None:
    for rel, content in files:
        executable = rel.endswith("*")
        path = root / rel.rstrip("*")
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("-> "):
            os.symlink(content[3:], path)
            continue
        path.write_text(content)
        path.chmod(0o755 if executable else 0o644)


@pytest.mark.nix
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_spec_matches_nix(c: Case, oracle: NixOracle, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    _write_files(root, c.files)
    (root / "spec.yaml").write_text(c.spec)
    expr = (
        f'let sys = "{SYS}"; dir = "{root}";\n'
        '    src = rel: builtins.path { path = /. + "${dir}/${rel}"; name = baseNameOf rel; };\n'
        f"in {c.nix}"
    )
    expected = oracle.instantiate(expr)

    spec = load_spec(root / "spec.yaml")
    result = translate(spec, oracle.store_dir, source_paths(spec, oracle.store_dir))
    got = [result[k].drv_path for k in c.keys]
    assert got == expected
    for key, drv_path in zip(c.keys, expected, strict=True):
        nix_text = Path(drv_path).read_text()
        assert unparse(result[key].drv) == nix_text
        nix_outputs = {name: out.path for name, out in parse(nix_text).outputs.items()}
        assert result[key].outputs == nix_outputs


def test_there_are_enough_oracle_cases() -> None:
    assert len(CASES) >= 25
