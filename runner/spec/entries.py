"""Build one `DerivationEntry` from its YAML node and the file's `defaults`.

Runs after schema validation but tolerates values of the wrong type (they
were already reported), so that every independent problem shows up at once.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.errors import RunnerError
from runner.spec.hints import did_you_mean
from runner.spec.host import host_system
from runner.spec.model import DerivationEntry, FixedOutput
from runner.spec.validate import nix_attributes
from runner.spec.yaml_loader import Node, Pos
from runner.store.hashes import Hash
from runner.store.paths import output_path_name, validate_name

Report = Callable[[Pos, str], None]

# Attributes that change what the `derivation` builtin does; we do not support them.
_UNSUPPORTED_ENV = (
    "__ignoreNulls", "__structuredAttrs", "__json", "__contentAddressed", "__impure",
)
_HASH_KEYS = ("output-hash", "output-hash-algo", "output-hash-mode")


def _mapping(node: Node | None) -> dict[str, Node]:
    return node.value if node is not None and isinstance(node.value, dict) else {}


def build_entry(key: str, pos: Pos, node: Node, defaults: Node | None, report: Report) -> (
    DerivationEntry
):
    """Merge `defaults` under the derivation `node` and check what the schema cannot."""
    nix = nix_attributes()
    keyed: dict[str, Node] = {}  # spec key (kebab) → node; the derivation overrides defaults
    env: dict[str, Node] = {}
    env_pos: dict[str, Pos] = {}
    for source in (defaults, node):
        for k, value in _mapping(source).items():
            if k == "env":
                env.update(_mapping(value))
                env_pos.update(value.key_pos)
            elif k in nix or k == "name":
                keyed[k] = value

    name = _string(keyed.get("name"), key)
    outputs = _outputs(keyed.get("outputs"))
    _check_name(name, keyed.get("name"), pos, report)
    _check_outputs(name, keyed.get("outputs"), outputs, report)
    misspelt = any(did_you_mean(k, ["builder"]) for k in _mapping(node) if k not in nix)
    if "builder" not in keyed and not misspelt:
        report(pos, f"derivation '{key}' has no 'builder' (set it here or in 'defaults')")

    attrs: dict[str, Node] = {
        "name": keyed.get("name") or Node(key, pos),
        "system": keyed.get("system") or Node(host_system(), pos),
    }
    for k, value in keyed.items():
        if k not in ("name", "system", "args"):
            attrs[nix[k]] = value
    structural = {nix_name: k for k, nix_name in nix.items()} | {"name": "name"}
    for k, value in env.items():
        at = env_pos.get(k, value.pos)
        if k in structural:
            spec_key = structural[k]
            report(at, f"env key '{k}' clashes with the derivation key '{spec_key}'; "
                       f"use '{spec_key}' instead")
        elif k in outputs:
            report(at, f"env key '{k}' clashes with output '{k}', whose path the build gets "
                       f"in ${k}")
        elif k in _UNSUPPORTED_ENV:
            report(at, f"env key '{k}' is not supported")
        else:
            attrs[k] = value

    args_node = keyed.get("args")
    args = tuple(args_node.value) if args_node and isinstance(args_node.value, list) else ()
    fixed = _fixed_output(keyed, outputs, report)
    junit, shards = _runner_only(_mapping(node), outputs, report)
    if shards > 1:
        at = _mapping(node)["shards"].pos
        if fixed is not None:
            report(at, "a fixed-output derivation (one with 'output-hash') cannot have 'shards'")
        for var in ("TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS", "RUNNER_SHARD_INDEX",
                    "RUNNER_SHARD_COUNT"):
            if var in env:
                report(env_pos.get(var, at), f"env key '{var}' is set by 'shards'")
    retries, flaky = _retries(_mapping(node))
    return DerivationEntry(key, pos, name, outputs, attrs, args, fixed, junit, shards,
                           retries=retries, flaky=flaky)


def _retries(keys: dict[str, Node]) -> tuple[int | None, bool]:
    """`retries:` and `flaky:` (runner-only; wrong types were reported by the schema)."""
    retries_node, flaky_node = keys.get("retries"), keys.get("flaky")
    retries = retries_node.value if retries_node is not None else None
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        retries = None
    return retries, bool(flaky_node is not None and flaky_node.value is True)


def _runner_only(keys: dict[str, Node], outputs: tuple[str, ...], report: Report) -> (
    tuple[str | None, int]
):
    """`junit:` and `shards:` (runner-only: they never enter the derivation)."""
    junit_node, shards_node = keys.get("junit"), keys.get("shards")
    junit = junit_node.value if junit_node and isinstance(junit_node.value, str) else None
    if junit_node is not None and junit is not None and junit not in outputs:
        report(junit_node.pos, f"'junit' names output '{junit}', which is not one of the "
                               f"outputs ({', '.join(outputs)})")
        junit = None
    shards = shards_node.value if shards_node and isinstance(shards_node.value, int) else 1
    return junit, shards if not isinstance(shards, bool) and shards >= 1 else 1


def _string(node: Node | None, default: str) -> str:
    return node.value if node is not None and isinstance(node.value, str) else default


def _outputs(node: Node | None) -> tuple[str, ...]:
    if node is None or not isinstance(node.value, list):
        return ("out",)
    names = [item.value for item in node.value if isinstance(item.value, str)]
    return tuple(dict.fromkeys(names)) or ("out",)


def _check_name(name: str, node: Node | None, pos: Pos, report: Report) -> None:
    at = node.pos if node is not None else pos
    if node is None and "." in name:
        return  # an invalid key, already reported by the schema
    try:
        validate_name(name)
    except RunnerError as e:
        if node is None:  # the key itself; a `name:` value was checked by the schema
            report(at, f"{e}; give the derivation a valid 'name:'")
        return
    if name.endswith(".drv"):
        report(at, f"derivation name '{name}' must not end in '.drv'")


def _check_outputs(
    name: str, node: Node | None, outputs: tuple[str, ...], report: Report
) -> None:
    if node is None:
        return
    at = node.pos
    for output in outputs:
        if output == "drv":
            report(at, "'drv' cannot be an output name (it would clash with the .drv file)")
            continue
        try:
            validate_name(output)
        except RunnerError:
            continue  # reported by the schema
        try:
            validate_name(output_path_name(name, output))
        except RunnerError as e:
            report(at, f"output '{output}': {e}")


def _fixed_output(
    keyed: dict[str, Node], outputs: tuple[str, ...], report: Report
) -> FixedOutput | None:
    hash_node = keyed.get("output-hash")
    if hash_node is None:
        for k in _HASH_KEYS[1:]:
            if k in keyed:
                report(keyed[k].pos, f"'{k}' is set but 'output-hash' is not")
        return None
    algo_node, mode_node = keyed.get("output-hash-algo"), keyed.get("output-hash-mode")
    algo = algo_node.value if algo_node and isinstance(algo_node.value, str) else None
    mode = mode_node.value if mode_node and isinstance(mode_node.value, str) else "flat"
    if not isinstance(hash_node.value, str) or not hash_node.value:
        return None  # the schema reported it
    if "outputs" in keyed and list(outputs) != ["out"]:
        report(keyed["outputs"].pos,
               "a fixed-output derivation (one with 'output-hash') has exactly one output, 'out'")
    try:
        parsed = Hash.parse(hash_node.value, algo)
    except RunnerError as e:
        report(hash_node.pos, f"invalid 'output-hash': {e}")
        return None
    return FixedOutput(parsed.algo, parsed.hex(), mode == "recursive")
