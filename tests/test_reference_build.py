"""The reference's pin and stage: kvm-unit-tests identified by sha256 and by the git tree id of its
content (exitlat.build.gittree), so that a forge's own archive of the tag is accepted and a
tampered one is not; the vmexit.flat stage is planned like every other."""

import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from exitlat.build.gittree import tree_id
from exitlat.build.pins import DEFAULT_PINS, load_pins
from exitlat.build.sources import ChecksumMismatch, SourceFetcher
from exitlat.build.stages import ARTIFACTS, STAGES, plan_build
from exitlat.paths import REPO_ROOT

MIRROR = REPO_ROOT.parent / "shared" / "mirror"
PIN = load_pins().source("kvm-unit-tests")


def _tar(path: Path, files: dict, prefix="kut-1/", mtime=0, level=9) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(prefix.rstrip("/"))
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, mtime
        tar.addfile(d)
        for name, (data, mode) in files.items():
            if mode == "link":
                info = tarfile.TarInfo(prefix + name)
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, data, mtime
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode, info.mtime = len(data), mode, mtime
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=level, mtime=mtime))
    return path


FILES = {"Makefile": (b"all:\n", 0o644), "x86/vmexit.c": (b"int main(void){}\n", 0o644),
         "configure": (b"#!/bin/sh\n", 0o755), "x86/link": ("vmexit.c", "link"),
         "lib/a-b.h": (b"1\n", 0o644), "lib/a/b.h": (b"2\n", 0o644)}


def _git_tree(tmp_path: Path, files: dict) -> str:
    """What git itself says the tree id of these files is (ground truth for tree_id)."""
    repo = tmp_path / "git"
    for name, (data, mode) in files.items():
        p = repo / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if mode == "link":
            p.symlink_to(data)
        else:
            p.write_bytes(data)
            p.chmod(mode)
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True,
                                    text=True).stdout.strip()
    run("init", "-q")
    run("add", "-A")
    return run("write-tree")


def test_tree_id_is_git_s(tmp_path):
    want = _git_tree(tmp_path, FILES)
    assert tree_id(_tar(tmp_path / "a.tar.gz", FILES)) == want
    # another archiver's bytes (other mtimes, compression, prefix): the same content, the same id
    other = _tar(tmp_path / "b.tar.gz", FILES, prefix="kvm-unit-tests-v1/", mtime=12345, level=1)
    assert other.read_bytes() != (tmp_path / "a.tar.gz").read_bytes()
    assert tree_id(other) == want


@pytest.mark.skipif(not (MIRROR / PIN.file).is_file(), reason="no shared mirror here")
def test_the_pinned_archive_has_the_pinned_tree():
    assert tree_id(MIRROR / PIN.file) == PIN.git_tree == "797f7f8b386a6962299d0ea5d4278b87ff8b8e98"


def _pins_with(tmp_path: Path, url: str, tree: str) -> Path:
    raw = yaml.safe_load(DEFAULT_PINS.read_text())
    raw["sources"]["kvm-unit-tests"].update(urls=[url], git_tree=tree)
    p = tmp_path / "pins.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_forge_archive_of_the_same_tree_is_accepted(tmp_path):
    tree = _git_tree(tmp_path, FILES)
    forge = _tar(tmp_path / "forge.tar.gz", FILES, mtime=999)   # not the pinned sha256
    pins = load_pins(_pins_with(tmp_path, f"file://{forge}", tree))
    got = SourceFetcher(pins, cache=tmp_path / "cache", use_network=True,
                        log=lambda *_: None).fetch(pins.source("kvm-unit-tests"))
    assert got.provider == "upstream" and "content: git tree" in got.origin
    # the cached copy is trusted again by its content
    again = SourceFetcher(pins, cache=tmp_path / "cache", log=lambda *_: None).fetch(
        pins.source("kvm-unit-tests"))
    assert again.provider == "cache"


def test_a_tampered_archive_is_refused_in_one_line(tmp_path):
    tree = _git_tree(tmp_path, FILES)
    bad = dict(FILES, **{"x86/vmexit.c": (b"int main(void){return 1;}\n", 0o644)})
    forge = _tar(tmp_path / "forge.tar.gz", bad)
    pins = load_pins(_pins_with(tmp_path, f"file://{forge}", tree))
    with pytest.raises(ChecksumMismatch) as err:
        SourceFetcher(pins, cache=tmp_path / "cache", log=lambda *_: None).fetch(
            pins.source("kvm-unit-tests"))
    assert "content mismatch" in str(err.value) and "\n" not in str(err.value)


def test_the_mirror_needs_the_exact_bytes(tmp_path):
    """A mirror folder serves the pinned file: other bytes are refused even with the same tree."""
    tree = _git_tree(tmp_path, FILES)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _tar(mirror / PIN.file, FILES, mtime=5)
    raw = yaml.safe_load(DEFAULT_PINS.read_text())
    raw["sources"]["kvm-unit-tests"].update(urls=[], git_tree=tree)
    (tmp_path / "pins.yaml").write_text(yaml.safe_dump(raw))
    pins = load_pins(tmp_path / "pins.yaml")
    with pytest.raises(ChecksumMismatch, match="mirror: checksum mismatch"):
        SourceFetcher(pins, mirror=mirror, cache=tmp_path / "cache", use_network=False,
                      log=lambda *_: None).fetch(pins.source("kvm-unit-tests"))


def test_the_reference_stage_is_planned_and_hashed():
    st = next(s for s in STAGES if s.name == "reference")
    assert st.sources == {"kvm-unit-tests": "kvm-unit-tests.tar.gz"} and not st.deps
    assert ("reference", "vmexit.flat") in ARTIFACTS
    plan = plan_build(load_pins())
    assert len(plan.stage_hashes["reference"]) >= 12


@pytest.mark.slow
def test_the_build_holds_vmexit_flat_and_the_project_qemu_runs_it():
    """`invoke build` (the mirror first where there is one) puts vmexit.flat, hashed, in the build
    folder with kvm-unit-tests' identity in the manifest; the project's slim QEMU boots it with
    isa-debug-exit (TCG here: the chain, not a cost) and it prints its cpuid figure."""
    import json
    from types import SimpleNamespace

    from cli_support import invoke
    from exitlat.build.sources import sha256_file
    from exitlat.reference.runner import SUCCESS_CODE, run_vm

    args = ["build"] + (["--mirror", str(MIRROR)] if (MIRROR / PIN.file).is_file() else [])
    res = invoke(*args, timeout=3600)
    assert res.returncode == 0, res.stderr[-2000:]
    folder = Path(res.stdout.strip().splitlines()[-1])
    m = json.loads((folder / "manifest.json").read_text())
    assert m["artifacts"]["vmexit.flat"] == sha256_file(folder / "vmexit.flat")
    assert m["versions"]["kvm_unit_tests"]["git_tree"] == PIN.git_tree
    assert m["providers"]["kvm-unit-tests"]["sha256"] == PIN.sha256
    plan = SimpleNamespace(build=folder, accel="tcg", core=0, housekeeping=0, verifying=False,
                           options=SimpleNamespace(container=False, boot_timeout=None, tracing="auto"))
    vm = run_vm(plan, "timed", ["cpuid"], print)
    assert vm.status == "complete", vm.reason
    assert vm.exit_code == SUCCESS_CODE and vm.values["cpuid"] > 0
    assert b"enabling apic" in vm.serial
