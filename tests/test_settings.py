from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from runner.errors import RunnerError
from runner.settings import BY_NAME, SETTINGS, Settings, config_file_path, settings_markdown

ROOT = Path(__file__).resolve().parent.parent


def runner(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *argv], capture_output=True, text=True, check=False
    )


def test_defaults_come_from_the_declared_list() -> None:
    s = Settings.load(environ={}, config_file=Path("/nonexistent"))
    assert s.get("log-lines") == 25
    assert s.get("sandbox") == "on"
    assert s.origins["log-lines"] == "default"


def test_precedence_config_env_option_flag(tmp_path: Path) -> None:
    conf = tmp_path / "runner.conf"
    conf.write_text("# comment\nlog-lines = 7\nmax-jobs = 3  # trailing\nstore-dir = /a/b\n")
    s = Settings.load(environ={}, config_file=conf)
    assert (s.get("log-lines"), s.get("max-jobs"), s.store_dir) == (7, 3, "/a/b")
    assert s.origins["log-lines"] == f"{conf}:2"
    s = Settings.load(environ={"RUNNER_STORE_DIR": "/c"}, config_file=conf)
    assert s.store_dir == "/c" and s.origins["store-dir"] == "env RUNNER_STORE_DIR"
    s = Settings.load(options={"log-lines": "9"}, environ={}, config_file=conf)
    assert s.get("log-lines") == 9 and s.origins["log-lines"] == "--option"
    s = Settings.load(options={"log-lines": "9"}, flags={"log-lines": 11}, environ={},
                      config_file=conf)
    assert s.get("log-lines") == 11 and s.origins["log-lines"] == "flag"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("log-lines", "many", "expected a whole number"),
        ("log-lines", "-3", "must not be negative"),
        ("sandbox", "maybe", "expected one of on, off, relaxed"),
        ("require-sigs", "perhaps", "expected true or false"),
        ("store-dir", "", "must not be empty"),
    ],
)
def test_bad_values_are_clear_errors(name: str, value: str, words: str) -> None:
    with pytest.raises(RunnerError, match=words) as e:
        Settings.load(options={name: value}, environ={}, config_file=Path("/nonexistent"))
    assert e.value.reason == "bad-setting"


def test_unknown_setting_suggests_a_name() -> None:
    with pytest.raises(RunnerError, match="did you mean 'max-jobs'") as e:
        Settings.load(options={"max-job": "2"}, environ={}, config_file=Path("/nonexistent"))
    assert e.value.reason == "bad-setting"


def test_bad_config_line_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "runner.conf"
    conf.write_text("log-lines = 3\nthis is not a setting line\n")
    with pytest.raises(RunnerError, match=rf"{conf}:2: expected 'name = value'") as e:
        Settings.load(environ={}, config_file=conf)
    assert e.value.reason == "bad-setting"  # was bad-config, merged (docs/reasons.md)
    conf.write_text("\n\nsandbox-pathz = /x\n")
    with pytest.raises(RunnerError, match=rf"{conf}:3: unknown setting 'sandbox-pathz'") as e:
        Settings.load(environ={}, config_file=conf)
    assert e.value.reason == "bad-setting"


def test_config_show_prints_values_and_origins(tmp_path: Path) -> None:
    conf = config_file_path()
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("cores = 3\n")
    proc = runner("config", "show", "--option", "log-lines", "4", "--store-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert set(lines) == {s.name for s in SETTINGS}
    assert lines["cores"].endswith(f"= 3  # {conf}:1")
    assert lines["log-lines"].endswith("= 4  # --option")
    assert lines["store-dir"].endswith(f"= {tmp_path}  # flag")


def test_cli_bad_option_is_one_line_error() -> None:
    proc = runner("config", "show", "--option", "nope", "1")
    assert proc.returncode == 1
    assert proc.stderr == "error: unknown setting 'nope'\n"
    proc = runner("config", "show", "--option", "max-jobs", "x")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: setting 'max-jobs': expected a whole number")


def test_cli_usage_errors_are_one_line() -> None:
    proc = runner("no-such-command")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: runner: argument COMMAND: invalid choice")
    assert "Traceback" not in proc.stderr


def test_settings_doc_is_generated_from_the_list() -> None:
    text = settings_markdown()
    for s in SETTINGS:
        assert f"| `{s.name}` |" in text
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == text, "run: python -m runner.settings > docs/settings.md"


@pytest.mark.parametrize("command", ["build", "check"])
def test_dedicated_flags_parse_as_their_setting(command: str) -> None:
    proc = runner(command, "-j", "-2", "specs/hello.yaml")
    assert proc.returncode == 1
    assert proc.stderr == (f"error: runner {command}: argument -j/--max-jobs: setting "
                           "'max-jobs': must not be negative, got -2\n")
    proc = runner(command, "-j", "auto", "--no-such-flag")
    assert "argument -j" not in proc.stderr  # 'auto' is a valid value for both


def test_config_show_json_has_typed_values_and_origins(tmp_path: Path) -> None:
    proc = runner("config", "show", "--json", "--option", "log-lines", "4",
                  "--option", "sandbox-paths", "/a /b", "--option", "keep-going", "true")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    schema = json.loads((ROOT / "schemas" / "config-show.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(shown)
    assert set(shown) == {s.name for s in SETTINGS}
    assert shown["log-lines"] == {"value": 4, "origin": "--option"}
    assert shown["sandbox-paths"]["value"] == ["/a", "/b"]
    assert shown["keep-going"]["value"] is True
    assert shown["cache-failures"] == {"value": True, "origin": "default"}


def test_fork_server_switch_is_a_declared_setting(tmp_path: Path) -> None:
    setting = BY_NAME["sandbox-fork-server"]
    assert (setting.env, setting.kind) == ("RUNNER_SANDBOX_FORK_SERVER", "bool")
    assert Settings.load(environ={"RUNNER_SANDBOX_FORK_SERVER": "0"},
                         config_file=tmp_path / "none").get("sandbox-fork-server") is False
    # From the config file or --option it reaches the sandbox executor too.
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_SANDBOX_FORK_SERVER"}

    def fork_server_with(value: str) -> str:
        probe = ("import sys; from runner.cli.main import run; "
                 f"run(['config', 'show', '--option', 'sandbox-fork-server', '{value}']); "
                 "from runner.sandbox import executor; "
                 "print('fork-server', executor.use_fork_server(), file=sys.stderr)")
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env={**env, "PYTHONPATH": str(ROOT)})
        return proc.stderr.strip()

    assert fork_server_with("true") == "fork-server True"  # the control
    assert fork_server_with("false") == "fork-server False"


def test_typed_accessors_check_the_kind() -> None:
    s = Settings.load(environ={}, config_file=Path("/nonexistent"), flags={"max-jobs": 3})
    assert (s.number("max-jobs"), s.flag("keep-going")) == (3, False)
    assert s.text("sandbox") == BY_NAME["sandbox"].default_value()
    assert s.strings("substituters") == list(s.get("substituters"))
    assert s.text("store-dir") == s.store_dir  # a path is text
    with pytest.raises(TypeError, match="setting 'max-jobs' is a int, not a bool"):
        s.flag("max-jobs")
    with pytest.raises(TypeError):
        s.number("sandbox")
    with pytest.raises(RunnerError) as e:
        s.flag("no-such-setting")
    assert e.value.reason == "bad-setting"


# Owned by branches in flight when the accessors came (issue 22); the lead moves them
# to the typed accessors after merging and empties this list.
UNTYPED_GET_ALLOWED: set[str] = set()


def test_runner_reads_settings_through_the_typed_accessors() -> None:
    untyped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "runner").rglob("*.py")
                     if "settings.get(" in p.read_text())
    assert set(untyped) <= UNTYPED_GET_ALLOWED
