"""Binary caches interoperate with real Nix 2.8, both ways, with signatures checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store.local_store import LocalStore
from runner.store.paths import hash_part
from runner.substituters import narinfo
from runner.substituters.configure import open_substituters
from runner.substituters.signing import SecretKey
from runner.substituters.substitute import SUBSTITUTED, substitute
from tests.nix_oracle import NixOracle
from tests.subst_util import make_output, nar_bytes, settings_for

pytestmark = pytest.mark.nix


def _nix_keys(oracle: NixOracle, tmp_path: Path) -> tuple[str, str]:
    sk, pk = tmp_path / "nix.sec", tmp_path / "nix.pub"
    oracle.run("nix-store", "--generate-binary-cache-key", "nix-test-1", str(sk), str(pk))
    return str(sk), pk.read_text().strip()


def test_runner_substitutes_a_cache_written_by_nix(oracle: NixOracle, tmp_path: Path) -> None:
    sk, pk = _nix_keys(oracle, tmp_path)
    expr = ('derivation { name = "app"; system = builtins.currentSystem; builder = "/bin/sh";'
            ' args = ["-c" "echo ${builtins.toFile "data" "hello"} > $out"]; }')
    out = oracle.run("nix-build", "--no-out-link", "--option", "build-users-group", "", "-E",
                     expr).decode().strip()
    data = oracle.run("nix-store", "-q", "--references", out).decode().split()
    cache = tmp_path / "cache"
    oracle.run("nix", "copy", "--to", f"file://{cache}?secret-key={sk}", out)

    old = tmp_path / "nix-store-old"
    os.rename(oracle.store_dir, old)  # our store takes the same store dir, empty
    state = str(tmp_path / "state")
    settings = settings_for(oracle.store_dir, state, substituters=f"file://{cache}",
                            trusted_public_keys=pk)
    with LocalStore(oracle.store_dir, state) as store:
        result = substitute(store, out, open_substituters(settings), settings)
        assert result.status == SUBSTITUTED, result.describe()
        assert result.substituted == (*data, out)
        assert store.query_references(out) == set(data)
    assert nar_bytes(out) == nar_bytes(old / os.path.basename(out))

    # Ed25519 is deterministic: our signature over our fingerprint is Nix's signature.
    info = narinfo.parse((cache / f"{hash_part(out)}.narinfo").read_text(),
                         oracle.store_dir, "nix")
    assert info.sigs == (SecretKey.load(sk).sign(info.fingerprint()),)


def test_nix_accepts_a_cache_written_by_runner(oracle: NixOracle, tmp_path: Path) -> None:
    sk, pk = _nix_keys(oracle, tmp_path)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / "hello.txt").write_text("hello\n")
    state = str(tmp_path / "state")
    with LocalStore(oracle.store_dir, state) as store:
        src = store.add_path(str(src_dir))
        app = make_output(store, "app", "application", (src,))
    cache = tmp_path / "cache"
    common = ["--store-dir", oracle.store_dir, "--state-dir", state]
    assert run(["copy", "--to", f"file://{cache}", "--sign-key", sk, app, *common]) == 0
    assert run(["copy", "--to", f"file://{cache}?compression=zstd", app, *common]) == 0
    os.rename(oracle.store_dir, tmp_path / "runner-store-old")

    untrusted = SecretKey.generate("other-1").public_key().to_string()
    with pytest.raises(AssertionError, match="signature"):
        oracle.run("nix", "copy", "--from", f"file://{cache}",
                   "--option", "trusted-public-keys", untrusted, app)
    oracle.run("nix", "copy", "--from", f"file://{cache}",
               "--option", "trusted-public-keys", pk, app)
    refs = oracle.run("nix-store", "-q", "--references", app).decode().split()
    assert refs == [src]
    oracle.run("nix-store", "--verify-path", app)
    assert oracle.dump(app) == nar_bytes(tmp_path / "runner-store-old" / os.path.basename(app))
