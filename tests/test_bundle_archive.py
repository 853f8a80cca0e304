"""export -> import: deterministic archives, byte-identical files, and refusal of bad archives
before anything is written."""

import gzip
import io
import json
import os
import tarfile

import pytest

from bundle_fixtures import make_bundle, reseal, tree
from exitlat.bundle.archive import export_bundle, import_bundle
from exitlat.errors import ExitlatError


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "src", "20250115T102030Z-bench01-abc123", cases=(1, 2, 5))


def _refused(archive, dest, match):
    with pytest.raises(ExitlatError, match=match) as ei:
        import_bundle(archive, dest)
    assert "\n" not in str(ei.value)
    assert not dest.exists() or os.listdir(dest) == [], "import wrote something"


def test_export_import_byte_identical_and_deterministic(bundle, tmp_path):
    a = export_bundle(bundle, tmp_path / "a.tar.gz")
    b = export_bundle(bundle, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    got = import_bundle(a, tmp_path / "dest")
    assert got == tmp_path / "dest" / bundle.name
    assert tree(got) == tree(bundle)
    assert export_bundle(got, tmp_path / "c.tar.gz").read_bytes() == a.read_bytes()
    with tarfile.open(a) as t:
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in t.getmembers())
        assert t.getnames()[0] == bundle.name


def test_never_overwrites(bundle, tmp_path):
    a = export_bundle(bundle, tmp_path / "a.tar.gz")
    with pytest.raises(ExitlatError, match="already exists"):
        export_bundle(bundle, a)
    import_bundle(a, tmp_path / "dest")
    before = tree(tmp_path / "dest")
    with pytest.raises(ExitlatError, match="already exists; refusing to overwrite"):
        import_bundle(a, tmp_path / "dest")
    assert tree(tmp_path / "dest") == before


def test_export_refuses_a_broken_bundle(bundle, tmp_path):
    (bundle / "extra.txt").write_text("x")
    with pytest.raises(ExitlatError, match="extra file extra.txt"):
        export_bundle(bundle, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


@pytest.mark.parametrize("cut", [0, 50, 0.5, -20, -1])
def test_truncated_archive(bundle, tmp_path, cut):
    data = export_bundle(bundle, tmp_path / "a.tar.gz").read_bytes()
    n = cut if isinstance(cut, int) and cut >= 0 else len(data) + cut if isinstance(cut, int) else int(len(data) * cut)
    (tmp_path / "t.tar.gz").write_bytes(data[:n])
    _refused(tmp_path / "t.tar.gz", tmp_path / "dest", "truncated or corrupt archive")


def _repack(src_archive, out, change):
    """Rewrite an archive member by member; change(name, data) -> list of (name, data, type)."""
    with tarfile.open(src_archive) as t:
        members = [(m.name, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members:
            for n2, d2, typ in change(name, data):
                ti = tarfile.TarInfo(n2)
                ti.type = typ
                if typ == tarfile.SYMTYPE:
                    ti.linkname = d2
                    t.addfile(ti)
                elif d2 is None:
                    t.addfile(ti)
                else:
                    ti.size = len(d2)
                    t.addfile(ti, io.BytesIO(d2))
    out.write_bytes(gzip.compress(buf.getvalue()))
    return out


def _keep(name, data):
    return [(name, data, tarfile.DIRTYPE if data is None else tarfile.REGTYPE)]


def test_tampered_member(bundle, tmp_path):
    a = export_bundle(bundle, tmp_path / "a.tar.gz")

    def flip(name, data):
        if name.endswith("case5-r0.npy"):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        return _keep(name, data)
    _refused(_repack(a, tmp_path / "t.tar.gz", flip), tmp_path / "dest",
             "checksum mismatch for samples/case5-r0.npy")


def test_path_traversal_and_links(bundle, tmp_path):
    a = export_bundle(bundle, tmp_path / "a.tar.gz")
    top = bundle.name

    def evil(name, data):
        out = _keep(name, data)
        if name == f"{top}/bundle.json":
            out.append((f"{top}/../../evil.txt", b"x", tarfile.REGTYPE))
        return out
    _refused(_repack(a, tmp_path / "t1.tar.gz", evil), tmp_path / "dest", "unsafe path")
    assert not (tmp_path / "evil.txt").exists()

    def absolute(name, data):
        return [("/tmp/" + name, data, tarfile.DIRTYPE if data is None else tarfile.REGTYPE)]
    _refused(_repack(a, tmp_path / "t2.tar.gz", absolute), tmp_path / "dest", "unsafe path")

    def link(name, data):
        out = _keep(name, data)
        if name == f"{top}/bundle.json":
            out.append((f"{top}/console-r1.log", "/etc/passwd", tarfile.SYMTYPE))
        return out
    _refused(_repack(a, tmp_path / "t3.tar.gz", link), tmp_path / "dest", "not a plain file")


def test_extra_missing_and_second_bundle(bundle, tmp_path):
    a = export_bundle(bundle, tmp_path / "a.tar.gz")
    top = bundle.name
    extra = _repack(a, tmp_path / "t1.tar.gz", lambda n, d: _keep(n, d) + (
        [(f"{top}/notes.txt", b"hi", tarfile.REGTYPE)] if n.endswith("bundle.json") else []))
    _refused(extra, tmp_path / "dest", "extra file notes.txt")
    missing = _repack(a, tmp_path / "t2.tar.gz", lambda n, d: [] if n.endswith("console-r0.log") else _keep(n, d))
    _refused(missing, tmp_path / "dest", "missing file console-r0.log")
    two = _repack(a, tmp_path / "t3.tar.gz", lambda n, d: _keep(n, d) + (
        [("other/bundle.json", b"{}", tarfile.REGTYPE)] if n.endswith("bundle.json") else []))
    _refused(two, tmp_path / "dest", "more than one top-level folder")
    dup = _repack(a, tmp_path / "t4.tar.gz", lambda n, d: _keep(n, d) * (2 if n.endswith("SHA256SUMS") else 1))
    _refused(dup, tmp_path / "dest", "appears twice")


def test_newer_schema_version_in_archive(bundle, tmp_path):
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["schema_version"] = 99
    (bundle / "bundle.json").write_text(json.dumps(doc))
    reseal(bundle)
    # export checks the bundle first, so build the archive by hand from the resealed folder
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(bundle, arcname=bundle.name)
    (tmp_path / "new.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    _refused(tmp_path / "new.tar.gz", tmp_path / "dest", "schema_version 99 is newer")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tar.gz").write_text("hello, not gzip")
    _refused(tmp_path / "x.tar.gz", tmp_path / "dest", "truncated or corrupt archive")
    _refused(tmp_path / "nope.tar.gz", tmp_path / "dest", "no such file")
