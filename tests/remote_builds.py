"""Shared by the `runner build --remote` tests (tier 1 and tier 2)."""

from __future__ import annotations

import json
import os

import pytest

from runner.cli.main import run
from runner.store.canonicalise import remove_tree
from runner.store.local_store import LocalStore


def build_json(capsys: pytest.CaptureFixture[str], *argv: str
               ) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    """`runner build --json` in-process: exit code, results, stderr."""
    code = run(["build", "--no-out-link", "--json", "--sandbox=off", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else [], err


def output_infos(store_dir: str, state_dir: str,
                 results: list[dict]) -> dict[str, tuple]:  # type: ignore[type-arg]
    """Each output's registered NAR hash and references."""
    with LocalStore(store_dir, state_dir) as store:
        found = {}
        for r in results:
            for path in r["outputs"].values():
                info = store.query_path_info(path)
                assert info is not None, path
                found[path] = (info.nar_hash, info.references)
        return found


def wipe_store(store_dir: str, state_dir: str) -> None:
    """An empty local store at the same store dir (so the same paths)."""
    for top in (store_dir, state_dir):
        remove_tree(top)
        os.makedirs(top)
