"""`runner validate | instantiate | show | graph`: commands on spec files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from runner.cli.args import store_flag
from runner.daemon.store_choice import daemon_socket
from runner.errors import RunnerError, SpecError
from runner.settings import Settings
from runner.store.derivation import Derivation, encode, parse

if TYPE_CHECKING:
    from runner.spec.model import Spec

# Spec loading (YAML, JSON Schema) is imported by the handlers, not by `runner --help`.


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help="check spec files; writes nothing")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to check")
    p.set_defaults(func=_validate)

    p = sub.add_parser("instantiate", help="write a spec's .drv files and inputs to the store")
    p.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    p.add_argument("names", nargs="*", metavar="NAME", help="derivations (default: all)")
    p.add_argument("--json", action="store_true", help="print drvPath and outputs per key")
    store_flag(p)
    p.set_defaults(func=_instantiate)

    p = sub.add_parser("show", help="print derivations as `nix show-derivation` does")
    p.add_argument("targets", nargs="+", metavar="SPEC [NAME…] | DRVPATH…",
                   help="a spec and derivation names, or .drv paths")
    p.set_defaults(func=_show)

    p = sub.add_parser("graph", help="print a spec's dependency graph")
    p.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    p.add_argument("--format", choices=("dot", "mermaid", "json"), default="dot",
                   help="output format (default: dot)")
    p.set_defaults(func=_graph)


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    from runner.spec.load import load_spec
    from runner.spec.translate import source_paths, translate

    problems: list[str] = []
    for path in args.specs:
        try:
            spec = load_spec(path)
            # Translating catches what only the store formats know; inputs are hashed, not copied.
            translate(spec, settings.store_dir, source_paths(spec, settings.store_dir))
        except SpecError as e:
            problems.extend(e.problems)
            continue
        print(f"{path}: ok ({_count(len(spec.derivations), 'derivation')}, "
              f"{_count(len(spec.inputs), 'input')})")
    if problems:
        raise SpecError(problems)
    return 0


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _instantiate(args: argparse.Namespace, settings: Settings) -> int:
    from runner.spec.load import load_spec
    from runner.spec.translate import instantiate
    from runner.store.local_store import open_store

    if (socket_path := daemon_socket(settings)) is not None:
        from runner.daemon import client_cli

        return client_cli.instantiate(args, settings, socket_path)
    spec = load_spec(args.spec)
    with open_store(settings) as store:
        result = instantiate(spec, store, args.names or None)
    if args.json:
        print(json.dumps(
            {k: {"drvPath": r.drv_path, "outputs": r.outputs} for k, r in result.items()},
            indent=2,
        ))
    else:
        for r in result.values():
            print(r.drv_path)
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from runner.spec.load import load_spec
    from runner.spec.translate import translate

    targets: list[str] = args.targets
    shown: dict[str, object] = {}
    if all(t.endswith(".drv") for t in targets):
        for path in targets:
            shown[path] = derivation_json(_read_drv(path))
    else:
        spec = load_spec(targets[0])
        names = targets[1:] or None
        result = translate(spec, settings.store_dir, _sources(spec, settings), names)
        for key in names or spec.derivations:
            shown[result[key].drv_path] = derivation_json(result[key].drv)
    text = json.dumps(shown, indent=2, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Raw bytes, as Nix prints them: env values may hold bytes that are not UTF-8.
        sys.stdout.flush()
        sys.stdout.buffer.write(encode(text))
        sys.stdout.buffer.flush()
        return 0
    sys.stdout.write(text)
    return 0


def _sources(spec: Spec, settings: Settings) -> dict[str, str]:
    from runner.spec.translate import source_paths

    return source_paths(spec, settings.store_dir)


def _read_drv(path: str) -> Derivation:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RunnerError(f"cannot read '{path}': {e.strerror}", reason="not-found") from None
    return parse(data, os.path.basename(path))


def derivation_json(drv: Derivation) -> dict[str, object]:
    """One derivation in the shape `nix show-derivation` prints."""
    outputs: dict[str, dict[str, str]] = {}
    for name, out in drv.outputs.items():
        entry = {"path": out.path}
        if out.hash:
            entry |= {"hashAlgo": out.hash_algo, "hash": out.hash}
        outputs[name] = entry
    return {
        "outputs": outputs,
        "inputSrcs": list(drv.input_srcs),
        "inputDrvs": {path: list(outs) for path, outs in drv.input_drvs.items()},
        "system": drv.system,
        "builder": drv.builder,
        "args": list(drv.args),
        "env": dict(drv.env),
    }


def _graph(args: argparse.Namespace, settings: Settings) -> int:
    from runner.spec.graph import edges
    from runner.spec.load import load_spec

    spec = load_spec(args.spec)
    links = edges(spec.derivations, spec.inputs)
    if args.format == "json":
        nodes = [{"id": k, "kind": "input"} for k in spec.inputs]
        nodes += [{"id": k, "kind": "derivation"} for k in spec.derivations]
        print(json.dumps({
            "nodes": nodes,
            "edges": [{"from": a, "to": b, "output": o} for a, b, o in links],
        }, indent=2))
    elif args.format == "mermaid":
        print("graph LR")
        for k in spec.inputs:
            print(f"  {_mermaid_id(k)}[/{k}/]")
        for k in spec.derivations:
            print(f"  {_mermaid_id(k)}[{k}]")
        for a, b, o in links:
            label = f"|{o}|" if o not in (None, "out") else ""
            print(f"  {_mermaid_id(a)} -->{label} {_mermaid_id(b)}")
    else:
        print("digraph spec {")
        for k in spec.inputs:
            print(f"  {json.dumps(k)} [shape=note];")
        for k in spec.derivations:
            print(f"  {json.dumps(k)} [shape=box];")
        for a, b, o in links:
            label = f" [label={json.dumps(o)}]" if o not in (None, "out") else ""
            print(f"  {json.dumps(a)} -> {json.dumps(b)}{label};")
        print("}")
    return 0


def _mermaid_id(key: str) -> str:
    return "n_" + "".join(c if c.isalnum() or c == "_" else f"_{ord(c):x}_" for c in key)
