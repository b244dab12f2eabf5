"""The summary table and the failing checks' log tails."""

from __future__ import annotations

from collections.abc import Sequence

from runner.build.result import Status
from runner.checks.outcome import Outcome


def table(outcomes: Sequence[Outcome]) -> str:
    width = max([len(o.name) for o in outcomes] + [5])
    lines = [f"{'check':<{width}}  {'result':<10}  {'time':>8}  "]
    for o in outcomes:
        time = f"{o.seconds:.2f}s" if o.result is not None else "-"
        lines.append(f"{o.name:<{width}}  {o.label:<10}  {time:>8}  {o.how}")
    lines.append(summary(outcomes))
    return "\n".join(line.rstrip() for line in lines)


def summary(outcomes: Sequence[Outcome]) -> str:
    """`2 passed, 1 failed`, plus `, 1 skipped` for checks that did not run (a dependency
    failed, or --fail-fast stopped the run): those are not failures of their own."""
    passed = sum(o.passed for o in outcomes)
    skipped = sum(o.skipped for o in outcomes)
    text = f"{passed} passed, {len(outcomes) - passed - skipped} failed"
    return text + (f", {skipped} skipped" if skipped else "")


def failure_details(outcomes: Sequence[Outcome], log_lines: int) -> str:
    """For each check that failed itself: why, and the last lines of its log."""
    parts: list[str] = []
    for o in outcomes:
        r = o.result
        if r is None or r.status.ok or r.status is Status.DEPENDENCY_FAILED:
            continue
        text = [f"--- {o.name}: {r.message}"]
        tail = r.log_tail[-log_lines:] if log_lines else []
        text.extend(f"> {line}" for line in tail)
        text.append(f"(full log: runner log {o.drv_path})")
        if r.status is Status.CACHED_FAILURE:
            text.append("(failed before on these exact inputs; "
                        "--rebuild-failed runs it again)")
        parts.append("\n".join(text))
    return "\n\n".join(parts)
