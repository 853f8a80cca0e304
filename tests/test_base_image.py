"""The base image where no registry answers: bootstrapped from the pinned packages with nothing on
the host but Python and the Docker engine (no debootstrap, ar, dpkg-deb, wget, perl or tar)."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from exitlat.paths import REPO_ROOT, cache_root
from exitlat.build.pins import load_pins

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
from exitlat.build.baseimage import ensure_base_image
from exitlat.build.images import docker_client
from exitlat.build.pins import load_pins
base = dict(load_pins().base, digest=None)      # as where no registry answers
tag = ensure_base_image(docker_client(), base, lambda m: print(m, flush=True), tag=sys.argv[1])
print(json.dumps({"tag": tag}))
"""


def docker_ok() -> bool:
    try:
        from exitlat.build.images import docker_client

        docker_client(timeout=10)
        return True
    except Exception:
        return False


@pytest.fixture
def client():
    if not docker_ok():
        pytest.skip("no Docker engine")
    from exitlat.build.images import docker_client

    return docker_client()


def stage1_images(client) -> set[str]:
    return {t for img in client.images.list(name="exitlat/base-stage1") for t in img.tags}


def test_bootstrap_with_nothing_but_python_and_docker(client, tmp_path):
    tag = f"exitlat/base-test:{uuid.uuid4().hex[:12]}"
    # An empty PATH: debootstrap (and every other host tool) is out of reach.
    empty = tmp_path / "bin"
    empty.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = cache_root() / "sources"     # downloads are shared (checked by sha256 anyway);
    if shared.is_dir():                   # the bootstrapped root file system is not
        (cache / "sources").symlink_to(shared)
    env = {k: v for k, v in os.environ.items() if k.startswith(("DOCKER_", "HOME", "LANG"))}
    env.update(PATH=str(empty), EXITLAT_CACHE_DIR=str(cache), PYTHONPATH=str(REPO_ROOT))
    before = stage1_images(client)
    try:
        res = subprocess.run([sys.executable, "-c", SCRIPT, tag], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert json.loads(res.stdout.strip().splitlines()[-1])["tag"] == tag
        assert "bootstrapping Debian" in res.stdout

        pins = load_pins().base["debootstrap"]
        want = {f"{n}={p['version']}" for n, p in {**pins["required"], **pins["base"]}.items()}
        from exitlat.build.images import image_packages

        assert set(image_packages(client, tag)) == want
        # A working Debian: merged /usr, apt, dpkg's database consistent, no device test files.
        out = client.containers.run(
            tag, ["sh", "-c", "readlink /bin /lib; apt-get --version | head -1; dpkg --audit && "
                  "echo audit-ok; ls /debootstrap 2>&1; cat /etc/apt/sources.list"],
            remove=True, network_disabled=True).decode()
        assert "usr/bin" in out and "usr/lib" in out and "apt 2." in out and "audit-ok" in out
        assert "No such file" in out                 # debootstrap's state is gone
        assert stage1_images(client) == before       # the temporary first-stage image is removed
    finally:
        import docker.errors

        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
