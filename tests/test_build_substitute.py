"""`runner build` with substituters: A builds and fills a cache, B fetches instead of building
(or builds, loudly, when the cache cannot be used)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store import nar
from runner.store.local_store import LocalStore
from runner.substituters import narinfo
from tests.subst_site import Site, cache_server
from tests.subst_util import closed_port, hung_server


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    s = Site(tmp_path / "site", capsys)
    s.build_on_a()
    return s


def _user_config(isolated_env: Path, text: str) -> None:
    conf = isolated_env / "config" / "runner" / "runner.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)


def _statuses(results: list[dict[str, object]]) -> list[str]:
    return sorted(str(r["status"]) for r in results)


def _assert_all_fetched(site: Site, results: list[dict[str, object]]) -> None:
    assert site.built() == {}, "nothing may be built on B"
    assert _statuses(results) == ["substituted", "substituted"]
    assert site.b_hashes() == site.hashes
    for path, expected in site.hashes.items():
        assert nar.hash_path(path)[0] == expected


def test_file_cache_from_settings(site: Site, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    site.move_to_b()
    code, results, err = site.build("--option", "substituters", url,
                                    "--option", "trusted-public-keys", site.pub)
    assert code == 0, err
    _assert_all_fetched(site, results)
    assert "fetched" in err


def test_http_cache_declared_in_the_spec_with_a_key_the_user_trusts(
        site: Site, tmp_path: Path, isolated_env: Path) -> None:
    with cache_server(tmp_path / "served", "--writable") as url:
        site.copy_to(url)
        site.move_to_b()
        spec = site.write_spec(f"substituters:\n  - url: {url}\n"
                               f"    trusted-public-keys: [\"{site.pub}\"]\n", "spec-b.yaml")
        _user_config(isolated_env, f"trusted-public-keys = {site.pub}\n")
        code, results, err = site.build(spec=spec)
    assert code == 0, err
    _assert_all_fetched(site, results)


def test_dry_run_lists_what_would_be_fetched(site: Site, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    site.move_to_b()
    opts = ["--option", "substituters", url, "--option", "trusted-public-keys", site.pub]
    code, results, err = site.build("--dry-run", *opts)
    assert code == 0
    assert _statuses(results) == ["will-substitute", "will-substitute"]
    code, results, _ = site.build("--dry-run", "--no-substitute", *opts)
    assert _statuses(results) == ["will-build", "will-build"]
    assert run(["build", "--dry-run", *site.args(), site.spec, *opts]) == 0
    err = site.capsys.readouterr().err
    assert "these 2 paths will be fetched" in err
    assert all(path in err for path in site.outputs.values())
    assert site.built() == {}


@pytest.mark.parametrize("problem", ["unsigned", "untrusted-key"])
def test_untrusted_substitutes_are_ignored_and_built(site: Site, tmp_path: Path,
                                                     problem: str) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url, sign=problem != "unsigned")
    site.move_to_b()
    keys = site.pub if problem == "unsigned" else "other-1:" + site.pub.split(":")[1]
    code, results, err = site.build("--option", "substituters", url,
                                    "--option", "trusted-public-keys", keys)
    assert code == 0, err
    assert site.built() == {"lib": 1, "app": 1}
    assert _statuses(results) == ["built", "built"]
    assert "warning: ignoring substitute" in err and url in err
    assert site.b_hashes() == site.hashes


def _tamper_nar(site: Site, cache: Path) -> None:
    lib = site.outputs["lib"]
    info = narinfo.parse((cache / f"{os.path.basename(lib)[:32]}.narinfo").read_text(),
                         site.store_dir, "t")
    nar_file = cache / info.url
    nar_file.chmod(0o644)
    nar_file.write_bytes(nar_file.read_bytes().replace(b"hello", b"HELLO"))


def _wrong_nar_hash(site: Site, cache: Path) -> None:
    lib, app = site.outputs["lib"], site.outputs["app"]
    p = cache / f"{os.path.basename(lib)[:32]}.narinfo"
    info = narinfo.parse(p.read_text(), site.store_dir, "t")
    info = narinfo.NarInfo(**{**info.__dict__, "sigs": (), "nar_hash": site.hashes[app]})
    p.write_text(info.signed(site.key).to_text())  # signed: only the content check catches it


@pytest.mark.parametrize("damage", [_tamper_nar, _wrong_nar_hash])
def test_bad_delivery_fails_without_fallback_and_builds_with_it(site: Site, tmp_path: Path,
                                                                damage: object) -> None:
    cache = tmp_path / "cache"
    site.copy_to(f"file://{cache}?compression=none")
    damage(site, cache)  # type: ignore[operator]
    site.move_to_b()
    opts = ["--option", "substituters", f"file://{cache}",
            "--option", "trusted-public-keys", site.pub]
    code, results, err = site.build(*opts)
    assert code == 1  # a miscellaneous failure, as in Nix: not the derivation's
    assert "substitution-failed" in _statuses(results)
    assert "--fallback" in err and "rejected" in err and "hash" in err
    assert site.built() == {}
    code, results, err = site.build("--fallback", *opts)
    assert code == 0, err
    assert site.built()["lib"] == 1  # app may be fetched once lib is valid, or built
    assert "warning:" in err and "--fallback" in err
    assert site.b_hashes() == site.hashes


@pytest.mark.parametrize("kind", ["down", "hung"])
def test_a_cache_that_is_down_or_hung_does_not_fail_the_build(site: Site, kind: str) -> None:
    site.move_to_b()

    def attempt(url: str) -> None:
        code, results, err = site.build("--option", "substituters", f"{url}?timeout=1&retries=0",
                                        "--option", "trusted-public-keys", site.pub)
        assert code == 0, err
        assert _statuses(results) == ["built", "built"]
        assert err.count("is unusable") == 1  # reported once, then skipped
        code, _, err = site.build("--substituter-errors=fail",
                                  "--option", "substituters", f"{url}?timeout=1&retries=0")
        assert code == 0, err  # valid outputs: no substituter asked

    if kind == "down":
        attempt(f"http://127.0.0.1:{closed_port()}")
    else:
        with hung_server() as url:
            attempt(url)
    assert site.b_hashes() == site.hashes


def test_substituter_errors_fail(site: Site) -> None:
    site.move_to_b()
    code, _, err = site.build("--substituter-errors=fail", "--option", "substituters",
                              f"http://127.0.0.1:{closed_port()}?retries=0")
    assert code == 1 and "error:" in err
    assert site.built() == {}


def test_no_substitute_and_allow_substitutes_false_build_locally(site: Site,
                                                                  tmp_path: Path) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    site.move_to_b()
    opts = ["--option", "substituters", url, "--option", "trusted-public-keys", site.pub]
    code, _, err = site.build("--no-substitute", *opts)
    assert code == 0, err
    assert site.built() == {"lib": 1, "app": 1}


def test_allow_substitutes_false(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = Site(tmp_path / "site", capsys)
    text = Path(s.spec).read_text().replace("  app:\n", "  app:\n    allow-substitutes: false\n")
    Path(s.spec).write_text(text)
    s.build_on_a()
    url = f"file://{tmp_path}/cache"
    s.copy_to(url)
    s.move_to_b()
    code, results, err = s.build("--option", "substituters", url,
                                 "--option", "trusted-public-keys", s.pub)
    assert code == 0, err
    assert s.built() == {"app": 1}
    assert _statuses(results) == ["built", "substituted"]


def test_a_substitute_supersedes_a_cached_failure(site: Site, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    site.move_to_b()
    Path(f"{site.counter}.fail").write_text("")  # lib's builder fails on B
    code, results, err = site.build("lib")
    assert code == 100 and _statuses(results) == ["failed"]
    code, results, err = site.build("lib")
    assert code == 100 and _statuses(results) == ["cached-failure"]
    code, results, err = site.build("lib", "--option", "substituters", url,
                                    "--option", "trusted-public-keys", site.pub)
    assert code == 0, err
    assert _statuses(results) == ["substituted"]
    assert site.build("lib")[0] == 0
    code = run(["store", "failed", "list", *site.args()])
    assert code == 0 and site.capsys.readouterr().out == ""


PROGRAM = """\
import shutil, sys, os
root, action, path = sys.argv[1], sys.argv[2], sys.argv[3]
base = os.path.join(root, os.path.basename(path))
if action == "query":
    if not os.path.exists(base + ".json"):
        sys.exit(1)
    print(open(base + ".json").read())
elif action == "fetch":
    shutil.copyfile(base + ".nar", sys.argv[4])
"""


def test_substituter_program_declared_in_the_spec(site: Site, tmp_path: Path,
                                                  isolated_env: Path) -> None:
    data = tmp_path / "artifacts"
    data.mkdir()
    with LocalStore(site.store_dir, site.state) as store:
        for path in site.outputs.values():
            info = store.query_path_info(path)
            assert info is not None
            signed = narinfo.NarInfo(path=path, url="", nar_hash=info.nar_hash,
                                     nar_size=info.nar_size,
                                     references=info.references).signed(site.key)
            doc = {"narHash": str(info.nar_hash), "narSize": info.nar_size,
                   "references": sorted(info.references), "sigs": list(signed.sigs)}
            (data / f"{os.path.basename(path)}.json").write_text(json.dumps(doc))
            (data / f"{os.path.basename(path)}.nar").write_bytes(b"".join(nar.dump(path)))
    (site.root / "fetch.py").write_text(f"#!{sys.executable}\n{PROGRAM}")
    (site.root / "fetch.py").chmod(0o755)
    site.move_to_b()
    spec = site.write_spec(f"substituters:\n  - command: [./fetch.py, \"{data}\"]\n"
                           f"    trusted-public-keys: [\"{site.pub}\"]\n",
                           "spec-prog.yaml")
    _user_config(isolated_env, f"trusted-public-keys = {site.pub}\n")
    code, results, err = site.build(spec=spec)  # a spec may not run programs on its own
    assert code == 0, err
    assert "not in trusted-substituter-commands" in err and site.built() == {"lib": 1, "app": 1}
    os.rename(site.store_dir, site.root / "built-store")  # once more from an empty store
    site.state = str(site.root / "state-b2")
    site.counter.unlink()
    _user_config(isolated_env, f"trusted-public-keys = {site.pub}\n"
                 f"trusted-substituter-commands = {site.root / 'fetch.py'}\n")
    code, results, err = site.build(spec=spec)
    assert code == 0, err
    _assert_all_fetched(site, results)


def test_repair_fetches_a_corrupt_output_again(site: Site, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/cache"
    site.copy_to(url)
    lib = site.outputs["lib"]
    os.chmod(lib, 0o755)
    os.chmod(os.path.join(lib, "msg"), 0o644)
    Path(lib, "msg").write_text("damaged\n")
    code, _, err = site.build("--repair", "--option", "substituters", url,
                                    "--option", "trusted-public-keys", site.pub)
    assert code == 0, err
    assert site.built() == {"lib": 1, "app": 1}  # fetched again, not rebuilt
    assert Path(lib, "msg").read_text() == "hello from the source\n"
    assert nar.hash_path(lib)[0] == site.hashes[lib]


@pytest.mark.parametrize("over_http", [False, True], ids=["file", "http"])
def test_a_nar_missing_from_the_cache_is_a_miss(site: Site, tmp_path: Path,
                                                over_http: bool) -> None:
    """As in Nix (SubstituteGone): warn and build, no --fallback needed."""
    cache = tmp_path / "cache"
    site.copy_to(f"file://{cache}")
    for nar_file in (cache / "nar").iterdir():
        nar_file.unlink()  # the narinfos stay: the cache claims paths it cannot deliver
    site.move_to_b()

    def attempt(url: str) -> None:
        code, results, err = site.build("--option", "substituters", url,
                                        "--option", "trusted-public-keys", site.pub)
        assert code == 0, err
        assert _statuses(results) == ["built", "built"]
        assert err.count("does not exist in binary cache") >= 1
        assert "--fallback" not in err

    if over_http:
        with cache_server(cache) as url:
            attempt(url)
    else:
        attempt(f"file://{cache}")
    assert site.b_hashes() == site.hashes
