"""Every setting, declared once.

The `SETTINGS` table drives the config file (`$XDG_CONFIG_HOME/runner/runner.conf`,
`key = value` as nix.conf), the documented environment variables, `--option NAME
VALUE`, dedicated flags, `runner config show` and the generated `docs/settings.md`.
Later sources win: default < config file < environment < --option < flag.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from runner.errors import RunnerError

Value = Any  # bool | int | str | list[str]; checked by each setting's kind


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def _default_data_dir(sub: str) -> Callable[[], str]:
    return lambda: str(_xdg("XDG_DATA_HOME", ".local/share") / "runner" / sub)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_system() -> str:
    machine = os.uname().machine
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-{os.uname().sysname.lower()}"


class Setting(NamedTuple):  # not a dataclass: `dataclasses` costs 8 ms of start-up
    name: str
    kind: str  # "bool" | "int" | "str" | "path" | "list" | "enum"
    default: Value | Callable[[], Value]
    doc: str
    env: str | None = None
    choices: tuple[str, ...] = ()
    default_doc: str | None = None  # shown in docs when the default is computed

    def default_value(self) -> Value:
        return self.default() if callable(self.default) else self.default

    def parse(self, text: str) -> Value:
        """Turn the text form (config file, env, --option) into a value, or fail clearly."""
        text = text.strip()
        if self.kind == "bool":
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off", ""):
                return False
            raise RunnerError(
                f"setting '{self.name}': expected true or false, got '{text}'", reason="bad-setting"
            )
        if self.kind == "int":
            if self.name == "max-jobs" and text == "auto":
                return _cpu_count()
            try:
                number = int(text)
            except ValueError:
                raise RunnerError(
                    f"setting '{self.name}': expected a whole number, got '{text}'",
                    reason="bad-setting",
                ) from None
            if number < 0:
                raise RunnerError(
                    f"setting '{self.name}': must not be negative, got {number}",
                    reason="bad-setting",
                )
            return number
        if self.kind == "enum":
            if text not in self.choices:
                choices = ", ".join(self.choices)
                raise RunnerError(
                    f"setting '{self.name}': expected one of {choices}, got '{text}'",
                    reason="bad-setting",
                )
            return text
        if self.kind == "list":
            return text.split()
        if self.kind == "path":
            if not text:
                raise RunnerError(f"setting '{self.name}': must not be empty", reason="bad-setting")
            return str(Path(text).expanduser().absolute()).rstrip("/") or "/"
        return text

    def show(self, value: Value) -> str:
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "list":
            return " ".join(value)
        return str(value)


DEFAULT_SANDBOX_PATHS = ["/bin", "/usr", "/lib", "/lib32", "/lib64", "/etc/alternatives"]

SETTINGS: tuple[Setting, ...] = (
    Setting("store-dir", "path", _default_data_dir("store"),
            "Directory holding store paths (Nix's `store`).", env="RUNNER_STORE_DIR",
            default_doc="$XDG_DATA_HOME/runner/store"),
    Setting("state-dir", "path", _default_data_dir("state"),
            "Directory holding the database, logs, GC roots and locks.", env="RUNNER_STATE_DIR",
            default_doc="$XDG_DATA_HOME/runner/state"),
    Setting("max-jobs", "int", _cpu_count,
            "Builds run at the same time (`auto` = number of cores).", default_doc="cores"),
    Setting("cores", "int", 0, "Value of NIX_BUILD_CORES for builders; 0 means all cores."),
    Setting("system", "str", _host_system, "Platform string of this machine.",
            default_doc="host, e.g. x86_64-linux"),
    Setting("sandbox", "enum", "on", "Build in a Linux namespace sandbox.",
            choices=("on", "off", "relaxed")),
    Setting("sandbox-fallback", "bool", True,
            "Build unsandboxed (with a warning) where namespaces are unavailable."),
    Setting("sandbox-fork-server", "bool", True,
            "Where the sandbox's C spawn is not built: start sandboxed builds from a small "
            "fork server process instead of forking runner itself (docs/sandbox.md); off is "
            "for comparison and debugging.",
            env="RUNNER_SANDBOX_FORK_SERVER"),
    Setting("sandbox-paths", "list", list(DEFAULT_SANDBOX_PATHS),
            "Host paths mounted read-only into every sandbox."),
    Setting("allowed-spec-sandbox-paths", "list", [],
            "Host paths that specs may add to their sandbox with `sandbox-paths`."),
    Setting("build-dir", "str", "",
            "Where build directories are created (in a private `runner-builds-<uid>` "
            "dir; docs/security.md); empty means the system temp dir."),
    Setting("keep-going", "bool", False, "Go on with other builds after one fails."),
    Setting("keep-failed", "bool", False, "Keep the build directory of failed builds."),
    Setting("timeout", "int", 0, "Seconds a build may run; 0 means no limit."),
    Setting("max-silent-time", "int", 0,
            "Seconds a build may print nothing; 0 means no limit."),
    Setting("max-log-size", "int", 0, "Bytes of log a build may write; 0 means no limit."),
    Setting("log-lines", "int", 25, "Lines of a failed build's log to print."),
    Setting("print-build-logs", "bool", False, "Stream build logs, prefixed by name."),
    Setting("cache-failures", "bool", True, "Remember permanent build failures."),
    Setting("use-substituted-failures", "bool", False,
            "Before building, ask the substituters for a failure record of the derivation; "
            "one signed by a trusted key fails it at once as a cached failure."),
    Setting("substituters", "list", [], "Binary caches tried, in order, before building."),
    Setting("trusted-public-keys", "list", [],
            "Keys (`name:base64`) whose signatures on substitutes are trusted."),
    Setting("require-sigs", "bool", True, "Refuse unsigned or untrusted substitutes."),
    Setting("substitute", "bool", True, "Use substituters at all."),
    Setting("trusted-substituter-commands", "list", [],
            "Substituter programs that specs may declare and runner may run."),
    Setting("fallback", "bool", False,
            "Build locally when a substituter that has a path fails to deliver it."),
    Setting("max-substitution-jobs", "int", 16, "Substitutions run at the same time."),
    Setting("substituter-errors", "enum", "warn",
            "What a failing substituter does: `warn` and skip it, or `fail` the run.",
            choices=("warn", "fail")),
    Setting("narinfo-cache-negative-ttl", "int", 3600,
            "Seconds a 'not in this cache' answer is remembered."),
    Setting("substituter-down-time", "int", 60,
            "Seconds an HTTP cache that failed to answer is skipped by every run before it "
            "is probed again; doubles with each failure in a row."),
    Setting("substituter-down-max", "int", 3600,
            "Longest back-off, in seconds, of a cache that keeps failing."),
    Setting("auto-optimise", "bool", False, "Hard-link identical files as paths are added."),
    Setting("keep-derivations", "bool", True,
            "`runner gc` keeps the `.drv` of every live output (as Nix does by default)."),
    Setting("keep-outputs", "bool", False,
            "`runner gc` keeps the valid outputs of every live derivation."),
    Setting("remote-builders", "str", "",
            "REAPI endpoint builds are sent to (`grpc://host:port`, `grpcs://…`, "
            "`unix:/path`); empty builds locally."),
    Setting("remote-instance", "str", "", "REAPI instance name on the remote endpoint."),
    Setting("remote-connect-timeout", "int", 10,
            "Seconds to wait for the remote endpoint to answer."),
    Setting("remote-timeout", "int", 60, "Seconds one remote call may take (not the build)."),
    Setting("remote-fallback", "bool", False,
            "Build locally when the remote endpoint is unavailable."),
    Setting("remote-max-jobs", "int", 8,
            "Remote builds run at the same time (they take no local build slot)."),
    Setting("allowed-users", "list", ["*"],
            "Users (`*`, names, `@group`) who may connect to `runner daemon`."),
    Setting("store", "str", "auto",
            "Which store commands use: `local` (the store directory itself), `daemon` "
            "(`runner daemon` on `<state-dir>/daemon-socket/socket`), `unix://PATH` (a "
            "daemon, runner's or Nix's, on that socket) or `auto` (the daemon when the store "
            "directory is not writable and its socket exists, else local)."),
    Setting("build-users-group", "str", "",
            "As root: sandboxed builds run as the members of this group, one build per "
            "member at a time; empty: runner's own pool of uids 30001-30128."),
    Setting("trusted-users", "list", ["root"],
            "Users (`*`, names, `@group`) the daemon trusts: unsigned imports, any option, "
            "repair, garbage collection."),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def lookup(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        import difflib  # only to word the error: not at start-up

        close = difflib.get_close_matches(name, BY_NAME, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RunnerError(f"unknown setting '{name}'{hint}", reason="bad-setting") from None


def config_file_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "runner" / "runner.conf"


class Settings:
    """Effective values and where each came from."""

    def __init__(self, values: dict[str, Value], origins: dict[str, str]) -> None:
        self._values = values
        self.origins = origins

    @classmethod
    def load(
        cls,
        options: Mapping[str, str] | None = None,
        flags: Mapping[str, Value] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> Settings:
        """Defaults < config file < env < `--option` (text) < dedicated flags (typed)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Value] = {}
        origins: dict[str, str] = {}
        for s in SETTINGS:
            values[s.name] = s.default_value()
            origins[s.name] = "default"
        path = config_file if config_file is not None else config_file_path()
        for name, text, where in _read_config(path):
            values[name] = lookup(name).parse(text)
            origins[name] = where
        for s in SETTINGS:
            if s.env and environ.get(s.env):
                values[s.name] = s.parse(environ[s.env])
                origins[s.name] = f"env {s.env}"
        for name, text in (options or {}).items():
            values[name] = lookup(name).parse(text)
            origins[name] = "--option"
        for name, value in (flags or {}).items():
            lookup(name)
            values[name] = value
            origins[name] = "flag"
        return cls(values, origins)

    def get(self, name: str) -> Value:
        """The value, untyped: prefer `flag`, `number`, `text`, `strings`."""
        lookup(name)
        return self._values[name]

    def flag(self, name: str) -> bool:
        """A `bool` setting's value."""
        return bool(self._of_kind(name, "bool"))

    def number(self, name: str) -> int:
        """An `int` setting's value."""
        return int(self._of_kind(name, "int"))

    def text(self, name: str) -> str:
        """A `str`, `path` or `enum` setting's value."""
        return str(self._of_kind(name, "str", "path", "enum"))

    def strings(self, name: str) -> list[str]:
        """A `list` setting's value (a copy)."""
        return [str(v) for v in self._of_kind(name, "list")]

    def _of_kind(self, name: str, *kinds: str) -> Value:
        """The value of `name`, if its kind is one of `kinds`: asking a bool for a number
        is a bug of ours, caught by the first test that does it."""
        kind = lookup(name).kind
        if kind not in kinds:
            raise TypeError(f"setting '{name}' is a {kind}, not a {' or '.join(kinds)}")
        return self._values[name]

    def with_overrides(self, **flags: Value) -> Settings:
        values = dict(self._values)
        origins = dict(self.origins)
        for key, value in flags.items():
            name = key.replace("_", "-")
            lookup(name)
            values[name] = value
            origins[name] = "flag"
        return Settings(values, origins)

    @property
    def store_dir(self) -> str:
        return str(self._values["store-dir"])

    @property
    def state_dir(self) -> str:
        return str(self._values["state-dir"])

    def to_json(self) -> dict[str, dict[str, Value]]:
        """`runner config show --json`: each setting's typed value and its origin."""
        return {s.name: {"value": self._values[s.name], "origin": self.origins[s.name]}
                for s in SETTINGS}

    def show(self) -> str:
        width = max(len(s.name) for s in SETTINGS)
        lines = []
        for s in SETTINGS:
            value = s.show(self._values[s.name])
            lines.append(f"{s.name:<{width}} = {value}  # {self.origins[s.name]}")
        return "\n".join(lines)


def _read_config(path: Path) -> list[tuple[str, str, str]]:
    """`key = value` lines; `#` starts a comment. Returns (name, text, origin)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise RunnerError(f"cannot read config file {path}: {e}", reason="bad-setting") from None
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RunnerError(
                f"{path}:{lineno}: expected 'name = value', got '{raw.strip()}'",
                reason="bad-setting",
            )
        try:
            lookup(name)
        except RunnerError as e:
            raise RunnerError(f"{path}:{lineno}: {e.message}", reason="bad-setting") from None
        entries.append((name, value, f"{path}:{lineno}"))
    return entries


def settings_markdown() -> str:
    """The text of docs/settings.md, generated from `SETTINGS`."""
    out = [
        "# Settings",
        "",
        "<!-- Generated by `python -m runner.settings`; do not edit by hand. -->",
        "",
        "Each setting can be given, later ones winning:",
        "",
        "1. in the config file `$XDG_CONFIG_HOME/runner/runner.conf` "
        "(default `~/.config/runner/runner.conf`) as `name = value` lines, `#` for comments;",
        "2. in an environment variable, where one is listed;",
        "3. on any command as `--option NAME VALUE`;",
        "4. with a dedicated flag, where a command has one (e.g. `-j` for `max-jobs`).",
        "",
        "Booleans are `true`/`false`; lists are space-separated. "
        "`runner config show` prints the effective values and where each came from; "
        "`runner config show --json` prints them as `{NAME: {\"value\": …, \"origin\": …}}` "
        "with typed values (booleans, numbers, lists of strings; JSON Schema "
        "`schemas/config-show.schema.json`). A command's flag for a "
        "setting (`runner build --help`) is generated from this table: same type, "
        "choices and description.",
        "",
        "| setting | type | default | env | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        shown = s.show(s.default_value()) or '""'
        default = s.default_doc if s.default_doc is not None else shown
        kind = " \\| ".join(s.choices) if s.kind == "enum" else s.kind
        env = f"`{s.env}`" if s.env else ""
        out.append(f"| `{s.name}` | {kind} | `{default}` | {env} | {s.doc} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
