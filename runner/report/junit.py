"""Read the JUnit XML a test derivation wrote, and write one merged file for a whole run.

The XML comes from a builder, so it is untrusted: it is parsed with defusedxml (no
entities, no external references), refused above `MAX_BYTES`, and any problem gives a
`JunitProblem` the caller shows as a warning next to the plain log tail — never a crash.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

MAX_BYTES = 20 * 1024 * 1024  # far more than any real report; a 100 MB file is refused
MAX_FILES = 1000  # *.xml files read from a directory output
OUTPUT_LINES = 8  # lines of a failing case's message and output that are shown


@dataclass(frozen=True)
class Case:
    """One test case as the report shows it."""

    classname: str
    name: str
    outcome: str  # "passed" | "failed" | "error" | "skipped"
    time: float = 0.0
    message: str = ""
    output: tuple[str, ...] = ()  # first lines of the failure text and captured output

    @property
    def title(self) -> str:
        return f"{self.classname}.{self.name}" if self.classname else self.name


@dataclass
class Summary:
    """The counts of one or more JUnit files, and every case."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0
    cases: list[Case] = field(default_factory=list)

    @property
    def failing(self) -> list[Case]:
        return [case for case in self.cases if case.outcome in ("failed", "error")]

    def line(self) -> str:
        """`12 tests, 1 failed, 0 errors, 2 skipped in 0.84 s`."""
        return (f"{self.tests} tests, {self.failures} failed, {self.errors} errors, "
                f"{self.skipped} skipped in {self.time:.2f} s")


@dataclass(frozen=True)
class JunitProblem:
    """Why a JUnit file could not be read (shown as a warning)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"cannot read the JUnit XML '{self.path}': {self.reason}"


def read(path: str | Path) -> Summary | JunitProblem:
    """Parse a JUnit XML file, or every `*.xml` below a directory output."""
    path = Path(path)
    try:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            return JunitProblem(str(path), "not a regular file or directory")
        files = [path] if path.is_file() else _xml_files(path)
    except OSError as err:
        return JunitProblem(str(path), err.strerror or str(err))
    if not files:
        return JunitProblem(str(path), "no *.xml file in the directory")
    summary = Summary()
    for file in files:
        parsed = _read_file(file)
        if isinstance(parsed, JunitProblem):
            return parsed
        _add(summary, parsed)
    return summary


def keep(output: str, dest: str) -> bool:
    """Copy the JUnit XML a failed build left at `output` (a file, or the *.xml files
    below a directory) into the new directory `dest`, at most `MAX_BYTES` in all, so it
    can be read after the output is gone. False (nothing kept) when there is none. The
    files are the builder's: opened without following symlinks, read as plain bytes."""
    source = Path(output)
    try:
        if source.is_symlink():
            return False
        if source.is_file():
            files = [(source, "junit.xml")]
        elif source.is_dir():
            files = [(f, str(f.relative_to(source)).replace("/", "_")) for f in
                     _xml_files(source)]
        else:
            return False
    except OSError:
        return False
    budget = MAX_BYTES
    tmp = Path(f"{dest}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = 0
    for path, name in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as stream:
                data = stream.read(budget + 1)
        except OSError:
            continue
        if len(data) > budget:
            break
        budget -= len(data)
        (tmp / name).write_bytes(data)
        kept += 1
    if not kept:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return True


def _xml_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):  # a store output: bounded by MAX_FILES
        dirs.sort()
        for name in sorted(files):
            candidate = Path(root) / name
            if name.endswith(".xml") and not candidate.is_symlink():
                found.append(candidate)
                if len(found) > MAX_FILES:
                    return found[:MAX_FILES]
    return found


def _read_file(file: Path) -> Summary | JunitProblem:
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as err:
        return JunitProblem(str(file), err.strerror or str(err))
    if len(data) > MAX_BYTES:
        return JunitProblem(str(file), f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as err:
        return JunitProblem(str(file), f"refused unsafe XML ({type(err).__name__})")
    except ET.ParseError as err:
        return JunitProblem(str(file), f"malformed XML ({err})")
    if root.tag == "testsuite":
        suites = [root]
    elif root.tag == "testsuites":
        suites = list(root.iter("testsuite"))
    else:
        return JunitProblem(str(file), f"the root element is <{root.tag}>, not <testsuite(s)>")
    summary = Summary()
    for suite in suites:
        for case in suite.findall("testcase"):
            summary.cases.append(_case(case))
        summary.time += _number(suite.get("time"))
    summary.tests = len(summary.cases)
    summary.failures = sum(case.outcome == "failed" for case in summary.cases)
    summary.errors = sum(case.outcome == "error" for case in summary.cases)
    summary.skipped = sum(case.outcome == "skipped" for case in summary.cases)
    return summary


def _case(element: ET.Element) -> Case:
    outcome, message, text = "passed", "", ""
    for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        found = element.find(tag)
        if found is not None:
            outcome, message, text = name, found.get("message") or "", found.text or ""
            break
    output: list[str] = []
    if outcome in ("failed", "error"):
        for chunk in (text, _text(element, "system-out"), _text(element, "system-err")):
            output += [line for line in chunk.splitlines() if line.strip()]
    return Case(
        classname=element.get("classname") or "",
        name=element.get("name") or "?",
        outcome=outcome,
        time=_number(element.get("time")),
        message=message.strip().splitlines()[0] if message.strip() else "",
        output=tuple(output[:OUTPUT_LINES]),
    )


def _text(element: ET.Element, tag: str) -> str:
    found = element.find(tag)
    return found.text or "" if found is not None else ""


def _number(text: str | None) -> float:
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if value == value and value >= 0 else 0.0  # NaN and negatives read as 0


def _add(total: Summary, part: Summary) -> None:
    total.tests += part.tests
    total.failures += part.failures
    total.errors += part.errors
    total.skipped += part.skipped
    total.time += part.time
    total.cases += part.cases


@dataclass(frozen=True)
class SuiteEntry:
    """One derivation of a run, as a `<testsuite>` of the merged file."""

    name: str  # the derivation's spec name
    drv_path: str
    status: str  # a `Status` value, or "flaky"
    duration: float
    summary: Summary | None  # None: no JUnit output, or it could not be read
    log_tail: tuple[str, ...] = ()
    cached: bool = False


def merged(entries: Iterable[SuiteEntry]) -> bytes:
    """One JUnit XML for the run: each derivation a testsuite, as CI test reporters read it."""
    root = ET.Element("testsuites", name="runner")
    totals = Summary()
    for entry in entries:
        suite = ET.SubElement(root, "testsuite", name=entry.name)
        properties = ET.SubElement(suite, "properties")
        for key, value in (("drvPath", entry.drv_path), ("status", entry.status),
                           ("cached", "true" if entry.cached else "false")):
            ET.SubElement(properties, "property", name=f"runner.{key}", value=value)
        summary = entry.summary if entry.summary is not None else _as_one_case(entry)
        for case in summary.cases:
            _write_case(suite, case)
        for key in ("tests", "failures", "errors", "skipped"):
            suite.set(key, str(getattr(summary, key)))
        suite.set("time", f"{summary.time or entry.duration:.3f}")
        _add(totals, summary)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(getattr(totals, key)))
    root.set("time", f"{totals.time:.3f}")
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def _as_one_case(entry: SuiteEntry) -> Summary:
    ok = entry.status in ("built", "substituted", "valid", "flaky")
    skipped = entry.status == "dependency-failed"
    outcome = "passed" if ok else "skipped" if skipped else "failed"
    case = Case("", entry.name, outcome, entry.duration,
                "" if ok else entry.status, entry.log_tail if not ok else ())
    return Summary(tests=1, failures=int(outcome == "failed"), skipped=int(skipped),
                   time=entry.duration, cases=[case])


def _write_case(suite: ET.Element, case: Case) -> None:
    element = ET.SubElement(suite, "testcase", classname=case.classname, name=case.name,
                            time=f"{case.time:.3f}")
    if case.outcome in ("failed", "error"):
        tag = "failure" if case.outcome == "failed" else "error"
        detail = ET.SubElement(element, tag, message=case.message)
        detail.text = "\n".join(case.output)
    elif case.outcome == "skipped":
        ET.SubElement(element, "skipped", message=case.message)
