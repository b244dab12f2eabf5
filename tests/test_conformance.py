"""runner against public test vectors written by other Nix implementations.

The vectors (NixOS/nix, tvix nix-compat, go-nix; see SOURCES.md there) are not part
of this repository: CI places a copy of `shared/` beside the checkout, so they live in
`<checkout>/../shared/conformance`. RUNNER_CONFORMANCE_DIR overrides that place (for a
worktree elsewhere). Without the directory the whole module is skipped, naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard

from runner.cli.main import run
from runner.errors import RunnerError
from runner.store import base32, derivation, nar, paths
from runner.store.hashes import Hash, hash_bytes
from runner.substituters import narinfo, signing
from runner.substituters.content_address import vouches_for_path

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(
    os.environ.get("RUNNER_CONFORMANCE_DIR") or ROOT.parent / "shared" / "conformance"
)
VECTORS = CONFORMANCE / "vectors"
EMBEDDED = VECTORS / "embedded"
STORE = "/nix/store"

if not EMBEDDED.is_dir():
    pytest.skip(
        f"conformance vectors not found: {EMBEDDED} is missing (they are not part of the "
        "repository; place shared/ beside the checkout or set RUNNER_CONFORMANCE_DIR)",
        allow_module_level=True,
    )


def _json(name: str) -> Any:
    return json.loads((EMBEDDED / name).read_text())


def _cases(items: list[dict[str, Any]], key: str) -> list[Any]:
    return [pytest.param(item, id=item[key]) for item in items]


# --- 1. nixbase32 -----------------------------------------------------------------------

_B32 = _json("nixbase32.json")["cases"]


@pytest.mark.parametrize("case", _cases([c for c in _B32 if c["hex"] is not None], "name"))
def test_nixbase32_encode_decode(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    assert base32.encode(raw) == case["enc"]
    assert base32.decode(case["enc"]) == raw


@pytest.mark.parametrize("case", _cases([c for c in _B32 if c["hex"] is None], "name"))
def test_nixbase32_decode_rejects(case: dict[str, Any]) -> None:
    with pytest.raises(RunnerError) as info:
        base32.decode(case["enc"])
    assert info.value.reason == "bad-hash"


# --- 2. hashes ------------------------------------------------------------------------

@pytest.mark.parametrize("case", _cases(_json("hashes.json")["cases"], "name"))
def test_hash_known_values(case: dict[str, Any]) -> None:
    got = hash_bytes(case["algo"], case["input"].encode())
    assert got.to_string(case["format"]) == case["expected"]
    assert Hash.parse(case["expected"]) == got


# --- 3. store paths -------------------------------------------------------------------

_SP = _json("storepaths.json")


@pytest.mark.parametrize("case", _cases(_SP["text_paths"], "name"))
def test_storepath_text(case: dict[str, Any]) -> None:
    digest = hashlib.sha256(case["contents"].encode()).digest()
    assert paths.make_text_path(case["name"], digest, case["references"], STORE) == case["expected"]


@pytest.mark.parametrize("case", _cases(_SP["ca_paths"], "label"))
def test_storepath_content_addressed(case: dict[str, Any]) -> None:
    assert case["method"] == "nar"
    h = Hash.parse(case["hash"])
    if case["references"]:
        # Only sha256-NAR content can carry references (a "source" path).
        assert h.algo == "sha256"
        got = paths.make_source_path(case["name"], h.digest, STORE, case["references"])
    else:
        got = paths.make_fixed_output_path(case["name"], h, True, STORE)
    assert got == case["expected"]


@pytest.mark.parametrize("case", _cases(_SP["parse_ok"], "label"))
def test_storepath_parse_ok(case: dict[str, Any]) -> None:
    assert paths.parse_store_path(case["path"], STORE) == (case["hash_part"], case["name"])
    assert paths.hash_part(case["path"]) == case["hash_part"]


@pytest.mark.parametrize("case", _cases(_SP["parse_bad"], "label"))
def test_storepath_parse_rejects(case: dict[str, Any]) -> None:
    with pytest.raises(RunnerError) as info:
        paths.parse_store_path(case["path"], STORE)
    assert info.value.reason == "bad-path"


@pytest.mark.parametrize("case", _cases(_SP["digest"], "label"))
def test_storepath_digest(case: dict[str, Any]) -> None:
    digest, _name = paths.parse_store_path(case["path"], STORE)
    assert base32.decode(digest).hex() == case["hex"]


# --- 4. narinfo and signatures ---------------------------------------------------------

_NI = _json("narinfo.json")
_SIG = _json("signatures.json")
CACHE_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


def _narinfo(name: str) -> narinfo.NarInfo:
    return narinfo.parse((EMBEDDED / "narinfo" / name).read_text(), STORE, name)


@pytest.mark.parametrize(
    ("name", "valid"), [(k, v) for k, v in _NI["sig_expect"].items() if not k.startswith("_")]
)
def test_narinfo_sample_signatures(name: str, valid: int) -> None:
    info = _narinfo(name)
    keys = signing.parse_public_keys([CACHE_KEY])
    assert signing.count_valid_signatures(info.fingerprint(), info.sigs, keys) == valid


@pytest.mark.parametrize("case", _cases(_NI["fingerprints"], "label"))
def test_narinfo_fingerprint(case: dict[str, Any]) -> None:
    assert _narinfo(case["narinfo"]).fingerprint() == case["fingerprint"]


@pytest.mark.parametrize("name", _NI["roundtrip"])
def test_narinfo_roundtrip(name: str) -> None:
    text = (EMBEDDED / "narinfo" / name).read_text()
    assert _narinfo(name).to_text() == text


@pytest.mark.parametrize("name", _NI["ca_vouches"])
def test_narinfo_ca_vouches_for_path(name: str) -> None:
    assert vouches_for_path(_narinfo(name), STORE)


@pytest.mark.parametrize("case", _cases(_NI["hash_fields"], "narinfo"))
def test_narinfo_nar_hash(case: dict[str, Any]) -> None:
    assert _narinfo(case["narinfo"]).nar_hash.hex() == case["hex"]


def test_narinfo_real_cache_signatures() -> None:
    # 978 narinfos from cache.nixos.org: each must parse and its signature verify.
    raw = (VECTORS / "tvix" / "testdata" / "narinfo.zst").read_bytes()
    text = zstandard.ZstdDecompressor().stream_reader(raw).read().decode()
    keys = signing.parse_public_keys([CACHE_KEY])
    blocks = [b for b in text.split("\n\n") if b.strip()]
    bad = []
    for i, block in enumerate(blocks):
        info = narinfo.parse(block, STORE, f"narinfo.zst#{i}")
        if signing.count_valid_signatures(info.fingerprint(), info.sigs, keys) != 1:
            bad.append(info.path)
    assert len(blocks) == 978
    assert bad == []


@pytest.mark.parametrize("case", _cases(_SIG["verify"], "label"))
def test_signature_verify(case: dict[str, Any]) -> None:
    key = signing.PublicKey.parse(case["public_key"])
    parsed = signing.parse_signature(case["signature"])
    assert parsed is not None
    assert key.verify(case["fingerprint"], parsed[1]) is case["valid"]


@pytest.mark.parametrize("case", _cases(_SIG["parse_fail"], "label"))
def test_signature_parse_rejects(case: dict[str, Any]) -> None:
    assert signing.parse_signature(case["sig"]) is None


@pytest.mark.parametrize("case", _cases(_SIG["sign"], "label"))
def test_signature_sign(case: dict[str, Any]) -> None:
    secret = signing.SecretKey.parse(case["secret_key"])
    assert secret.public_key().to_string() == case["public_key"]
    assert secret.sign(case["fingerprint"]) == case["signature"]


@pytest.mark.parametrize("case", _cases(_SIG["keypairs"], "label"))
def test_signature_keypair(case: dict[str, Any]) -> None:
    assert signing.SecretKey.parse(case["secret_key"]).public_key().to_string() == (
        case["public_key"]
    )


@pytest.mark.parametrize("case", _cases(_SIG["public_keys"], "label"))
def test_signature_public_key(case: dict[str, Any]) -> None:
    key = signing.PublicKey.parse(case["key"])
    assert (key.name, key.key.hex()) == (case["name"], case["hex"])
    assert key.to_string() == case["key"]


@pytest.mark.parametrize("case", _cases(_SIG["signature_bytes"], "label"))
def test_signature_bytes(case: dict[str, Any]) -> None:
    assert signing.parse_signature(case["sig"]) == (case["name"], bytes.fromhex(case["hex"]))


# --- 5. NAR -------------------------------------------------------------------------------

_NIX_NARS = VECTORS / "nix" / "src" / "libutil-tests"
_GO_NIX_NAR = (VECTORS / "go-nix" / "test" / "testdata"
               / "nar_1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d.nar")
# NixOS/nix archive.cc feeds these to its NAR parser expecting a failure; the rest of
# its corpus (and every tvix / go-nix NAR) is a valid archive.
_INVALID_NARS = {
    "dot", "dotdot", "empty", "executable-after-contents", "invalid-tag-instead-of-contents",
    "name-after-node", "nul-character", "regular-one-byte-non-zero-padding",
    "regular-truncated-large-contents", "regular-truncated-padding", "slash",
}
_NARS = sorted(_NIX_NARS.glob("**/*.nar")) + sorted(
    (VECTORS / "tvix" / "src" / "nar" / "tests").glob("*.nar")) + [_GO_NIX_NAR]


def _nar_id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


@pytest.mark.parametrize(
    "fixture", [f for f in _NARS if f.stem not in _INVALID_NARS], ids=_nar_id
)
def test_nar_restore_dump_round_trip(fixture: Path, tmp_path: Path) -> None:
    data = fixture.read_bytes()
    stream = io.BytesIO(data)
    nar.restore(stream.read, tmp_path / "t")
    assert stream.read() == b""  # restore consumed exactly the archive
    assert b"".join(nar.dump(tmp_path / "t")) == data
    assert nar.hash_path(tmp_path / "t") == (hash_bytes("sha256", data), len(data))


@pytest.mark.parametrize(
    "fixture", [f for f in _NARS if f.stem in _INVALID_NARS], ids=_nar_id
)
def test_nar_restore_rejects(fixture: Path, tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as info:
        nar.restore(io.BytesIO(fixture.read_bytes()).read, tmp_path / "t")
    assert info.value.reason == "bad-nar"
    assert not (tmp_path / "t").exists()  # no half-restored tree left behind


def test_nar_go_nix_net_tools(tmp_path: Path) -> None:
    # The signed narinfo's NarHash (go-nix sample) names this NAR; bin/arp is a member.
    nar.restore(io.BytesIO(_GO_NIX_NAR.read_bytes()).read, tmp_path / "t")
    signed = _narinfo("go-nix-strNarinfoSample.narinfo")
    assert nar.hash_path(tmp_path / "t")[0] == signed.nar_hash
    arp = _GO_NIX_NAR.with_name(_GO_NIX_NAR.name + "_bin_arp").read_bytes()
    assert (tmp_path / "t" / "bin" / "arp").read_bytes() == arp


# --- 6. derivations -----------------------------------------------------------------------

_GO_NIX_DRVS = VECTORS / "go-nix" / "test" / "testdata"
_TVIX_DRVS = VECTORS / "tvix" / "src" / "derivation" / "tests" / "derivation_tests"
_NIX_DRVS = VECTORS / "nix" / "src" / "libstore-tests" / "data" / "derivation"
# `-modulo.drv` files are not derivations but the text Nix hashes for one (input
# derivations replaced by their hashes); group drv-hash-modulo prints and checks them.
_MODULO_TEXTS = {f.name for f in (_NIX_DRVS / "hash-modulo").glob("*-modulo.drv")}
# Output paths need every input derivation; these have one that is not a fixture, or
# (simple-derivation) no outputs and no name at all. hash-modulo: group drv-hash-modulo.
_NO_OUTPUT_CHECK = {
    "0zhkga32apid60mm7nh92z2970im5837-bootstrap-tools.drv",
    "cl5fr6hlr6hdqza2vgb9qqy5s26wls8i-jq-1.6.drv",
    "z8dajq053b2bxc3ncqp8p8y3nfwafh3p-foo-file.drv",
    "advanced-attributes.drv",
    "advanced-attributes-structured-attrs.drv",
    "simple-derivation.drv",
}
_DRVS = [
    f
    for f in [
        *sorted(_GO_NIX_DRVS.glob("*.drv")),
        *sorted((_TVIX_DRVS / "ok").glob("*.drv")),
        *sorted((_NIX_DRVS / "ia").glob("*.drv")),
        *sorted((_NIX_DRVS / "hash-modulo").glob("*.drv")),
        _NIX_DRVS / "simple-derivation.drv",
    ]
    if f.name not in _MODULO_TEXTS
]
_NAMED_DRVS = [f for f in _DRVS if paths.is_store_path(f"{STORE}/{f.name}", STORE)]
_BY_PATH = {f"{STORE}/{f.name}": f for f in _NAMED_DRVS}


def _drv_id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def _load(path: str) -> derivation.Derivation:
    return derivation.parse(_BY_PATH[path].read_bytes(), path)


@pytest.mark.parametrize("fixture", _DRVS, ids=_drv_id)
def test_drv_parse_unparse_round_trip(fixture: Path) -> None:
    raw = fixture.read_bytes()
    drv = derivation.parse(raw, fixture.name)
    assert drv.data == raw
    assert derivation.encode(derivation.unparse(drv)) == raw


@pytest.mark.parametrize("fixture", _NAMED_DRVS, ids=_drv_id)
def test_drv_path_is_file_name(fixture: Path) -> None:
    drv = derivation.parse(fixture.read_bytes(), fixture.name)
    assert derivation.derivation_path(drv, STORE) == f"{STORE}/{fixture.name}"


@pytest.mark.parametrize(
    "fixture",
    [f for f in _DRVS if f.name not in _NO_OUTPUT_CHECK and f.parent.name != "hash-modulo"],
    ids=_drv_id,
)
def test_drv_output_paths_as_nix_gave_them(fixture: Path) -> None:
    drv = derivation.parse(fixture.read_bytes(), fixture.name)
    filled = derivation.fill_output_paths(drv, STORE, _load, {})
    assert filled.outputs == drv.outputs
    assert filled.env == drv.env


def test_drv_duplicate_env_key_fails_the_output_check() -> None:
    # tvix's parser refuses a repeated key; Nix 2.8's takes it (the last value wins)
    # and then refuses the derivation because its output path is not the one the
    # name gives (checkDerivationOutputs). runner parses as Nix and checks the same.
    raw = (_TVIX_DRVS / "duplicate.drv").read_bytes()
    drv = derivation.parse(raw, "duplicate.drv")
    assert drv.env["name"] == "bar"
    filled = derivation.fill_output_paths(drv, STORE, _load, {})
    assert filled.outputs["out"].path != drv.outputs["out"].path
    assert drv.outputs["out"].path.endswith("-foo")


def test_drv_structured_attrs_name_is_in_json() -> None:
    fixture = _TVIX_DRVS / "ok" / "9lj1lkjm2ag622mh4h9rpy6j607an8g2-structured-attrs.drv"
    drv = derivation.parse(fixture.read_bytes(), fixture.name)
    assert "name" not in drv.env
    assert drv.name == "structured-attrs"


@pytest.mark.parametrize("stem", ["latin1", "cp1252"])
def test_drv_non_utf8_env_bytes(stem: str) -> None:
    # The env value is not UTF-8; its bytes (not a re-encoding) go into the drv hash.
    fixture = next(_TVIX_DRVS.glob(f"ok/*-{stem}.drv"))
    raw = fixture.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    drv = derivation.parse(raw, fixture.name)
    chars = derivation.encode(drv.env["chars"])
    assert len(chars) == 3  # three bytes, not three decoded-and-re-encoded characters
    # Upstream's JSON (what `nix show-derivation` printed) holds the same raw bytes.
    assert b'"chars": "' + chars + b'"' in fixture.with_name(fixture.name + ".json").read_bytes()


# --- 7. hash modulo -----------------------------------------------------------------------

_MODULO = _json("drv_modulo.json")
_NIX_MODULO = _MODULO["nix_hash_modulo"]
_MOD_DIR = _NIX_DRVS / "hash-modulo"
_MOD_PATHS = {
    stem: path
    for stems, drv_paths in _NIX_MODULO["drv_path_sets"]
    for stem, path in zip(stems, drv_paths, strict=True)
}
_MOD_BY_PATH = {path: stem for stem, path in _MOD_PATHS.items()}


def _mod_drv(stem: str) -> derivation.Derivation:
    return derivation.parse((_MOD_DIR / f"{stem}.drv").read_bytes(), f"{stem}.drv")


def _mod_load(path: str) -> derivation.Derivation:
    return _mod_drv(_MOD_BY_PATH[path])


@pytest.mark.parametrize("case", _cases(_MODULO["fixed"], "drv"))
def test_drv_modulo_fixed_output(case: dict[str, Any]) -> None:
    drv = _load(f"{STORE}/{case['drv']}")
    assert derivation.hash_derivation_modulo(drv, _load, {}).hex() == case["hex"]


@pytest.mark.parametrize("stem", sorted(_MOD_PATHS))
def test_drv_modulo_drv_path(stem: str) -> None:
    # modulo.cc names these apart from the env (which holds no name).
    name = _NIX_MODULO["names"][stem]
    assert derivation.derivation_path(_mod_drv(stem), STORE, name=name) == _MOD_PATHS[stem]


@pytest.mark.parametrize("stem", ["source-first", "source-second"])
def test_drv_modulo_source(stem: str) -> None:
    # Two fixed-output derivations with different builders: one hash, their content's.
    got = derivation.hash_derivation_modulo(_mod_drv(stem), _mod_load, {})
    assert got.hex() == _NIX_MODULO["source_modulo_hex"]


_MODULO_STEMS = ["intermediate-first", "intermediate-second", "parent-split", "parent-joined"]


@pytest.mark.parametrize("stem", _MODULO_STEMS)
def test_drv_modulo_text(stem: str) -> None:
    # `<stem>-modulo.drv` is the text Nix hashes: outputs blanked, each input derivation
    # replaced by its hash modulo (two inputs with one hash merge their output names).
    drv = _mod_drv(stem)
    cache: dict[str, bytes] = {}
    hashes: dict[str, set[str]] = {}
    for path, outs in drv.input_drvs.items():
        key = derivation.hash_derivation_modulo(_mod_load(path), _mod_load, cache).hex()
        hashes.setdefault(key, set()).update(outs)
    text = derivation.encode(
        derivation.unparse(drv, mask_outputs=True, input_drvs_hashes=hashes))
    assert text == (_MOD_DIR / f"{stem}-modulo.drv").read_bytes()
    source = stem.startswith("intermediate")
    expected = _NIX_MODULO["source_modulo_hex" if source else "intermediate_modulo_hex"]
    assert [*hashes] == [expected]


@pytest.mark.parametrize("stem", ["intermediate-first", "intermediate-second"])
def test_drv_modulo_output_paths(stem: str) -> None:
    # modulo.cc hashes the intermediates before any env is set (the builtin
    # `derivation` would first add `out = ""` etc.): outputs blanked, env empty.
    drv = _mod_drv(stem)
    blank = dataclasses.replace(
        drv, outputs={k: derivation.DerivationOutput("") for k in drv.outputs}, env={})
    digest = derivation.hash_derivation_modulo(blank, _mod_load, {})
    name = _NIX_MODULO["names"][stem]
    got = {k: paths.make_output_path(k, digest, name, STORE) for k in drv.outputs}
    assert got == {k: o.path for k, o in drv.outputs.items()}
    assert drv.env == got  # the fixture's env: the output paths, as Nix then set them


# --- 8. `runner hash` -------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases(_json("hashes.json")["cases"], "name"))
def test_hash_file_cli(case: dict[str, Any], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_bytes(case["input"].encode())
    fmt = "--sri" if case["format"] == "sri" else "--base16"
    assert run(["hash", "file", "--type", case["algo"], fmt, str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out.strip()
    expected = case["expected"]
    assert printed == (expected if fmt == "--sri" else expected.split(":", 1)[1])


@pytest.mark.parametrize(
    "fixture", [f for f in _NARS if f.stem not in _INVALID_NARS], ids=_nar_id
)
def test_hash_path_cli(fixture: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    # The NAR hash of the restored tree is sha256 of the archive's bytes (its definition).
    data = fixture.read_bytes()
    nar.restore(io.BytesIO(data).read, tmp_path / "t")
    digest = hashlib.sha256(data).digest()
    for fmt, text in (("--base16", digest.hex()), ("--base32", base32.encode(digest))):
        assert run(["hash", "path", "--type", "sha256", fmt, str(tmp_path / "t")]) == 0
        assert capsys.readouterr().out.strip() == text


_SHOWN = [f for f in _DRVS if f.with_name(f.name + ".json").exists()]


@pytest.mark.parametrize("fixture", _SHOWN, ids=_drv_id)
def test_drv_show_json_as_nix(fixture: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    # `runner show X.drv` prints what `nix show-derivation` printed upstream, bytes
    # that are not UTF-8 included (read both with surrogateescape to compare).
    assert run(["show", str(fixture)]) == 0
    ours = json.loads(derivation.decode(capsysbinary.readouterr().out))
    upstream = json.loads(derivation.decode(fixture.with_name(fixture.name + ".json").read_bytes()))
    if "outputs" not in upstream:  # tvix keys it by the drv path, go-nix does not
        (upstream,) = upstream.values()
    assert list(ours.values()) == [upstream]
