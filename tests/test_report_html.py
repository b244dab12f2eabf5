"""The HTML run report: self-contained, and what a person sees in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.report import html as report
from runner.report.junit import Case

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sample_run() -> report.Run:
    entries = [
        report.Entry("lib", "/s/aaa-lib.drv", "built", 0.0, 1.0),
        report.Entry("tests", "/s/bbb-tests.drv", "failed", 1.0, 2.5,
                     log_tail=("FAILED tests/test_a.py::test_bad",),
                     failing_cases=(Case("tests.test_a", "test_bad", "failed", 0.2,
                                         "assert 1 == 2", ("E  assert 1 == 2",)),)),
        report.Entry("docs", "/s/ccc-docs.drv", "built", 0.2, 0.9),
        report.Entry("flaky", "/s/ddd-flaky.drv", "flaky", 0.5, 2.0,
                     detail="passed on attempt 2/3"),
        report.Entry("deploy", "/s/eee-deploy.drv", "dependency-failed", 2.5, 2.5,
                     root_cause="/s/bbb-tests.drv"),
        report.Entry("<script>", "/s/fff-x.drv", "cached-failure", 0.0, 0.0),
    ]
    return report.Run(["runner", "build", "spec.yaml"], "2026-12-07 17:00:00", 2.6, 100,
                      entries)


def test_slots_never_overlap() -> None:
    entries = sample_run().entries
    rows = report.slots(entries)
    for i, a in enumerate(entries):
        for j, b in enumerate(entries):
            if i < j and rows[i] == rows[j]:
                assert a.stop <= b.start or b.stop <= a.start, (a.name, b.name)
    assert max(rows) + 1 == 3  # lib+tests+deploy, docs+…, flaky: three at once at most


def test_page_is_self_contained_and_escaped() -> None:
    page = report.render(sample_run())
    assert not re.search(r"(src|href)=['\"](https?:|//)", page)  # no external assets
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("class='bar'") == 6
    assert "skipped because of it: deploy" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_real_browser_renders_the_timeline(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(report.render(sample_run()))
    assert CHROMIUM is not None  # skipped otherwise
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert len(re.findall(r"class=\"bar\"", dom)) == 6
    assert 'id="root-causes"' in dom and "tests</a> (failed)" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,700",
                    page.as_uri()], capture_output=True, timeout=60, check=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    # Not blank: the bars' colours make the PNG far from a uniform image's tiny size.
    assert len(data) > 10_000
