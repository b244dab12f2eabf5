"""Every example in README.md and docs/*.md works as written, as a new user runs it: from a
fresh clone (the checkout's tracked files, `git init`ed), with a fresh HOME and so the
default store, the sandbox on (its default; a fallback to building without one fails the
test).

What counts as an example, by its fence:
- ```yaml: a spec (`version:` at the top; a `# path` header naming a file of the checkout
  must equal that file), a fragment of one (top-level spec keys only; completed with
  `version: 1` and a trivial derivation, then validated), or a pre-commit framework config
  (`repos:`; checked by `pre-commit validate-config`). A spec headed `# runner.yaml` is
  the checks spec of a git repository holding the example package (specs/python-package).
- ```sh: commands, each logical line run with bash (a block using `$out` quotes a
  builder script instead: each of its lines must be in a spec of specs/). Lines that run
  `runner check` or `runner hook` run in the repository of the page's `# runner.yaml`;
  the rest in the clone.
  `runner cache serve` runs in the background for the rest of its block.
- a bare ``` block headed `# ~/.config/runner/runner.conf`: written there, then
  `runner config show` must accept it. Other bare blocks are output samples and synopses.
- ```python: its import lines (the rest are API sketches using the caller's objects).

Placeholders a reader replaces (a team's share, a cache host, a key) are listed in
PLACEHOLDERS; what cannot run here at all is listed, with the reason, in EXCLUDED.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.cli.main import build_parser
from tests.git_helpers import git

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SPEC_KEYS = {"version", "imports", "defaults", "inputs", "substituters", "derivations"}
CONFIG_HEADER = "# ~/.config/runner/runner.conf"
TIMEOUT = 120

# A line or block containing the key is not run, for the reason given. Keep this short.
EXCLUDED = {
    "pip install .": "installs into the test's own Python; the test puts this checkout's "
                     "`runner` on PATH instead (tox installs it so)",
    "pip install tox && tox": "the test suite itself",
    "-m pip install --break-system-packages": "changes the host's python3 for every user "
                                              "(a step for the machine's owner, not for a test)",
    "runner check specs/checks.yaml": "runs this repository's whole suite (minutes) with "
                                      "the step above; test_example_pipelines.py runs the "
                                      "spec on small repositories",
    "--remote grpc://buildfarm:8980": "needs a REAPI server (tests/test_remote_casd.py "
                                      "runs one)",
    "buildbox-casd --bind": "starts a REAPI server (tests/test_remote_casd.py does)",
    "bash .ci/setup-buildgrid.sh": "CI set-up: apt-get and a BuildGrid virtualenv",
}

# What a reader substitutes: a team's shared directory, a cache host, their own key.
PLACEHOLDERS = {
    "/srv/runner-cache": "{tmp}/srv/runner-cache",
    "/var/tmp/runner": "{tmp}/var/tmp/runner",
    "http://cache:8080": "http://127.0.0.1:{port}",
    "--port 8080": "--port {port}",
    "team-cache-1:BASE64…": "{key}",
    "team-cache-1:…": "{key}",
}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def header(self) -> str:
        first = self.text.splitlines()[0] if self.text else ""
        return first.strip() if first.startswith("#") else ""


def blocks(page: str) -> list[Block]:
    found: list[Block] = []
    body: list[str] = []
    lines = (ROOT / page).read_text().splitlines()
    start, lang = 0, ""  # start 0: outside a fence
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start:
                found.append(Block(page, start, lang, "\n".join(body) + "\n"))
                start = 0
            else:
                start, lang, body = number, line[3:].strip(), []
        elif start:
            body.append(line)
    return found


def excluded(text: str) -> str | None:
    return next((why for key, why in EXCLUDED.items() if key in text), None)


def commands(block: Block) -> Iterator[str]:
    """Logical lines: continuations joined, comments and blank lines dropped."""
    logical = ""
    for raw in block.text.splitlines():
        logical += raw
        if raw.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip() and not logical.strip().startswith("#"):
            yield logical.strip()
        logical = ""


class World:
    """One new user on one machine: a HOME, the default store, a clone, runner on PATH."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        runner = bin_dir / "runner"
        runner.write_text(f"#!/bin/sh\nexec {sys.executable} -m runner \"$@\"\n")
        runner.chmod(0o755)
        drop = ("RUNNER_", "XDG_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        self.env.update(HOME=str(self.home), PYTHONPATH=str(ROOT),
                        PATH=f"{bin_dir}:{os.environ['PATH']}")
        self.clone = tmp / "clone"
        self.repo: Path | None = None
        self.port = 0
        self.key = ""
        self.servers: list[subprocess.Popen[str]] = []

    def make_clone(self) -> None:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.split("\0")
        for name in filter(None, tracked):
            if (ROOT / name).is_file():
                (self.clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, self.clone / name)
        git(self.clone, "init", "-q")
        git(self.clone, "add", "-A")

    def make_repo(self, checks_spec: str) -> None:
        """A project with its checks spec at the root (and specs/checks.yaml, which
        pre-commit.md's hook example names), its files staged."""
        self.repo = self.tmp / f"repo{len(list(self.tmp.glob('repo*')))}"
        example = ROOT / "specs" / "python-package"
        shutil.copytree(example, self.repo,
                        ignore=shutil.ignore_patterns("__pycache__", ".*_cache"))
        (self.repo / "runner.yaml").write_text(checks_spec)
        (self.repo / "specs").mkdir()
        shutil.copy(ROOT / "specs" / "checks.yaml", self.repo / "specs" / "checks.yaml")
        git(self.repo, "init", "-q")
        git(self.repo, "add", "-A")

    def fill(self, text: str) -> str:
        for placeholder, value in PLACEHOLDERS.items():
            if placeholder in text:
                key = self.public_key() if "{key}" in value else ""
                text = text.replace(placeholder,
                                    value.format(tmp=self.tmp, port=self.port, key=key))
        return text

    def public_key(self) -> str:
        if not self.key:
            secret = self.tmp / "team-test.sec"
            out = self.run(f"runner key generate team-cache-1 --secret {secret}", self.tmp)
            self.key = out.strip()
        return self.key

    def run(self, command: str, cwd: Path) -> str:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd,
                              env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{proc.stderr}"
        assert "without a sandbox" not in proc.stderr, proc.stderr  # the sandbox stays on
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout

    def serve(self, command: str, cwd: Path) -> None:
        """Start `runner cache serve` and wait for its "serving … on" line."""
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=self.env,
                                stderr=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("serving "), line

    def stop_servers(self) -> None:
        for proc in self.servers:
            proc.terminate()
            proc.wait(timeout=10)
        self.servers.clear()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stub_inputs(spec: dict[str, Any], where: Path) -> None:
    """Create what a spec example names (imports, input paths), as a user's tree has."""
    for name in spec.get("imports") or []:
        (where / name).write_text("version: 1\nderivations: {}\n")
    for value in (spec.get("inputs") or {}).values():
        entry = value if isinstance(value, dict) else {"path": value}
        path = (where / entry["path"]).resolve()
        path.mkdir(parents=True, exist_ok=True)
        if entry.get("git") and not (path / ".git").exists():
            (path / "tracked").write_text("x\n")
            git(path, "init", "-q")
            git(path, "add", "-A")


def check_yaml(world: World, block: Block) -> None:
    data = yaml.safe_load(world.fill(block.text))
    if data is None:  # only a comment, e.g. the schema modeline alone
        return
    assert isinstance(data, dict), f"{block.name}: not a mapping"
    if "repos" in data:  # a pre-commit framework config
        config = world.tmp / ".pre-commit-config.yaml"
        config.write_text(block.text)
        world.run(f"{sys.executable} -m pre_commit validate-config {config}", world.tmp)
        return
    assert set(data) <= SPEC_KEYS, f"{block.name}: unknown keys {set(data) - SPEC_KEYS}"
    label = block.header[1:].split()[:1]  # `# specs/hello.yaml`, `# runner.yaml at …`
    named = label[0] if label and label[0].endswith(".yaml") else ""
    if named and (ROOT / named).is_file():
        body = block.text.split("\n", 1)[1]  # below the `# path` label
        assert body == (ROOT / named).read_text(), f"{block.name} differs from {named}"
        return
    if named == "runner.yaml":
        world.make_repo(block.text)
    data.setdefault("version", 1)
    data.setdefault("derivations", {"x": {"builder": "/bin/sh", "args": ["-c", ": > $out"]}})
    where = world.tmp / "fragments" / f"{block.page.replace('/', '-')}-{block.line}" / "spec"
    where.mkdir(parents=True)
    stub_inputs(data, where)
    (where / "spec.yaml").write_text(yaml.safe_dump(data))
    world.run("runner validate spec.yaml", where)


def check_config(world: World, block: Block) -> None:
    config = world.home / ".config" / "runner" / "runner.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(world.fill(block.text))
    shown = world.run("runner config show", world.tmp)
    for line in block.text.splitlines():
        if "=" in line and not line.startswith("#"):
            name = line.split("=", 1)[0].strip()
            assert re.search(rf"^{re.escape(name)} .*config", shown, re.M), (name, shown)
    config.unlink()  # a page's example config is not the next page's


def check_builder_excerpt(block: Block) -> None:
    """A ```sh block using `$out` quotes a builder script: each line is in a spec."""
    specs = "\n".join(p.read_text() for p in (ROOT / "specs").glob("*.yaml"))
    for line in commands(block):
        assert line in specs, f"{block.name}: `{line}` is in no spec of specs/"


def check_commands(world: World, block: Block) -> None:
    if "$out" in block.text:
        check_builder_excerpt(block)
        return
    world.port = world.port or free_port()
    for command in commands(block):
        if excluded(command):
            continue
        in_repo = re.match(r"runner (check|hook)\b", command) is not None
        if in_repo:
            assert world.repo is not None, f"{block.name}: `{command}` but no runner.yaml"
        cwd = world.repo if in_repo and world.repo else world.clone
        if command.startswith("runner cache serve"):
            world.serve(world.fill(command), cwd)
        else:
            world.run(world.fill(command), cwd)
    world.stop_servers()


def check_python(block: Block) -> None:
    for line in block.text.splitlines():
        if line.startswith(("from ", "import ")):
            exec(compile(line.split("#")[0], block.name, "exec"), {})


def check_unit(block: Block) -> None:
    """A systemd unit: well-formed, and a `runner …` it starts parses as our CLI would."""
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block.text, source=block.name)
    assert unit.sections(), block.name
    start = unit.get("Service", "ExecStart", fallback="")
    if start:
        argv = shlex.split(start)
        assert os.path.basename(argv[0]) == "runner", block.name
        build_parser().parse_args(argv[1:])  # exits (SystemExit) on a flag we do not have


def runnable(block: Block) -> bool:
    if block.lang == "ini":
        return True
    if block.lang in ("yaml", "sh", "python"):
        return excluded(block.text.splitlines()[0] if block.text else "") is None
    return block.header == CONFIG_HEADER


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(map(runnable, blocks(p)))])
def test_examples_of_page_work_as_written(page: str, tmp_path: Path) -> None:
    world = World(tmp_path)
    world.make_clone()
    try:
        for block in filter(runnable, blocks(page)):
            if block.lang == "yaml":
                check_yaml(world, block)
            elif block.lang == "sh":
                check_commands(world, block)
            elif block.lang == "python":
                check_python(block)
            elif block.lang == "ini":
                check_unit(block)
            else:
                check_config(world, block)
    finally:
        world.stop_servers()


def test_every_example_is_run_or_excluded_with_a_reason() -> None:
    """Blocks that look like examples but fit no rule above would silently go untested."""
    for page in PAGES:
        for block in blocks(page):
            if block.lang in ("", "text", "console"):
                assert not block.header.endswith("runner.conf") or runnable(block), block.name
            else:
                assert block.lang in ("yaml", "sh", "python", "json", "ini"), block.name
    used = {key for key in EXCLUDED
            if any(key in b.text for page in PAGES for b in blocks(page))}
    assert used == set(EXCLUDED), f"exclusions that match no example: {set(EXCLUDED) - used}"


def team_config() -> str:
    """docs/caching.md's team set-up: the config every machine of a team gets."""
    return next(b.text for b in blocks("docs/caching.md")
                if b.header == CONFIG_HEADER and "store-dir" in b.text)


def build_json(world: World, cwd: Path, *options: str) -> dict[str, str]:
    out = world.run("runner build hello.yaml --json --no-out-link " + " ".join(options), cwd)
    return {Path(r["drvPath"]).name.split("-", 1)[1]: r["status"] for r in json.loads(out)}


@pytest.mark.slow
def test_team_setup_lets_two_homes_share_one_file_cache(tmp_path: Path) -> None:
    """Two users (two HOMEs, as on two laptops) with caching.md's config: what the first
    copied to a signed file:// cache, the second fetches. Control: the second with the
    default store dir (under its own HOME) cannot use that cache and builds."""
    shared = tmp_path / "shared"  # stands for /var/tmp/runner, the same path everywhere
    config = team_config().replace("/var/tmp/runner", str(shared))
    assert str(shared) in config
    cache = f"file://{tmp_path / 'cache'}"
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "specs" / "hello.yaml", work / "hello.yaml")
    users = {}
    for user in ("alice", "bob", "carol"):
        (tmp_path / user).mkdir()
        users[user] = World(tmp_path / user)
    for user in ("alice", "bob"):
        conf = users[user].home / ".config" / "runner" / "runner.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(config)

    alice = users["alice"]
    secret = tmp_path / "alice" / "team.sec"
    key = alice.run(f"runner key generate team-cache-1 --secret {secret}", work).strip()
    assert set(build_json(alice, work).values()) == {"built"}
    alice.run(f"runner copy --to {cache} --sign-key {secret} "
              "$(runner build hello.yaml --no-out-link)", work)
    # Alice's machine is gone: only the cache is left.
    subprocess.run(["chmod", "-R", "u+w", str(shared)], check=True)
    shutil.rmtree(shared)

    fetch = (f"--option substituters {cache}", f"--option trusted-public-keys '{key}'")
    assert set(build_json(users["bob"], work, *fetch).values()) == {"substituted"}
    assert (shared / "store").is_dir()
    carol = build_json(users["carol"], work, *fetch)
    assert set(carol.values()) == {"built"}  # the cache is for another store dir
