"""A diff report as text: root causes first, one line per change, values shown whole
only when short (long and multi-line values as a line diff)."""

from __future__ import annotations

import difflib
import json

from runner.why.diff import Cause, Change, Report

_SHORT = 100


def _value(text: object) -> str:
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= _SHORT else shown[:_SHORT - 1] + "…\""


def _line_diff(old: str, new: str, indent: str) -> list[str]:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), "old", "new", lineterm="",
                                 n=1)
    return [indent + line for line in list(lines)[2:]]


def _value_change(label: str, old: object, new: object, indent: str) -> list[str]:
    if old is None:
        return [f"{indent}{label} added: {_value(new)}"]
    if new is None:
        return [f"{indent}{label} removed (was {_value(old)})"]
    if isinstance(old, str) and isinstance(new, str) and (
            "\n" in old or "\n" in new or len(old) + len(new) > 2 * _SHORT):
        return [f"{indent}{label} changed:", *_line_diff(old, new, indent + "    ")]
    return [f"{indent}{label}: {_value(old)} → {_value(new)}"]


def _old(change: Change) -> object:
    """The old value as the new derivation would spell its inputs: only real changes show."""
    return change.old if change.old_renamed is None else change.old_renamed


def change_lines(change: Change, indent: str = "  ") -> list[str]:
    k = change.kind
    if k == "env":
        return _value_change(f"env {change.name}", _old(change), change.new, indent)
    if k == "args":
        label = f"args[{change.name}]" if change.name else "args"
        return _value_change(label, _old(change), change.new, indent)
    if k in ("builder", "system"):
        return _value_change(k, _old(change), change.new, indent)
    if k == "output-added":
        return [f"{indent}output '{change.name}' added"]
    if k == "output-removed":
        return [f"{indent}output '{change.name}' removed"]
    if k == "output-hash":
        return [f"{indent}fixed-output hash of '{change.name}': "
                f"{change.old or '(none)'} → {change.new or '(none)'}"]
    if k == "input-added":
        return [f"{indent}input derivation '{change.name}' added: {change.new}"]
    if k == "input-removed":
        return [f"{indent}input derivation '{change.name}' removed: {change.old}"]
    if k == "input-outputs":
        return [f"{indent}uses outputs {change.new} of '{change.name}' (was {change.old})"]
    if k == "source-added":
        return [f"{indent}source '{change.name}' added: {change.new}"]
    if k == "source-removed":
        return [f"{indent}source '{change.name}' removed: {change.old}"]
    if k == "source":
        return _source_lines(change, indent)
    if k == "missing":
        gone = change.old or change.new
        return [f"{indent}'{gone}' is no longer in the store nor in the history; "
                "cannot compare further"]
    return [f"{indent}{k} {change.name}"]


def _source_lines(change: Change, indent: str) -> list[str]:
    head = f"{indent}source '{change.name}'"
    if change.collected:
        return [f"{head}: old source no longer in the store ({change.old}); "
                f"now {change.new}"]
    if not change.files:
        return [f"{head}: same files, new store path {change.new}"]
    lines = [f"{head}:"]
    for f in change.files:
        lines.append(f"{indent}    {f.describe()}")
        if f.patch:
            lines += [f"{indent}      {line}" for line in f.patch.rstrip("\n").split("\n")]
    return lines


def cause_lines(cause: Cause) -> list[str]:
    where = f"'{cause.name}'"
    if len(cause.trail) > 1:
        where += f" (via {' → '.join(cause.trail)})"
    lines = [f"root cause in {where}:"]
    for change in cause.changes:
        lines += change_lines(change)
    return lines


def report_lines(report: Report) -> list[str]:
    if report.identical:
        return ["the derivations are identical"]
    if not report.causes:
        return ["the derivations differ only in store paths"]
    lines: list[str] = []
    for cause in report.causes:
        lines += cause_lines(cause)
    return lines
