"""Nix 2.8's own clients against `runner daemon`: queries, copies, builds and GC give
what the same request gives against a Nix store (or runner's store read directly)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli.main import run
from runner.store.local_store import LocalStore
from tests.daemon_harness import Daemon, nix_env, nix_local_store, run_nix
from tests.nix_oracle import needs_nix

pytestmark = needs_nix


@pytest.fixture
def daemon(tmp_path: Path, store_dir: str) -> Iterator[Daemon]:
    with Daemon(str(tmp_path / "sock" / "socket")) as d:
        yield d
        assert d.stop() == 0


def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a\n")
    (src / "a").chmod(0o755)
    (src / "sub" / "b").write_text("b\n")
    (src / "link").symlink_to("a")
    return src


def _drv_expr(src: Path, name: str = "t", script: str = "echo ${src} > $out") -> str:
    return (f'let src = {src}; in derivation {{ name = "{name}"; system = builtins.currentSystem;'
            f' builder = "/bin/sh"; args = ["-c" "{script}"]; }}')


def _nix_store_with_drv(tmp_path: Path, env: dict[str, str], store_dir: str,
                        script: str = "echo ${src} > $out") -> tuple[str, str]:
    """A Nix store holding a source tree and a derivation using it: (store uri, drv path)."""
    nix_store = nix_local_store(tmp_path, store_dir)
    src = _tree(tmp_path)
    drv = run_nix(env, "nix-instantiate", "--store", nix_store, "-E",
                  _drv_expr(src, script=script)).stdout.strip()
    return nix_store, drv


def test_copy_then_queries_match_a_nix_store(tmp_path: Path, store_dir: str, state_dir: str,
                                            daemon: Daemon,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir)
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)

    def both(*argv: str) -> tuple[str, str]:
        a = run_nix(env, *argv[:1], "--store", ours, *argv[1:]).stdout
        b = run_nix(env, *argv[:1], "--store", nix_store, *argv[1:]).stdout
        return a, b

    info_ours, info_nix = both("nix", "path-info", "--derivation", "--json", "-r", drv)
    assert json.loads(info_ours) == json.loads(info_nix)
    assert len(json.loads(info_ours)) == 2  # the drv and its source
    requisites = both("nix-store", "--query", "--requisites", drv)
    assert requisites[0] == requisites[1] and len(requisites[0].split()) == 2
    references = both("nix-store", "--query", "--references", drv)
    assert references[0] == references[1]
    src = references[0].strip()
    referrers = both("nix-store", "--query", "--referrers", src)
    assert referrers[0] == referrers[1] == drv + "\n"
    outputs = both("nix-store", "--query", "--outputs", drv)
    assert outputs[0] == outputs[1]
    # runner's store, read directly, agrees.
    with LocalStore(store_dir, state_dir) as store:
        assert store.query_references(drv) == {src}
        assert store.compute_closure([drv]) == set(requisites[0].split())
    # NAR export through the daemon is byte-identical to Nix's.
    dump_ours, dump_nix = both("nix-store", "--dump", src)
    assert dump_ours == dump_nix and dump_ours
    assert run(["store", "verify", "--check-contents"]) == 0
    assert "store is consistent" in capsys.readouterr().out


def test_invalid_path_is_a_clean_error(tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    missing = f"{store_dir}/{'0' * 32}-missing"
    proc = run_nix(env, "nix-store", "--store", f"unix://{daemon.socket}", "--query",
                   "--references", missing, check=False)
    assert proc.returncode == 1
    assert f"path '{missing}' is not valid" in proc.stderr


def test_add_to_store_matches_nix(tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    src = _tree(tmp_path)
    (tmp_path / "flat").write_bytes(b"\xff\x00flat")
    ours = f"unix://{daemon.socket}"
    nix_store = nix_local_store(tmp_path, store_dir)
    for argv in (["nix-store", "--add", str(src)],
                 ["nix-store", "--add-fixed", "sha256", str(tmp_path / "flat")],
                 ["nix-store", "--add-fixed", "--recursive", "sha1", str(src)]):
        a = run_nix(env, argv[0], "--store", ours, *argv[1:]).stdout
        b = run_nix(env, argv[0], "--store", nix_store, *argv[1:]).stdout
        assert a == b and a.startswith(store_dir)
        path = a.strip()
        info_a = run_nix(env, "nix", "path-info", "--store", ours, "--json", path).stdout
        info_b = run_nix(env, "nix", "path-info", "--store", nix_store, "--json", path).stdout
        strip = [{k: v for k, v in i.items() if k != "registrationTime"}
                 for i in (json.loads(info_a)[0], json.loads(info_b)[0])]
        assert strip[0] == strip[1]


@pytest.mark.slow
def test_realise_builds_through_the_daemon(tmp_path: Path, store_dir: str, state_dir: str,
                                           daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir,
                                         script="echo building-now; echo ${src} > $out")
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    expected = run_nix(env, "nix-store", "--store", nix_store, "-q", "--outputs",
                       drv).stdout.strip()
    dry = run_nix(env, "nix-store", "--store", ours, "--realise", "--dry-run", drv)
    assert f"will be built:\n  {drv}" in dry.stderr  # query-missing
    proc = run_nix(env, "nix-store", "--store", ours, "--option", "sandbox", "false",
                   "--realise", drv)
    assert proc.stdout.strip() == expected
    assert "building-now" in proc.stderr  # the build log streamed to the client
    with LocalStore(store_dir, state_dir) as store:
        info = store.query_path_info(expected)
        assert info is not None and info.deriver == drv
        assert Path(expected).read_text().strip().startswith(store_dir)
    # Built once: realising again does not run the builder.
    again = run_nix(env, "nix-store", "--store", ours, "--realise", drv)
    assert again.stdout.strip() == expected and "building-now" not in again.stderr


def test_failed_build_is_an_error(tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir,
                                         script="echo about-to-fail; exit 3")
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    proc = run_nix(env, "nix-store", "--store", ours, "--realise", drv, check=False)
    assert proc.returncode != 0
    assert f"build of '{drv}' failed" in proc.stderr
    assert "about-to-fail" in proc.stderr


def test_gc_print_dead_and_delete(tmp_path: Path, store_dir: str, state_dir: str,
                                  daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir)
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    dead = run_nix(env, "nix-store", "--store", ours, "--gc", "--print-dead").stdout.split()
    assert run(["gc", "--dry-run"]) == 0
    local = [line for line in capsys.readouterr().out.splitlines() if line.startswith("/")]
    assert sorted(dead) == sorted(local) and drv in dead
    # An indirect root made through the daemon keeps its path; find-roots reports it.
    link = tmp_path / "links" / "result"
    link.parent.mkdir()
    src = run_nix(env, "nix-store", "--store", ours, "-q", "--references", drv).stdout.strip()
    run_nix(env, "nix-store", "--store", ours, "--realise", src, "--add-root", str(link),
            "--indirect")
    assert os.readlink(link) == src
    roots = run_nix(env, "nix-store", "--store", ours, "--gc", "--print-roots").stdout
    assert f"{link} -> {src}" in roots.splitlines()
    run_nix(env, "nix-store", "--store", ours, "--gc")
    with LocalStore(store_dir, state_dir) as store:
        assert not store.is_valid(drv)
        assert store.is_valid(src)
    assert not Path(drv).exists()
    link.unlink()  # the root is released with its link
    run_nix(env, "nix-store", "--store", ours, "--gc")
    assert not Path(src).exists()


def test_copies_need_a_trusted_signature_which_is_kept(
        tmp_path: Path, store_dir: str, state_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir)
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    out = run_nix(env, "nix-store", "--store", ours, "--realise", drv).stdout.strip()
    # The built output is input-addressed: elsewhere it needs a signature, or trust.
    other = tmp_path / "other"
    other.mkdir()
    other_store = nix_local_store(other, store_dir)
    run_nix(env, "nix", "copy", "--no-check-sigs", "--from", ours, "--to", other_store, out)
    keys = {}
    for name in ("k1", "k2"):
        sk, pk = tmp_path / f"{name}.sec", tmp_path / f"{name}.pub"
        run_nix(env, "nix-store", "--generate-binary-cache-key", name, str(sk), str(pk))
        keys[name] = (sk, pk.read_text().strip())
    run_nix(env, "nix", "store", "sign", "--store", other_store, "--key-file",
            str(keys["k1"][0]), out)
    run_nix(env, "nix-store", "--store", ours, "--delete", out)
    proc = run_nix(env, "nix", "copy", "--from", other_store, "--to", ours, out, check=False)
    assert proc.returncode != 0
    assert "lacks a signature by a trusted key" in proc.stderr
    with Daemon(str(tmp_path / "sock2"), "trusted-public-keys", keys["k1"][1]) as keyed:
        target = f"unix://{keyed.socket}"
        run_nix(env, "nix", "copy", "--from", other_store, "--to", target, out)
        info_ours, info_other = (
            json.loads(run_nix(env, "nix", "path-info", "--store", store, "--json",
                               out).stdout)[0] for store in (target, other_store))
        assert info_ours == info_other and info_ours["signatures"][0].startswith("k1:")
        # add-signatures (trusted users): a second signature joins the first.
        run_nix(env, "nix", "store", "sign", "--store", target, "--key-file",
                str(keys["k2"][0]), out)
        info = json.loads(run_nix(env, "nix", "path-info", "--store", target, "--json",
                                  out).stdout)[0]
        assert sorted(s.split(":")[0] for s in info["signatures"]) == ["k1", "k2"]
        # Signatures travel on: a Nix store trusting k2 accepts a copy out of ours.
        third = tmp_path / "third"
        third.mkdir()
        run_nix(env, "nix", "copy", "--option", "trusted-public-keys", keys["k2"][1],
                "--from", target, "--to", nix_local_store(third, store_dir), out)
        assert keyed.stop() == 0


@pytest.mark.slow
def test_sigterm_stops_an_inflight_build(tmp_path: Path, store_dir: str, state_dir: str) -> None:
    env = nix_env(tmp_path, store_dir)
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    nix_store, drv = _nix_store_with_drv(
        tmp_path, env, store_dir, script=f"echo started > {fifo}; exec sleep 600")
    d = Daemon(str(tmp_path / "sock" / "socket"))
    with d:
        ours = f"unix://{d.socket}"
        run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
        out = run_nix(env, "nix-store", "--store", ours, "-q", "--outputs", drv).stdout.strip()
        client = subprocess.Popen(["nix-store", "--store", ours, "--option", "sandbox", "false",
                                   "--realise", drv], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        with open(fifo) as f:  # the builder is running
            assert f.read().strip() == "started"
        assert d.stop() == 0
        _, err = client.communicate(timeout=60)
        assert client.returncode != 0
        assert "interrupted" in err
    with LocalStore(store_dir, state_dir) as store:
        assert not store.is_valid(out)
    assert not os.path.lexists(out)


@pytest.mark.slow
def test_client_hanging_up_stops_its_build(tmp_path: Path, store_dir: str,
                                           state_dir: str) -> None:
    env = nix_env(tmp_path, store_dir)
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    nix_store, drv = _nix_store_with_drv(
        tmp_path, env, store_dir, script=f"echo started > {fifo}; exec sleep 600")
    with Daemon(str(tmp_path / "sock" / "socket")) as d:
        ours = f"unix://{d.socket}"
        run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
        out = run_nix(env, "nix-store", "--store", ours, "-q", "--outputs", drv).stdout.strip()
        client = subprocess.Popen(["nix-store", "--store", ours, "--option", "sandbox", "false",
                                   "--realise", drv], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        with open(fifo) as f:
            assert f.read().strip() == "started"
        client.kill()
        client.wait()
        # The connection ends well before the builder's 600 s: its build was stopped.
        accepted = d.wait_for(f": pid {client.pid}, ")  # "connection N: pid P, user …"
        connection = accepted.split("connection ", 1)[1].split(":", 1)[0]
        d.wait_for(f"connection {connection} closed", timeout=60)
        with LocalStore(store_dir, state_dir) as store:
            assert not store.is_valid(out)
        assert not os.path.lexists(out)
        assert d.stop() == 0


def test_build_derivation_and_ensure_path(tmp_path: Path, store_dir: str, state_dir: str,
                                          daemon: Daemon) -> None:
    from runner.daemon.client import Client, DaemonError
    from runner.daemon.protocol import Op

    env = nix_env(tmp_path, store_dir)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir)
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    with LocalStore(store_dir, state_dir) as store:
        parsed = store.read_derivation(drv)
    out = parsed.outputs["out"].path
    with Client(daemon.socket).connect() as c:
        c.writer.u64(Op.ENSURE_PATH).text(out)
        with pytest.raises(DaemonError, match="is not valid"):
            c.process_stderr()
        # build-derivation sends the derivation inline, as remote builders do.
        c.writer.u64(Op.BUILD_DERIVATION).text(drv).u64(len(parsed.outputs))
        for name, o in sorted(parsed.outputs.items()):
            c.writer.text(name).text(o.path).text(o.hash_algo).text(o.hash)
        c.writer.texts(sorted(parsed.input_srcs)).text(parsed.system).text(parsed.builder)
        c.writer.texts(parsed.args).u64(len(parsed.env))
        for key, value in sorted(parsed.env.items()):
            c.writer.text(key).text(value)
        c.writer.u64(0)
        c.process_stderr()
        status, message = c.reader.u64(), c.reader.text()
        assert (status, message) == (0, "")  # Built
        times_built, _, start, stop = (c.reader.u64() for _ in range(4))
        assert times_built == 1 and stop >= start > 0
        built = {c.reader.text(): json.loads(c.reader.text()) for _ in range(c.reader.u64())}
        assert [v["outPath"] for v in built.values()] == [os.path.basename(out)]
        assert next(iter(built)).endswith("!out")
        c.writer.u64(Op.ENSURE_PATH).text(out)
        c.process_stderr()
        assert c.reader.u64() == 1


def test_nix_build_evaluates_and_builds_through_the_daemon(
        tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    """`nix build` writes its .drv files through add-to-store and reads the outputs from
    build-paths-with-results."""
    env = nix_env(tmp_path, store_dir)
    expr = tmp_path / "t.nix"
    expr.write_text('derivation { name = "t2"; system = builtins.currentSystem; '
                    'builder = "/bin/sh"; args = ["-c" "echo hi > $out"]; }')
    nix_store = nix_local_store(tmp_path, store_dir)
    drv = run_nix(env, "nix-instantiate", "--store", nix_store, str(expr)).stdout.strip()
    expected = run_nix(env, "nix-store", "--store", nix_store, "-q", "--outputs",
                       drv).stdout.strip()
    built = json.loads(run_nix(env, "nix", "build", "--store", f"unix://{daemon.socket}",
                               "-f", str(expr), "--json", "--no-link").stdout)
    assert built == [{"drvPath": drv, "outputs": {"out": expected}}]
    assert Path(expected).read_text() == "hi\n"


def test_ensure_path_substitutes_from_the_daemons_caches(tmp_path: Path, store_dir: str,
                                                        state_dir: str) -> None:
    env = nix_env(tmp_path, store_dir)
    nix_store = nix_local_store(tmp_path, store_dir)
    src = run_nix(env, "nix-store", "--store", nix_store, "--add",
                  str(_tree(tmp_path))).stdout.strip()
    cache = tmp_path / "cache"
    run_nix(env, "nix", "copy", "--to", f"file://{cache}?compression=none", "--from",
            nix_store, src)
    with Daemon(str(tmp_path / "socket"), "substituters", f"file://{cache}") as d:
        ours = f"unix://{d.socket}"
        dry = run_nix(env, "nix-store", "--store", ours, "--realise", "--dry-run", src)
        assert "will be fetched" in dry.stderr and src in dry.stderr  # query-missing
        missing = f"{store_dir}/{'5' * 32}-nowhere"
        proc = run_nix(env, "nix-store", "--store", ours, "--realise", missing, check=False)
        assert proc.returncode != 0 and "no substituter has it" in proc.stderr
        assert run_nix(env, "nix-store", "--store", ours, "--realise",
                       src).stdout.strip() == src
        with LocalStore(store_dir, state_dir) as store:
            assert store.is_valid(src)
        dump_ours, dump_nix = (run_nix(env, "nix-store", "--store", s, "--dump", src).stdout
                               for s in (ours, nix_store))
        assert dump_ours == dump_nix
        assert d.stop() == 0


@pytest.mark.slow
def test_concurrent_clients_build_one_derivation_once(tmp_path: Path, store_dir: str,
                                                      daemon: Daemon,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    env = nix_env(tmp_path, store_dir)
    counter = tmp_path / "runs"
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir,
                                         script=f"echo run >> {counter}; echo ${{src}} > $out")
    ours = f"unix://{daemon.socket}"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", ours, drv)
    clients = [subprocess.Popen(["nix-store", "--store", ours, "--option", "sandbox", "false",
                                 "--realise", drv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = {c.communicate(timeout=120)[0].strip() for c in clients}
    assert all(c.returncode == 0 for c in clients)
    assert len(outs) == 1 and Path(outs.pop()).exists()
    assert counter.read_text() == "run\n"  # the path lock made the others wait, not rebuild
    assert run(["store", "verify", "--check-contents"]) == 0
    assert "store is consistent" in capsys.readouterr().out


def test_verify_through_the_daemon(tmp_path: Path, store_dir: str, daemon: Daemon) -> None:
    env = nix_env(tmp_path, store_dir)
    ours = f"unix://{daemon.socket}"
    (tmp_path / "f").write_text("pristine")
    path = run_nix(env, "nix-store", "--store", ours, "--add", str(tmp_path / "f")).stdout.strip()
    run_nix(env, "nix-store", "--store", ours, "--verify", "--check-contents")
    os.chmod(path, 0o644)
    Path(path).write_text("tampered")
    proc = run_nix(env, "nix-store", "--store", ours, "--verify", "--check-contents",
                   check=False)
    assert proc.returncode != 0
    assert path in proc.stderr  # the daemon's findings reach the client


def test_ssh_ng_clients_reach_runner_daemon_stdio(tmp_path: Path, store_dir: str,
                                                  state_dir: str) -> None:
    """`nix copy --to ssh-ng://host` starts `<remote-program> --stdio` over ssh; here `ssh`
    is a stand-in that runs the remote command locally."""
    env = nix_env(tmp_path, store_dir)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text('#!/bin/bash\nexec bash -c "${@: -1}"\n')
    (bin_dir / "runner-remote").write_text(
        f'#!/bin/sh\nexec {sys.executable} -m runner daemon "$@"\n')
    for script in ("ssh", "runner-remote"):
        (bin_dir / script).chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    nix_store, drv = _nix_store_with_drv(tmp_path, env, store_dir)
    remote = f"ssh-ng://builder?remote-program={bin_dir / 'runner-remote'}&max-connections=1"
    run_nix(env, "nix", "copy", "--derivation", "--from", nix_store, "--to", remote, drv)
    with LocalStore(store_dir, state_dir) as store:
        assert store.is_valid(drv)
    info_ours, info_nix = (json.loads(run_nix(env, "nix", "path-info", "--derivation",
                                              "--store", s, "--json", "-r", drv).stdout)
                           for s in (remote, nix_store))
    assert info_ours == info_nix
