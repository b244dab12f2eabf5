"""A derivation's outputs checked when its `.drv` becomes valid, as Nix's local store
does on registration: each output path, and the env var of the same name, must be the
one computed from the derivation itself (input-addressed: from its hash modulo with
the outputs blanked; fixed-output: from the declared content hash).

Without it a client that may add paths (a daemon's untrusted user, a cache) could add a
`.drv` naming someone else's not-yet-built output as its own, build it, and so put its
own content at that path for everyone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from runner.errors import RunnerError
from runner.store.derivation import Derivation, Loader, masked_modulo
from runner.store.paths import make_fixed_output_path, make_output_path


def name_from_path(drv_path: str) -> str:
    """`<hash>-NAME.drv` → NAME: Nix names the outputs after the `.drv` path, not `env`."""
    base = os.path.basename(drv_path)
    return base.partition("-")[2].removesuffix(".drv")


def check_outputs(drv: Derivation, drv_path: str, store_dir: str, load: Loader,
                  cache: MutableMapping[str, bytes]) -> None:
    """Refuse (`bad-drv`) a derivation whose outputs are not the ones it computes to.

    `load` reads an input derivation; `cache` memoises their hashes modulo by path."""
    name = name_from_path(drv_path)
    if not drv.outputs:
        raise _bad(drv_path, "must have at least one output")
    if drv.is_fixed_output:
        try:
            digest, recursive = drv.outputs["out"].fixed_hash()
        except RunnerError as e:
            raise _bad(drv_path, e.message) from None
        expected = {"out": make_fixed_output_path(name, digest, recursive, store_dir)}
    else:
        for output_name, output in drv.outputs.items():
            if output.hash_algo or output.hash:
                raise _bad(drv_path, f"has a fixed output '{output_name}' but is not a "
                           "fixed-output derivation (one output, named 'out')")
        drv_hash = masked_modulo(drv, load, cache)
        expected = {k: make_output_path(k, drv_hash, name, store_dir) for k in drv.outputs}
    for output_name, want in expected.items():
        got = drv.outputs[output_name].path
        if got != want:
            raise _bad(drv_path, f"has incorrect output '{got}', should be '{want}'")
        if drv.env.get(output_name) != want:
            raise _bad(drv_path, f"has incorrect environment variable '{output_name}', "
                       f"should be '{want}'")


def _bad(drv_path: str, what: str) -> RunnerError:
    return RunnerError(f"derivation '{drv_path}' {what}", reason="bad-drv")
