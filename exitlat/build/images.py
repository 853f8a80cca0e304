"""Docker images: the client, content-addressed tags, images built from docker/*.Dockerfile with
their build output streamed to a log, and reading files and package lists back out of an image.
The pinned Debian base image itself is made by exitlat.build.baseimage."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.paths import REPO_ROOT

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
