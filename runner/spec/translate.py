"""Spec entries → store derivations, as Nix's `derivation` builtin would make them.

`translate` is pure (no store writes): it needs only the store dir and the
store paths of the inputs. `instantiate` adds the inputs, translates and
writes the `.drv` files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runner.errors import RunnerError
from runner.spec import git_input
from runner.spec.coerce import scalar_to_string, to_string
from runner.spec.graph import LITERAL_ATTRS, closure, order
from runner.spec.hints import did_you_mean
from runner.spec.inputs import Exclude, exclude_filter, source_path
from runner.spec.interpolate import Ref
from runner.spec.model import DerivationEntry, Spec
from runner.store.derivation import (
    Derivation,
    DerivationOutput,
    derivation_path,
    fill_output_paths,
)
from runner.store.path_info import PathInfo


@dataclass(frozen=True)
class Instantiated:
    """One spec derivation as a store derivation."""

    key: str
    drv_path: str
    drv: Derivation
    outputs: dict[str, str]


class DerivationStore(Protocol):
    """What `instantiate` needs from a store (LocalStore has it)."""

    store_dir: str

    def add_path(
        self, src: str, name: str | None = None, exclude: Exclude | None = None
    ) -> str: ...

    def write_derivations(self, drvs: Sequence[Derivation]) -> list[str]: ...

    def is_valid(self, path: str) -> bool: ...

    def query_path_info(self, path: str) -> PathInfo | None: ...


def select(spec: Spec, names: Iterable[str] | None) -> list[str]:
    """The derivation keys asked for (all when `names` is None), checked."""
    if names is None:
        return list(spec.derivations)
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if name not in spec.derivations:
            hint = did_you_mean(name, spec.derivations)
            raise RunnerError(f"{spec.path}: no derivation named '{name}'{hint}",
                              reason="not-found")
    return wanted


def needed_inputs(spec: Spec, keys: Iterable[str]) -> list[str]:
    """Inputs referred to by the derivations `keys` (already closed over dependencies)."""
    found: dict[str, None] = {}
    for key in keys:
        for ref in spec.derivations[key].refs:
            if ref.name in spec.inputs:
                found[ref.name] = None
    return list(found)


def translate(
    spec: Spec, store_dir: str, source_paths: Mapping[str, str], names: Iterable[str] | None = None
) -> dict[str, Instantiated]:
    """Store derivations for `names` (default all) and everything they need, dependencies first.

    Pure: `source_paths` maps each referenced input to its store path.
    """
    keys = order(closure(select(spec, names), spec.derivations), spec.derivations)
    return _translate(spec, store_dir, source_paths, keys)


def _translate(
    spec: Spec, store_dir: str, source_paths: Mapping[str, str], keys: Sequence[str]
) -> dict[str, Instantiated]:
    """`translate` of `keys`, already closed over dependencies and in dependency order."""
    done: dict[str, Instantiated] = {}
    by_path: dict[str, Derivation] = {}
    cache: dict[str, bytes] = {}
    for key in keys:
        drv = _derivation(spec.derivations[key], spec.derivations, done, source_paths)
        drv = fill_output_paths(drv, store_dir, by_path.__getitem__, cache)
        path = derivation_path(drv, store_dir)
        by_path[path] = drv
        outputs = {name: out.path for name, out in drv.outputs.items()}
        done[key] = Instantiated(key, path, drv, outputs)
    return done


def _derivation(
    entry: DerivationEntry, entries: Mapping[str, DerivationEntry],
    done: Mapping[str, Instantiated], sources: Mapping[str, str]
) -> Derivation:
    input_drvs: dict[str, set[str]] = {}
    input_srcs: set[str] = set()

    def resolve(ref: Ref) -> str:
        if ref.name in sources:
            input_srcs.add(sources[ref.name])
            return sources[ref.name]
        dep = done[ref.name]
        output = ref.output or entries[ref.name].default_output
        input_drvs.setdefault(dep.drv_path, set()).add(output)
        return dep.outputs[output]

    env: dict[str, str] = {}
    for attr, node in entry.attrs.items():
        if attr in LITERAL_ATTRS:
            env[attr] = _literal(node.value)
        else:
            env[attr] = to_string(node, resolve)
    if entry.gathers:  # a `shards:` gatherer: `OUTPUT K PATH` for every shard output
        env["RUNNER_GATHER"] = "\n".join(
            f"{output} {k} {resolve(Ref(key, output))}"
            for output in entry.outputs for k, key in enumerate(entry.gathers, start=1))
    args = [scalar_to_string(node.value, resolve) for node in entry.args]
    if entry.fixed is not None:
        outputs = {"out": DerivationOutput("", entry.fixed.hash_algo, entry.fixed.digest_hex)}
    else:
        outputs = {name: DerivationOutput("") for name in entry.outputs}
    for name in entry.outputs:
        env[name] = ""
    return Derivation(
        outputs=outputs,
        input_drvs=input_drvs,
        input_srcs=input_srcs,
        system=env["system"],
        builder=env["builder"],
        args=args,
        env=env,
    )


def _literal(value: object) -> str:
    """Name-like attributes: strings as written, lists space-joined (`outputs`)."""
    if isinstance(value, list):
        return " ".join(_literal(getattr(item, "value", item)) for item in value)
    return scalar_to_string(value, lambda ref: str(ref)) if not isinstance(value, str) else value


def instantiate(
    spec: Spec, store: DerivationStore, names: Iterable[str] | None = None,
    written: dict[str, Derivation] | None = None,
) -> dict[str, Instantiated]:
    """Add the needed inputs to `store`, write the `.drv` files; return the asked-for ones.
    `written` receives every `.drv` written (path → derivation), dependencies too: a
    worker given them need not read and parse each file back (`Worker(known=…)`)."""
    wanted = select(spec, names)
    keys = order(closure(wanted, spec.derivations), spec.derivations)
    sources: dict[str, str] = {}
    for name in needed_inputs(spec, keys):
        entry = spec.inputs[name]
        if entry.git is not None:
            sources[name] = git_input.add(store, entry)
        else:
            sources[name] = store.add_path(str(entry.path), entry.name, exclude_filter(entry))
    result = _translate(spec, store.store_dir, sources, keys)
    paths = store.write_derivations([result[key].drv for key in keys])
    for key, path in zip(keys, paths, strict=True):
        if path != result[key].drv_path:
            raise RunnerError(f"internal error: '{key}' was written as '{path}', "
                              f"expected '{result[key].drv_path}'", reason="bad-drv")
    if written is not None:
        written.update((result[key].drv_path, result[key].drv) for key in keys)
    return {key: result[key] for key in wanted}


def source_paths(spec: Spec, store_dir: str, keys: Iterable[str] | None = None) -> dict[str, str]:
    """Store paths the inputs would get, computed without writing (for `validate`, `show`).

    With `keys`, only the inputs that they and their dependencies refer to; an unknown key
    is refused with a did-you-mean."""
    if keys is None:
        names = list(spec.inputs)
    else:
        names = needed_inputs(spec, closure(select(spec, keys), spec.derivations))
    return {name: source_path(spec.inputs[name], store_dir) for name in names}
