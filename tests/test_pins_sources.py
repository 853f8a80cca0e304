"""pins.yaml validation and the source providers (mirror folder, local HTTP server, checksums)."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from exitlat.errors import ExitlatError
from exitlat.pins import DEFAULT_PINS, load_pins
from exitlat.sources import ChecksumMismatch, SourceFetcher


def write_pins(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_PINS.read_text())
    mutate(raw)
    p = tmp_path / "pins.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_default_pins_are_valid():
    pins = load_pins()
    assert pins.source("linux").version.startswith("6.12.")
    assert pins.source("qemu").version.startswith("10.")
    assert all(len(s.sha256) == 64 for s in pins.sources())


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["sources"]["linux"].__setitem__("sha256", "abc"), "sources.linux.sha256"),
    (lambda r: r["sources"]["busybox"].pop("version"), "sources.busybox"),
    (lambda r: r["sources"]["qemu"].__setitem__("surprise", 1), "sources.qemu"),
    (lambda r: r.__setitem__("source_date_epoch", "yesterday"), "source_date_epoch"),
    (lambda r: r["toolchain"].__setitem__("gcc", "latest"), "toolchain.gcc"),
    (lambda r: r["sources"].pop("seabios"), "sources"),
])
def test_bad_pins_name_the_field(tmp_path, mutate, field):
    with pytest.raises(ExitlatError) as err:
        load_pins(write_pins(tmp_path, mutate))
    msg = str(err.value)
    assert f"field {field}" in msg and "\n" not in msg


def test_unreadable_pins(tmp_path):
    with pytest.raises(ExitlatError, match="not found"):
        load_pins(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(ExitlatError, match="not valid YAML"):
        load_pins(bad)


def test_unknown_source_name():
    with pytest.raises(ExitlatError, match="no source named"):
        load_pins().source("glibc")


def test_debian_pool_url():
    pins = load_pins()
    assert pins.source("linux").debian_pool_url("http://a/debian") == \
        "http://a/debian/pool/main/l/linux/linux_6.12.95.orig.tar.xz"
    assert "/pool/main/q/qemu/qemu-system-data_" in pins.source("qemu-firmware").debian_pool_url("http://a")


# --- providers on a small fake input --------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    """A pins file whose busybox entry points at a small tarball we make."""
    payload = b"pretend this is busybox\n" * 100
    digest = hashlib.sha256(payload).hexdigest()

    def make(urls=(), sha=digest):
        def mutate(raw):
            raw["sources"]["busybox"].update(file="busybox-test.tar", sha256=sha, urls=list(urls))
            raw["sources"]["busybox"].pop("debian")
        return load_pins(write_pins(tmp_path, mutate))
    return payload, digest, make


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_mirror_folder_serves_and_is_cached(tmp_path, tiny):
    payload, digest, make = tiny
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "busybox-test.tar").write_bytes(payload)
    fetcher = SourceFetcher(make(), mirror=mirror, cache=tmp_path / "cache", use_network=False)
    got = fetcher.fetch(fetcher.pins.source("busybox"))
    assert got.provider == "mirror" and got.path.read_bytes() == payload
    again = fetcher.fetch(fetcher.pins.source("busybox"))
    assert again.provider == "cache" and again.path == got.path
    assert again.origin.endswith(f"(first from mirror: {mirror / 'busybox-test.tar'})")


def test_http_upstream(tmp_path, tiny, http_dir):
    payload, digest, make = tiny
    root, base = http_dir
    (root / "busybox-test.tar").write_bytes(payload)
    pins = make(urls=[f"{base}/busybox-test.tar"])
    got = SourceFetcher(pins, cache=tmp_path / "cache", log=lambda m: None).fetch(pins.source("busybox"))
    assert got.provider == "upstream" and got.path.read_bytes() == payload


def test_wrong_checksum_is_refused_and_not_cached(tmp_path, tiny, http_dir):
    payload, digest, make = tiny
    root, base = http_dir
    (root / "busybox-test.tar").write_bytes(payload + b"tampered")
    pins = make(urls=[f"{base}/busybox-test.tar"])
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        SourceFetcher(pins, cache=cache, log=lambda m: None).fetch(pins.source("busybox"))
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_falls_through_to_next_provider(tmp_path, tiny, http_dir):
    payload, digest, make = tiny
    root, base = http_dir
    (root / "good.tar").write_bytes(payload)
    pins = make(urls=[f"{base}/missing.tar", "http://127.0.0.1:9/down.tar", f"{base}/good.tar"])
    got = SourceFetcher(pins, cache=tmp_path / "c", log=lambda m: None, timeout=3).fetch(pins.source("busybox"))
    assert got.origin.endswith("/good.tar")


def test_all_providers_down_is_one_line(tmp_path, tiny):
    payload, digest, make = tiny
    pins = make(urls=["http://127.0.0.1:9/down.tar"])
    with pytest.raises(ExitlatError) as err:
        SourceFetcher(pins, cache=tmp_path / "c", log=lambda m: None, timeout=3).fetch(pins.source("busybox"))
    assert "cannot get busybox" in str(err.value) and "\n" not in str(err.value)


def test_missing_mirror_folder(tmp_path, tiny):
    with pytest.raises(ExitlatError, match="mirror folder not found"):
        SourceFetcher(tiny[2](), mirror=tmp_path / "nope")
