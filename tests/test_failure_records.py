"""Signed failure records travel through binary caches (issue 17, part 2): `runner copy
--to` publishes them, `use-substituted-failures` trusts a signed one, anything less is
one warning line and a build; logs of successful builds travel too."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store.hashes import Hash
from runner.substituters.failure_record import CacheFailure, log_name, record_name
from runner.substituters.serve import StoreSource
from runner.substituters.signing import SecretKey
from tests.build_helpers import build, counts, write_spec
from tests.subst_util import closed_port, served

BAD = """derivations:
  bad:
    builder: /bin/sh
    args: [-c, 'echo bad >> {counter}; echo compiling; echo "error: it broke" >&2; exit 3']
  top:
    builder: /bin/sh
    args: [-c, 'echo top >> {counter}; echo ${{{{ bad }}}} > $out']
"""
GOOD = """derivations:
  good:
    builder: /bin/sh
    args: [-c, 'echo good >> {counter}; echo good-log-line; echo ok > $out']
"""


class Site:
    """A producer that built (and failed), then a fresh consumer store at the same store
    dir (the producer's store moved aside), as on another machine."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.counter = root / "counter"
        self.store_dir = os.environ["RUNNER_STORE_DIR"]
        self.sec, self.pub = str(root / "k.sec"), root / "k.pub"
        assert run(["key", "generate", "team-1", "--secret", self.sec,
                    "--public", str(self.pub)]) == 0
        capsys.readouterr()

    def spec(self, body: str, name: str = "spec.yaml") -> str:
        return write_spec(self.root, body.format(counter=self.counter), name)

    def produce(self, spec: str, *argv: str) -> dict[str, str]:
        """Build (keep going) and return each derivation's drv path by name."""
        code, out, _ = build(self.capsys, "-k", "--json", spec)
        assert code in (0, 100)
        return {r["drvPath"].rsplit("-", 1)[1][:-4]: r["drvPath"] for r in json.loads(out)}

    def copy(self, url: str, *argv: str) -> str:
        code = run(["copy", "--to", url, *argv])
        err = self.capsys.readouterr().err
        assert code == 0, err
        return err

    def fresh(self, name: str = "b") -> None:
        os.rename(self.store_dir, self.root / f"store-before-{name}")
        state = self.root / f"state-{name}"
        state.mkdir()
        self.monkeypatch.setenv("RUNNER_STATE_DIR", str(state))

    def consume(self, spec: str, url: str, *argv: str, on: bool = True,
                pub: str | None = None) -> tuple[int, str]:
        options = ["--option", "substituters", url,
                   "--option", "trusted-public-keys", pub or self.pub.read_text()]
        if on:
            options += ["--option", "use-substituted-failures", "true"]
        code, _, err = build(self.capsys, *options, *argv, spec)
        return code, err

    def builds(self) -> dict[str, int]:
        return counts(self.counter)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str]) -> Site:
    return Site(tmp_path, monkeypatch, capsys)


def _cached_line(drv: str, url: str) -> re.Pattern[str]:
    return re.compile(re.escape(f"error: builder for '{drv}' failed on ") + r"[\w.+-]+ at "
                      r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
                      + re.escape(f"(record from {url}, signed by team-1)"))


def test_a_failure_travels_through_a_file_cache(site: Site) -> None:
    spec = site.spec(BAD)
    drvs = site.produce(spec)
    cache = site.root / "cache"
    url = f"file://{cache}"
    err = site.copy(url, "--sign-key", site.sec, spec)
    assert f"copied failure record of '{drvs['bad']}'" in err
    part = os.path.basename(drvs["bad"])[:32]
    assert (cache / "failure" / f"{part}.failure").is_file()
    # Plain text, as `nix store copy-log` writes it (Nix 2.8 prints a compressed one as is).
    log = (cache / "log" / os.path.basename(drvs["bad"])).read_bytes()
    assert log == b"compiling\nerror: it broke\n"
    assert site.builds() == {"bad": 1}

    site.fresh()
    code, err = site.consume(spec, url, "-k")  # -k: `top` reports its failed dependency
    assert code == 100, err
    assert site.builds() == {"bad": 1}, "a trusted record must stop the build"
    assert _cached_line(drvs["bad"], url).search(err), err
    assert "> error: it broke" in err
    assert "pass --rebuild-failed" in err
    assert f"1 dependencies of derivation '{drvs['top']}' failed" in err
    assert "warning" not in err
    assert run(["log", drvs["bad"]]) == 0
    assert site.capsys.readouterr().out == "compiling\nerror: it broke\n"
    code, out, _ = build(site.capsys, "--json", "--option", "substituters", url,
                         "--option", "trusted-public-keys", site.pub.read_text(),
                         "--option", "use-substituted-failures", "true", spec, "bad")
    assert code == 100
    assert [(r["status"], r["exitStatus"]) for r in json.loads(out)] == [("cached-failure", 3)]


def test_records_are_ignored_unless_the_setting_is_on(site: Site) -> None:
    spec = site.spec(BAD)
    site.produce(spec)
    url = f"file://{site.root / 'cache'}"
    site.copy(url, "--sign-key", site.sec, spec)
    site.fresh()
    code, err = site.consume(spec, url, on=False)
    assert code == 100
    assert site.builds() == {"bad": 2}, "use-substituted-failures is off by default"
    assert "record from" not in err and "failed with exit code 3" in err


def test_rebuild_failed_builds_despite_a_record(site: Site) -> None:
    spec = site.spec(BAD)
    site.produce(spec)
    url = f"file://{site.root / 'cache'}"
    site.copy(url, "--sign-key", site.sec, spec)
    site.fresh()
    code, err = site.consume(spec, url, "--rebuild-failed")
    assert code == 100
    assert site.builds() == {"bad": 2}
    assert "record from" not in err and "failed with exit code 3" in err


def test_no_failures_publishes_no_record(site: Site) -> None:
    spec = site.spec(BAD)
    site.produce(spec)
    cache = site.root / "cache"
    err = site.copy(f"file://{cache}", "--sign-key", site.sec, "--no-failures", spec)
    assert "failure record" not in err
    assert not (cache / "failure").exists()
    site.fresh()
    code, _ = site.consume(spec, f"file://{cache}")
    assert code == 100 and site.builds() == {"bad": 2}
    # The control: the same copy without the flag publishes it.
    site.copy(f"file://{cache}", "--sign-key", site.sec, spec)
    assert len(os.listdir(cache / "failure")) == 1


def test_copying_a_drv_carries_the_failures_of_its_inputs(site: Site) -> None:
    """A spec's failed derivations have no output to copy: their .drv files (or the spec)
    are named instead; the records of failed inputs come along."""
    spec = site.spec(BAD)
    drvs = site.produce(spec)
    cache = site.root / "cache"
    err = site.copy(f"file://{cache}", "--sign-key", site.sec, drvs["top"])
    assert f"copied '{drvs['bad']}'" in err  # the .drv closure
    assert f"copied failure record of '{drvs['bad']}'" in err
    assert (cache / "failure" / f"{os.path.basename(drvs['bad'])[:32]}.failure").is_file()


def test_unsigned_records_are_published_with_a_warning_and_ignored(site: Site) -> None:
    spec = site.spec(BAD)
    drvs = site.produce(spec)
    url = f"file://{site.root / 'cache'}"
    err = site.copy(url, spec)
    assert "the failure records are not signed" in err
    site.fresh()
    code, err = site.consume(spec, url)
    assert code == 100 and site.builds() == {"bad": 2}
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    part = os.path.basename(drvs["bad"])[:32]
    assert warnings == [f"warning: ignoring failure record '{url}/failure/{part}.failure': "
                        "it is not signed (see trusted-public-keys)"]


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "served"
    root.mkdir()
    with served(str(root), writable=True) as url:
        yield root, url


def test_through_runner_cache_serve_and_a_tampered_record(site: Site,
                                                         http_dir: tuple[Path, str]) -> None:
    root, url = http_dir
    spec = site.spec(BAD)
    drvs = site.produce(spec)
    site.copy(url, "--sign-key", site.sec, spec)  # PUT to the writable directory
    record = root / "failure" / f"{os.path.basename(drvs['bad'])[:32]}.failure"
    text = record.read_text()
    site.fresh()
    code, err = site.consume(spec, url)
    assert code == 100 and site.builds() == {"bad": 1}
    assert _cached_line(drvs["bad"], url).search(err), err

    record.write_text(text.replace("ExitStatus: 3", "ExitStatus: 2"))
    site.fresh("c")
    code, err = site.consume(spec, url)
    assert code == 100 and site.builds() == {"bad": 2}, "a tampered record is not trusted"
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: ignoring failure record '{url}/{record.relative_to(root)}': "
                        "its signature does not match its contents (see trusted-public-keys)"]


def test_serve_store_signs_records_on_the_fly(site: Site) -> None:
    spec = site.spec(BAD)
    drvs = site.produce(spec)
    state_a = os.environ["RUNNER_STATE_DIR"]
    site.fresh()
    source = StoreSource(site.store_dir, state_a, SecretKey.load(site.sec),
                         real_dir=str(site.root / "store-before-b"))
    with served(source) as url:
        code, err = site.consume(spec, url)
    assert code == 100 and site.builds() == {"bad": 1}, err
    assert _cached_line(drvs["bad"], url).search(err), err
    assert "> error: it broke" in err


def test_a_cache_that_is_down_is_skipped_and_the_derivation_built(site: Site) -> None:
    """No substitution is tried (allowSubstitutes = ""), so the record lookup is the first
    contact: it marks the cache down for later runs, which then skip it with one line."""
    spec = site.spec(BAD.split("  top:")[0] + "    allow-substitutes: false\n")
    site.fresh()
    url = f"http://127.0.0.1:{closed_port()}"
    local_off = ("--option", "cache-failures", "false")  # each run reaches the lookup
    code, err = site.consume(spec, f"{url}?retries=0", *local_off)
    assert code == 100 and site.builds() == {"bad": 1}, err
    assert "failed with exit code 3" in err
    assert err.count(f"substituter '{url}' is unusable") == 1, err
    code, err = site.consume(spec, f"{url}?retries=0", *local_off)
    assert code == 100 and site.builds() == {"bad": 2}
    assert err.count(f"cache {url} is down since") == 1, err
    code, err = site.consume(spec, f"{url}?retries=0", *local_off,
                             "--option", "substituter-errors", "fail")
    assert code == 1 and site.builds() == {"bad": 2}, "substituter-errors = fail stops the run"
    assert f"cache {url} is down since" in err


def test_runner_log_falls_back_to_the_substituters(site: Site) -> None:
    spec = site.spec(GOOD)
    drvs = site.produce(spec)
    cache = site.root / "cache"
    url = f"file://{cache}"
    out = run(["copy", "--to", url, "--sign-key", site.sec, spec])
    err = site.capsys.readouterr().err
    assert out == 0 and f"copied log of '{drvs['good']}'" in err
    (output,) = [line.split("'")[1] for line in err.splitlines() if "copied '" in line]
    site.fresh()
    assert run(["log", drvs["good"]]) == 1  # the control: nothing local, no substituters
    assert "no build log available" in site.capsys.readouterr().err
    for target in (drvs["good"], output):  # an output this store lacks: the narinfo's Deriver
        assert run(["log", "--option", "substituters", url, target]) == 0
        out_text, err = site.capsys.readouterr()
        assert out_text == "good-log-line\n"
        assert f"got build log for '{drvs['good']}' from '{url}'" in err


def test_serve_store_serves_build_logs(site: Site) -> None:
    spec = site.spec(GOOD)
    drvs = site.produce(spec)
    state_a = os.environ["RUNNER_STATE_DIR"]
    site.fresh()
    source = StoreSource(site.store_dir, state_a, real_dir=str(site.root / "store-before-b"))
    with served(source) as url:
        assert run(["log", "--option", "substituters", url, drvs["good"]]) == 0
        out, err = site.capsys.readouterr()
        assert out == "good-log-line\n"
        assert f"from '{url}'" in err
        other = drvs["good"].replace(os.path.basename(drvs["good"])[:32], "1" * 32)
        assert run(["log", "--option", "substituters", url, other]) == 1  # the control
        assert "no build log available" in site.capsys.readouterr().err


def test_a_failure_log_too_long_for_a_record_keeps_its_end() -> None:
    from runner.substituters.failure_export import truncate_log
    from runner.substituters.failure_record import MAX_LOG

    log = b"x" * MAX_LOG + b"the error at the end\n"
    cut = truncate_log(log)
    assert len(cut) == MAX_LOG and cut.endswith(b"the error at the end\n")
    assert cut.startswith(b"[runner: log truncated")
    assert truncate_log(b"short\n") == b"short\n"


def test_no_record_is_looked_up_for_a_fixed_output_derivation(site: Site) -> None:
    """Their failures are never cached (a download may work next time), so a record
    for one, even signed by a trusted key, is not asked for."""
    spec = site.spec("""derivations:
  fetch:
    builder: /bin/sh
    args: [-c, 'echo fetch >> {counter}; exit 3']
    output-hash: sha256-47DEQpj8HBSa+/TLtdbeoOdOplV1NAOSNSOYzBshOOc=
""")
    drv = site.produce(spec)["fetch"]
    cache = site.root / "cache"
    # Written by hand: runner itself never has such a failure to publish.
    log = b"boom\n"
    record = CacheFailure(drv, "failed", 3, 1765137000, platform.machine() + "-linux",
                          log_name(drv), Hash("sha256", hashlib.sha256(log).digest()),
                          len(log)).signed(SecretKey.load(site.sec))
    for rel, data in (("nix-cache-info", f"StoreDir: {site.store_dir}\n".encode()),
                      (record.log, log), (record_name(drv), record.to_text().encode())):
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_bytes(data)
    site.fresh()
    code, err = site.consume(spec, f"file://{cache}")
    assert code == 100 and site.builds() == {"fetch": 2}, err
    assert "record from" not in err


def test_runner_log_through_a_daemon_falls_back_to_the_substituters(
        site: Site, tmp_path: Path) -> None:
    """The daemon's store has no log of the derivation; the client's substituters do."""
    from tests.daemon_harness import Daemon

    drv = f"{site.store_dir}/{'1' * 32}-elsewhere.drv"
    cache = tmp_path / "cache"
    (cache / "log").mkdir(parents=True)
    (cache / "nix-cache-info").write_text(f"StoreDir: {site.store_dir}\n")
    (cache / log_name(drv)).write_bytes(b"built elsewhere\n")
    with Daemon(str(tmp_path / "d" / "socket")) as d:
        socket = f"unix://{d.socket}"
        assert run(["log", "--store", socket, drv]) == 1  # the control: no substituter
        assert "no build log available" in site.capsys.readouterr().err
        assert run(["log", "--store", socket, "--option", "substituters", f"file://{cache}",
                    drv]) == 0
        out, err = site.capsys.readouterr()
        assert out == "built elsewhere\n" and f"from 'file://{cache}'" in err
        assert d.stop() == 0


def test_copying_an_output_uploads_its_log_unless_no_logs(site: Site) -> None:
    spec = site.spec(GOOD)
    drvs = site.produce(spec)
    code, out, _ = build(site.capsys, spec)
    assert code == 0
    output = out.strip()
    name = os.path.basename(drvs["good"])
    err = site.copy(f"file://{site.root / 'with'}", output)
    assert f"copied log of '{drvs['good']}'" in err
    assert (site.root / "with" / "log" / name).read_bytes() == b"good-log-line\n"
    err = site.copy(f"file://{site.root / 'without'}", "--no-logs", output)
    assert "copied log" not in err and not (site.root / "without" / "log").exists()
    assert f"copied '{output}'" in err


class _FailingCache(BaseHTTPRequestHandler):
    """A cache that answers nix-cache-info and fails every other request with a 500."""

    def do_GET(self) -> None:
        ok = self.path == "/nix-cache-info"
        body = f"StoreDir: {os.environ['RUNNER_STORE_DIR']}\n".encode() if ok else b"oops"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_cache_failing_on_the_record_follows_substituter_errors(site: Site) -> None:
    spec = site.spec(BAD.split("  top:")[0] + "    allow-substitutes: false\n")
    site.fresh()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingCache)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    local_off = ("--option", "cache-failures", "false")
    try:
        code, err = site.consume(spec, f"{url}?retries=0", *local_off)
        assert code == 100 and site.builds() == {"bad": 1}, err  # warn: skipped, built
        assert err.count(f"substituter '{url}' is unusable, skipping it") == 1, err
        site.fresh("c")
        code, err = site.consume(spec, f"{url}?retries=0", *local_off,
                                 "--option", "substituter-errors", "fail")
        assert code == 1 and site.builds() == {"bad": 1}, err
        assert f"error: substituter '{url}' is unusable: GET {url}/failure/" in err
    finally:
        server.shutdown()
        server.server_close()
