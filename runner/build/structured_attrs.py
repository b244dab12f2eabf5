"""`__structuredAttrs` derivations: the builder gets `.attrs.json` and `.attrs.sh` in its
build dir instead of one env var per attribute, with Nix 2.8's contents: the `__json`
value with `outputs` turned into an output-name → path map, and the bash declarations of
the attributes bash can hold (strings, integral numbers, null, Booleans, and flat arrays
and objects of those)."""

from __future__ import annotations

import json
import math
import os
import re

from runner.errors import RunnerError
from runner.store.derivation import Derivation, encode

JSON_FILE = ".attrs.json"
SH_FILE = ".attrs.sh"
_SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_structured(drv: Derivation) -> bool:
    return "__json" in drv.env


def attrs(drv: Derivation) -> dict[str, object]:
    try:
        value = json.loads(drv.env["__json"])
    except ValueError as e:
        raise RunnerError(f"derivation '{drv.name}': bad __json: {e}", reason="bad-drv") from None
    if not isinstance(value, dict):
        raise RunnerError(f"derivation '{drv.name}': __json is not an object", reason="bad-drv")
    value["outputs"] = {name: out.path for name, out in drv.outputs.items()}
    return value


def to_json(value: dict[str, object]) -> str:
    # Nix prints compactly, keys sorted, non-ASCII as is.
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _simple(value: object) -> str | None:
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "''"
    if isinstance(value, int | float) and math.isfinite(value) and value == math.ceil(value):
        return str(int(value))
    return None


def to_shell(value: dict[str, object]) -> str:
    lines = []
    for key in sorted(value):
        if not _SH_NAME.fullmatch(key):
            continue
        item = value[key]
        simple = _simple(item)
        if simple is not None:
            lines.append(f"declare {key}={simple}\n")
        elif isinstance(item, list):
            parts = [_simple(v) for v in item]
            if None not in parts:
                lines.append(f"declare -a {key}=({''.join(f'{p} ' for p in parts)})\n")
        elif isinstance(item, dict):
            pairs = [(k, _simple(v)) for k, v in sorted(item.items())]
            if all(p is not None for _, p in pairs):
                body = "".join(f"[{_quote(k)}]={p} " for k, p in pairs)
                lines.append(f"declare -A {key}=({body})\n")
    return "".join(lines)


def write_files(drv: Derivation, build_dir: str) -> None:
    value = attrs(drv)
    for name, text in ((JSON_FILE, to_json(value)), (SH_FILE, to_shell(value))):
        with open(os.path.join(build_dir, name), "wb") as f:
            f.write(encode(text))
