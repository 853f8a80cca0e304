"""The L1 image of the emulated hosts, one per L1 kernel series: a pinned Debian cloud kernel
(vmlinuz) and an uncompressed newc initramfs holding the L1 userland (docker/l1.Dockerfile: Python
and exitlat's runtime dependencies) plus the kernel modules each vendor's L1 loads: the ones
pins.yaml names (the output disk's driver, kvm-amd or kvm-intel) and their dependencies, read from
each module's .modinfo in the package itself (as modprobe would), minus those the kernel has built
in. So the same pins work for a 6.1 kernel, where virtio is modular, and a 6.12 one, where it is not.

Cached like every build stage: the folder `build/emulated-host/l1-<key>/` is named by the hash of
everything it is made from (the Dockerfile, the base pin, the package pins, the kernel package's
sha256 and module list, and this code), made under a temporary name and renamed when complete.
Its manifest records what went in, the load order per vendor, and how long the build took.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import struct
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.build.images import (DOCKER_DIR, ChunkReader, build_image, docker_client,
                      short_hash)
from exitlat.build.baseimage import ensure_base_image
from exitlat.paths import build_root
from exitlat.build.pins import Pins, load_pins
from exitlat.progress import Progress, fmt_duration
from exitlat.build.sources import SourceFetcher, sha256_file
from .cpio import CpioWriter

IMAGE_FORMAT = 2
DOCKERFILE = "l1.Dockerfile"
# Not copied from the exported container into the initramfs (L1 makes /dev, /proc, /sys itself).
_SKIP_TOP = ("dev/", "proc/", "sys/", "run/", "tmp/")
_SKIP_FILES = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf"}


@dataclass(frozen=True)
class L1Image:
    folder: Path
    key: str
    manifest: dict
    built_now: bool

    @property
    def vmlinuz(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.folder / "l1.cpio"

    @property
    def kernel_release(self) -> str:
        return self.manifest["kernel_release"]

    @property
    def build_s(self) -> float:
        return float(self.manifest.get("build_s", 0.0))


def packages_arg(packages: dict[str, str]) -> str:
    return " ".join(f"{name}={ver}" for name, ver in sorted(packages.items()))


def userland_key(pins: Pins) -> str:
    """The hash of the L1 userland's inputs: its Docker image is shared by every kernel series."""
    return short_hash(IMAGE_FORMAT, (DOCKER_DIR / DOCKERFILE).read_bytes(), pins.base,
                      packages_arg(pins.emulated_host.packages))


def image_key(pins: Pins, series: str | None = None) -> str:
    """The hash of every input of the L1 image of a kernel series (no Docker, no network)."""
    eh = pins.emulated_host
    here = Path(__file__).parent
    return short_hash(userland_key(pins), eh.kernel(series).sha256,
                      {v: list(m) for v, m in sorted(eh.modules.items())},
                      (here / "image.py").read_bytes(), (here / "cpio.py").read_bytes())


def image_root() -> Path:
    return build_root() / "emulated-host"


def find_image(pins: Pins | None = None, series: str | None = None) -> L1Image | None:
    pins = pins or load_pins()
    key = image_key(pins, series)
    folder = image_root() / f"l1-{key}"
    if not (folder / "manifest.json").is_file():
        return None
    return L1Image(folder, key, json.loads((folder / "manifest.json").read_text()), False)


class _LogTee:
    """A file-like object for build_image's log: every line goes to the file, and a heartbeat
    line (at most every 20 s) shows that a long image build is alive."""

    def __init__(self, f, progress: Progress, what: str):
        self.f, self.progress, self.what = f, progress, what
        self.t0 = time.monotonic()
        self.state: dict = {}
        self.last = ""

    def write(self, text: str) -> None:
        self.f.write(text)
        if text.strip():
            self.last = text.strip().splitlines()[-1]
        self.progress.heartbeat(self.what, self.t0, self.last, self.state)

    def flush(self) -> None:
        self.f.flush()


def _deb_data_members(deb: Path):
    """Stream the members of a Debian binary package's data.tar.*: yields (TarInfo, file object
    or None), in one pass (the .deb reader the base image uses)."""
    from exitlat.build.debs import deb_data

    with deb_data(deb) as tar:
        for m in tar:
            yield m, (tar.extractfile(m) if m.isfile() else None)


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The .modinfo section of a kernel module (ELF64 little endian): {key: [values]}."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ExitlatError("not a 64-bit little-endian ELF kernel module")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        return name, off, size

    _n, str_off, _s = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = ko.index(b"\0", str_off + name)
        if ko[str_off + name:end] == b".modinfo":
            out: dict[str, list[str]] = {}
            for item in ko[off:off + size].split(b"\0"):
                key, eq, value = item.decode("utf-8", "replace").partition("=")
                if eq:
                    out.setdefault(key, []).append(value)
            return out
    raise ExitlatError("kernel module without a .modinfo section")


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return ""


def load_order(wanted, modules: dict[str, bytes], builtin: set[str]) -> list[str]:
    """The modules to load for `wanted`, each after the modules its .modinfo `depends` names (as
    modprobe would, from the package itself); built-in ones are left out. Names use '_'.
    modules: {name: the .ko's bytes}; an unknown module is one line."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin or state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ExitlatError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in modules:
            need = f" (needed by {chain[-1]})" if chain else ""
            raise ExitlatError(f"the kernel package has no module {name}{need} and does not build "
                               "it in (pins.yaml emulated_host.modules)")
        state[name] = "visiting"
        for dep in ",".join(modinfo(modules[name]).get("depends", [""])).split(","):
            if dep.strip():
                visit(dep.strip().replace("-", "_"), chain + (name,))
        state[name] = "done"
        order.append(name)

    for w in wanted:
        visit(w.replace("-", "_"), ())
    return order


def extract_kernel(deb: Path, wanted: dict[str, tuple[str, ...]], dest: Path
                   ) -> tuple[str, dict[str, list[Path]]]:
    """vmlinuz and, for each vendor, the modules it wants plus their dependencies (decompressed to
    .ko, so L1 needs no xz support) from the kernel package. Returns (kernel release,
    {vendor: module paths relative to dest, in load order})."""
    raw: dict[str, tuple[str, bytes]] = {}       # name -> (path in the package, bytes as packed)
    builtin: set[str] = set()
    releases = set()
    dest.mkdir(parents=True, exist_ok=True)
    for m, f in _deb_data_members(deb):
        name = m.name.removeprefix("./")
        if f is None:
            continue
        if name.startswith("boot/vmlinuz-"):
            releases.add(name.removeprefix("boot/vmlinuz-"))
            with open(dest / "vmlinuz", "wb") as out:
                shutil.copyfileobj(f, out)
            continue
        if not name.startswith("lib/modules/") and not name.startswith("usr/lib/modules/"):
            continue
        if name.endswith("/modules.builtin"):
            builtin |= {_mod_name(line.strip()) for line in f.read().decode().splitlines()
                        if line.strip()}
        elif _mod_name(name):
            raw[_mod_name(name)] = (name, f.read())
    if len(releases) != 1 or not (dest / "vmlinuz").is_file():
        raise ExitlatError(f"{deb.name}: expected one boot/vmlinuz-*, found {len(releases)}")
    release = releases.pop()
    plain: dict[str, bytes] = {}

    class _Lazy(dict):           # decompress a module only when the resolver reads it
        def __contains__(self, k):
            return k in raw

        def __getitem__(self, k):
            if k not in plain:
                path, data = raw[k]
                plain[k] = lzma.decompress(data) if path.endswith(".xz") else data
            return plain[k]

    out: dict[str, list[Path]] = {}
    for vendor, mods in wanted.items():
        try:
            names = load_order(mods, _Lazy(), builtin)
        except ExitlatError as err:
            raise ExitlatError(f"{deb.name}: {vendor}: {err}") from None
        paths = []
        for n in names:
            path, _data = raw[n]
            rel = Path(path.removeprefix("usr/").removesuffix(".xz"))
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(_Lazy()[n])
            paths.append(rel)
        out[vendor] = paths
    return release, out


def _skip(name: str) -> bool:
    return name in _SKIP_FILES or any(name.startswith(p) for p in _SKIP_TOP)


def build_l1_image(pins: Pins, progress: Progress, mirror=None, series: str | None = None) -> L1Image:
    """Make the L1 image folder (the slow path of ensure_l1_image)."""
    key = image_key(pins, series)
    root = image_root()
    final = root / f"l1-{key}"
    logs = build_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-l1-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.monotonic()
    eh = pins.emulated_host
    try:
        kernel = eh.kernel(series)
        fetched = SourceFetcher(pins, mirror=mirror, log=progress.say).fetch(kernel)
        progress.say(f"L1 kernel: {fetched.provider} ({fetched.path.name}, sha256 ok)")
        release, mods = extract_kernel(fetched.path, eh.modules, tmp / "kernel")
        client = docker_client()
        base = ensure_base_image(client, pins.base, progress.say)
        tag = f"exitlat/l1:{userland_key(pins)}"
        log_path = logs / f"image-l1-{key}.log"
        with open(log_path, "a") as log:
            build_image(client, DOCKERFILE, tag,
                        {"BASE": base, "PACKAGES": packages_arg(eh.packages),
                         "SUITE": pins.base["debootstrap"]["suite"],
                         "MIRROR": pins.base["debootstrap"]["mirror"]},
                        _LogTee(log, progress, "L1 image"), progress.say)
        progress.say(f"L1 image: exporting {tag} as an uncompressed initramfs")
        packages, module_paths = _export_cpio(client, tag, tmp / "l1.cpio", tmp / "kernel", mods,
                                              release)
        shutil.move(str(tmp / "kernel" / "vmlinuz"), tmp / "vmlinuz")
        shutil.rmtree(tmp / "kernel")
        manifest = {
            "format": IMAGE_FORMAT, "key": key, "docker_image": tag, "base_image": base,
            "kernel_release": release, "kernel_package": kernel.file,
            "kernel_series": series or eh.default_kernel,
            "kernel_sha256": kernel.sha256, "kernel_provider": f"{fetched.provider}: {fetched.origin}",
            "modules": module_paths, "packages": packages,
            "artifacts": {n: sha256_file(tmp / n) for n in ("vmlinuz", "l1.cpio")},
            "initramfs_bytes": (tmp / "l1.cpio").stat().st_size,
            "build_s": round(time.monotonic() - t0, 1),
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress.say(f"L1 image built in {fmt_duration(manifest['build_s'])}: {final} "
                 f"({manifest['initramfs_bytes'] >> 20} MiB initramfs)")
    return L1Image(final, key, manifest, True)


def _export_cpio(client, tag: str, out_path: Path, kernel_dir: Path, mods: dict[str, list[Path]],
                 release: str) -> tuple[list[str], dict[str, list[str]]]:
    """`docker export` of a container of the image, streamed into a newc archive, plus the
    modules and /dev/console (the kernel opens it for init's stdio before /init runs)."""
    import docker.errors

    container = client.containers.create(tag, ["true"], network_disabled=True)
    try:
        packages = client.containers.run(tag, ["cat", "/etc/exitlat-packages.txt"], remove=True,
                                         network_disabled=True).decode().split()
        stream = ChunkReader(container.export(chunk_size=1 << 20))
        with open(out_path, "wb") as out:
            w = CpioWriter(out)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                n = w.add_tar_stream(tar, skip=_skip)
            if n < 1000:
                raise ExitlatError(f"docker export of {tag} gave only {n} entries")
            for d in ("dev", "proc", "sys", "run", "tmp", "mnt"):
                w.add_dir(d, 0o1777 if d == "tmp" else 0o755)
            w.add_chardev("dev/console", 5, 1)
            w.add_chardev("dev/null", 1, 3, 0o666)
            # Debian has merged /usr (/lib -> usr/lib): an entry under lib/ would replace the link
            # with a folder and break the dynamic loader's path.
            placed = {v: [str(Path("usr") / m) for m in ms] for v, ms in mods.items()}
            for m in sorted({m for ms in mods.values() for m in ms}):
                dest = Path("usr") / m
                for parent in reversed(dest.parents[:-1]):
                    if str(parent) not in w.names:
                        w.add_dir(str(parent))
                w.add_file(str(dest), kernel_dir / m, mode=0o644)
            w.add_bytes("etc/exitlat-l1.json", json.dumps(
                {"kernel_release": release, "modules": placed}).encode())
            w.close()
    except docker.errors.DockerException as err:
        raise ExitlatError(f"L1 image: Docker error: {str(err).splitlines()[0]}") from None
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass
    return sorted(packages), placed



def ensure_l1_image(pins: Pins | None = None, progress: Progress | None = None,
                    mirror=None, series: str | None = None) -> L1Image:
    """The L1 image of a kernel series for the current pins: the cached folder, or a new build."""
    pins = pins or load_pins()
    progress = progress or Progress()
    found = find_image(pins, series)
    if found is not None:
        return found
    progress.say(f"L1 image ({pins.emulated_host.kernel(series).file.split('_')[0]}): not built for "
                 "the current inputs; building it (a few minutes, once)")
    return build_l1_image(pins, progress, mirror, series)
