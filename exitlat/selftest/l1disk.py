"""What travels into L1 and back. In: per run, a second newc archive appended to the cached L1
initramfs (the kernel unpacks concatenated archives in order): /init, the exitlat package and
pins.yaml under /exitlat, the built guest folder under /exitlat/build/<hash>, and the run's
configuration. Back: the tar that L1 wrote to its raw output disk."""

from __future__ import annotations

import json
import py_compile
import shutil
import struct
import sys
import tarfile
import tempfile
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT

from .cpio import CpioWriter
from .protocol import CONFIG_PATH, DISK_BYTES, DISK_MAGIC, L1_REPO, MARK
def render_init(modules: list[str], kvm_module: str = "kvm_amd") -> str:
    """L1's /init (POSIX sh): mounts, modules in order, the selftest, power off. Every step says
    what it does on the console; a failure is one `exitlat-l1: error: ...` line."""
    mods = " ".join(f"/{m}" for m in modules)
    return f"""#!/bin/sh
# L1's /init, written by exitlat/selftest/host.py for one run.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 TZ=UTC PYTHONPATH={L1_REPO}
say() {{ echo "{MARK} $*"; }}
off() {{ sync; echo o > /proc/sysrq-trigger; sleep 60; }}
fail() {{ say "error: $*"; off; }}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tracefs tracefs /sys/kernel/tracing || fail "cannot mount tracefs"
say "init $(cut -d' ' -f1 /proc/uptime)"
for m in {mods}; do
    out=$(insmod "$m" 2>&1) || fail "modules failed to load: $(basename "$m"): $out"
done
[ -c /dev/kvm ] || fail "modules failed to load: no /dev/kvm after {kvm_module} ($(dmesg 2>/dev/null | grep -i -m2 -e kvm -e svm -e vmx | tr '\\n' ' '))"
say "modules ok $(cut -d' ' -f1 /proc/uptime)"
cd {L1_REPO}
python3 -m exitlat.selftest.inner {CONFIG_PATH}
say "exit $? $(cut -d' ' -f1 /proc/uptime)"
sleep 0.2    # the UART drains the line before the power-off's printk (Bochs's is slow)
off
"""


def _pyc_ok() -> bool:
    """Byte-compile here only when this Python writes the bytecode L1's Python 3.11 reads."""
    return sys.version_info[:2] == (3, 11)


def write_run_archive(out, build: Path, modules: list[str], config: dict,
                      repo: Path = REPO_ROOT, kvm_module: str = "kvm_amd") -> int:
    """The per-run newc archive, written to the binary stream `out`; returns its size."""
    w = CpioWriter(out)
    w.add_bytes("init", render_init(modules, kvm_module).encode(), 0o755)
    w.add_dir("etc")
    w.add_bytes(CONFIG_PATH.lstrip("/"), json.dumps(config, indent=1).encode())
    w.add_dir(L1_REPO.lstrip("/"))
    w.add_file(f"{L1_REPO.lstrip('/')}/pins.yaml", repo / "pins.yaml", mode=0o644)
    pkg = repo / "exitlat"
    with tempfile.TemporaryDirectory(prefix="exitlat-pyc-") as tmp:
        def skip(p: Path) -> bool:
            return "__pycache__" in p.parts or p.suffix in (".pyc", ".pyo")

        w.add_tree(f"{L1_REPO.lstrip('/')}/exitlat", pkg, skip=skip)
        if _pyc_ok():   # L1 runs under TCG: compiling every module at each boot costs seconds
            for src in sorted(pkg.rglob("*.py")):
                if skip(src):
                    continue
                rel = src.relative_to(pkg)
                pyc = Path(tmp) / rel.parent / "__pycache__" / f"{src.stem}.cpython-311.pyc"
                pyc.parent.mkdir(parents=True, exist_ok=True)
                py_compile.compile(str(src), str(pyc), dfile=f"{L1_REPO}/exitlat/{rel}", doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            for d in sorted({p.parent for p in Path(tmp).rglob("*.pyc")}):
                w.add_dir(f"{L1_REPO.lstrip('/')}/exitlat/{d.relative_to(tmp).as_posix()}")
            for pyc in sorted(Path(tmp).rglob("*.pyc")):
                w.add_file(f"{L1_REPO.lstrip('/')}/exitlat/{pyc.relative_to(tmp).as_posix()}", pyc,
                           mode=0o644)
    w.add_dir(f"{L1_REPO.lstrip('/')}/build")
    w.add_tree(f"{L1_REPO.lstrip('/')}/build/{build.name}", build)
    w.close()
    return w.size


def l1_build_path(build: Path) -> str:
    return f"{L1_REPO}/build/{build.name}"


def read_output_disk(disk: Path, dest: Path) -> list[str]:
    """Unpack what L1 wrote to the raw disk (magic, length, tar) into dest; returns the names."""
    with open(disk, "rb") as f:
        head = f.read(len(DISK_MAGIC) + 8)
        if head[: len(DISK_MAGIC)] != DISK_MAGIC:
            raise ExitlatError("L1 wrote nothing to its output disk (no results header)")
        (length,) = struct.unpack("<Q", head[len(DISK_MAGIC):])
        if not 0 < length <= DISK_BYTES - len(head):
            raise ExitlatError(f"L1's output disk has a bad length ({length})")
        data = f.read(length)
    if len(data) != length:
        raise ExitlatError("L1's output disk is truncated")
    import io

    names = []
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.name.startswith("/") or ".." in parts:
                raise ExitlatError(f"L1's output has an unsafe path: {m.name!r}")
            if m.isdir():
                (dest / m.name).mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                (dest / m.name).parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(dest / m.name, "wb") as out:
                    shutil.copyfileobj(src, out)
                names.append(m.name)
    return names
