"""The pinned Debian base image: pulled by digest where a registry answers, else bootstrapped from
pinned Debian packages inside Docker.

Bootstrapping needs nothing on the host but Python and the Docker engine (no debootstrap, ar,
dpkg-deb, wget or perl): every package of Debian's minbase, and debootstrap itself, is pinned by
sha256 in pins.yaml and fetched through the source providers. Python does debootstrap's first stage
(unpack the "required" packages into a merged-/usr tree, lay out the package files and
debootstrap's state as `--foreign` would); that tree is imported into Docker, and the pinned
debootstrap's own `--second-stage` runs inside a container made from it, without network, where
dpkg installs and configures every package. The result is exported, cleaned and imported as the
base image. See docs/build.md.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from exitlat.errors import ExitlatError
from exitlat.paths import cache_root

from .debs import deb_control, deb_data
from .images import ChunkReader, base_tag, image_exists, short_hash
MERGED_USR = ("bin", "lib", "lib32", "lib64", "libo32", "libx32", "sbin")


# What the export of the bootstrap container must not carry into the image: Docker's own mount
# points and files, debootstrap's downloads and the package index it was given.
_DROP_FILES = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}


def bootstrap_pins(base: dict):
    """(debootstrap's pin, [(package, pin)] of its required stage, [(package, pin)] of its base
    stage), each pin a SourcePin fetched from the base's Debian mirror."""
    from .pins import SourcePin

    d = base["debootstrap"]

    def pin(name: str, p: dict, source: str) -> SourcePin:
        return SourcePin(name=name, version=str(p["version"]), file=p["file"], sha256=p["sha256"],
                         urls=(), debian_source=p.get("source", source),
                         debian_version=str(p["version"]))

    if "tool" not in d or "required" not in d:
        raise ExitlatError("pins.yaml: base.debootstrap has no pinned packages (tool, required, base): "
                           "print them with `python3 -m exitlat.build.debs --pin-base`")
    tool = pin("base.debootstrap", d["tool"], "debootstrap")
    required = [(n, pin(f"base.{n}", p, n)) for n, p in sorted(d["required"].items())]
    rest = [(n, pin(f"base.{n}", p, n)) for n, p in sorted(d.get("base", {}).items())]
    return tool, required, rest


class _Archive:
    """What SourceFetcher needs from a Pins object: the Debian archive to fetch from."""

    def __init__(self, url: str):
        self.debian_archive = url


def _fetcher_for(base: dict, mirror=None):
    from .sources import SourceFetcher

    return SourceFetcher(_Archive(base["debootstrap"]["mirror"]), mirror=mirror, log=lambda m: None)


def ensure_base_image(client, base: dict, log, mirror=None, tag: str | None = None) -> str:
    """Return the tag of the base image, making it if needed: pull by digest where a registry
    answers, else bootstrap the same Debian release from the pinned packages and import it.
    The packages come from `mirror` (a folder, as `invoke build --mirror`), else the cache, else
    the pool of base.debootstrap.mirror; `tag` names the image (default: base_tag(base))."""
    tag = tag or base_tag(base)
    if image_exists(client, tag):
        return tag
    if base.get("digest"):
        ref = f"{base['image']}@{base['digest']}"
        log(f"pulling {ref}")
        try:
            img = client.images.pull(ref)
            img.tag(*tag.split(":"))
            return tag
        except Exception as err:
            log(f"pull failed ({type(err).__name__}); bootstrapping the base image from the pinned "
                "Debian packages")
    rootfs_tar = bootstrap_rootfs(client, base, _fetcher_for(base, mirror), log)
    log(f"importing {rootfs_tar.name} as {tag}")
    repo, _, version = tag.partition(":")
    with open(rootfs_tar, "rb") as f:
        client.api.import_image_from_data(f, repository=repo, tag=version)
    if not image_exists(client, tag):
        raise ExitlatError(f"docker import of {rootfs_tar} did not produce {tag}")
    return tag


def bootstrap_rootfs(client, base: dict, fetcher, log) -> Path:
    """The base image's root file system as a tar, made from the pinned packages (cached)."""
    d = base["debootstrap"]
    out = cache_root() / "base" / f"{d['suite']}-{d['variant']}-{short_hash(base)}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tool, required, rest = bootstrap_pins(base)
    t0 = time.monotonic()
    pins = [tool] + [p for _, p in required + rest]
    log(f"bootstrapping Debian {d['suite']} ({d['variant']}) from {len(pins) - 1} pinned packages")
    with ThreadPoolExecutor(max_workers=8) as pool:
        try:
            fetched = list(pool.map(fetcher.fetch, pins))
        except ExitlatError as err:
            fetcher.cancel()
            raise ExitlatError(f"{err} (a Debian point release may have replaced it in the pool: "
                               "re-pin with `python3 -m exitlat.build.debs --pin-base`, or point "
                               "base.debootstrap.mirror at snapshot.debian.org)") from None
    paths = {f.pin.name: f.path for f in fetched}
    served = sorted({f.provider for f in fetched})
    log(f"  {len(fetched)} packages ready ({', '.join(served)}; sha256 ok) in "
        f"{time.monotonic() - t0:.1f}s")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".bootstrap-") as tmp:
        stage1 = Path(tmp) / "stage1.tar"
        _first_stage(stage1, base, paths[tool.name],
                     [(n, p, paths[p.name]) for n, p in required],
                     [(n, p, paths[p.name]) for n, p in rest])
        part = Path(tmp) / "rootfs.tar"
        _second_stage(client, stage1, part, out.with_suffix(".log"), log)
        os.replace(part, out)
    log(f"  base root file system ready in {time.monotonic() - t0:.1f}s")
    return out


def _usr_merged(name: str) -> str:
    """A path of a package's data.tar in the merged-/usr layout debootstrap makes for bookworm."""
    name = name.removeprefix("./").rstrip("/")
    if name.split("/", 1)[0] in MERGED_USR:
        return "usr/" + name
    return name


def _apt_list_name(mirror: str, suite: str, arch: str) -> str:
    """Where debootstrap (and apt) keep the Packages index of mirror/suite/main."""
    m = mirror.rstrip("/").split("://", 1)[-1]
    return "var/lib/apt/lists/" + f"{m}/dists/{suite}/main/binary-{arch}/Packages".replace("/", "_")


def _first_stage(dest: Path, base: dict, tool_deb: Path, required, rest) -> None:
    """debootstrap's first stage (`--foreign`), in Python: the required packages unpacked into a
    merged-/usr tree, every .deb where the second stage looks for it, the Packages index of the
    pinned set, empty dpkg databases, and debootstrap itself with its state files."""
    d = base["debootstrap"]
    arch = "amd64"
    seen: set[str] = set()
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as out:
        def add_dir(path: str, mode=0o755):
            parts = PurePosixPath(path).parts
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i])
                if p not in seen:
                    seen.add(p)
                    info = tarfile.TarInfo(p)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
                    out.addfile(info)

        def add_bytes(path: str, data: bytes, mode=0o644):
            add_dir(str(PurePosixPath(path).parent))
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            out.addfile(info, io.BytesIO(data))
            seen.add(path)

        def add_file(path: str, src: Path, mode=0o644):
            add_dir(str(PurePosixPath(path).parent))
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = src.stat().st_size, mode, 0
            with open(src, "rb") as f:
                out.addfile(info, f)
            seen.add(path)

        # 1. Unpack the required packages (tar -k: the first file of a name wins), /usr merged.
        tops = set()
        for name, pin, deb in required:
            with deb_data(deb) as tar:
                for m in tar:
                    path = _usr_merged(m.name)
                    if not path or path in seen:
                        continue
                    if path.split("/")[0] == "usr" and m.name.removeprefix("./").split("/")[0] in MERGED_USR:
                        tops.add(m.name.removeprefix("./").split("/")[0])
                    add_dir(str(PurePosixPath(path).parent))
                    m.name = path
                    if m.islnk():
                        m.linkname = _usr_merged(m.linkname)
                    out.addfile(m, tar.extractfile(m) if m.isreg() else None)
                    seen.add(path)
        for top in sorted(tops):      # bin -> usr/bin, lib -> usr/lib, …
            info = tarfile.TarInfo(top)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, f"usr/{top}", 0o777, 0
            out.addfile(info)
            seen.add(top)

        # 2. Every package file, the Packages index of the pinned set, debpaths.
        index, debpaths, deburis = [], [], []
        for name, pin, deb in required + rest:
            inner = f"var/cache/apt/archives/{pin.file}"
            add_file(inner, deb)
            pool = pin.debian_pool_url(d["mirror"])
            stanza = deb_control(deb).rstrip("\n")
            index.append(f"{stanza}\nFilename: {pool.split(d['mirror'].rstrip('/') + '/', 1)[1]}\n"
                         f"Size: {deb.stat().st_size}\nSHA256: {pin.sha256}\n")
            debpaths.append(f"{name} /{inner}")
            deburis.append(f"{name} {pin.version} {pool}")
        add_bytes(_apt_list_name(d["mirror"], d["suite"], arch), "\n".join(index).encode())
        add_dir("var/cache/apt/archives/partial")
        add_bytes("etc/apt/sources.list", f"deb {d['mirror']} {d['suite']} main\n".encode())
        add_bytes("var/lib/dpkg/status", b"")
        add_bytes("var/lib/dpkg/available", b"")
        # dpkg without an fsync per file (as Debian's own Docker images): the second stage, and
        # every image built on this base, install packages in a container layer, where a crash
        # means starting over anyway.
        add_bytes("etc/dpkg/dpkg.cfg.d/exitlat-unsafe-io", b"force-unsafe-io\n")
        if "etc/fstab" not in seen:
            add_bytes("etc/fstab", b"# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")

        # 3. debootstrap itself and the state its --second-stage reads.
        files = {}
        with deb_data(tool_deb) as tar:
            for m in tar:
                n = m.name.removeprefix("./")
                if m.isreg() and (n == "usr/sbin/debootstrap" or n.startswith("usr/share/debootstrap/")):
                    files[n] = tar.extractfile(m).read()
                elif m.issym() and n.startswith("usr/share/debootstrap/scripts/"):
                    files[n] = ("link", m.linkname)
        share = "usr/share/debootstrap"
        script = files.get(f"{share}/scripts/{d['suite']}")
        if isinstance(script, tuple):
            script = files.get(f"{share}/scripts/{script[1]}")
        if not isinstance(script, bytes):
            raise ExitlatError(f"the pinned debootstrap has no script for {d['suite']}")
        add_bytes("debootstrap/debootstrap", files["usr/sbin/debootstrap"], 0o755)
        add_bytes("debootstrap/functions", files[f"{share}/functions"])
        add_bytes("debootstrap/suite-script", script)
        for n, data in sorted(files.items()):
            if n.endswith("-common") and isinstance(data, bytes):
                add_bytes(f"debootstrap/{PurePosixPath(n).name}", data)
        for key, value in {"arch": arch, "suite": d["suite"], "mirror": d["mirror"],
                           "variant": d["variant"],
                           "required": " ".join(n for n, _, _ in required),
                           "base": " ".join(n for n, _, _ in rest),
                           "debpaths": "\n".join(debpaths), "deburis": "\n".join(deburis)}.items():
            add_bytes(f"debootstrap/{key}", (value + "\n").encode())


def _keep(name: str) -> bool:
    n = name.removeprefix("./").rstrip("/")
    if n in _DROP_FILES or n == "debootstrap" or n.startswith("debootstrap/"):
        return False
    if n.startswith("var/cache/apt/archives/") and n.endswith(".deb"):
        return False
    if n.startswith("var/lib/apt/lists/") and n.count("/") == 4 and "_" in n:
        return False
    return True


def _second_stage(client, stage1: Path, dest: Path, log_path: Path, log) -> None:
    """Import the first stage as a temporary image, run debootstrap --second-stage in a container
    made from it (no network: every package is already there), export the result without
    Docker's mount points and debootstrap's leftovers."""
    import docker.errors

    tmp_tag = f"exitlat/base-stage1:{os.getpid()}-{int(time.time() * 1000)}"
    repo, _, version = tmp_tag.partition(":")
    with open(stage1, "rb") as f:
        client.api.import_image_from_data(f, repository=repo, tag=version)
    container = None
    try:
        log("  running debootstrap --second-stage in a container (dpkg installs every package)")
        container = client.containers.create(
            tmp_tag, ["/debootstrap/debootstrap", "--second-stage"], network_disabled=True,
            # container=lxc: debootstrap then skips its "can I make device nodes here?" probe,
            # which fails on engines whose storage is mounted nodev (fuse-overlayfs) although
            # nothing in the second stage makes a device node (Docker provides /dev).
            environment={"LANG": "C.UTF-8", "container": "lxc"},
            labels={"exitlat.stage": "base-bootstrap"})
        container.start()
        code = container.wait()["StatusCode"]
        out = container.logs(stdout=True, stderr=True).decode(errors="replace")
        if code != 0:
            detail = _container_file(container, "/debootstrap/debootstrap.log") or out
            log_path.write_text(out + "\n--- debootstrap.log ---\n" + detail)
            tail = " | ".join(l for l in detail.strip().splitlines()[-3:])
            raise ExitlatError(f"debootstrap --second-stage failed (exit {code}): {tail} "
                               f"(full log: {log_path})")
        log_path.write_text(out + "\n--- var/log/bootstrap.log ---\n" +
                            (_container_file(container, "/var/log/bootstrap.log") or ""))
        with tarfile.open(fileobj=io.BufferedReader(ChunkReader(container.export()), 1 << 20),
                          mode="r|") as src, tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as dst:
            for m in src:
                if _keep(m.name):
                    dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass
        try:
            client.images.remove(tmp_tag, force=True)
        except docker.errors.DockerException:
            pass


def _container_file(container, path: str) -> str | None:
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            m = tar.next()
            return tar.extractfile(m).read().decode(errors="replace") if m else None
    except (docker.errors.DockerException, tarfile.TarError, AttributeError):
        return None
