"""The build plan: stage hashes follow their inputs, so one change rebuilds only what depends on it."""

import shutil
import threading
import time

import pytest

from exitlat.build.builder import Builder, _cpu_seconds
from exitlat.build.cli import compare_builds
from exitlat.build.stages import STAGES, plan_build
from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT
from exitlat.build.pins import load_pins


@pytest.fixture
def tree(tmp_path):
    for st in STAGES:
        for rel in (st.script, *st.files):
            src = REPO_ROOT / rel
            dst = tmp_path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.exists():
                shutil.copy2(src, dst)
            else:  # guest files may not exist yet in a partial checkout
                dst.write_text("placeholder\n")
    (tmp_path / "docker").mkdir(exist_ok=True)
    shutil.copy2(REPO_ROOT / "docker/builder.Dockerfile", tmp_path / "docker/builder.Dockerfile")
    return tmp_path


def changed(before, after):
    return {k for k in before.stage_hashes if before.stage_hashes[k] != after.stage_hashes[k]}


def test_plan_is_stable(tree):
    pins = load_pins()
    assert plan_build(pins, tree).stage_hashes == plan_build(pins, tree).stage_hashes


def test_init_change_rebuilds_only_initramfs(tree):
    pins = load_pins()
    before = plan_build(pins, tree)
    (tree / "guest/init").write_text((tree / "guest/init").read_text() + "\n# changed\n")
    after = plan_build(pins, tree)
    assert changed(before, after) == {"initramfs"}
    assert before.build_hash != after.build_hash


def test_kernel_config_change_rebuilds_kernel_and_its_dependents(tree):
    pins = load_pins()
    before = plan_build(pins, tree)
    with open(tree / "kernel/exitlat.config", "a") as f:
        f.write("CONFIG_HZ_1000=y\n")
    assert changed(before, plan_build(pins, tree)) == {"kernel", "initramfs"}


def test_qemu_args_change_rebuilds_only_qemu(tree):
    pins = load_pins()
    before = plan_build(pins, tree)
    with open(tree / "qemu/configure.args", "a") as f:
        f.write("--enable-debug-info\n")
    assert changed(before, plan_build(pins, tree)) == {"qemu"}


def test_qemu_device_list_change_rebuilds_only_qemu(tree):
    pins = load_pins()
    before = plan_build(pins, tree)
    with open(tree / "qemu/devices-x86_64.mak", "a") as f:
        f.write("CONFIG_VIRTIO_RNG=y\n")
    assert changed(before, plan_build(pins, tree)) == {"qemu"}


def test_base_pin_change_rebuilds_everything(tree):
    pins = load_pins()
    base = dict(pins.raw["base"], digest=None)
    other = type(pins)(pins.path, dict(pins.raw, base=base))
    assert changed(plan_build(pins, tree), plan_build(other, tree)) == {s.name for s in STAGES}


def test_toolchain_pin_change_rebuilds_everything(tree, tmp_path):
    pins = load_pins()
    raw = dict(pins.raw, toolchain=dict(pins.raw["toolchain"], make="4.3-4.2"))
    other = type(pins)(pins.path, raw)
    assert changed(plan_build(pins, tree), plan_build(other, tree)) == {s.name for s in STAGES}


def test_missing_input_is_a_clear_error(tree):
    (tree / "guest/build-busybox.sh").unlink()
    with pytest.raises(ExitlatError, match="build input missing: guest/build-busybox.sh"):
        plan_build(load_pins(), tree)


def test_compare_builds_lists_differences(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "qemu/bin").mkdir(parents=True)
        (d / "bzImage").write_bytes(b"k")
        (d / "qemu/bin/x").write_bytes(b"q")
    (b / "qemu/bin/x").write_bytes(b"Q")
    (b / "extra").write_bytes(b"")
    assert compare_builds(a, b) == ["extra", "qemu/bin/x"]


# --- running the stages: overlap, order, failure ------------------------------------------------


class FakeStages(Builder):
    """A Builder whose stages only record when they ran (no Docker)."""

    def __init__(self, tmp_path, fail=None, slow=0.3):
        super().__init__(load_pins(), tmp_path)
        self.events, self.fail, self.slow = [], fail, slow
        self.lock = threading.Lock()
        self.cancelled = False

    def _run_stage(self, st, image):
        with self.lock:
            self.events.append(("start", st.name))
        deadline = time.monotonic() + (self.slow if st.name != "busybox" else self.slow / 3)
        while time.monotonic() < deadline and not self._cancel.is_set():
            time.sleep(0.01)
        if self._cancel.is_set():
            raise ExitlatError(f"stage {st.name}: stopped")
        if st.name == self.fail:
            raise ExitlatError(f"stage {st.name} failed")
        with self.lock:
            self.events.append(("end", st.name))

    def _cancel_all(self):
        self.cancelled = True
        super()._cancel_all()


def test_stages_overlap_and_wait_for_their_inputs(tmp_path):
    b = FakeStages(tmp_path)
    b._run_stages(list(STAGES), "image")
    ev = b.events
    starts = [n for kind, n in ev[:3]]
    assert sorted(starts) == ["busybox", "kernel", "qemu"], ev      # all three at once
    init = ev.index(("start", "initramfs"))
    assert ev.index(("end", "kernel")) < init and ev.index(("end", "busybox")) < init
    assert {n for kind, n in ev if kind == "end"} == {st.name for st in STAGES}


def test_only_needed_stages_run(tmp_path):
    b = FakeStages(tmp_path)
    b._run_stages([st for st in STAGES if st.name in ("initramfs", "qemu")], "image")
    assert {n for kind, n in b.events if kind == "start"} == {"initramfs", "qemu"}


def test_a_failed_stage_stops_the_others(tmp_path):
    b = FakeStages(tmp_path, fail="busybox", slow=5)
    t0 = time.monotonic()
    with pytest.raises(ExitlatError, match="stage busybox failed"):
        b._run_stages(list(STAGES), "image")
    assert b.cancelled and time.monotonic() - t0 < 4       # kernel and qemu did not run on
    assert ("start", "initramfs") not in b.events


def test_cpu_seconds_from_the_stage_log():
    assert _cpu_seconds(["CC x", "== cpu 5m2.500s 0m30.250s"]) == pytest.approx(332.75)
    assert _cpu_seconds(["no such line"]) is None


def test_a_killed_builds_temporary_folders_are_swept(tmp_path):
    """A build killed with -9 leaves `.tmp-<stage>-<pid>`: the next build removes those of dead
    processes and keeps a living build's (and its own)."""
    import os
    import subprocess

    from exitlat.build.builder import sweep_stale_tmp

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".tmp-kernel-0123456789abcdef-{dead.pid}"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "bzImage").write_bytes(b"half")
    living = tmp_path / ".tmp-qemu-0123456789abcdef-1"         # pid 1 always runs
    mine = tmp_path / f".tmp-initramfs-0123456789abcdef-{os.getpid()}"
    for d in (living, mine):
        d.mkdir()
    assert sweep_stale_tmp(tmp_path) == [stale]
    assert not stale.exists() and living.is_dir() and mine.is_dir()
