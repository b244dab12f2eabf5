"""Store derivations: Nix's ATerm text, its hash modulo fixed outputs, and output paths.

ATerm strings are bytes, as in Nix: a `.drv` is decoded as UTF-8 with
`surrogateescape`, so bytes that are not UTF-8 (Latin-1, CP1252 in `env`) become
lone surrogates in the `str` fields and `Derivation.data` gives them back byte for
byte (os.environ and subprocess encode env the same way, so a builder sees the
original bytes too).

`parse` takes what Nix 2.8's parser takes: lists in any order, repeated keys
(outputs: the first wins; input derivations, env: the last), any `\\x` escape,
raw newlines in strings, no outputs at all. `unparse` prints the canonical form
Nix writes (sorted, no duplicates, `\\ \" \\n \\r \\t` escapes), so a `.drv` that
Nix wrote round-trips byte for byte.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.store.hashes import SIZES, Hash
from runner.store.paths import make_fixed_output_path, make_output_path, make_text_path


@dataclass(frozen=True)
class DerivationOutput:
    path: str
    hash_algo: str = ""  # "" or "<algo>" (flat) or "r:<algo>" (recursive, NAR)
    hash: str = ""  # base-16 digest for fixed outputs

    @property
    def is_fixed(self) -> bool:
        return bool(self.hash)

    def fixed_hash(self) -> tuple[Hash, bool]:
        """The expected content hash and whether it is over the NAR (recursive)."""
        recursive = self.hash_algo.startswith("r:")
        algo = self.hash_algo[2:] if recursive else self.hash_algo
        return Hash.parse(self.hash, algo), recursive


@dataclass(frozen=True)
class Derivation:
    """A store derivation; collections are normalised to Nix's sorted order."""

    outputs: Mapping[str, DerivationOutput]
    input_drvs: Mapping[str, Collection[str]]
    input_srcs: Collection[str]
    system: str
    builder: str
    args: Sequence[str]
    env: Mapping[str, str]

    def __post_init__(self) -> None:
        for field_name in ("input_srcs", "args"):
            if isinstance(getattr(self, field_name), str):
                raise TypeError(f"Derivation.{field_name} must be a collection, not a str")
        if any(isinstance(v, str) for v in self.input_drvs.values()):
            raise TypeError("Derivation.input_drvs values must be collections of output names")
        set_ = object.__setattr__  # normalising a frozen instance once, at construction
        set_(self, "outputs", dict(sorted(self.outputs.items())))
        set_(
            self,
            "input_drvs",
            {k: tuple(sorted(set(v))) for k, v in sorted(self.input_drvs.items())},
        )
        set_(self, "input_srcs", tuple(sorted(set(self.input_srcs))))
        set_(self, "args", tuple(self.args))
        set_(self, "env", dict(sorted(self.env.items())))

    @property
    def name(self) -> str:
        """`env["name"]`; with `__structuredAttrs` the name is inside `__json`."""
        name = self.env.get("name") or _json_name(self.env.get("__json"))
        if not name:
            raise RunnerError("derivation has no 'name' in its environment", reason="bad-drv")
        return name

    @property
    def data(self) -> bytes:
        """The ATerm bytes: `text` with non-UTF-8 bytes restored (see the module doc)."""
        return encode(self.text)

    @functools.cached_property
    def text(self) -> str:
        """The ATerm text (`unparse`), printed once per instance (cached in the
        instance dict, which a frozen dataclass allows; the fields are not changed
        after construction)."""
        return _unparse(self, False, None)

    @property
    def is_fixed_output(self) -> bool:
        return list(self.outputs) == ["out"] and self.outputs["out"].is_fixed


def _json_name(text: str | None) -> str:
    if not text:
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) else ""


def encode(text: str) -> bytes:
    """ATerm text to the bytes of the `.drv` (lone surrogates back to their bytes)."""
    return text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> str:
    """`.drv` bytes to text; never fails (bytes that are not UTF-8 become surrogates)."""
    return data.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- printing

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


_SPECIAL = re.compile(r'[\\"\n\r\t]')


def _str(s: str) -> str:
    if _SPECIAL.search(s) is None:  # most strings (store paths, names): nothing to escape
        return '"' + s + '"'
    return '"' + s.translate(_ESCAPES) + '"'


def _list(items: Collection[str]) -> str:
    if not items:
        return "[]"
    if _SPECIAL.search("".join(items)) is None:  # one scan for the whole list
        return '["' + '","'.join(items) + '"]'
    return "[" + ",".join(_str(i) for i in items) + "]"


@functools.lru_cache(maxsize=1024)
def _outs_list(outs: tuple[str, ...]) -> str:
    """An input derivation's output names (nearly always `["out"]`), sorted, memoised."""
    return _list(sorted(outs))


def _pairs(items: Sequence[tuple[str, str]]) -> str:
    """`(k,v),…` with both printed as strings (outputs, env)."""
    if _SPECIAL.search("".join([k + v for k, v in items])) is None:
        return ",".join([f'("{k}","{v}")' for k, v in items])
    return ",".join([f"({_str(k)},{_str(v)})" for k, v in items])


def unparse(
    drv: Derivation,
    *,
    mask_outputs: bool = False,
    input_drvs_hashes: Mapping[str, Collection[str]] | None = None,
) -> str:
    """The ATerm text. `mask_outputs` blanks output paths and their env vars;
    `input_drvs_hashes` replaces the input derivations (used for hashing modulo)."""
    if not mask_outputs and input_drvs_hashes is None:
        return drv.text
    return _unparse(drv, mask_outputs, input_drvs_hashes)


def _unparse(
    drv: Derivation,
    mask_outputs: bool,
    input_drvs_hashes: Mapping[str, Collection[str]] | None,
) -> str:
    outputs = ",".join(
        "("
        + ",".join(
            [_str(name), _str("" if mask_outputs else o.path), _str(o.hash_algo), _str(o.hash)]
        )
        + ")"
        for name, o in drv.outputs.items()
    )
    inputs = drv.input_drvs if input_drvs_hashes is None else input_drvs_hashes
    paths = sorted(inputs)
    pairs = [
        (path, _outs_list(outs if type(outs) is tuple else tuple(outs)))
        for path, outs in [(path, inputs[path]) for path in paths]
    ]
    if _SPECIAL.search("".join(paths)) is None:
        input_drvs = ",".join([f'("{path}",{outs})' for path, outs in pairs])
    else:
        input_drvs = ",".join([f"({_str(path)},{outs})" for path, outs in pairs])
    env_items = list(drv.env.items())
    if mask_outputs:
        env_items = [(k, "" if k in drv.outputs else v) for k, v in env_items]
    env = _pairs(env_items)
    return (
        f"Derive([{outputs}],[{input_drvs}],{_list(drv.input_srcs)},"
        f"{_str(drv.system)},{_str(drv.builder)},{_list(drv.args)},[{env}])"
    )


# ---------------------------------------------------------------- parsing

# Nix's escapes: `\n \r \t` are control characters, `\x` is x for any other x.
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_PLAIN = re.compile(r'"([^"\\]*)"')
_HEX = re.compile(r"[0-9a-f]*")


class _Parser:
    def __init__(self, text: str, origin: str) -> None:
        self.text = text
        self.origin = origin
        self.pos = 0

    def fail(self, what: str, pos: int | None = None) -> RunnerError:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return RunnerError(
            f"{self.origin}:{line}:{col}: corrupt derivation: {what}", reason="bad-drv"
        )

    def expect(self, literal: str) -> None:
        if not self.text.startswith(literal, self.pos):
            raise self.fail(f"expected '{literal}'")
        self.pos += len(literal)

    def peek(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def string(self) -> str:
        """A quoted string: any character but `"`; `\\` escapes the next one. Scanned
        with `find`, not a regex, so an unterminated string costs linear time."""
        plain = _PLAIN.match(self.text, self.pos)  # most strings: no escape at all
        if plain is not None:
            self.pos = plain.end()
            return plain.group(1)
        t = self.text
        if not t.startswith('"', self.pos):
            raise self.fail("expected a string")
        i = start = self.pos + 1
        parts: list[str] = []
        while True:
            quote = t.find('"', i)
            if quote < 0:
                raise self.fail("unterminated string", len(t))
            slash = t.find("\\", i, quote)
            if slash < 0:
                parts.append(t[start:quote])
                self.pos = quote + 1
                return "".join(parts) if len(parts) > 1 else parts[0]
            escaped = t[slash + 1]  # exists: `quote` lies beyond it
            parts += [t[start:slash], _UNESCAPES.get(escaped, escaped)]
            i = start = slash + 2

    def path(self, *, empty_ok: bool = False) -> str:
        start = self.pos
        s = self.string()
        if not (s.startswith("/") or (empty_ok and not s)):
            raise self.fail(f"'{s}' is not an absolute path", start)
        return s

    def each(self, item: Callable[[], None]) -> None:
        """A `[a,b,…]` list; order and repeats are the caller's business (as in Nix)."""
        self.expect("[")
        first = True
        while not self.peek("]"):
            if not first:
                self.expect(",")
            first = False
            item()

    def strings(self, item: Callable[[], str] | None = None) -> list[str]:
        out: list[str] = []
        read = item or self.string
        self.each(lambda: out.append(read()))
        return out


def _check_output(p: _Parser, name: str, algo: str, digest: str, at: int) -> None:
    if not algo and not digest:
        return
    base = algo[2:] if algo.startswith("r:") else algo
    if base not in SIZES:
        raise p.fail(f"output '{name}' has unknown hash algorithm '{algo}'", at)
    if not digest:
        raise p.fail(f"output '{name}' is content-addressed without a hash (unsupported)", at)
    if len(digest) != 2 * SIZES[base] or not _HEX.fullmatch(digest):
        raise p.fail(f"output '{name}' has a malformed {base} hash '{digest}'", at)


def parse(text: str | bytes, origin: str = "<derivation>") -> Derivation:
    """Parse ATerm text (or the bytes of a `.drv`) as Nix 2.8 does; see the module doc."""
    if isinstance(text, bytes):
        text = decode(text)
    p = _Parser(text, origin)
    p.expect("Derive(")

    outputs: dict[str, DerivationOutput] = {}

    def output() -> None:
        at = p.pos
        p.expect("(")
        name = p.string()
        p.expect(",")
        path = p.path(empty_ok=True)
        p.expect(",")
        algo = p.string()
        p.expect(",")
        digest = p.string()
        p.expect(")")
        _check_output(p, name, algo, digest, at)
        outputs.setdefault(name, DerivationOutput(path, algo, digest))

    p.each(output)
    p.expect(",")

    input_drvs: dict[str, list[str]] = {}

    def input_drv() -> None:
        p.expect("(")
        path = p.path()
        p.expect(",")
        input_drvs[path] = p.strings()
        p.expect(")")

    p.each(input_drv)
    p.expect(",")
    input_srcs = p.strings(p.path)
    p.expect(",")
    system = p.string()
    p.expect(",")
    builder = p.string()
    p.expect(",")
    args = p.strings()
    p.expect(",")

    env: dict[str, str] = {}

    def env_entry() -> None:
        p.expect("(")
        key = p.string()
        p.expect(",")
        env[key] = p.string()
        p.expect(")")

    p.each(env_entry)
    p.expect(")")
    if p.pos != len(text):
        raise p.fail("trailing data after the derivation")
    return Derivation(outputs, input_drvs, input_srcs, system, builder, args, env)


# ---------------------------------------------------------------- hashing and paths

Loader = Callable[[str], Derivation]


def _modulo(drv: Derivation, cache: Mapping[str, bytes]) -> bytes:
    if drv.is_fixed_output:
        out = drv.outputs["out"]
        text = f"fixed:out:{out.hash_algo}:{out.hash}:{out.path}"
        return hashlib.sha256(text.encode()).digest()
    inputs: dict[str, Collection[str]] = {}
    for path, outs in drv.input_drvs.items():
        key = cache[path].hex()
        seen = inputs.get(key)  # two inputs may have the same hash (same fixed output)
        inputs[key] = outs if seen is None else {*seen, *outs}
    return hashlib.sha256(encode(unparse(drv, input_drvs_hashes=inputs))).digest()


def hash_derivation_modulo(
    drv: Derivation, load: Loader, cache: MutableMapping[str, bytes]
) -> bytes:
    """SHA-256 that identifies `drv` with fixed-output inputs reduced to their content hash.

    Input derivations are loaded with `load` and memoised by path in `cache`;
    the walk is iterative so long chains do not hit the recursion limit.
    """
    if drv.is_fixed_output:
        return _modulo(drv, cache)
    stack = [p for p in drv.input_drvs if p not in cache]
    pending: dict[str, Derivation] = {}
    while stack:
        path = stack[-1]
        if path in cache:
            stack.pop()
            continue
        first_visit = path not in pending
        current = pending[path] if not first_visit else load(path)
        missing = (
            [] if current.is_fixed_output else [q for q in current.input_drvs if q not in cache]
        )
        if missing:
            if not first_visit:
                raise RunnerError(f"derivation '{path}' depends on itself", reason="bad-drv")
            pending[path] = current
            stack.extend(missing)
            continue
        cache[path] = _modulo(current, cache)
        pending.pop(path, None)
        stack.pop()
    return _modulo(drv, cache)


def fill_output_paths(
    drv: Derivation, store_dir: str, load: Loader, cache: MutableMapping[str, bytes]
) -> Derivation:
    """Compute output paths as Nix's `derivation` builtin does and set them in
    both `outputs` and `env`; existing output paths are ignored."""
    name = drv.name
    if drv.is_fixed_output:
        out = drv.outputs["out"]
        try:
            digest, recursive = out.fixed_hash()
        except RunnerError as e:
            raise RunnerError(f"derivation '{name}': {e}", reason="bad-drv") from None
        path = make_fixed_output_path(name, digest, recursive, store_dir)
        return _with_outputs(
            drv, {"out": dataclasses.replace(out, path=path)}, {**drv.env, "out": path}
        )
    for output_name, output in drv.outputs.items():
        if output.hash_algo or output.hash:
            raise RunnerError(
                f"derivation '{name}': output '{output_name}' has a hash but the derivation "
                "is not fixed-output (a fixed output must be the only output, named 'out')",
                reason="bad-drv",
            )
    blank = _with_outputs(
        drv,
        {k: DerivationOutput("") for k in drv.outputs},
        {**drv.env, **{k: "" for k in drv.outputs}},
    )
    drv_hash = hash_derivation_modulo(blank, load, cache)
    paths = {k: make_output_path(k, drv_hash, name, store_dir) for k in drv.outputs}
    filled = _with_outputs(
        blank, {k: DerivationOutput(p) for k, p in paths.items()}, {**drv.env, **paths}
    )
    filled.__dict__[_MASKED] = drv_hash  # masking `filled` gives `blank` again
    return filled


_MASKED = "_masked_modulo"


def masked_modulo(drv: Derivation, load: Loader, cache: MutableMapping[str, bytes]) -> bytes:
    """The hash modulo of `drv` with its output paths and their env vars blanked: what
    input-addressed output paths are computed from. Memoised on the (immutable)
    instance, so checking what `fill_output_paths` just computed costs nothing."""
    memo = drv.__dict__.get(_MASKED)
    if memo is None:
        blank = _with_outputs(
            drv,
            {k: DerivationOutput("") for k in drv.outputs},
            {**drv.env, **{k: "" for k in drv.outputs if k in drv.env}},
        )
        memo = drv.__dict__[_MASKED] = hash_derivation_modulo(blank, load, cache)
    assert isinstance(memo, bytes)
    return memo


def _with_outputs(
    drv: Derivation, outputs: Mapping[str, DerivationOutput], env: Mapping[str, str]
) -> Derivation:
    """`dataclasses.replace(drv, outputs=…, env=…)` without normalising the inputs again:
    they are `drv`'s, already sorted (100 input derivations each in a dense graph)."""
    new: Derivation = object.__new__(Derivation)
    set_ = object.__setattr__
    set_(new, "outputs", dict(sorted(outputs.items())))
    set_(new, "input_drvs", drv.input_drvs)
    set_(new, "input_srcs", drv.input_srcs)
    set_(new, "system", drv.system)
    set_(new, "builder", drv.builder)
    set_(new, "args", drv.args)
    set_(new, "env", dict(sorted(env.items())))
    return new


def derivation_path(drv: Derivation, store_dir: str, *, name: str | None = None) -> str:
    """The `.drv` store path: a text path referencing the sources and input derivations.
    `name`: the derivation's name when its env does not hold it (Nix keeps it apart)."""
    text_hash = hashlib.sha256(drv.data).digest()
    references = [*drv.input_srcs, *drv.input_drvs]
    return make_text_path((name or drv.name) + ".drv", text_hash, references, store_dir)
