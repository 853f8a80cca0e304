"""The L1 image of the emulated AMD-V host: the pinned Debian cloud kernel (vmlinuz) and an
uncompressed newc initramfs holding the L1 userland (docker/l1.Dockerfile: Python and exitlat's
runtime dependencies) plus the kernel modules L1 loads (virtio_blk, irqbypass, kvm, kvm-amd).

Cached like every build stage: the folder `build/emulated-host/l1-<key>/` is named by the hash of
everything it is made from (the Dockerfile, the base pin, the package pins, the kernel package's
sha256 and module list, and this code), made under a temporary name and renamed when complete.
Its manifest records what went in and how long the build took.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
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

IMAGE_FORMAT = 1
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


def image_key(pins: Pins) -> str:
    """The hash of every input of the L1 image (no Docker, no network)."""
    eh = pins.emulated_host
    here = Path(__file__).parent
    return short_hash(IMAGE_FORMAT, (DOCKER_DIR / DOCKERFILE).read_bytes(), pins.base,
                      packages_arg(eh.packages), eh.kernel.sha256, list(eh.modules),
                      (here / "image.py").read_bytes(), (here / "cpio.py").read_bytes())


def image_root() -> Path:
    return build_root() / "emulated-host"


def find_image(pins: Pins | None = None) -> L1Image | None:
    pins = pins or load_pins()
    key = image_key(pins)
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


def extract_kernel(deb: Path, modules: tuple[str, ...], dest: Path) -> tuple[str, list[Path]]:
    """vmlinuz and the named modules (decompressed to .ko, so L1 needs no xz support) from the
    kernel package. Returns (kernel release, module paths relative to dest, in load order)."""
    wanted = {m.replace("-", "_"): m for m in modules}
    got: dict[str, Path] = {}
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
        base = name.rsplit("/", 1)[-1]
        if not name.startswith("lib/modules/") and not name.startswith("usr/lib/modules/"):
            continue
        for suffix in (".ko.xz", ".ko"):
            mod = base[: -len(suffix)].replace("-", "_") if base.endswith(suffix) else None
            if mod in wanted:
                data = f.read()
                rel = Path(name.removeprefix("usr/"))
                if suffix == ".ko.xz":
                    data, rel = lzma.decompress(data), rel.with_suffix("")
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / rel).write_bytes(data)
                got[mod] = rel
                break
    if len(releases) != 1 or not (dest / "vmlinuz").is_file():
        raise ExitlatError(f"{deb.name}: expected one boot/vmlinuz-*, found {len(releases)}")
    release = releases.pop()
    missing = [wanted[m] for m in wanted if m not in got]
    if missing:
        raise ExitlatError(f"{deb.name}: has no module {', '.join(missing)} "
                           "(pins.yaml emulated_host.modules)")
    return release, [got[m.replace("-", "_")] for m in modules]


def _skip(name: str) -> bool:
    return name in _SKIP_FILES or any(name.startswith(p) for p in _SKIP_TOP)


def build_l1_image(pins: Pins, progress: Progress, mirror=None) -> L1Image:
    """Make the L1 image folder (the slow path of ensure_l1_image)."""
    key = image_key(pins)
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
        fetched = SourceFetcher(pins, mirror=mirror, log=progress.say).fetch(eh.kernel)
        progress.say(f"L1 kernel: {fetched.provider} ({fetched.path.name}, sha256 ok)")
        release, mods = extract_kernel(fetched.path, eh.modules, tmp / "kernel")
        client = docker_client()
        base = ensure_base_image(client, pins.base, progress.say)
        tag = f"exitlat/l1:{key}"
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
            "kernel_release": release, "kernel_package": eh.kernel.file,
            "kernel_sha256": eh.kernel.sha256, "kernel_provider": f"{fetched.provider}: {fetched.origin}",
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


def _export_cpio(client, tag: str, out_path: Path, kernel_dir: Path, mods: list[Path],
                 release: str) -> tuple[list[str], list[str]]:
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
            placed = [Path("usr") / m for m in mods]
            for m, dest in zip(mods, placed):
                for parent in reversed(dest.parents[:-1]):
                    if str(parent) not in w.names:
                        w.add_dir(str(parent))
                w.add_file(str(dest), kernel_dir / m, mode=0o644)
            w.add_bytes("etc/exitlat-l1.json", json.dumps(
                {"kernel_release": release, "modules": [str(m) for m in placed]}).encode())
            w.close()
    except docker.errors.DockerException as err:
        raise ExitlatError(f"L1 image: Docker error: {str(err).splitlines()[0]}") from None
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass
    return sorted(packages), [str(m) for m in placed]



def ensure_l1_image(pins: Pins | None = None, progress: Progress | None = None,
                    mirror=None) -> L1Image:
    """The L1 image for the current pins: the cached folder, or a new build."""
    pins = pins or load_pins()
    progress = progress or Progress()
    found = find_image(pins)
    if found is not None:
        return found
    progress.say("L1 image: not built for the current inputs; building it (a few minutes, once)")
    return build_l1_image(pins, progress, mirror)
