"""Issue 18 end to end: `junit:` outputs read after real sandboxed builds, `--junit`,
`--json-events`, `--report` and `shards:` on `runner build` and `runner check`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from runner.build.progress import make_progress
from runner.cli.main import run
from runner.errors import RunnerError
from runner.report.run import RunRecorder
from runner.spec.load import load_spec
from runner.spec.translate import translate
from tests.build_helpers import runner_process, write_spec
from tests.remote_server import start_casd, unavailable

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "runner" / "schemas"
                     / "events.schema.json").read_text())
SPECS = Path(__file__).resolve().parent.parent / "specs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

XML = ("<testsuite name='s'><testcase classname='c' name='ok'/>"
       "<testcase classname='c' name='bad'><failure message='expected 2, got 3'>"
       "assert 2 == 3\\nin test_bad</failure></testcase></testsuite>")

SUITE = f"""derivations:
  tests:
    builder: /bin/sh
    outputs: [out, junit]
    junit: junit
    args: ["-c", "echo ran > $out; printf \\"{XML}\\" > $junit"]
  broken:
    builder: /bin/sh
    outputs: [out, junit]
    junit: junit
    args: ["-c", "echo 'broken log line'; echo ran > $out; echo '<testsuite' > $junit"]
  lint:
    builder: /bin/sh
    args: ["-c", "echo 'lint: 1 problem'; exit 3"]
  deploy:
    builder: /bin/sh
    args: ["-c", "cat ${{{{ lint }}}} > $out"]
"""


def build(*argv: str) -> int:
    return run(["build", "--sandbox=on", "--no-out-link", "-k", *argv])


def test_junit_key_stays_out_of_the_derivation(tmp_path: Path) -> None:
    """`junit:` is runner's business: the .drv (and so every output path) is the same
    with and without it."""
    body = """derivations:
  t:
    builder: /bin/sh
    outputs: [out, junit]
{extra}    args: ["-c", "true"]
"""
    plain = load_spec(write_spec(tmp_path, body.format(extra=""), "a.yaml"))
    keyed = load_spec(write_spec(tmp_path, body.format(extra="    junit: junit\n"), "b.yaml"))
    assert keyed.derivations["t"].junit == "junit"
    a, b = translate(plain, "/nix/store", {}), translate(keyed, "/nix/store", {})
    assert a["t"].drv_path == b["t"].drv_path
    assert a["t"].drv.env == b["t"].drv.env


def test_junit_naming_no_output_is_a_spec_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  t:
    builder: /bin/sh
    junit: report
    args: ["-c", "true"]
""")
    assert run(["validate", spec]) == 1
    assert "'junit' names output 'report'" in capsys.readouterr().err


def test_build_shows_cases_merges_junit_and_streams_events(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SUITE)
    merged, events = tmp_path / "junit.xml", tmp_path / "events.ndjson"
    code = build(spec, "--junit", str(merged), "--json-events", str(events),
                 "--json-events-logs")
    err = capsys.readouterr().err
    assert code == 100, err
    # the failing case, its message and first lines under the status
    assert "tests: 2 tests, 1 failed, 0 errors, 0 skipped" in err
    assert "✗ c.bad: expected 2, got 3" in err and "assert 2 == 3" in err
    # a broken file: a warning, no crash
    assert "warning: cannot read the JUnit XML" in err and "malformed XML" in err
    assert "> broken log line" in err  # and the plain log tail instead

    root = ET.parse(merged).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"tests", "broken", "lint", "deploy"}
    assert [c.get("name") for c in suites["tests"].iter("testcase")] == ["ok", "bad"]
    assert suites["tests"].get("failures") == "1"
    lint_case = suites["lint"].find("testcase/failure")
    assert lint_case is not None and "lint: 1 problem" in (lint_case.text or "")
    assert suites["deploy"].find("testcase/skipped") is not None
    assert root.get("tests") == "5" and root.get("failures") == "2"

    lines = [json.loads(line) for line in events.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "run-started" and kinds[-1] == "run-finished"
    assert lines[-1]["exitCode"] == 100
    assert {"build-started", "build-finished", "skipped", "log-line"} <= set(kinds)
    skipped = next(line for line in lines if line["event"] == "skipped")
    failed = next(line for line in lines
                  if line["event"] == "build-finished" and line["status"] == "failed")
    assert skipped["rootCause"] == failed["drvPath"]
    assert any(line.get("line") == "lint: 1 problem" for line in lines)

    # Again: everything is cached now, and marked so.
    assert build(spec, "--junit", str(merged)) == 100
    capsys.readouterr()
    suites = {s.get("name"): s for s in ET.parse(merged).getroot().iter("testsuite")}
    props = {p.get("name"): p.get("value") for p in suites["tests"].iter("property")}
    assert props["runner.cached"] == "true" and props["runner.status"] == "valid"
    assert [c.get("name") for c in suites["tests"].iter("testcase")] == ["ok", "bad"]
    lint = {p.get("name"): p.get("value") for p in suites["lint"].iter("property")}
    assert lint["runner.status"] == "cached-failure" and lint["runner.cached"] == "true"


def test_events_reach_a_reader_while_the_build_runs(tmp_path: Path) -> None:
    """The `build-started` line is in the file while the builder still waits for a marker
    that only this test creates after reading it: the stream is not written at the end."""
    gate = tmp_path / "gate"
    gate.mkdir()
    spec = write_spec(tmp_path, f"""derivations:
  waits:
    builder: /bin/sh
    sandbox-paths: ["/gate={gate}"]
    args: ["-c", "while [ ! -e /gate/go ]; do sleep 0.1; done; echo > $out"]
""")
    events = tmp_path / "events.ndjson"
    proc = runner_process("build", "--sandbox=on", "--no-out-link", "--option",
                          "allowed-spec-sandbox-paths", str(gate), "--json-events", str(events),
                          spec)
    try:
        seen: list[str] = []
        while "build-started" not in "".join(seen):  # the builder cannot end before "go"
            assert proc.poll() is None, proc.communicate()
            seen = events.read_text().splitlines() if events.exists() else []
        (gate / "go").touch()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == ["run-started", "build-started", "build-finished", "run-finished"]


def test_check_writes_junit_events_and_report(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SUITE)
    merged, page = tmp_path / "junit.xml", tmp_path / "run.html"
    code = run(["check", "--sandbox=on", spec, "--junit", str(merged), "--report", str(page),
                "--json-events", "-"])
    out = capsys.readouterr().out
    assert code == 100
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "run-started" and events[-1]["event"] == "run-finished"
    suites = [s.get("name", "") for s in ET.parse(merged).getroot().iter("testsuite")]
    assert sorted(suites) == ["broken", "deploy", "lint", "tests"]
    assert "skipped because of it: deploy" in page.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_of_a_real_run_in_a_browser(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SUITE)
    page = tmp_path / "run.html"
    assert build(spec, "--report", str(page)) == 100
    capsys.readouterr()
    assert CHROMIUM is not None  # skipped otherwise
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert len(re.findall(r"class=\"bar\"", dom)) == 4  # one per derivation of the run
    assert 'id="root-causes"' in dom
    assert re.search(r"lint</a> \(failed\); skipped because of it: deploy", dom)
    # what never ran is a mark where it was decided, not a bar over the time it waited
    widths = {m[0]: float(m[1]) for m in re.findall(
        r"data-status=\"([\w-]+)\"[^>]*width:\s*([\d.]+)%", dom)}
    assert widths["dependency-failed"] < 1 < widths["failed"], widths
    assert "c.bad: expected 2, got 3" in dom  # the failing case from the junit output


def test_shards_run_apart_and_the_gatherer_sees_every_case(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """derivations:
  tests:
    builder: /bin/sh
    outputs: [out, junit]
    junit: junit
    shards: 3
    args:
      - -c
      - |
        echo $TEST_SHARD_INDEX/$TEST_TOTAL_SHARDS $RUNNER_SHARD_INDEX/$RUNNER_SHARD_COUNT > $out
        printf '<testsuite name="s"><testcase classname="shard" name="t%s"/></testsuite>' \\
          $TEST_SHARD_INDEX > $junit
  after:
    builder: /bin/sh
    args: ["-c", "ls ${{ tests.junit }} > $out"]
""")
    merged = tmp_path / "junit.xml"
    code = run(["build", "--sandbox=on", "--no-out-link", "--json", spec, "after",
                "--junit", str(merged)])
    out, err = capsys.readouterr()
    assert code == 0, err
    results = {Path(r["drvPath"]).name.split("-", 1)[1][:-4]: r for r in json.loads(out)}
    assert set(results) == {"tests.shard-1-of-3", "tests.shard-2-of-3", "tests.shard-3-of-3",
                            "tests", "after"}
    for k in (1, 2, 3):
        shard = Path(results[f"tests.shard-{k}-of-3"]["outputs"]["out"]).read_text()
        assert shard.split() == [f"{k - 1}/3", f"{k - 1}/3"]
    assert Path(results["after"]["outputs"]["out"]).read_text().split() == [
        "shard-1.xml", "shard-2.xml", "shard-3.xml"]
    assert "tests: 3 tests, 0 failed" in err
    # the shards' suites stand for the gatherer's (its cases are theirs again)
    suites = {s.get("name"): s for s in ET.parse(merged).getroot().iter("testsuite")}
    assert "tests" not in suites
    assert [c.get("name") for k in (1, 2, 3)
            for c in suites[f"tests.shard-{k}-of-3"].iter("testcase")] == ["t0", "t1", "t2"]
    # all cached: only the gatherer is visited, and it stands for its shards
    assert run(["build", "--sandbox=on", "--no-out-link", spec, "tests",
                "--junit", str(merged)]) == 0
    capsys.readouterr()
    suites = {s.get("name"): s for s in ET.parse(merged).getroot().iter("testsuite")}
    assert list(suites) == ["tests"]
    assert sorted(c.get("name", "") for c in suites["tests"].iter("testcase")) == ["t0", "t1", "t2"]


@pytest.mark.parametrize(("extra", "problem"), [
    ("    env: {TEST_SHARD_INDEX: 0}\n", "env key 'TEST_SHARD_INDEX' is set by 'shards'"),
    ("    output-hash: sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
     "cannot have 'shards'"),
])
def test_shards_refuse_what_they_would_break(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             extra: str, problem: str) -> None:
    spec = write_spec(tmp_path, f"""derivations:
  t:
    builder: /bin/sh
    shards: 2
{extra}    args: ["-c", "true"]
""")
    assert run(["validate", spec]) == 1
    assert problem in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None,
                    reason=f"tier-1 REAPI server unavailable: {unavailable()}")
def test_sharded_example_on_the_local_reapi_server(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """specs/sharded-tests.yaml with --remote: the shards run as REAPI actions on
    buildbox-casd, the gatherer too, and runner reads the gathered JUnit files."""
    server = start_casd(tmp_path / "casd", tcp=True)
    try:
        merged = tmp_path / "junit.xml"
        code = run(["build", "--no-out-link", "--json", "--remote", server.url,
                    str(SPECS / "sharded-tests.yaml"), "--junit", str(merged)])
        out, err = capsys.readouterr()
    finally:
        server.stop()
    assert code == 0, err
    results = {Path(r["drvPath"]).name.split("-", 1)[1][:-4]: r for r in json.loads(out)}
    assert {r["status"] for r in results.values()} == {"built"}  # a fresh server: run there
    assert "tests: 6 tests, 0 failed" in err
    suites = [s.get("name", "") for s in ET.parse(merged).getroot().iter("testsuite")]
    assert sorted(suites) == [f"tests.shard-{k}-of-3" for k in (1, 2, 3)]


def test_an_unwritable_report_is_a_one_line_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path,
                      "derivations:\n  ok: {builder: /bin/sh, args: [-c, 'echo > $out']}\n")
    missing = tmp_path / "no" / "such" / "dir" / "junit.xml"
    assert build(spec, "--junit", str(missing)) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: cannot write '{missing}'")
    recorder = RunRecorder(make_progress(log_lines=0, print_build_logs=False), {})
    with pytest.raises(RunnerError) as caught:
        recorder.write_report(str(missing), ["runner"], 0)
    assert caught.value.reason == "io"
    assert not missing.parent.exists()
