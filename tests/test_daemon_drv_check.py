"""Cache poisoning through the daemon, refused as Nix's store refuses it: a client adds a
`.drv` naming the output of someone else's derivation (not built yet) as its own, then
builds it. Each `.drv` is checked when it becomes valid (runner.store.drv_check)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store import nar
from runner.store.derivation import Derivation, DerivationOutput, fill_output_paths, parse
from runner.store.paths import make_source_path
from tests.daemon_harness import Daemon, nix_env, run_nix
from tests.nix_oracle import needs_nix

pytestmark = needs_nix

VICTIM = ('derivation { name = "victim"; system = builtins.currentSystem; '
          'builder = "/bin/sh"; args = ["-c" "echo good > $out"]; }')


@pytest.fixture
def daemon(tmp_path: Path, store_dir: str) -> Iterator[Daemon]:
    # Nobody is trusted: the test's client (root) is an ordinary untrusted user.
    with Daemon(str(tmp_path / "sock" / "socket"), "trusted-users", "nobody") as d:
        yield d
        assert d.stop() == 0


def _evil(out: str, system: str) -> Derivation:
    return Derivation(outputs={"out": DerivationOutput(out)}, input_drvs={}, input_srcs=[],
                      system=system, builder="/bin/sh", args=["-c", "echo evil > $out"],
                      env={"name": "evil", "out": out, "builder": "/bin/sh",
                           "system": system})


def _added_path(file: Path, store_dir: str) -> str:
    """Where `nix-store --add FILE` puts it (recursive SHA-256 of its NAR)."""
    return make_source_path(file.name, nar.hash_path(str(file))[0].digest, store_dir)


def test_forged_drv_cannot_poison_another_derivations_output(
        tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    ours = f"unix://{daemon.socket}"
    (tmp_path / "victim.nix").write_text(VICTIM)
    victim = run_nix(env, "nix-instantiate", "--store", ours,
                     str(tmp_path / "victim.nix")).stdout.strip()
    victim_out = run_nix(env, "nix-store", "--store", ours, "--query", "--outputs",
                         victim).stdout.strip()
    system = parse(Path(victim).read_bytes()).system
    # The attack: a .drv whose output is the victim's, added as plain data.
    forged = tmp_path / "evil.drv"
    forged.write_bytes(_evil(victim_out, system).data)
    proc = run_nix(env, "nix-store", "--store", ours, "--add", str(forged), check=False)
    assert proc.returncode != 0
    assert f"has incorrect output '{victim_out}'" in proc.stderr
    assert not os.path.lexists(_added_path(forged, store_dir))  # nothing registered or left
    # The victim builds its own content.
    assert run_nix(env, "nix-store", "--store", ours, "--realise",
                   victim).stdout.strip() == victim_out
    assert Path(victim_out).read_text() == "good\n"

    # Control: the same attacker drv with the output path it computes to is accepted and
    # built by the same two calls, so the refusal above is the check, not the channel.
    honest = tmp_path / "sub" / "evil.drv"
    honest.parent.mkdir()
    filled = fill_output_paths(_evil("", system), store_dir, lambda p: _evil(p, system), {})
    honest.write_bytes(filled.data)
    added = run_nix(env, "nix-store", "--store", ours, "--add", str(honest)).stdout.strip()
    assert added == _added_path(honest, store_dir)
    built = run_nix(env, "nix-store", "--store", ours, "--realise", added).stdout.strip()
    assert built == filled.outputs["out"].path != victim_out
    assert Path(built).read_text() == "evil\n"


def test_drv_without_outputs_is_refused_as_nix_refuses_it(
        tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    """Nix 2.8 parses a derivation with no outputs but never registers one ("must have at
    least one output"), so it can never be realised; runner's daemon says the same."""
    env = nix_env(tmp_path, store_dir)
    noout = tmp_path / "noout.drv"
    noout.write_text('Derive([],[],[],"x86_64-linux","/bin/sh",[],[("name","noout")])')
    proc = run_nix(env, "nix-store", "--store", f"unix://{daemon.socket}", "--add",
                   str(noout), check=False)
    assert proc.returncode != 0
    assert "must have at least one output" in proc.stderr
    path = _added_path(noout, store_dir)
    proc = run_nix(env, "nix-store", "--store", f"unix://{daemon.socket}", "--realise", path,
                   check=False)
    assert proc.returncode != 0 and "is not valid" in proc.stderr
