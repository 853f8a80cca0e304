"""Docker images: the pinned Debian base (pulled by digest, or made with debootstrap and imported),
and images built from docker/*.Dockerfile with their build output streamed to a log."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .errors import ExitlatError
from .paths import REPO_ROOT, cache_root

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


def ensure_base_image(client, base: dict, log) -> str:
    """Return the tag of the base image, making it if needed: pull by digest where a registry
    answers, else debootstrap the same Debian release and import it."""
    tag = base_tag(base)
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
            log(f"pull failed ({type(err).__name__}); making the base image with debootstrap")
    rootfs_tar = _debootstrap_tarball(base["debootstrap"], log)
    log(f"importing {rootfs_tar.name} as {tag}")
    repo, _, version = tag.partition(":")
    with open(rootfs_tar, "rb") as f:
        client.api.import_image_from_data(f, repository=repo, tag=version)
    if not image_exists(client, tag):
        raise ExitlatError(f"docker import of {rootfs_tar} did not produce {tag}")
    return tag


def _debootstrap_tarball(d: dict, log) -> Path:
    out = cache_root() / "base" / f"{d['suite']}-{d['variant']}-{short_hash(d)}.tar"
    if out.is_file():
        return out
    if shutil.which("debootstrap") is None:
        raise ExitlatError("no registry answered and debootstrap is not installed: "
                           "install it (apt-get install debootstrap) or set base.digest in pins.yaml")
    if os.geteuid() != 0:
        raise ExitlatError("making the base image with debootstrap needs root (or a registry "
                           "and base.digest in pins.yaml)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", f"--variant={d['variant']}", d["suite"], str(root), d["mirror"]]
        log("running " + " ".join(cmd) + " (a few minutes)")
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            tail = " | ".join(res.stdout.strip().splitlines()[-3:])
            raise ExitlatError(f"debootstrap failed: {tail}")
        part = out.with_suffix(".part")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."],
                       check=True)
        os.replace(part, out)
    return out


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
