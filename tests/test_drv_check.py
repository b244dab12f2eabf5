"""A `.drv` is checked when it becomes valid (runner.store.drv_check), however it is added:
text, NAR import, a batch (which rolls back whole), with its input derivations."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import pytest

from runner.daemon import importer
from runner.errors import RunnerError
from runner.store import derivation, nar
from runner.store.derivation import Derivation, DerivationOutput, fill_output_paths
from runner.store.hashes import Hash
from runner.store.local_store import LocalStore
from runner.store.path_info import PathInfo
from runner.substituters.narinfo import NarInfo


@pytest.fixture
def store(store_dir: str, state_dir: str) -> LocalStore:
    return LocalStore(store_dir, state_dir)


def _blank(name: str, *, inputs: dict[str, list[str]] | None = None,
           env: dict[str, str] | None = None) -> Derivation:
    return Derivation(outputs={"out": DerivationOutput(""), "dev": DerivationOutput("")},
                      input_drvs=inputs or {}, input_srcs=[], system="x86_64-linux",
                      builder="/bin/sh", args=[], env={"name": name, **(env or {})})


def _replace(drv: Derivation, **changes: object) -> Derivation:
    return dataclasses.replace(drv, **changes)  # type: ignore[arg-type]


def _text(store: LocalStore, drv: Derivation) -> PathInfo:
    refs = [*drv.input_srcs, *drv.input_drvs]
    return importer.add_text(store, drv.name + ".drv", drv.data, refs)


def _refused(store: LocalStore, drv: Derivation, what: str) -> None:
    with pytest.raises(RunnerError) as info:
        _text(store, drv)
    assert info.value.reason == "bad-drv" and what in info.value.message
    assert not store.is_valid(derivation.derivation_path(drv, store.store_dir))


def test_outputs_and_env_must_be_the_computed_ones(store: LocalStore) -> None:
    dep = fill_output_paths(_blank("dep"), store.store_dir, store.read_derivation, {})
    dep_path = _text(store, dep).path
    good = fill_output_paths(_blank("top", inputs={dep_path: ["out"]}), store.store_dir,
                             store.read_derivation, {})
    other = os.path.join(store.store_dir, "0" * 32 + "-top-dev")
    wrong_out = _replace(good, **{"outputs": {
        **good.outputs, "dev": DerivationOutput(other)}, "env": {**good.env, "dev": other}})
    _refused(store, wrong_out, f"has incorrect output '{other}'")
    wrong_env = _replace(good, **{"env": {**good.env, "dev": other}})
    _refused(store, wrong_env, "incorrect environment variable 'dev'")
    no_env = _replace(good, **{"env": {
        k: v for k, v in good.env.items() if k != "out"}})
    _refused(store, no_env, "")
    # Control: the derivation as computed, read back from text (no memo), is accepted.
    assert _text(store, derivation.parse(good.data)).path == derivation.derivation_path(
        good, store.store_dir)


def test_fixed_output_and_no_outputs(store: LocalStore) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    blank = Derivation(outputs={"out": DerivationOutput("", "sha256", digest)},
                       input_drvs={}, input_srcs=[], system="x86_64-linux",
                       builder="/bin/sh", args=[], env={"name": "fixed"})
    good = fill_output_paths(blank, store.store_dir, store.read_derivation, {})
    bad_path = good.outputs["out"].path.replace("-fixed", "-fixee")
    bad = _replace(good, **{"outputs": {"out": DerivationOutput(
        bad_path, "sha256", digest)}, "env": {**good.env, "out": bad_path}})
    _refused(store, bad, "has incorrect output")
    assert store.is_valid(_text(store, good).path)
    none = Derivation(outputs={}, input_drvs={}, input_srcs=[], system="x86_64-linux",
                      builder="/bin/sh", args=[], env={"name": "none"})
    _refused(store, none, "must have at least one output")


def test_a_forged_drv_rolls_back_its_whole_batch(store: LocalStore, tmp_path: Path) -> None:
    good = fill_output_paths(_blank("a"), store.store_dir, store.read_derivation, {})
    forged = _replace(good, **{"env": {**good.env, "name": "b"}})
    infos = []
    for drv in (good, forged):
        path = derivation.derivation_path(drv, store.store_dir)
        Path(path).write_bytes(drv.data)
        infos.append(PathInfo(path, *nar.hash_regular(drv.data)))
    with pytest.raises(RunnerError) as info:
        store.register_valid_paths(infos)
    assert info.value.reason == "bad-drv"
    assert not any(store.is_valid(i.path) for i in infos)
    store.register_valid_paths(infos[:1])  # control: the good one alone is fine
    assert store.is_valid(infos[0].path)


def test_nar_import_is_checked_and_leaves_nothing(store: LocalStore, tmp_path: Path) -> None:
    good = fill_output_paths(_blank("n"), store.store_dir, store.read_derivation, {})
    other = os.path.join(store.store_dir, "1" * 32 + "-n")
    forged = _replace(good, **{"outputs": {**good.outputs, "out": (
        DerivationOutput(other))}, "env": {**good.env, "out": other}})
    for drv, ok in ((forged, False), (good, True)):
        path = derivation.derivation_path(drv, store.store_dir)
        (tmp_path / "f").write_bytes(drv.data)
        data = io.BytesIO(b"".join(nar.dump(str(tmp_path / "f"))))
        info = NarInfo(path=path, url="", nar_hash=Hash("sha256", hashlib.sha256(
            data.getvalue()).digest()), nar_size=len(data.getvalue()))
        data.seek(0)
        if ok:
            importer.import_nar(store, info, data.read)
        else:
            with pytest.raises(RunnerError) as e:
                importer.import_nar(store, info, data.read)
            assert e.value.reason == "bad-drv"
            assert not os.path.lexists(path)
        assert store.is_valid(path) == ok


def test_an_input_drv_must_be_valid(store: LocalStore) -> None:
    dep = fill_output_paths(_blank("dep"), store.store_dir, store.read_derivation, {})
    dep_path = derivation.derivation_path(dep, store.store_dir)
    top = fill_output_paths(_blank("top", inputs={dep_path: ["out"]}), store.store_dir,
                            {dep_path: dep}.__getitem__, {})
    Path(dep_path).write_bytes(dep.data)  # on disk, never registered
    path = derivation.derivation_path(top, store.store_dir)
    Path(path).write_bytes(top.data)
    with pytest.raises(RunnerError) as info:  # the memo of `top` is not trusted for this
        store.register_valid_paths([PathInfo(path, *nar.hash_regular(top.data))])
    assert info.value.reason == "bad-drv" and "this store does not hold" in info.value.message
