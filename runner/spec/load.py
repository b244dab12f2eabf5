"""`load_spec`: read a spec and its imports into one checked `Spec`.

Every problem of every file is collected and raised together as one
`SpecError`, sorted by file and position.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.errors import RunnerError, SpecError
from runner.spec import eval_cache, shards
from runner.spec.entries import build_entry
from runner.spec.graph import check_references, find_cycle
from runner.spec.model import DerivationEntry, InputEntry, Spec, SubstituterEntry
from runner.spec.validate import schema_problems
from runner.spec.yaml_loader import Node, Pos, load_yaml
from runner.store.paths import validate_name


class _Loader:
    def __init__(self) -> None:
        self.problems: list[tuple[Pos, str]] = []
        self.fatal: list[str] = []  # whole-file problems (unreadable, bad YAML)
        self.files: list[Path] = []
        self.fingerprints: list[eval_cache.Fingerprint] = []
        self.loaded: set[Path] = set()
        self.order: dict[str, int] = {}  # display name → load order, for sorting
        self.inputs: dict[str, InputEntry] = {}
        self.derivations: dict[str, DerivationEntry] = {}
        self.substituters: list[SubstituterEntry] = []
        self.defined: dict[str, tuple[str, Pos]] = {}

    def report(self, pos: Pos, message: str) -> None:
        self.problems.append((pos, message))

    def load_file(self, path: Path, display: str, stack: list[tuple[Path, str]]) -> None:
        real = path.resolve()
        self.loaded.add(real)
        self.files.append(path)
        self.order.setdefault(display, len(self.order))
        stat = eval_cache.stat_of(str(path))  # before the read: see eval_cache

        def fingerprint(data: bytes) -> None:
            self.fingerprints.append(eval_cache.Fingerprint(
                os.path.abspath(path), stat, eval_cache.sha256_bytes(data)))

        try:
            root = load_yaml(path, display, fingerprint)
        except SpecError as e:
            self.fatal.extend(e.problems)
            return
        self.problems.extend(schema_problems(root))
        if not isinstance(root.value, dict):
            return
        base = path.parent
        defaults = root.at("defaults")
        for key, node in _items(root.at("inputs")):
            self._input(key, node, root.at("inputs"), base)
        for key, node in _items(root.at("derivations")):
            pos = root.at("derivations").key_pos[key]  # type: ignore[union-attr]
            if not isinstance(node.value, dict) or not self._define(key, "derivation", pos):
                continue
            self.derivations[key] = build_entry(key, pos, node, defaults, self.report)
        for node in _list(root.at("substituters")):
            self._substituter(node)
        for node in _list(root.at("imports")):
            if isinstance(node.value, str):
                self._import(node, base, display, [*stack, (real, display)])

    def _define(self, key: str, kind: str, pos: Pos) -> bool:
        if key in self.defined:
            other_kind, other = self.defined[key]
            self.report(pos, f"'{key}' is defined twice: already defined as {other_kind} "
                             f"at {other}")
            return False
        self.defined[key] = (kind, pos)
        return True

    def _import(self, node: Node, base: Path, display: str, stack: list[tuple[Path, str]]) -> None:
        assert isinstance(node.value, str)
        target = base / node.value
        shown = os.path.normpath(os.path.join(os.path.dirname(display), node.value))
        if not target.is_file():
            what = "is a directory" if target.is_dir() else "does not exist"
            self.report(node.pos, f"imported file '{node.value}' {what} (looked for {target})")
            return
        real = target.resolve()
        chain = [real_path for real_path, _ in stack]
        if real in chain:
            names = [name for _, name in stack[chain.index(real):]] + [shown]
            self.report(node.pos, "import cycle: " + " -> ".join(names))
            return
        if real not in self.loaded:
            self.load_file(target, shown, stack)

    def _input(self, key: str, node: Node, parent: Node | None, base: Path) -> None:
        assert parent is not None
        pos = parent.key_pos[key]
        path_node = node if isinstance(node.value, str) else node.at("path")
        if path_node is None or not isinstance(path_node.value, str):
            return  # the schema reported it
        rel = path_node.value
        name_node, exclude_node = node.at("name"), node.at("exclude")
        if not self._define(key, "an input", pos):
            return
        path = Path(os.path.normpath(base.absolute() / rel))
        where = path_node
        if not os.path.lexists(path):
            self.report(where.pos,
                        f"input '{key}': path '{rel}' does not exist (looked for {path})")
        name = name_node.value if name_node and isinstance(name_node.value, str) else path.name
        if name_node is None:
            try:
                validate_name(name)
            except RunnerError as e:
                self.report(where.pos, f"input '{key}': {e}; give the input a valid 'name:'")
        patterns = tuple(
            item.value for item in _list(exclude_node) if isinstance(item.value, str)
        )
        if patterns:
            import pathspec  # ~30 ms (it imports asyncio): only for inputs with `exclude:`

            try:
                pathspec.GitIgnoreSpec.from_lines(patterns)
            except (ValueError, TypeError) as e:
                assert exclude_node is not None
                self.report(exclude_node.pos, f"input '{key}': bad exclude pattern: {e}")
        self.inputs[key] = InputEntry(key, path, name, patterns, pos, _git_mode(node.at("git")))

    def _substituter(self, node: Node) -> None:
        fields = node.value if isinstance(node.value, dict) else {}
        url = fields.get("url")
        command = fields.get("command")
        keys = fields.get("trusted-public-keys")
        priority = fields.get("priority")
        self.substituters.append(SubstituterEntry(
            url=url.value if url and isinstance(url.value, str) else None,
            command=tuple(str(i.value) for i in _list(command)) if command else None,
            trusted_public_keys=tuple(str(i.value) for i in _list(keys)),
            priority=priority.value if priority and type(priority.value) is int else None,
            pos=node.pos,
        ))

    def raise_problems(self) -> None:
        def key(item: tuple[Pos, str]) -> tuple[int, int, int]:
            pos = item[0]
            return (self.order.get(pos.file, len(self.order)), pos.line, pos.col)

        lines = self.fatal + [f"{pos}: {msg}" for pos, msg in sorted(self.problems, key=key)]
        if lines:
            raise SpecError(list(dict.fromkeys(lines)))


def _git_mode(node: Node | None) -> str | None:
    """`git: true` means the index: what the next commit holds (the schema checked the rest)."""
    if node is None or node.value is False:
        return None
    return "index" if node.value is True else str(node.value)


def _items(node: Node | None) -> list[tuple[str, Node]]:
    return list(node.value.items()) if node is not None and isinstance(node.value, dict) else []


def _list(node: Node | None) -> list[Node]:
    return list(node.value) if node is not None and isinstance(node.value, list) else []


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Load, validate and check the spec at `path` with its imports; raises `SpecError`."""
    display = os.fspath(path)
    loader = _Loader()
    loader.load_file(Path(display), display, [])
    check_references(loader.derivations, loader.inputs, loader.report)
    cycle = find_cycle(loader.derivations)
    if cycle:
        first = loader.derivations[cycle[0]]
        loader.report(first.pos, f"dependency cycle: {' -> '.join(cycle)}")
    loader.raise_problems()
    return Spec(
        path=Path(display),
        files=tuple(loader.files),
        fingerprints=tuple(loader.fingerprints),
        inputs=loader.inputs,
        derivations=shards.expand(loader.derivations),
        substituters=tuple(loader.substituters),
    )
