"""A `__structuredAttrs` derivation built by Nix 2.8 and by runner's daemon gives the same
output: the builder copies `.attrs.json` and `.attrs.sh` into it, and shows that no
attribute is in its environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.canonicalise import remove_tree
from tests.daemon_harness import Daemon, nix_env, run_nix
from tests.nix_oracle import needs_nix

pytestmark = needs_nix

SCRIPT = ('echo "env: ${__json-unset} ${out-unset} ${name-unset}" > "$NIX_BUILD_TOP/x"; '
          'source .attrs.sh; /bin/cat .attrs.json .attrs.sh "$NIX_BUILD_TOP/x" '
          '> "${outputs[out]}"; '
          'echo "$name ${#list[@]} ${map[k]} $yes" > "${outputs[dev]}"')
EXPR = (
    'derivation { name = "sa"; system = builtins.currentSystem; __structuredAttrs = true; '
    'builder = "/bin/bash"; args = ["-c" ' + '"' + SCRIPT.replace('"', '\\"').replace("$", "\\$")
    + '"]; outputs = ["out" "dev"]; list = [1 "a b" true false null 2.0]; '
    'skipped = [1.5]; nested = [[1]]; map = { k = "it\'s"; "odd key" = 3; }; yes = true; '
    '"not-a-name" = "x"; s = "caf\\u00e9\\n\\t\\"q\\""; n = 42; f = 0.5; }'
)


@pytest.fixture
def daemon(tmp_path: Path, store_dir: str) -> Iterator[Daemon]:
    with Daemon(str(tmp_path / "sock" / "socket")) as d:
        yield d
        assert d.stop() == 0


def test_structured_attrs_build_like_nix(tmp_path: Path, store_dir: str,
                                         daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    (tmp_path / "e.nix").write_text(EXPR)
    hashes = []
    # Nix's own store over the same store dir (its database elsewhere: nix_env), so the
    # paths are the same; its files are removed before runner builds (a chroot store
    # would hide /bin/bash from the builder).
    for store in ("auto", f"unix://{daemon.socket}"):
        drv = run_nix(env, "nix-instantiate", "--store", store,
                      str(tmp_path / "e.nix")).stdout.strip()
        outs = run_nix(env, "nix-store", "--store", store, "--realise", drv,
                       *(["--option", "build-users-group", ""] if store == "auto" else [])
                       ).stdout.split()
        hashes.append(run_nix(env, "nix-store", "--store", store, "--query", "--hash",
                              *outs).stdout)
        if store == "auto":
            for path in (drv, *outs):
                remove_tree(path)
    ours = Path(next(o for o in outs if o.endswith("-sa"))).read_text()
    assert "declare -A outputs=(" in ours and "env: unset unset unset" in ours
    assert hashes[0] == hashes[1]
