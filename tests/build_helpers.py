"""Shared helpers for the build tests: write a spec, run the CLI in-process, read counters."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.cli.main import run


def write_spec(tmp_path: Path, body: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text("version: 1\n" + body)
    return str(path)


def build(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["build", "--sandbox=off", "--no-out-link", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def build_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    code, out, _ = build(capsys, "--json", *argv)
    return code, json.loads(out)


def counts(counter: Path) -> dict[str, int]:
    """Builders append their name to a file outside the store: how often each ran."""
    found: dict[str, int] = {}
    if counter.exists():
        for line in counter.read_text().split():
            found[line] = found.get(line, 0) + 1
    return found


def valid_paths(state_dir: str) -> dict[str, set[str]]:
    """Every valid path with its references, straight from the DB."""
    conn = sqlite3.connect(os.path.join(state_dir, "db", "db.sqlite"))
    try:
        paths = {row[0]: set() for row in conn.execute("select path from ValidPaths")}  # type: ignore[var-annotated]
        for referrer, reference in conn.execute(
                "select a.path, b.path from Refs r join ValidPaths a on a.id = r.referrer"
                " join ValidPaths b on b.id = r.reference"):
            paths[referrer].add(reference)
    finally:
        conn.close()
    return paths


def runner_process(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    """A real `runner` process (for concurrency, signals and crashes)."""
    return subprocess.Popen([sys.executable, "-m", "runner", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)
