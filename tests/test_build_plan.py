"""The build plan: stage hashes follow their inputs, so one change rebuilds only what depends on it."""

import shutil

import pytest

from exitlat.build import STAGES, make_plan, compare_builds
from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT
from exitlat.pins import load_pins


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
    assert make_plan(pins, tree).stage_hashes == make_plan(pins, tree).stage_hashes


def test_init_change_rebuilds_only_initramfs(tree):
    pins = load_pins()
    before = make_plan(pins, tree)
    (tree / "guest/init").write_text((tree / "guest/init").read_text() + "\n# changed\n")
    after = make_plan(pins, tree)
    assert changed(before, after) == {"initramfs"}
    assert before.build_hash != after.build_hash


def test_kernel_config_change_rebuilds_kernel_and_its_dependents(tree):
    pins = load_pins()
    before = make_plan(pins, tree)
    with open(tree / "kernel/exitlat.config", "a") as f:
        f.write("CONFIG_HZ_1000=y\n")
    assert changed(before, make_plan(pins, tree)) == {"kernel", "initramfs"}


def test_qemu_args_change_rebuilds_only_qemu(tree):
    pins = load_pins()
    before = make_plan(pins, tree)
    with open(tree / "qemu/configure.args", "a") as f:
        f.write("--enable-debug-info\n")
    assert changed(before, make_plan(pins, tree)) == {"qemu"}


def test_toolchain_pin_change_rebuilds_everything(tree, tmp_path):
    pins = load_pins()
    raw = dict(pins.raw, toolchain=dict(pins.raw["toolchain"], make="4.3-4.2"))
    other = type(pins)(pins.path, raw)
    assert changed(make_plan(pins, tree), make_plan(other, tree)) == {s.name for s in STAGES}


def test_missing_input_is_a_clear_error(tree):
    (tree / "guest/build-busybox.sh").unlink()
    with pytest.raises(ExitlatError, match="build input missing: guest/build-busybox.sh"):
        make_plan(load_pins(), tree)


def test_compare_builds_lists_differences(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "qemu/bin").mkdir(parents=True)
        (d / "bzImage").write_bytes(b"k")
        (d / "qemu/bin/x").write_bytes(b"q")
    (b / "qemu/bin/x").write_bytes(b"Q")
    (b / "extra").write_bytes(b"")
    assert compare_builds(a, b) == ["extra", "qemu/bin/x"]
