from __future__ import annotations

import dataclasses

import pytest

from runner.errors import RunnerError
from runner.store.derivation import (
    Derivation,
    DerivationOutput,
    derivation_path,
    fill_output_paths,
    hash_derivation_modulo,
    parse,
    unparse,
)
from tests.golden import assert_golden

STORE = "/nix/store"


def no_load(path: str) -> Derivation:
    raise AssertionError(f"unexpected load of {path}")


def make(name: str, **kw: object) -> Derivation:
    fields: dict[str, object] = {
        "outputs": {"out": DerivationOutput("")},
        "input_drvs": {},
        "input_srcs": [],
        "system": "x86_64-linux",
        "builder": "/bin/sh",
        "args": [],
        "env": {"name": name, "builder": "/bin/sh", "system": "x86_64-linux"},
    }
    fields.update(kw)
    return Derivation(**fields)  # type: ignore[arg-type]


def test_matches_nix_output_paths() -> None:
    # Printed by Nix 2.8 for `derivation { name = "fixed"; builder = "x"; system = "x";
    # outputs = ["out" "dev"]; }` with NIX_STORE_DIR=/nix/store.
    drv = make(
        "fixed",
        outputs={"out": DerivationOutput(""), "dev": DerivationOutput("")},
        builder="x",
        system="x",
        env={"name": "fixed", "builder": "x", "system": "x", "outputs": "out dev"},
    )
    filled = fill_output_paths(drv, STORE, no_load, {})
    assert filled.outputs["dev"].path == "/nix/store/3y10qmlnzw3wyx8h9jkkd16lvcxwcdi4-fixed-dev"
    assert filled.env["dev"] == filled.outputs["dev"].path
    assert derivation_path(filled, STORE) == "/nix/store/2pzh1svjm1sdmhry22iz6n3ds2snldhw-fixed.drv"


def test_fixed_output_fill() -> None:
    # Nix 2.8: outputHash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=" (flat).
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    drv = make("fixed", outputs={"out": DerivationOutput("", "sha256", empty)})
    filled = fill_output_paths(drv, STORE, no_load, {})
    assert filled.is_fixed_output
    assert filled.outputs["out"].path == "/nix/store/6d1hby0aacgwa2jg1dw7xhnqc9ywf9bj-fixed"
    assert filled.env["out"] == filled.outputs["out"].path
    assert filled.outputs["out"] == DerivationOutput(filled.env["out"], "sha256", empty)


def sample() -> Derivation:
    dep = "/nix/store/" + "1" * 32 + "-dep.drv"
    return make(
        "sample",
        outputs={"out": DerivationOutput(""), "doc": DerivationOutput("")},
        input_drvs={dep: ["out", "dev"]},
        input_srcs=["/nix/store/" + "2" * 32 + "-src", "/nix/store/" + "0" * 32 + "-a"],
        args=["-c", 'say "hi"\n\tand \\ bye\r', "ünï ✓"],
        env={"name": "sample", "z": "last", "a": "first", "esc": '"\\\n\r\t${x}'},
    )


def test_unparse_golden_and_round_trip() -> None:
    drv = sample()
    text = unparse(drv)
    assert_golden("sample.drv", text.encode())
    assert parse(text) == drv
    assert unparse(parse(text)) == text
    assert parse(text.encode()) == drv


def test_sorting_and_normalisation() -> None:
    drv = sample()
    assert list(drv.env) == sorted(drv.env)
    assert list(drv.input_srcs) == sorted(drv.input_srcs)
    assert list(next(iter(drv.input_drvs.values()))) == ["dev", "out"]
    assert list(drv.outputs) == ["doc", "out"]
    assert drv.name == "sample"


def test_mask_outputs() -> None:
    drv = dataclasses.replace(
        sample(),
        outputs={"out": DerivationOutput("/nix/store/" + "3" * 32 + "-sample")},
        env={"name": "sample", "out": "/nix/store/" + "3" * 32 + "-sample"},
    )
    masked = unparse(drv, mask_outputs=True)
    assert "3" * 32 not in masked
    assert '("out","","","")' in masked
    assert '("out","")' in masked


def test_hash_modulo_replaces_inputs_and_memoises() -> None:
    a = fill_output_paths(make("a"), STORE, no_load, {})
    a_path = derivation_path(a, STORE)
    b = make("b", input_drvs={a_path: ["out"]}, env={"name": "b", "x": a.outputs["out"].path})
    loads: list[str] = []

    def load(path: str) -> Derivation:
        loads.append(path)
        return {a_path: a}[path]

    cache: dict[str, bytes] = {}
    h1 = hash_derivation_modulo(b, load, cache)
    h2 = hash_derivation_modulo(b, load, cache)
    assert h1 == h2 and loads == [a_path]
    assert cache[a_path] == hash_derivation_modulo(a, no_load, {})
    # The input drv path itself must not matter, only its modulo hash.
    assert h1 == hash_derivation_modulo(b, load, {a_path: cache[a_path]})
    assert h1 != hash_derivation_modulo(b, load, {a_path: b"\1" * 32})


def test_fixed_output_modulo_ignores_builder() -> None:
    out = DerivationOutput("/nix/store/" + "4" * 32 + "-f", "r:sha256", "ab" * 32)
    f1 = make("f", outputs={"out": out}, builder="/bin/one")
    f2 = make("f", outputs={"out": out}, builder="/bin/two")
    assert hash_derivation_modulo(f1, no_load, {}) == hash_derivation_modulo(f2, no_load, {})


def test_long_chain_does_not_recurse() -> None:
    drvs: dict[str, Derivation] = {}
    building: dict[str, bytes] = {}
    prev: str | None = None
    for i in range(3000):
        inputs = {prev: ["out"]} if prev else {}
        drv = make(f"d{i}", input_drvs=inputs)
        drv = fill_output_paths(drv, STORE, drvs.__getitem__, building)
        prev = derivation_path(drv, STORE)
        drvs[prev] = drv
    assert prev is not None
    top = drvs[prev]
    cache: dict[str, bytes] = {}
    fresh = hash_derivation_modulo(top, drvs.__getitem__, cache)  # walks 2999 levels
    assert fresh == hash_derivation_modulo(top, no_load, building)
    assert len(cache) == 2999


def test_cycle_is_an_error() -> None:
    p = "/nix/store/" + "5" * 32 + "-c.drv"
    loop = make("c", input_drvs={p: ["out"]})
    with pytest.raises(RunnerError) as info:
        hash_derivation_modulo(loop, lambda _: loop, {})
    assert info.value.reason == "bad-drv"


def test_hash_on_non_fixed_output_rejected() -> None:
    drv = make(
        "bad",
        outputs={"out": DerivationOutput("", "sha256", "00" * 32), "dev": DerivationOutput("")},
    )
    with pytest.raises(RunnerError) as info:
        fill_output_paths(drv, STORE, no_load, {})
    assert info.value.reason == "bad-drv"


def test_missing_name() -> None:
    with pytest.raises(RunnerError) as info:
        _ = make("x", env={}).name
    assert info.value.reason == "bad-drv"


GOOD = unparse(sample())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Derive(",
        GOOD[:-1],
        GOOD + " ",
        GOOD + ")",
        GOOD.replace("Derive", "derive"),
        GOOD.replace('"first"', '"first'),
        GOOD.replace('("a","first"),', ""),  # still fine? no: see below
        GOOD.replace('("a","first"),', "") + "x",
        GOOD.replace('"/nix/store/0', '"nix/store/0'),  # relative input source
        'Derive([("out","","md7","00")],[],[],"s","b",[],[])',
        'Derive([("out","","sha256","00")],[],[],"s","b",[],[])',
        'Derive([("out","","sha256","")],[],[],"s","b",[],[])',
        'Derive([("out","","","' + "0" * 64 + '")],[],[],"s","b",[],[])',
        'Derive([("out","","r:sha256","' + "G" * 64 + '")],[],[],"s","b",[],[])',
        'Derive([("out","","","")] ,[],[],"s","b",[],[])',
    ],
)
def test_parse_rejects_corruption(text: str) -> None:
    if text == GOOD.replace('("a","first"),', ""):
        assert parse(text).env.get("a") is None  # removing an entry is still well-formed
        return
    with pytest.raises(RunnerError) as info:
        parse(text, "x.drv")
    assert info.value.reason == "bad-drv"
    assert info.value.message.startswith("x.drv")


def test_parse_error_has_position() -> None:
    with pytest.raises(RunnerError) as info:
        parse('Derive([("out","",""', "x.drv")
    assert info.value.message.startswith("x.drv:1:21:")
    with pytest.raises(RunnerError) as info:
        parse(b"Derive(\xff", "y.drv")
    assert info.value.reason == "bad-drv"


def test_strings_are_not_collections() -> None:
    dep = "/nix/store/" + "1" * 32 + "-dep.drv"
    with pytest.raises(TypeError):
        make("x", input_drvs={dep: "out"})
    with pytest.raises(TypeError):
        make("x", args="-c true")
