"""Remote builds against tier 1: buildbox-casd with buildbox-run (bubblewrap)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.build.result import Status
from runner.cli.main import run
from runner.errors import RunnerError
from runner.remote import driver
from runner.remote.executor import RemoteExecutor, RemoteOptions, RemoteResult
from runner.settings import Settings
from runner.spec import instantiate, load_spec
from runner.store.local_store import LocalStore, open_store
from tests.remote_builds import wipe_store
from tests.remote_endpoints import descendants
from tests.remote_server import Casd, start_casd, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None,
                                reason=f"tier-1 REAPI server unavailable: {unavailable()}")

EMPTY_SHA256_SRI = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


@pytest.fixture(scope="module")
def casd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Casd]:
    server = start_casd(tmp_path_factory.mktemp("casd"), tcp=True)
    yield server
    server.stop()


@pytest.fixture
def settings(isolated_env: Path) -> Settings:
    return Settings.load()


def write_spec(tmp_path: Path, body: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\ndefaults:\n  builder: /bin/sh\n" + body)
    return str(path)


def realise(url: str, settings: Settings, spec: str,
            options: RemoteOptions | None = None) -> dict[str, RemoteResult]:
    with open_store(settings) as store, RemoteExecutor(url, settings, options) as executor:
        top = instantiate(load_spec(spec), store)
        return driver.realise(executor, store, [i.drv_path for i in top.values()])


def output_infos(settings: Settings, results: dict[str, RemoteResult]
                 ) -> dict[str, tuple[str, frozenset[str]]]:
    with LocalStore(settings.store_dir, settings.state_dir) as store:
        found = {}
        for result in results.values():
            for path in result.outputs.values():
                info = store.query_path_info(path)
                assert info is not None, path
                found[path] = (info.nar_hash.sri(), info.references)
        return found


def pipeline_spec(tmp_path: Path) -> str:
    """31 small derivations: files, trees with references, executables and symlinks,
    several outputs, a fixed output and pass-as-file."""
    lines = ["derivations:"]
    for i in range(10):
        lines += [f"  leaf{i}:", f"    args: ['-c', 'echo leaf {i} > $out']"]
    for i in range(10):
        a, b = f"${{{{ leaf{i} }}}}", f"${{{{ leaf{(i + 1) % 10} }}}}"
        script = (f"mkdir -p $out/bin; echo {a} > $out/refs; cat {a} {b} > $out/data; "
                  "printf \"#!/bin/sh\\necho run\\n\" > $out/bin/run; chmod +x $out/bin/run; "
                  f"ln -s {a} $out/link")
        lines += [f"  mid{i}:", f"    args: ['-c', '{script}']"]
    for i in range(8):
        m, n = f"${{{{ mid{i} }}}}", f"${{{{ mid{i + 1} }}}}"
        script = (f"cat {m}/data {n}/data > $out; {m}/bin/run >> $out; "
                  f"mkdir $doc; echo {n} > $doc/see-also")
        lines += [f"  top{i}:", "    outputs: [out, doc]", f"    args: ['-c', '{script}']"]
    lines += ["  fetched:", "    args: ['-c', ': > $out']",
              f"    output-hash: {EMPTY_SHA256_SRI}", "    output-hash-mode: flat",
              "  attrs:", "    pass-as-file: [blob]", "    env: {blob: 'passed as a file'}",
              "    args: ['-c', 'cp $blobPath $out']",
              "  all:", "    args: ['-c', 'echo " + " ".join(
                  [f"${{{{ top{i}.doc }}}}" for i in range(8)]
                  + ["${{ fetched }}", "${{ attrs }}"]) + " > $out']"]
    return write_spec(tmp_path, "\n".join(lines) + "\n")


@pytest.mark.slow
def test_pipeline_matches_local_build_and_comes_back_from_the_action_cache(
        casd: Casd, settings: Settings, tmp_path: Path) -> None:
    spec = pipeline_spec(tmp_path)
    remote = realise(casd.url, settings, spec)
    assert len(remote) == 31
    assert {r.status for r in remote.values()} == {Status.BUILT}, [
        (r.message, r.log) for r in remote.values() if r.status is not Status.BUILT]
    remote_infos = output_infos(settings, remote)
    assert len(remote_infos) == 39  # 8 derivations have two outputs

    wipe_store(settings.store_dir, settings.state_dir)
    assert run(["build", "--sandbox=off", "--no-out-link", spec]) == 0
    assert output_infos(settings, remote) == remote_infos  # paths, NAR hashes, references

    wipe_store(settings.store_dir, settings.state_dir)
    again = realise(casd.url, settings, spec)
    assert {r.status for r in again.values()} == {Status.SUBSTITUTED}
    assert output_infos(settings, again) == remote_infos


def test_outputs_are_what_the_builder_made(casd: Casd, settings: Settings,
                                           tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """derivations:
  leaf:
    args: ['-c', 'echo leaf > $out']
  tree:
    outputs: [out, doc]
    args: ['-c', 'mkdir -p $out/bin $doc; printf "#!/bin/sh\\necho ran\\n" > $out/bin/run;
      chmod +x $out/bin/run; ln -s ${{ leaf }} $out/link; cp ${{ leaf }} $doc/copy;
      echo $NIX_BUILD_TOP $PWD $(pwd) $HOME $(id -u) $(id -g) > $out/env; ls / > $out/root']
""")
    results = realise(casd.url, settings, spec)
    tree = next(r for r in results.values() if "tree" in r.outputs["out"])
    assert tree.status is Status.BUILT, tree.log
    out, doc = tree.outputs["out"], tree.outputs["doc"]
    leaf = next(r for r in results.values() if r.outputs["out"].endswith("-leaf"))
    assert os.readlink(f"{out}/link") == leaf.outputs["out"]
    assert os.access(f"{out}/bin/run", os.X_OK)
    assert not os.access(f"{doc}/copy", os.X_OK)
    assert Path(f"{out}/env").read_text().split() == [
        "/build", "/build", "/build", "/homeless-shelter", "1000", "100"]
    with open_store(settings) as store:
        info = store.query_path_info(out)
        assert info is not None and info.references == {leaf.outputs["out"]}


def test_failing_build_shows_its_log(casd: Casd, settings: Settings, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """derivations:
  bad:
    args: ['-c', 'echo first line; echo to stderr >&2; exit 3']
""")
    (result,) = realise(casd.url, settings, spec).values()
    assert result.status is Status.FAILED
    assert result.exit_code == 3
    assert "exit code 3" in result.message
    assert result.log_tail(5) == ["first line", "to stderr"]
    with open_store(settings) as store:
        assert not store.is_valid(result.outputs["out"])
    assert not os.path.lexists(result.outputs["out"])


def test_fixed_output_hash_is_checked_locally(casd: Casd, settings: Settings,
                                              tmp_path: Path) -> None:
    spec = write_spec(tmp_path, f"""derivations:
  wrong:
    args: ['-c', 'echo not empty > $out']
    output-hash: {EMPTY_SHA256_SRI}
    output-hash-mode: flat
""")
    (result,) = realise(casd.url, settings, spec).values()
    assert result.status is Status.HASH_MISMATCH
    assert "hash mismatch" in result.message
    with open_store(settings) as store:
        assert not store.is_valid(result.outputs["out"])


def test_derivations_that_need_the_host_are_refused(casd: Casd, settings: Settings,
                                                    tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """derivations:
  local:
    args: ['-c', 'echo > $out']
    prefer-local-build: true
""")
    with pytest.raises(RunnerError) as e:
        realise(casd.url, settings, spec)
    assert e.value.reason == "remote-unsupported"


def test_remote_check_command(casd: Casd, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["remote", "check", casd.url]) == 0
    out = capsys.readouterr().out
    assert "execution: enabled" in out
    assert "trivial action" in out and "ok in" in out


@pytest.mark.timeout(90)
def test_server_killed_mid_build_fails_clearly(settings: Settings, tmp_path: Path) -> None:
    server = start_casd(tmp_path / "casd")
    spec = write_spec(tmp_path, """derivations:
  slow:
    args: ['-c', 'sleep 300; echo > $out']
""")
    outcome: list[BaseException | dict[str, RemoteResult]] = []

    def build() -> None:
        try:
            outcome.append(realise(server.url, settings, spec))
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=build)
    thread.start()
    try:
        # Wait (bounded by the test timeout) until the builder runs on the server.
        while not any("sleep 300" in c for c in descendants(server.proc.pid)):
            assert thread.is_alive(), outcome
            thread.join(0.05)
        server.kill_all()
        thread.join()
    finally:
        server.stop(signal.SIGKILL)
    (error,) = outcome
    assert isinstance(error, RunnerError), error
    assert error.reason == "remote-unavailable"
    assert server.url in error.message


def test_large_blobs_go_over_bytestream(casd: Casd, settings: Settings,
                                        tmp_path: Path) -> None:
    # 3 MiB: above the 2 MiB batch limit on the way up and 256 KiB on the way down.
    big = os.urandom(3 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(big)
    spec = write_spec(tmp_path, """inputs:
  big: ./big.bin
derivations:
  copy:
    args: ['-c', 'cat ${{ big }} ${{ big }} > $out']
""")
    (result,) = realise(casd.url, settings, spec).values()
    assert result.status is Status.BUILT, result.log
    assert Path(result.outputs["out"]).read_bytes() == big + big
