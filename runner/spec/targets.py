"""Derivations named on the command line, with the outputs wanted as Nix writes them:
`tests` (every output), `tests^junit`, `tests^junit,coverage`, `tests^*` (every output)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.spec.hints import did_you_mean
from runner.spec.model import Spec


@dataclass(frozen=True)
class Target:
    key: str
    outputs: tuple[str, ...] | None  # None: every output

    def pick(self, paths: Mapping[str, str]) -> dict[str, str]:
        """The wanted ones of a derivation's output paths (name → path)."""
        if self.outputs is None:
            return dict(paths)
        return {name: paths[name] for name in self.outputs}


def parse_target(spec: Spec, text: str) -> Target:
    """`NAME` or `NAME^OUT[,OUT…]` or `NAME^*`, checked against `spec`."""
    key, caret, selection = text.partition("^")
    if key not in spec.derivations:
        hint = did_you_mean(key, spec.derivations)
        raise RunnerError(f"{spec.path}: no derivation named '{key}'{hint}", reason="not-found")
    if not caret or selection == "*":
        return Target(key, None)
    have = spec.derivations[key].outputs
    wanted = tuple(dict.fromkeys(selection.split(",")))
    for name in wanted:
        if not name:
            raise RunnerError(f"'{text}': an output name is missing after '^' (write "
                              f"{key}^OUTPUT, {key}^OUT1,OUT2 or {key}^*)", reason="not-found")
        if name not in have:
            hint = did_you_mean(name, have)
            raise RunnerError(f"'{text}': derivation '{key}' has no output '{name}' (it has: "
                              f"{', '.join(have)}){hint}", reason="not-found")
    return Target(key, wanted)


def parse_targets(spec: Spec, texts: Iterable[str]) -> list[Target]:
    """The targets named, in order; one derivation named twice is one target with the
    outputs of both (`tests^junit tests^coverage`), every output if either wants all."""
    merged: dict[str, Target] = {}
    for text in texts:
        target = parse_target(spec, text)
        before = merged.get(target.key)
        if before is not None:
            outputs = (None if before.outputs is None or target.outputs is None
                       else tuple(dict.fromkeys(before.outputs + target.outputs)))
            target = Target(target.key, outputs)
        merged[target.key] = target
    return list(merged.values())
