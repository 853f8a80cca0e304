"""What `invoke build` makes, and from what: the stages (kernel, busybox, initramfs, qemu, and
kvm-unit-tests' vmexit.flat as the reference), the
files and pinned sources each reads, and the hashes that name their folders.

Each stage runs one script from this repository inside the builder image. A stage's folder is
named by the hash of everything it reads (its script and files, the pinned sources, the stages it
uses, the builder image's recipe), so changing one input rebuilds only what depends on it. The
plan is computed from the inputs alone: no Docker, no network."""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT, build_root

from . import guestgen
from .images import base_tag, short_hash
from .pins import Pins, load_pins
BUILD_FORMAT = 1


# Files copied from stage outputs into the final build folder: (stage, path in its out/).
ARTIFACTS = [
    ("kernel", "bzImage"), ("kernel", "kernel.config"), ("kernel", "kernel.release"),
    ("busybox", "busybox"), ("busybox", "busybox.version"),
    ("initramfs", "initramfs.cpio.gz"), ("initramfs", "initramfs.list"),
    ("initramfs", "exitlat-probe"), ("initramfs", "exitlat.ko"),
    ("qemu", "qemu"), ("qemu", "qemu.version"),
    ("reference", "vmexit.flat"), ("reference", "kvm-unit-tests.config"),
]


@dataclass(frozen=True)
class Stage:
    name: str
    script: str                    # run as `bash /repo/<script>` in the builder image
    files: tuple[str, ...]         # repository paths (files or folders) the stage reads
    sources: dict = field(default_factory=dict)   # pin name -> name under /sources
    deps: tuple[str, ...] = ()     # stages whose outputs it mounts
    keeps_tree: bool = False       # the kernel keeps its tree for the module build
    generated: tuple[str, ...] = ()  # files written from the Python side into /stage/gen
    #                                  (exitlat.build.guestgen), hashed like every other input


STAGES = [
    Stage("kernel", "kernel/build.sh", ("kernel",), {"linux": "linux.tar"}, keeps_tree=True),
    Stage("busybox", "guest/build-busybox.sh", ("guest/build-busybox.sh", "guest/busybox.config"),
          {"busybox": "busybox.tar"}),
    Stage("initramfs", "guest/build-initramfs.sh",
          ("guest/build-initramfs.sh", "guest/init", "guest/probe", "guest/module"),
          deps=("kernel", "busybox"), generated=(guestgen.HEADER,)),
    Stage("qemu", "qemu/build.sh", ("qemu",),
          {"qemu": "qemu.tar", "seabios": "seabios.deb", "qemu-firmware": "qemu-firmware.deb",
           "meson-wheel": "meson-1.5.0-py3-none-any.whl",
           "pycotap-wheel": "pycotap-1.3.1-py3-none-any.whl"}),
    # kvm-unit-tests' x86/vmexit.flat, the reference beside the cases (exitlat/reference/).
    Stage("reference", "reference/build.sh", ("reference/build.sh",),
          {"kvm-unit-tests": "kvm-unit-tests.tar.gz"}),
]


def _hash_paths(paths, root: Path = REPO_ROOT) -> str:
    """sha256 over the names, modes and contents of files (folders walked in sorted order)."""
    h = hashlib.sha256()
    for rel in paths:
        p = root / rel
        if not p.exists():
            raise ExitlatError(f"build input missing: {rel}")
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            if "__pycache__" in f.parts or f.name.startswith(".") or _is_build_product(f):
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(b"x" if os.access(f, os.X_OK) else b"-")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def _is_build_product(f: Path) -> bool:
    return f.suffix in {".o", ".ko", ".mod", ".cmd", ".symvers", ".order"} or f.name in {
        "exitlat-probe", "exitlat.mod.c"}


@dataclass
class BuildPlan:
    """Every stage's hash, computed from the inputs alone (no Docker, no network)."""
    pins: Pins
    builder_key: str
    stage_hashes: dict[str, str]

    @property
    def build_hash(self) -> str:
        return short_hash(BUILD_FORMAT, self.builder_key, self.stage_hashes)


def builder_packages(pins: Pins) -> str:
    return " ".join(f"{name}={ver}" for name, ver in sorted(pins.toolchain.items()))


def generated_inputs(st: Stage) -> dict[str, str]:
    """The generated files `st` reads, name -> text: what the builder writes into /stage/gen."""
    files = guestgen.generated_files()
    return {name: files[name] for name in st.generated}


def plan_build(pins: Pins, root: Path = REPO_ROOT) -> BuildPlan:
    dockerfile = (root / "docker/builder.Dockerfile").read_bytes()
    builder_key = short_hash(dockerfile, pins.base, builder_packages(pins))
    hashes: dict[str, str] = {}
    for st in STAGES:
        srcs = {n: pins.source(n).sha256 for n in sorted(st.sources)}
        deps = {d: hashes[d] for d in st.deps}
        inputs = [st.name, st.script, _hash_paths((st.script, *st.files), root),
                  srcs, deps, builder_key, pins.source_date_epoch]
        if st.generated:
            inputs.append(generated_inputs(st))
        hashes[st.name] = short_hash(*inputs)
    return BuildPlan(pins, builder_key, hashes)


def find_build(pins_path=None) -> Path | None:
    """The finished build folder for the current inputs, or None."""
    plan = plan_build(load_pins(pins_path))
    folder = build_root() / plan.build_hash
    return folder if (folder / "manifest.json").is_file() else None


def base_tag_of(pins: Pins) -> str:
    return base_tag(pins.base)
