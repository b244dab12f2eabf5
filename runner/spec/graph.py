"""References between spec entries: checking them, and ordering derivations.

`${{ NAME }}` may name an input or a derivation; the derivation graph must be
acyclic (graphlib finds the cycle, we print it as `a -> b -> a`).
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Iterator

from runner.spec.hints import did_you_mean
from runner.spec.interpolate import Ref, TemplateError, parse_template, ref_spans
from runner.spec.model import LITERAL_ATTRS, DerivationEntry, InputEntry
from runner.spec.yaml_loader import Node, Pos

Report = Callable[[Pos, str], None]

__all__ = ["LITERAL_ATTRS", "check_references", "closure", "dependencies", "edges",
           "find_cycle", "order", "template_nodes"]


def template_nodes(entry: DerivationEntry) -> Iterator[Node]:
    """Every string node of `entry` that may hold `${{ … }}` references."""
    return entry.template_nodes()


def check_references(
    derivations: dict[str, DerivationEntry], inputs: dict[str, InputEntry], report: Report
) -> None:
    """Report malformed templates and references to unknown names or outputs."""
    names = [*derivations, *inputs]
    for entry in derivations.values():
        for node in template_nodes(entry):
            if not isinstance(node.value, str):
                continue
            text = node.value
            try:
                refs = [p for p in parse_template(text) if isinstance(p, Ref)]
            except TemplateError as e:
                report(node.locate("${{", text[:e.offset].count("${{")), str(e))
                continue
            if all(_ref_problem(ref, derivations, inputs, names) is None for ref in refs):
                continue
            for ref, start, end in ref_spans(text):  # point at each bad reference
                problem = _ref_problem(ref, derivations, inputs, names)
                if problem:
                    written = text[start:end]
                    at = node.locate(written, text[:start].count(written))
                    report(at, f"derivation '{entry.key}': {problem}")


def _ref_problem(
    ref: Ref, derivations: dict[str, DerivationEntry], inputs: dict[str, InputEntry],
    names: list[str],
) -> str | None:
    if ref.name in derivations:
        outputs = derivations[ref.name].outputs
        if ref.output is not None and ref.output not in outputs:
            listed = ", ".join(outputs)
            hint = did_you_mean(ref.output, outputs)
            return (f"'${{{{ {ref} }}}}': derivation '{ref.name}' has no output "
                    f"'{ref.output}' (it has: {listed}){hint}")
        return None
    if ref.name in inputs:
        if ref.output is not None:
            return (f"'${{{{ {ref} }}}}': input '{ref.name}' has no outputs; "
                    f"write '${{{{ {ref.name} }}}}'")
        return None
    hint = did_you_mean(ref.name, names)
    return f"'${{{{ {ref} }}}}' refers to '{ref.name}', which is not defined{hint}"


def dependencies(entry: DerivationEntry, derivations: dict[str, DerivationEntry]) -> set[str]:
    """Keys of the derivations `entry` refers to."""
    return {ref.name for ref in entry.refs if ref.name in derivations}


def find_cycle(derivations: dict[str, DerivationEntry]) -> list[str] | None:
    """A dependency cycle as `[a, b, a]`, or None."""
    sorter = graphlib.TopologicalSorter(
        {key: dependencies(e, derivations) for key, e in derivations.items()}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as e:
        cycle: list[str] = list(e.args[1])
        cycle.reverse()  # graphlib lists dependents last; print "a needs b needs … a"
        return cycle
    return None


def closure(roots: Iterable[str], derivations: dict[str, DerivationEntry]) -> set[str]:
    """`roots` and every derivation they depend on, transitively."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key not in seen:
            seen.add(key)
            stack.extend(dependencies(derivations[key], derivations))
    return seen


def order(keys: Iterable[str], derivations: dict[str, DerivationEntry]) -> list[str]:
    """`keys` in dependency order (dependencies first); the graph is known to be acyclic."""
    wanted = set(keys)
    sorter = graphlib.TopologicalSorter(
        {k: dependencies(derivations[k], derivations) & wanted for k in sorted(wanted)}
    )
    return list(sorter.static_order())


def edges(
    derivations: dict[str, DerivationEntry], inputs: dict[str, InputEntry]
) -> list[tuple[str, str, str | None]]:
    """`(dependency, dependent, output)` for every distinct reference, in spec order."""
    found: dict[tuple[str, str, str | None], None] = {}
    for key, entry in derivations.items():
        for ref in entry.refs:
            if ref.name in derivations or ref.name in inputs:
                output = ref.output or (derivations[ref.name].default_output
                                        if ref.name in derivations else None)
                found[(ref.name, key, output)] = None
    return list(found)
