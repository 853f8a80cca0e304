"""Docker images: the pinned Debian base (pulled by digest where a registry answers, else
bootstrapped from pinned Debian packages inside Docker), and images built from docker/*.Dockerfile
with their build output streamed to a log.

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

import hashlib
import io
import json
import lzma
import os
import tarfile
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT, cache_root

DOCKER_DIR = REPO_ROOT / "docker"


def docker_client(timeout: int = 600):
    """A Docker SDK client, or one clear line when the daemon cannot be reached."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as err:  # the SDK raises several unrelated types for "no daemon"
        raise ExitlatError(f"cannot reach the Docker engine ({type(err).__name__}); is it running "
                           "and may this user use it? (or use --no-container where offered)") from None


def image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def short_hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_tag(base: dict) -> str:
    d = base["debootstrap"]
    return f"exitlat/base:{d['suite']}-{short_hash(base)}"


# --- Debian binary packages, read with Python alone -----------------------------------------------


def _ar_members(f):
    """Yield (name, size) for each member of an `ar` archive open at its start; the caller reads
    or skips exactly `size` bytes (the padding byte is handled here)."""
    if f.read(8) != b"!<arch>\n":
        raise ExitlatError(f"{getattr(f, 'name', 'package')}: not a Debian package (no ar header)")
    while True:
        hdr = f.read(60)
        if len(hdr) < 60:
            return
        name = hdr[:16].decode().strip().rstrip("/")
        size = int(hdr[48:58].decode().strip())
        start = f.tell()
        yield name, size
        f.seek(start + size + (size & 1))


def _member_tar(deb: Path, prefix: str):
    """Open the `prefix.tar*` member (control or data) of a .deb as a streaming tarfile."""
    f = open(deb, "rb")
    for name, size in _ar_members(f):
        if name.startswith(prefix + ".tar"):
            if name.endswith(".zst"):
                f.close()
                raise ExitlatError(f"{deb.name}: {name} is zstd-compressed, which Python cannot read "
                                   "(pin a package built with xz or gzip)")
            data = f.read(size)
            f.close()
            return tarfile.open(fileobj=io.BytesIO(data), mode="r|*")
    f.close()
    raise ExitlatError(f"{deb.name}: no {prefix}.tar member")


def deb_control(deb: Path) -> str:
    """The package's control file (its Package, Version, Depends … stanza)."""
    with _member_tar(deb, "control") as tar:
        for m in tar:
            if m.name.removeprefix("./") == "control":
                return tar.extractfile(m).read().decode()
    raise ExitlatError(f"{deb.name}: no control file")


def deb_data(deb: Path):
    """The package's data.tar as a streaming tarfile (iterate it once; extractfile per member)."""
    return _member_tar(deb, "data")


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (Packages index, control files): a list of {field: value}."""
    out, cur, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return out


def dep_names(stanza: dict) -> list[str]:
    """Depends and Pre-Depends, first alternative of each, version and arch qualifier dropped (as
    debootstrap's own resolver reads them)."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for d in stanza.get(field, "").split(","):
            d = d.split("|")[0].split("(")[0].strip().split(":")[0]
            if d:
                names.append(d)
    return names


# --- the pinned bootstrap --------------------------------------------------------------------------


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
                           "print them with `python3 -m exitlat.build.images --pin-base`")
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
                               "re-pin with `python3 -m exitlat.build.images --pin-base`, or point "
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


class ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (docker's export stream)."""

    def __init__(self, chunks):
        self.chunks, self.buf = iter(chunks), b""

    def readable(self):
        return True

    def readinto(self, b):
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


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


def unpack_image_tree(client, image: str, top: str, dest: Path) -> Path:
    """Copy the folder `top` (e.g. "usr") of an image to dest/top on the host, made under a
    temporary name and renamed when complete; returns dest/top. For a builder image this lets the
    stages read the toolchain from the host's file system (see exitlat/build/builder.py)."""
    import shutil

    import docker.errors

    final = dest / top
    if final.is_dir():
        return final
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".tmp-{top}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    container = client.containers.create(image, ["true"], labels={"exitlat.stage": "unpack"})
    try:
        with tarfile.open(fileobj=io.BufferedReader(ChunkReader(container.export()), 1 << 20),
                          mode="r|") as tar:
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            for m in tar:
                if (m.name == top or m.name.startswith(top + "/")) and not (m.ischr() or m.isblk()):
                    tar.extract(m, tmp, set_attrs=True, **extra)
        try:
            os.replace(tmp / top, final)
        except OSError:
            if not final.is_dir():   # else another build unpacked the same image meanwhile
                raise
    finally:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def image_packages(client, tag: str) -> list[str]:
    """The exact package list (name=version) of an image with dpkg, e.g. the base image."""
    out = client.containers.run(tag, ["dpkg-query", "-W", "-f", "${Package}=${Version}\\n"],
                                remove=True, network_disabled=True)
    return sorted(out.decode().split())


def image_origin(client, tag: str) -> str:
    """'pulled <repo@digest>' for an image from a registry, else 'bootstrapped' (imported)."""
    digests = client.images.get(tag).attrs.get("RepoDigests") or []
    return f"pulled {digests[0]}" if digests else "bootstrapped from the pinned packages"


def build_image(client, dockerfile: str, tag: str, buildargs: dict, log_file, log) -> str:
    """Build docker/<dockerfile> as <tag>, streaming every line to log_file; skip when present."""
    if image_exists(client, tag):
        return tag
    log(f"building image {tag} from docker/{dockerfile}")
    # The context holds only the Dockerfile: images must not depend on the working tree.
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        data = (DOCKER_DIR / dockerfile).read_bytes()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    last = []
    for chunk in client.api.build(fileobj=ctx, custom_context=True, tag=tag, buildargs=buildargs,
                                  rm=True, forcerm=True, decode=True, pull=False):
        if "stream" in chunk:
            line = chunk["stream"]
            log_file.write(line)
            log_file.flush()
            if line.strip():
                last = (last + [line.rstrip()])[-8:]
        if "error" in chunk:
            log_file.write(chunk["error"] + "\n")
            tail = " | ".join(last[-3:])
            raise ExitlatError(f"docker build of {tag} failed: {chunk['error'].strip()} ({tail})")
    return tag


# --- refreshing the pins (maintainers) -------------------------------------------------------------


def resolve_minbase(index: list[dict], exclude=("usrmerge",)) -> tuple[list[str], list[str]]:
    """debootstrap's minbase for bookworm, resolved as debootstrap does: required = every
    Priority: required package plus usr-is-merged, closed over Depends/Pre-Depends (first
    alternative; virtual names dropped); base = apt's closure minus required."""
    real = {s["Package"]: s for s in index}

    def close(names):
        have, todo = set(), [n for n in names if n in real]
        while todo:
            n = todo.pop()
            if n in have:
                continue
            have.add(n)
            todo += [d for d in dep_names(real[n]) if d in real and d not in exclude]
        return have

    required = close([n for n, s in real.items() if s.get("Priority") == "required"] + ["usr-is-merged"])
    base = close(["apt"]) - required
    return sorted(required), sorted(base)


def pin_base(mirror: str = "http://deb.debian.org/debian", suite: str = "bookworm",
             arch: str = "amd64") -> str:
    """The `required`, `base` and `tool` entries of base.debootstrap in pins.yaml, resolved from
    the mirror's current index (the sha256 of each package from the index)."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/main/binary-{arch}/Packages.xz"
    with urllib.request.urlopen(url, timeout=60) as r:
        index = parse_stanzas(lzma.decompress(r.read()).decode())
    by_name = {s["Package"]: s for s in index}
    required, base = resolve_minbase(index)

    def entry(name: str) -> str:
        s = by_name[name]
        source = s.get("Source", name).split(" ")[0]
        file = s["Filename"].rsplit("/", 1)[1]
        return (f"{{version: {json.dumps(s['Version'])}, source: {source}, "
                f"file: {json.dumps(file)}, sha256: {s['SHA256']}}}")

    lines = [f"    tool: {entry('debootstrap')}", "    required:"]
    lines += [f"      {n}: {entry(n)}" for n in required]
    lines += ["    base:" + ("" if base else " {}")] + [f"      {n}: {entry(n)}" for n in base]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="print the pinned package entries of base.debootstrap")
    ap.add_argument("--pin-base", action="store_true", required=True)
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--suite", default="bookworm")
    a = ap.parse_args()
    print(pin_base(a.mirror, a.suite))
