"""Issue 18, flaky tests: `retries:`/`flaky:`/`--retries`, attempts in fresh build dirs,
per-attempt logs, kept JUnit XML of a failed attempt, `runner store flaky list`, and the
`substitution-started` event. The builders count their attempts in a file outside the
store: with `no-chroot: true` under `--sandbox relaxed` (the documented mechanism), or
under `--sandbox off`."""

from __future__ import annotations

import argparse
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from runner.build import flaky_history
from runner.build.log_target import find_log
from runner.build.progress import make_progress
from runner.build.result import BuildResult, Status
from runner.cli.build import retry_policies
from runner.cli.main import run
from runner.errors import RunnerError
from runner.settings import Settings
from runner.spec.load import load_spec
from runner.store.local_store import LocalStore
from tests.build_helpers import write_spec
from tests.subst_site import Site

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "runner" / "schemas"
                     / "events.schema.json").read_text())

FAILING_XML = ("<testsuite name='s'><testcase classname='c' name='bad'>"
               "<failure message='expected 2, got 3'>assert 2 == 3</failure></testcase>"
               "</testsuite>")
PASSING_XML = "<testsuite name='s'><testcase classname='c' name='bad'/></testsuite>"

# Attempt n appends a line to $COUNTER; it passes from attempt $PASS_FROM on (0: never).
SCRIPT = ('echo attempt >> $COUNTER; n=$(wc -l < $COUNTER); echo attempt $n; '
          'if [ $PASS_FROM = 0 ] || [ $n -lt $PASS_FROM ]; then '
          f'printf \\"{FAILING_XML}\\" > $junit; exit 1; fi; '
          f'printf \\"{PASSING_XML}\\" > $junit; echo ok > $out')


def spec(tmp_path: Path, keys: str, pass_from: int, name: str = "spec.yaml") -> str:
    return write_spec(tmp_path, f"""derivations:
  tests:
    builder: /bin/sh
    no-chroot: true
    outputs: [out, junit]
    junit: junit
{keys}    env: {{COUNTER: {tmp_path / name}.count, PASS_FROM: {pass_from}}}
    args: ["-c", "{SCRIPT}"]
""", name)


def attempts_run(spec_path: str) -> int:
    counter = Path(spec_path + ".count")
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def build(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["build", "--sandbox=relaxed", "--no-out-link", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_flaky_test_passes_on_attempt_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, "    flaky: true\n", pass_from=2)
    events, merged, report = tmp_path / "ev.ndjson", tmp_path / "j.xml", tmp_path / "r.html"
    code, out, err = build(capsys, "--json", "--json-events", str(events), "--junit",
                           str(merged), "--report", str(report), path)
    assert code == 0, err
    assert attempts_run(path) == 2
    [result] = json.loads(out)
    assert result["status"] == "flaky"
    assert (result["attempt"], result["attempts"]) == (2, 3)
    assert result["detail"] == "passed on attempt 2/3"
    with LocalStore(str(tmp_path / "_runner/store"), str(tmp_path / "_runner/state")) as store:
        assert all(store.is_valid(p) for p in result["outputs"].values())
        assert not store.list_failures()
    assert f"flaky: '{result['drvPath']}' (passed on attempt 2/3)" in err
    assert (f"attempt 1/3 of '{result['drvPath']}' failed (exit code 1); retrying in a "
            "fresh build directory (its log: runner log … --attempt 1)") in err
    assert "1 built (1 flaky: passed on a retry), 0 substituted" in err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    assert [e["attempt"] for e in lines if e["event"] == "build-started"] == [1, 2]
    [finished] = [e for e in lines if e["event"] == "build-finished"]
    assert finished["status"] == "flaky" and finished["detail"] == "passed on attempt 2/3"
    assert lines[-1]["counts"] == {"flaky": 1} and lines[-1]["exitCode"] == 0
    suite = ET.parse(merged).getroot().find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["runner.status"] == "flaky"
    assert suite.get("failures") == "0"  # the passing attempt's cases
    page = report.read_text()
    assert "tests: flaky (passed on attempt 2/3)" in page
    assert "data-status='flaky'" in page
    # Each attempt's log is kept; the last is the default, as Nix's `nix log` shows.
    assert run(["log", path, "tests", "--attempt", "1"]) == 0
    first = capsys.readouterr()
    assert first.out == "attempt 1\n"
    assert "✗ c.bad: expected 2, got 3" in first.err  # the failed attempt's JUnit XML
    assert run(["log", path, "tests"]) == 0
    assert capsys.readouterr().out == "attempt 2\n"


def test_every_attempt_failed_is_cached_as_failed_3_of_3(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, "    retries: 2\n", pass_from=0)
    code, _, err = build(capsys, path)
    assert code == 100
    assert attempts_run(path) == 3
    assert "failed with exit code 1; failed 3/3 attempts" in err
    assert "✗ c.bad: expected 2, got 3" in err  # the failed attempt's cases, not only a tail
    report, merged = tmp_path / "r.html", tmp_path / "j.xml"
    code, _, err = build(capsys, "--report", str(report), "--junit", str(merged), path)
    assert code == 100 and attempts_run(path) == 3  # cached: not run again
    assert "failed previously (cached " in err and "; failed 3/3 attempts)" in err
    assert "✗ c.bad: expected 2, got 3" in err
    page = report.read_text()
    assert "failed 3/3 attempts" in page and "✗ c.bad" in page
    case = ET.parse(merged).getroot().find("testsuite/testcase")
    assert case is not None and case.get("name") == "bad"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "expected 2, got 3"
    assert run(["store", "failed", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed and all(r["attempts"] == [3, 3] for r in listed)
    for k in (1, 2, 3):
        assert run(["log", path, "tests", "--attempt", str(k)]) == 0
        assert capsys.readouterr().out == f"attempt {k}\n"
    assert run(["log", path, "tests", "--attempt", "4"]) == 1
    assert capsys.readouterr().err.endswith("is not one of them (1…3)\n")
    settings = Settings.load({})
    with LocalStore(settings.store_dir, settings.state_dir) as store, \
            pytest.raises(RunnerError) as info:
        find_log(store, settings.state_dir, path, "tests", 0)
    assert info.value.reason == "usage"
    # A new build replaces every attempt of the old one (logs and kept XML).
    assert build(capsys, "--rebuild-failed", "--retries", "0", path)[0] == 100
    assert run(["log", path, "tests", "--attempt", "2"]) == 1
    assert capsys.readouterr().err.endswith("built in 1 attempt; --attempt 2 is not one of "
                                            "them (1…1)\n")
    assert run(["log", path, "tests"]) == 0
    shown = capsys.readouterr()
    assert shown.out == "attempt 4\n" and "JUnit XML of attempt 1" in shown.err
    assert run(["store", "failed", "list", "--json"]) == 0
    assert all("attempts" not in r for r in json.loads(capsys.readouterr().out))


def test_a_flaky_test_is_never_a_cached_failure(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, "    flaky: true\n    retries: 1\n", pass_from=0)
    code, _, err = build(capsys, path)
    assert code == 100 and attempts_run(path) == 2
    assert "failed 2/2 attempts; flaky: not cached" in err
    code, _, err = build(capsys, path)
    assert code == 100 and attempts_run(path) == 4  # built again: nothing was cached
    assert "failed previously" not in err


def test_retries_flag_overrides_the_spec(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    plain = spec(tmp_path, "", pass_from=2, name="plain.yaml")
    code, out, err = build(capsys, "--json", "--retries", "1", plain)
    assert code == 0, err
    assert json.loads(out)[0]["detail"] == "passed on attempt 2/2"
    flaky = spec(tmp_path, "    flaky: true\n", pass_from=2, name="flaky.yaml")
    code, _, err = build(capsys, "--retries", "0", flaky)
    assert code == 100 and attempts_run(flaky) == 1
    code, _, err = build(capsys, "--retries", "11", flaky)
    assert code == 1 and err == "error: --retries must be between 0 and 10, not 11\n"
    with pytest.raises(RunnerError) as info:
        retry_policies(argparse.Namespace(retries=-1), load_spec(flaky), flaky)
    assert info.value.reason == "usage"


def test_only_builder_failures_are_retried(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A hash mismatch would fail the same way again, and a dependent of a failure never
    ran: neither is retried (as Bazel retries only the failing test)."""
    counter = tmp_path / "count"
    path = write_spec(tmp_path, f"""derivations:
  fetched:
    builder: /bin/sh
    retries: 3
    output-hash: sha256-47DEQpj8HBSa+/TjhWmXJXN6nZn+3I7pO8u8l1qRaP0=
    args: ["-c", "echo fetch >> {counter}; echo not-empty > $out"]
  uses:
    builder: /bin/sh
    retries: 3
    args: ["-c", "cat ${{{{ fetched }}}} > $out"]
""")
    code = run(["build", "--sandbox=off", "--no-out-link", "-k", "--json", path])
    results = {r["drvPath"].rsplit("-", 1)[1]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 102
    assert counter.read_text() == "fetch\n"
    assert results["fetched.drv"]["status"] == "hash-mismatch"
    assert results["uses.drv"]["status"] == "dependency-failed"


def test_store_flaky_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["store", "flaky", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    path = spec(tmp_path, "    flaky: true\n", pass_from=2)
    assert build(capsys, path)[0] == 0
    assert run(["store", "flaky", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["spec"] == path and entry["name"] == "tests"
    assert entry["drvPath"].endswith("-tests.drv")
    assert (entry["flakyPasses"], entry["lastPassedOnAttempt"], entry["attempts"]) == (1, 2, 3)
    state = Settings.load({}).state_dir
    flaky_history.record_flaky(state, path, "tests", entry["drvPath"], 3, 3)
    flaky_history.record_flaky(state, path, "other", "/s/x-other.drv", 2, 2)
    assert run(["store", "flaky", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path} tests: flaky 2 times, last ")  # flakiest first
    assert "(passed on attempt 3/3)" in lines[0]
    assert lines[1].startswith(f"{path} other: flaky 1 time, ")


def test_substitution_started_names_the_cache(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    site = Site(tmp_path / "site", capsys)
    site.build_on_a()
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    site.move_to_b()
    events = tmp_path / "ev.ndjson"
    code, results, err = site.build("--option", "substituters", url,
                                    "--option", "trusted-public-keys", site.pub,
                                    "--json-events", str(events))
    assert code == 0, err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    started = [e for e in lines if e["event"] == "substitution-started"]
    outputs = {p: r["drvPath"] for r in results
               for p in r["outputs"].values()}  # type: ignore[attr-defined]
    assert {e["path"] for e in started} == set(outputs)
    for event in started:
        assert event["url"] == url
        assert event["drvPath"] == outputs[event["path"]]
    finished = [e["time"] for e in lines if e["event"] == "build-finished"]
    assert max(e["time"] for e in started) <= max(finished)


def test_schema_requires_the_cache_of_a_substitution() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"event": "substitution-started", "time": 0.1, "name": "x",
                             "path": "/s/abc-x"}, SCHEMA)


def test_check_reports_a_flaky_check(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, "    flaky: true\n", pass_from=2)
    code = run(["check", "--option", "sandbox", "relaxed", "--json", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    schema = json.loads((Path(__file__).resolve().parent.parent / "runner" / "schemas"
                         / "check-output.schema.json").read_text())
    results = json.loads(out)
    jsonschema.validate(results, schema)
    assert [(r["result"], r["status"], r["passed"]) for r in results] == [
        ("flaky", "flaky", True)]


def test_the_example_spec_is_flaky_once(capsys: pytest.CaptureFixture[str]) -> None:
    """specs/flaky-test.yaml, as the README tour runs it: attempt 1 fails on purpose."""
    example = str(Path(__file__).resolve().parent.parent / "specs" / "flaky-test.yaml")
    code, out, err = build(capsys, "--json", example)
    assert code == 0, err
    [result] = json.loads(out)
    assert result["status"] == "flaky" and result["detail"] == "passed on attempt 2/3"
    assert run(["log", example, "tests", "--attempt", "1"]) == 0
    shown = capsys.readouterr()
    assert "attempt 1 of this build" in shown.out
    assert "✗ example.test_network: connection reset by peer" in shown.err
    counter = Path("/tmp/runner-flaky-example") / Path(result["outputs"]["out"]).name
    assert not counter.exists()  # removed when it passed: the next fresh build fails once


def test_a_timed_out_attempt_is_retried(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`timeout` kills attempt 1 (it waits on a FIFO nobody writes); attempt 2 passes."""
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    counter = tmp_path / "count"
    script = (f"echo x >> {counter}; if [ $(wc -l < {counter}) = 1 ]; then "
              f"read line < {fifo}; fi; echo ok > $out")
    path = write_spec(tmp_path, f"""derivations:
  slow:
    builder: /bin/sh
    retries: 1
    timeout: 1
    args: ["-c", "{script}"]
""")
    code = run(["build", "--sandbox=off", "--no-out-link", "--json", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "attempt 1/2 of" in err
    [result] = json.loads(out)
    assert result["status"] == "flaky" and result["detail"] == "passed on attempt 2/2"


def test_status_line_and_summary_count_flaky_builds() -> None:
    progress = make_progress(log_lines=0, print_build_logs=False, stream=io.StringIO())
    progress.expect("/s/a.drv")
    progress.finished(BuildResult("/s/a.drv", Status.BUILT, attempt=2, attempts=3))
    assert "1 flaky" in progress.status_line()
    assert progress.summary().startswith("1 built (1 flaky: passed on a retry), 0 substituted")
    stream = progress.stream
    assert isinstance(stream, io.StringIO)
    assert "flaky: '/s/a.drv' (passed on attempt 2/3)" in stream.getvalue()


def test_retries_through_a_daemon_are_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = spec(tmp_path, "", pass_from=1)
    assert run(["build", "--store", "daemon", "--retries", "1", path]) == 1
    assert capsys.readouterr().err == ("error: --retries is not supported when building "
                                       "through a daemon\n")
