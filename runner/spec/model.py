"""The loaded spec: every file of an import tree joined into one namespace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from runner.spec.eval_cache import Fingerprint
from runner.spec.interpolate import Ref, TemplateError, parse_template
from runner.spec.yaml_loader import Node, Pos

# Attributes whose values are taken literally (no `${{ }}`): they name things.
LITERAL_ATTRS = ("name", "system", "outputs", "outputHash", "outputHashAlgo", "outputHashMode")


@dataclass(frozen=True)
class InputEntry:
    """A local file or directory to copy into the store as a `source` path."""

    key: str
    path: Path  # absolute, not resolved: a symlink input is stored as a symlink
    name: str  # store name
    exclude: tuple[str, ...]
    pos: Pos
    git: str | None = None  # "index" | "worktree": only the files git tracks


@dataclass(frozen=True)
class SubstituterEntry:
    """A binary cache URL or an external command that can supply outputs."""

    url: str | None
    command: tuple[str, ...] | None
    trusted_public_keys: tuple[str, ...]
    priority: int | None
    pos: Pos


@dataclass(frozen=True)
class FixedOutput:
    """What `output-hash*` asks for: algo is e.g. `sha256`, digest hex."""

    algo: str
    digest_hex: str
    recursive: bool

    @property
    def hash_algo(self) -> str:
        """The algorithm as a derivation output records it (`r:sha256` for recursive)."""
        return f"r:{self.algo}" if self.recursive else self.algo


@dataclass(frozen=True)
class DerivationEntry:
    """One derivation after `defaults` were merged under it.

    `attrs` maps Nix attribute names (as the `derivation` builtin would see
    them, `args` excluded) to the YAML nodes holding their values.
    """

    key: str
    pos: Pos
    name: str
    outputs: tuple[str, ...]
    attrs: dict[str, Node]
    args: tuple[Node, ...]
    fixed: FixedOutput | None
    # runner-only keys: never in the derivation, so they leave its hash alone
    junit: str | None = None  # the output holding JUnit XML
    shards: int = 1
    # a shard-merging entry (made by `shards.expand`): the keys of the shards it gathers
    gathers: tuple[str, ...] = ()
    retries: int | None = None  # `retries:` as written (None: not given)
    flaky: bool = False  # `flaky:`: retried (2 unless `retries`), a failure never cached

    @property
    def default_output(self) -> str:
        """The output `${{ key }}` stands for: as in Nix, a derivation used as a string is
        its first output in `outputs:` as written (`out` unless the list says otherwise)."""
        return self.outputs[0]

    def template_nodes(self) -> Iterator[Node]:
        """Every string node of the entry that may hold `${{ … }}` references."""
        yield from self.args
        for attr, node in self.attrs.items():
            if attr in LITERAL_ATTRS:
                continue
            if isinstance(node.value, list):
                yield from node.value
            else:
                yield node

    @cached_property
    def refs(self) -> tuple[Ref, ...]:
        """Every reference in the entry's templates, in order, computed once per entry
        (cached in the instance dict, which a frozen dataclass allows). Malformed
        templates are skipped here: loading reports them."""
        found: list[Ref] = []
        for node in self.template_nodes():
            if isinstance(node.value, str):
                with contextlib.suppress(TemplateError):
                    found.extend(p for p in parse_template(node.value) if isinstance(p, Ref))
        found.extend(Ref(key) for key in self.gathers)
        return tuple(found)


@dataclass(frozen=True)
class Spec:
    path: Path
    files: tuple[Path, ...]
    inputs: dict[str, InputEntry]
    derivations: dict[str, DerivationEntry]
    substituters: tuple[SubstituterEntry, ...]
    # Each file as the loader read it (runner.spec.eval_cache).
    fingerprints: tuple[Fingerprint, ...] = ()
