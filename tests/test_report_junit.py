"""JUnit XML from builders is read safely and merged into one file per run."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from runner.report import junit

PYTEST_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="0.51">
<testcase classname="tests.test_a" name="test_ok" time="0.01"/>
<testcase classname="tests.test_a" name="test_bad" time="0.20">
<failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure><system-out>printed by the test</system-out></testcase>
<testcase classname="tests.test_a" name="test_later" time="0"><skipped message="later"/></testcase>
</testsuite></testsuites>
"""


def write(tmp_path: Path, text: str | bytes, name: str = "junit.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_counts_and_failing_cases(tmp_path: Path) -> None:
    summary = junit.read(write(tmp_path, PYTEST_XML))
    assert isinstance(summary, junit.Summary)
    assert (summary.tests, summary.failures, summary.errors, summary.skipped) == (3, 1, 0, 1)
    (bad,) = summary.failing
    assert bad.title == "tests.test_a.test_bad"
    assert bad.message == "assert 1 == 2"
    assert "E       assert 1 == 2" in bad.output and "printed by the test" in bad.output
    assert summary.line() == "3 tests, 1 failed, 0 errors, 1 skipped in 0.51 s"


def test_a_directory_output_reads_every_xml_file(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    write(tmp_path / "out", PYTEST_XML, "a.xml")
    write(tmp_path / "out" / "sub", PYTEST_XML, "b.xml")
    write(tmp_path / "out", "not xml", "notes.txt")
    summary = junit.read(tmp_path / "out")
    assert isinstance(summary, junit.Summary) and summary.tests == 6


def test_entity_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lol = "".join(f'<!ENTITY l{i} "{"&l" + str(i - 1) + ";" * 1}' * 1 + "" for i in range(0))
    bomb = ('<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">'
                      for i in range(9))
            + ']><testsuite><testcase name="&j;"/></testsuite>' + lol)
    started = time.monotonic()
    problem = junit.read(write(tmp_path, bomb))
    assert isinstance(problem, junit.JunitProblem)
    assert "unsafe XML" in problem.reason
    assert time.monotonic() - started < 5  # a hang would be caught by the test timeout anyway


def test_external_entities_are_refused(tmp_path: Path) -> None:
    secret = write(tmp_path, "top secret", "secret.txt")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>'
           '<testsuite><testcase name="&x;"/></testsuite>')
    problem = junit.read(write(tmp_path, xxe))
    assert isinstance(problem, junit.JunitProblem)


def test_a_huge_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    with open(path, "wb") as stream:
        stream.write(b"<testsuite>")
        stream.truncate(junit.MAX_BYTES + 10)
    problem = junit.read(path)
    assert isinstance(problem, junit.JunitProblem) and "larger than" in problem.reason


def test_malformed_and_foreign_xml(tmp_path: Path) -> None:
    for text, reason in (("<testsuite><testcase>", "malformed XML"),
                         ("<html/>", "root element is <html>"),
                         (b"\xff\xfe garbage", "malformed XML")):
        problem = junit.read(write(tmp_path, text))
        assert isinstance(problem, junit.JunitProblem), text
        assert reason in problem.reason
    assert isinstance(junit.read(tmp_path / "missing.xml"), junit.JunitProblem)


def test_merged_file_has_a_suite_per_derivation(tmp_path: Path) -> None:
    summary = junit.read(write(tmp_path, PYTEST_XML))
    assert isinstance(summary, junit.Summary)
    entries = [
        junit.SuiteEntry("tests", "/s/aaa-tests.drv", "failed", 1.5, summary),
        junit.SuiteEntry("lint", "/s/bbb-lint.drv", "built", 0.2, None, cached=True),
        junit.SuiteEntry("docs", "/s/ccc-docs.drv", "dependency-failed", 0.0, None),
        junit.SuiteEntry("build", "/s/ddd-build.drv", "failed", 0.3, None,
                         log_tail=("make: *** [all] Error 1",)),
    ]
    root = ET.fromstring(junit.merged(entries))
    assert root.tag == "testsuites"
    assert [s.get("name") for s in root.iter("testsuite")] == ["tests", "lint", "docs", "build"]
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("6", "2", "2")
    lint = root.find("testsuite[@name='lint']")
    assert lint is not None
    cached = lint.find("properties/property[@name='runner.cached']")
    assert cached is not None and cached.get("value") == "true"
    failure = root.find("testsuite[@name='build']/testcase/failure")
    assert failure is not None and failure.text == "make: *** [all] Error 1"
    # The merged file is itself readable as JUnit, with the same counts.
    again = junit.read(write(tmp_path, junit.merged(entries), "merged.xml"))
    assert isinstance(again, junit.Summary) and (again.tests, again.failures) == (6, 2)
