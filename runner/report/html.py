"""`--report FILE.html`: one self-contained page (no network, no assets) about a run.

A timeline with one row per build slot and one bar per derivation (its title shows the
details on hover; a click jumps to its entry), the root causes of failures with what they
skipped, and the run's summary and command line. Pure HTML and CSS: it opens anywhere.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.report.junit import Case

COLOURS = {
    "built": "#2e7d32", "substituted": "#1565c0", "valid": "#78909c", "flaky": "#f9a825",
    "failed": "#c62828", "cached-failure": "#8e24aa", "dependency-failed": "#bdbdbd",
}
FAILED = ("failed", "cached-failure", "timed-out", "log-limit", "hash-mismatch",
          "setup-failed", "substitution-failed", "not-deterministic")


@dataclass(frozen=True)
class Entry:
    """One derivation of the run as the report shows it."""

    name: str
    drv_path: str
    status: str
    start: float  # seconds since the run started
    stop: float
    log_tail: tuple[str, ...] = ()
    failing_cases: tuple[Case, ...] = ()
    root_cause: str = ""  # drv path of the failure that skipped this one
    detail: str = ""  # e.g. "passed on attempt 2/3"


@dataclass
class Run:
    argv: list[str]
    started: str  # wall-clock time, as text
    elapsed: float
    exit_code: int
    entries: list[Entry] = field(default_factory=list)


def slots(entries: Sequence[Entry]) -> list[int]:
    """A row for each entry: the lowest slot free when it started (intervals never overlap)."""
    ends: list[float] = []
    rows = [0] * len(entries)
    for index in sorted(range(len(entries)), key=lambda i: (entries[i].start, entries[i].stop)):
        entry = entries[index]
        row = next((r for r, end in enumerate(ends) if end <= entry.start), len(ends))
        if row == len(ends):
            ends.append(entry.stop)
        else:
            ends[row] = entry.stop
        rows[index] = row
    return rows


def render(run: Run) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for entry in run.entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing"
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>runner report: {e(' '.join(run.argv[:3]))}</title>", f"<style>{_CSS}</style>",
        "</head><body>", "<h1>runner run report</h1>",
        f"<p id='summary'>{e(summary)} in {run.elapsed:.2f} s; exit code {run.exit_code}; "
        f"started {e(run.started)}</p>",
        f"<p><code id='command'>{e(shlex.join(run.argv))}</code></p>",
        "<h2>Timeline</h2>", _timeline(run), _legend(),
        "<h2>Root causes</h2>", _root_causes(run.entries),
        "<h2>Derivations</h2>", _details(run.entries), "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _timeline(run: Run) -> str:
    span = max([run.elapsed, *(entry.stop for entry in run.entries)]) or 1.0
    rows = slots(run.entries)
    height = (max(rows, default=0) + 1) * 28
    bars = []
    for index, (entry, row) in enumerate(zip(run.entries, rows, strict=True)):
        left = 100 * entry.start / span
        width = max(0.4, 100 * (entry.stop - entry.start) / span)
        tip = (f"{entry.name} — {entry.status}{' (' + entry.detail + ')' if entry.detail else ''}"
               f"\n{entry.drv_path}\n{entry.stop - entry.start:.3f} s")
        if entry.log_tail:
            tip += "\n" + "\n".join(entry.log_tail[-5:])
        colour = COLOURS.get(entry.status, COLOURS["failed"])
        bars.append(
            f"<a class='bar' id='bar-{index}' data-status='{html.escape(entry.status)}' "
            f"href='#drv-{index}' title='{html.escape(tip)}' style='left:{left:.3f}%;"
            f"width:{width:.3f}%;top:{row * 28}px;background:{colour}'>"
            f"{html.escape(entry.name)}</a>")
    return (f"<div id='timeline' style='height:{height}px'>" + "".join(bars) + "</div>"
            f"<p class='axis'>0 s … {span:.2f} s, one row per build slot</p>")


def _legend() -> str:
    items = "".join(f"<span><i style='background:{c}'></i>{s}</span>" for s, c in COLOURS.items())
    return f"<p class='legend'>{items}</p>"


def _root_causes(entries: Sequence[Entry]) -> str:
    failures = [(i, entry) for i, entry in enumerate(entries) if entry.status in FAILED]
    if not failures:
        return "<p id='root-causes'>No failures.</p>"
    items = []
    for index, entry in failures:
        skipped = [other.name for other in entries if other.root_cause == entry.drv_path]
        skipped_text = (f"; skipped because of it: {html.escape(', '.join(skipped))}"
                        if skipped else "")
        items.append(f"<li><a href='#drv-{index}'>{html.escape(entry.name)}</a> "
                     f"({html.escape(entry.status)}){skipped_text}</li>")
    return "<ul id='root-causes'>" + "".join(items) + "</ul>"


def _details(entries: Sequence[Entry]) -> str:
    out = []
    for index, entry in enumerate(entries):
        body = [f"<p><code>{html.escape(entry.drv_path)}</code> — "
                f"{entry.stop - entry.start:.3f} s</p>"]
        for case in entry.failing_cases:
            body.append(f"<p class='case'>✗ {html.escape(case.title)}: "
                        f"{html.escape(case.message)}</p>")
            if case.output:
                body.append("<pre>" + html.escape("\n".join(case.output)) + "</pre>")
        if entry.log_tail:
            body.append("<pre class='log'>" + html.escape("\n".join(entry.log_tail)) + "</pre>")
        opened = " open" if entry.status in FAILED else ""
        detail = f" ({html.escape(entry.detail)})" if entry.detail else ""
        out.append(f"<details id='drv-{index}' class='drv'{opened}><summary>"
                   f"{html.escape(entry.name)}: {html.escape(entry.status)}{detail}</summary>"
                   + "".join(body) + "</details>")
    return "".join(out)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#212121}
code,pre{font:12px/1.3 ui-monospace,monospace}
pre{background:#f5f5f5;padding:.5em;overflow:auto}
#timeline{position:relative;border:1px solid #ccc;background:#fafafa;min-height:28px}
.bar{position:absolute;height:24px;margin-top:2px;color:#fff;font-size:11px;overflow:hidden;
white-space:nowrap;text-decoration:none;border-radius:3px;padding:0 3px;box-sizing:border-box}
.bar:hover{outline:2px solid #000}
.axis{color:#757575;font-size:12px}
.legend span{margin-right:1em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
details.drv{border-top:1px solid #eee;padding:.3em 0}
details.drv:target{background:#fff8e1}
.case{color:#c62828;margin:.3em 0}
"""
