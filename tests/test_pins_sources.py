"""pins.yaml validation, the source providers (mirror folder, local HTTP server, checksums), and
the pieces of the base image's bootstrap that need no Docker (reading .debs, resolving minbase,
the first stage's layout)."""

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from exitlat.build import baseimage, debs
from exitlat.errors import ExitlatError
from exitlat.build.pins import DEFAULT_PINS, load_pins
from exitlat.build.sources import ChecksumMismatch, SourceFetcher


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
    got = SourceFetcher(pins, cache=tmp_path / "c", log=lambda m: None, timeout=3,
                        retry_delays=(0.01,)).fetch(pins.source("busybox"))
    assert got.origin.endswith("/good.tar")


def test_all_providers_down_is_one_line(tmp_path, tiny):
    payload, digest, make = tiny
    pins = make(urls=["http://127.0.0.1:9/down.tar"])
    said = []
    with pytest.raises(ExitlatError) as err:
        SourceFetcher(pins, cache=tmp_path / "c", log=said.append, timeout=3,
                      retry_delays=(0.01, 0.01)).fetch(pins.source("busybox"))
    assert "cannot get busybox" in str(err.value) and "\n" not in str(err.value)
    # a refused connection is tried again, as often as there are delays, then given up
    assert sum("trying again" in m for m in said) == 2


def test_a_dropped_connection_is_tried_again(tmp_path, tiny):
    """A connection that ends with no answer (a resolver or network hiccup) is retried before
    the next provider; an HTTP error status is an answer and is not."""
    payload, digest, make = tiny
    seen = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if len(seen) == 1:          # the first request: hang up without an answer
                self.close_connection = True
                return
            if self.path.endswith("/missing.tar"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        pins = make(urls=[f"{base}/busybox-test.tar"])
        got = SourceFetcher(pins, cache=tmp_path / "c", log=lambda m: None,
                            retry_delays=(0.01,)).fetch(pins.source("busybox"))
        assert got.provider == "upstream" and got.path.read_bytes() == payload
        assert seen == ["/busybox-test.tar"] * 2
        seen[:] = ["warm"]              # the next first request is answered: 404, not retried
        pins = make(urls=[f"{base}/missing.tar"])
        with pytest.raises(ExitlatError, match="Not Found"):
            SourceFetcher(pins, cache=tmp_path / "d", log=lambda m: None,
                          retry_delays=(0.01,)).fetch(pins.source("busybox"))
        assert seen == ["warm", "/missing.tar"]
    finally:
        srv.shutdown()


def test_missing_mirror_folder(tmp_path, tiny):
    with pytest.raises(ExitlatError, match="mirror folder not found"):
        SourceFetcher(tiny[2](), mirror=tmp_path / "nope")


def test_mirror_from_the_environment(tmp_path, tiny, monkeypatch):
    """EXITLAT_MIRROR serves where no --mirror is given (CI points it at the shared mirror); a
    missing folder there is named with the variable, and without any mirror the error says how
    to give one."""
    payload, digest, make = tiny
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "busybox-test.tar").write_bytes(payload)
    monkeypatch.setenv("EXITLAT_MIRROR", str(mirror))
    got = SourceFetcher(make(), cache=tmp_path / "cache", use_network=False).fetch(
        make().source("busybox"))
    assert got.provider == "mirror" and got.path.read_bytes() == payload
    monkeypatch.setenv("EXITLAT_MIRROR", str(tmp_path / "nope"))
    with pytest.raises(ExitlatError, match=r"mirror folder not found: .*nope \(from EXITLAT_MIRROR\)"):
        SourceFetcher(make())
    monkeypatch.delenv("EXITLAT_MIRROR")
    pins = make(urls=["http://127.0.0.1:9/down.tar"])
    with pytest.raises(ExitlatError, match=r"--mirror DIR or EXITLAT_MIRROR=DIR\)$"):
        SourceFetcher(pins, cache=tmp_path / "c2", log=lambda m: None, timeout=3).fetch(
            pins.source("busybox"))


def test_missing_mirror_is_a_file(tmp_path, tiny):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ExitlatError, match="is a file"):
        SourceFetcher(tiny[2](), mirror=f)


# --- the pinned base: bootstrap packages ---------------------------------------------------------


def test_base_packages_are_pinned():
    base = load_pins().base
    tool, required, rest = baseimage.bootstrap_pins(base)
    names = {n for n, _ in required}
    # debootstrap's minbase for bookworm: Priority required, usr-is-merged, apt and what it needs.
    assert {"apt", "dpkg", "libc6", "base-files", "usr-is-merged", "debian-archive-keyring"} <= names
    assert tool.file.startswith("debootstrap_") and len(tool.sha256) == 64
    for _, pin in required + rest:
        assert pin.file.endswith(".deb") and len(pin.sha256) == 64
        url = pin.debian_pool_url(base["debootstrap"]["mirror"])
        assert url.startswith("http://deb.debian.org/debian/pool/main/") and url.endswith(pin.file)


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["base"]["debootstrap"]["required"]["apt"].__setitem__("sha256", "abc"),
     "base.debootstrap.required.apt.sha256"),
    (lambda r: r["base"]["debootstrap"]["required"]["apt"].pop("file"), "base.debootstrap.required.apt"),
    (lambda r: r["base"]["debootstrap"].pop("tool"), "base.debootstrap"),
    (lambda r: r["base"]["debootstrap"]["tool"].__setitem__("file", "x.tar"), "base.debootstrap.tool.file"),
])
def test_bad_base_pins_name_the_field(tmp_path, mutate, field):
    with pytest.raises(ExitlatError) as err:
        load_pins(write_pins(tmp_path, mutate))
    assert f"field {field}" in str(err.value)


def _tar(members, compress=""):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tar:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if what is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(what, tuple):
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                info.linkname = what[1]
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return buf.getvalue()


def make_deb(path: Path, control: str, data_members) -> Path:
    """A real .deb: an ar archive of debian-binary, control.tar.gz and data.tar.xz."""
    def member(name: str, data: bytes) -> bytes:
        hdr = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        return hdr + data + (b"\n" if len(data) % 2 else b"")

    body = (member("debian-binary", b"2.0\n")
            + member("control.tar.gz", _tar([("./control", control.encode())], "gz"))
            + member("data.tar.xz", _tar(data_members, "xz")))
    path.write_bytes(b"!<arch>\n" + body)
    return path


def test_deb_reading(tmp_path):
    deb = make_deb(tmp_path / "p_1_all.deb", "Package: p\nVersion: 1\nDepends: a (>= 2) | b, c:any\n",
                   [("./usr/", None), ("./usr/x", b"x")])
    stanza = debs.parse_stanzas(debs.deb_control(deb))[0]
    assert stanza["Package"] == "p" and debs.dep_names(stanza) == ["a", "c"]
    with debs.deb_data(deb) as tar:
        assert [m.name for m in tar] == ["./usr", "./usr/x"]
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an ar archive")
    with pytest.raises(ExitlatError, match="not a Debian package"):
        debs.deb_control(bad)


def test_resolve_minbase_as_debootstrap():
    index = debs.parse_stanzas(
        "Package: base-files\nPriority: required\nDepends: libc6\n\n"
        "Package: libc6\nPriority: optional\nDepends: libgcc-s1 | libgcc1, virtual-thing\n\n"
        "Package: libgcc-s1\nPriority: optional\n\n"
        "Package: usr-is-merged\nPriority: optional\nDepends: usrmerge | usr-is-merged\n\n"
        "Package: usrmerge\nPriority: optional\n\n"
        "Package: apt\nPriority: important\nDepends: libc6, gpgv\n\n"
        "Package: gpgv\nPriority: important\n\n"
        "Package: unrelated\nPriority: optional\n")
    required, base = debs.resolve_minbase(index)
    assert required == ["base-files", "libc6", "libgcc-s1", "usr-is-merged"]
    assert base == ["apt", "gpgv"]


def test_usr_merge_paths():
    assert baseimage._usr_merged("./bin/sh") == "usr/bin/sh"
    assert baseimage._usr_merged("./lib64/ld-linux-x86-64.so.2") == "usr/lib64/ld-linux-x86-64.so.2"
    assert baseimage._usr_merged("./usr/bin/x") == "usr/bin/x"
    assert baseimage._usr_merged("./etc/") == "etc"
    assert baseimage._usr_merged("./library/x") == "library/x"


def test_first_stage_layout(tmp_path):
    """What Python lays out for debootstrap's --second-stage: merged /usr, first file wins, every
    .deb and an index of them, debootstrap and its state."""
    from exitlat.build.pins import SourcePin

    def pin(name, file):
        return SourcePin(name=f"base.{name}", version="1", file=file, sha256="0" * 64, urls=(),
                         debian_source=name, debian_version="1")

    a = make_deb(tmp_path / "a_1_amd64.deb", "Package: a\nVersion: 1\nPriority: required\n",
                 [("./", None), ("./bin/", None), ("./bin/dash", b"dash"), ("./bin/sh", ("sym", "dash")),
                  ("./usr/", None), ("./usr/bin/", None), ("./usr/bin/perl", b"perl"),
                  ("./usr/bin/perl5", ("lnk", "./usr/bin/perl")), ("./lib64/", None),
                  ("./lib64/ld.so", b"ld")])
    b = make_deb(tmp_path / "b_1_amd64.deb", "Package: b\nVersion: 1\nPriority: required\n",
                 [("./bin/", None), ("./bin/dash", b"other"), ("./etc/", None), ("./etc/b", b"b")])
    tool = make_deb(tmp_path / "debootstrap_1_all.deb", "Package: debootstrap\nVersion: 1\n",
                    [("./usr/sbin/debootstrap", b"#!/bin/sh\n"),
                     ("./usr/share/debootstrap/functions", b"f"),
                     ("./usr/share/debootstrap/scripts/sid", b"sid script"),
                     ("./usr/share/debootstrap/scripts/bookworm", ("sym", "sid")),
                     ("./usr/share/debootstrap/scripts/debian-common", b"common")])
    base = {"debootstrap": {"suite": "bookworm", "variant": "minbase",
                            "mirror": "http://deb.debian.org/debian"}}
    out = tmp_path / "stage1.tar"
    baseimage._first_stage(out, base, tool, [("a", pin("a", a.name), a), ("b", pin("b", b.name), b)], [])
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert len(names) == len(set(names)), "no name twice"
        m = {x.name: x for x in tar.getmembers()}
        read = lambda n: tar.extractfile(m[n]).read().decode()  # noqa: E731
        assert m["bin"].issym() and m["bin"].linkname == "usr/bin"
        assert m["lib64"].linkname == "usr/lib64" and "lib" not in m
        assert read("usr/bin/dash") == "dash"                        # the first package wins
        assert m["usr/bin/sh"].issym() and m["usr/bin/sh"].linkname == "dash"
        assert m["usr/bin/perl5"].islnk() and m["usr/bin/perl5"].linkname == "usr/bin/perl"
        assert read("etc/b") == "b"
        assert read("debootstrap/suite-script") == "sid script"
        assert read("debootstrap/debian-common") == "common"
        assert m["debootstrap/debootstrap"].mode == 0o755
        assert read("debootstrap/required").split() == ["a", "b"]
        assert read("debootstrap/base").strip() == ""
        assert read("debootstrap/variant").strip() == "minbase"
        assert "a /var/cache/apt/archives/a_1_amd64.deb" in read("debootstrap/debpaths")
        assert "var/cache/apt/archives/b_1_amd64.deb" in m
        index = read("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages")
        stanzas = debs.parse_stanzas(index)
        assert [s["Package"] for s in stanzas] == ["a", "b"]
        assert stanzas[0]["Filename"] == "pool/main/a/a/a_1_amd64.deb"
        assert read("var/lib/dpkg/status") == ""
        assert read("etc/dpkg/dpkg.cfg.d/exitlat-unsafe-io").strip() == "force-unsafe-io"


def test_export_filter():
    keep = baseimage._keep
    assert not keep(".dockerenv") and not keep("etc/resolv.conf") and not keep("debootstrap/functions")
    assert not keep("var/cache/apt/archives/apt_2.6.1_amd64.deb")
    assert not keep("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages")
    assert keep("var/lib/apt/lists/partial") and keep("var/cache/apt/archives/partial")
    assert keep("usr/bin/apt") and keep("etc/passwd")
