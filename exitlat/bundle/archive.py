"""Export a bundle to one deterministic .tar.gz, and import one back.

Export: entries sorted, owner 0:0, fixed modes, mtime 0, gzip header without name or time, so the
same bundle always gives the same bytes. Import: pass 1 streams the archive and runs every bundle
check (bundlecheck.check_files) on hashes and headers, holding only bundle.json/SHA256SUMS in memory;
only then pass 2 extracts into a hidden temporary folder next to the results, re-checks it, and
renames it into place. A bad archive never leaves anything behind.
"""

import gzip
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from .read import load_bundle
from .check import FileInfo, check_files, check_rel, read_info
from .format import NAME_RE
from .write import new_bundle_folder
from exitlat.errors import ExitlatError


def _tarinfo(name: str, size: int | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    if size is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size, ti.mode = size, 0o644
    return ti


def export_bundle(bundle_path: Path, output: Path) -> Path:
    """Write the (checked) bundle as output (.tar.gz); refuses to overwrite output."""
    b = load_bundle(bundle_path)
    output = Path(output)
    if output.exists():
        raise ExitlatError(f"{output} already exists; refusing to overwrite it")
    rels = sorted(p.relative_to(b.path).as_posix() for p in b.path.rglob("*") if p.is_file())
    dirs = sorted({r.rsplit("/", 1)[0] for r in rels if "/" in r})
    tmp = output.with_name(f".tmp-{output.name}")
    try:
        with open(tmp, "xb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(b.name, None))
            for d in dirs:
                tar.addfile(_tarinfo(f"{b.name}/{d}", None))
            for rel in rels:
                with open(b.path / rel, "rb") as f:
                    tar.addfile(_tarinfo(f"{b.name}/{rel}", os.fstat(f.fileno()).st_size), f)
        if output.exists():
            raise ExitlatError(f"{output} appeared while writing; refusing to overwrite it")
        os.rename(tmp, output)
    except FileExistsError:
        raise ExitlatError(f"{tmp} exists (another export running, or a crashed one: remove it)") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output


_BAD_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


def _members(archive: Path):
    """Yield (member, fileobj) of a gzip'd tar, streaming; errors become one ExitlatError line."""
    try:
        with gzip.open(archive, "rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for m in tar:
                    yield m, (tar.extractfile(m) if m.isfile() else None)
            # tar stops at its end marker; read the gzip stream to its end so that a missing or
            # wrong CRC/length trailer (a truncated download) is caught too.
            for chunk in iter(lambda: gz.read(1 << 16), b""):
                if chunk.strip(b"\0"):
                    raise ExitlatError(f"{archive}: unexpected data after the end of the tar archive")
    except ExitlatError:
        raise
    except _BAD_ARCHIVE as err:
        raise ExitlatError(f"{archive}: truncated or corrupt archive ({err.__class__.__name__}: {err})") from None


def _split(archive: Path, m: tarfile.TarInfo, top: list) -> str | None:
    """The path inside the bundle of a member, after refusing anything but plain files and
    folders of one bundle folder (no absolute paths, '..', links, devices)."""
    name = m.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts[:-1] or "\\" in name:
        raise ExitlatError(f"{archive}: unsafe path in archive: {name!r}")
    if not (m.isfile() or m.isdir()):
        raise ExitlatError(f"{archive}: {name!r} is not a plain file or folder (links are refused)")
    if parts[-1] == "":
        parts = parts[:-1]
    if not top:
        top.append(parts[0])
    if parts[0] != top[0]:
        raise ExitlatError(f"{archive}: more than one top-level folder ({top[0]!r}, {parts[0]!r})")
    rel = "/".join(parts[1:])
    if m.isdir():
        if rel not in ("", "samples"):
            raise ExitlatError(f"{archive}: unexpected folder {name!r}")
        return None
    if not rel:
        raise ExitlatError(f"{archive}: {name!r} is a file, not a bundle folder")
    check_rel(rel)
    return rel


def scan_archive(archive: Path) -> tuple[str, dict[str, FileInfo]]:
    """Pass 1: the bundle name and a FileInfo per member, nothing written."""
    try:
        return _scan(archive)
    except ExitlatError:
        raise
    except _BAD_ARCHIVE as err:   # raised while reading a member's data
        raise ExitlatError(f"{archive}: truncated or corrupt archive ({err.__class__.__name__}: {err})") from None


def _scan(archive: Path) -> tuple[str, dict[str, FileInfo]]:
    top: list = []
    files: dict[str, FileInfo] = {}
    for m, f in _members(archive):
        rel = _split(archive, m, top)
        if rel is None:
            continue
        if rel in files:
            raise ExitlatError(f"{archive}: {rel} appears twice in the archive")
        info = read_info(f, rel)
        if info.size != m.size:
            raise ExitlatError(f"{archive}: {rel} is truncated")
        files[rel] = info
    if not top:
        raise ExitlatError(f"{archive}: empty archive")
    if not NAME_RE.match(top[0]):
        raise ExitlatError(f"{archive}: bad bundle name {top[0]!r}")
    return top[0], files


def import_bundle(archive: Path, results_root: Path) -> Path:
    archive = Path(archive)
    if not archive.is_file():
        raise ExitlatError(f"{archive}: no such file")
    name, files = scan_archive(archive)
    check_files(files, f"{archive}")
    final = Path(results_root) / name
    if final.exists():
        raise ExitlatError(f"bundle {final} already exists; refusing to overwrite it")
    Path(results_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(results_root) / f".tmp-import-{name}"
    with new_bundle_folder(final, tmp, "another import running") as folder:
        top: list = []
        for m, f in _members(archive):       # pass 2: same archive, now known to be good
            rel = _split(archive, m, top)
            if rel is not None:
                with open(folder / rel, "xb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
        load_bundle(folder)                   # the file could have changed since pass 1
    return final
