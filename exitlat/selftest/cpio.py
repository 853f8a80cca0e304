"""A minimal writer of uncompressed `newc` cpio archives, the format the Linux kernel unpacks as an
initramfs. Uncompressed on purpose: under TCG, decompressing a few hundred MiB costs seconds.

The kernel accepts several archives one after the other (each ending in its TRAILER!!!); a later
entry replaces an earlier one with the same name. selftest uses that to put a per-run archive (the
exitlat package, the guest build, /init) after the cached L1 userland.

Every entry is written with nlink 1 and an inode number of its own: hard links become copies
(the kernel would otherwise try to link them), so any archive order is safe.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterable

from exitlat.errors import ExitlatError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_COPY = 1 << 20


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


class CpioWriter:
    """Write newc entries to a binary stream. Names are given without a leading slash."""

    def __init__(self, out: BinaryIO, mtime: int = 0):
        self.out = out
        self.mtime = int(mtime)
        self.ino = 1000
        self.names: set[str] = set()
        try:
            self.base = out.tell()    # where this archive starts in its file
        except (OSError, AttributeError):
            self.base = 0
        self.size = 0                 # bytes written so far (the offset of the next entry)
        self.last_data_offset = 0     # where the data of the last regular file starts
        self.closed = False

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.size += len(data)

    def _header(self, name: str, mode: int, size: int, mtime: int | None = None, uid: int = 0,
                gid: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        if self.closed:
            raise ExitlatError("cpio: entry added after the trailer")
        name = name.lstrip("/")
        if not name or "\0" in name or ".." in name.split("/"):
            raise ExitlatError(f"cpio: bad entry name {name!r}")
        self.ino += 1
        fields = [self.ino, mode, uid, gid, 1, self.mtime if mtime is None else int(mtime), size,
                  0, 0, rdev[0], rdev[1], len(name.encode()) + 1, 0]
        hdr = MAGIC + b"".join(b"%08X" % (f & 0xFFFFFFFF) for f in fields)
        raw = hdr + name.encode() + b"\0"
        self._write(raw + _pad(len(raw)))
        self.names.add(name)

    def add_dir(self, name: str, mode: int = 0o755, mtime: int | None = None) -> None:
        self._header(name, stat.S_IFDIR | (mode & 0o7777), 0, mtime)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, mtime: int | None = None) -> None:
        self._header(name, stat.S_IFREG | (mode & 0o7777), len(data), mtime)
        self.last_data_offset = self.size
        self._write(data + _pad(len(data)))

    def add_stream(self, name: str, f: BinaryIO, size: int, mode: int = 0o644,
                   mtime: int | None = None) -> None:
        self._header(name, stat.S_IFREG | (mode & 0o7777), size, mtime)
        self.last_data_offset = self.size
        left = size
        while left:
            chunk = f.read(min(_COPY, left))
            if not chunk:
                raise ExitlatError(f"cpio: {name} is shorter than its {size} bytes")
            self._write(chunk)
            left -= len(chunk)
        self._write(_pad(size))

    def add_file(self, name: str, path: Path, mode: int | None = None, mtime: int | None = None) -> None:
        st = os.stat(path)
        with open(path, "rb") as f:
            self.add_stream(name, f, st.st_size, stat.S_IMODE(st.st_mode) if mode is None else mode,
                            mtime)

    def add_symlink(self, name: str, target: str, mtime: int | None = None) -> None:
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data), mtime)
        self._write(data + _pad(len(data)))

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._header(name, stat.S_IFCHR | (mode & 0o7777), 0, rdev=(major, minor))

    def add_tree(self, name: str, folder: Path, skip=lambda p: False) -> None:
        """A folder and everything under it (sorted, so the archive is the same every time);
        symlinks are kept as links."""
        folder = Path(folder)
        self.add_dir(name)
        for p in sorted(folder.rglob("*")):
            if skip(p):
                continue
            rel = f"{name.rstrip('/')}/{p.relative_to(folder).as_posix()}"
            if p.is_symlink():
                self.add_symlink(rel, os.readlink(p))
            elif p.is_dir():
                self.add_dir(rel, stat.S_IMODE(p.stat().st_mode))
            elif p.is_file():
                self.add_file(rel, p)

    def add_tar_stream(self, tar: tarfile.TarFile, skip=lambda name: False) -> int:
        """Copy a streamed tar (e.g. `docker export`) entry by entry; a hard link becomes a copy of
        its target, read back from the archive written so far (the output must be a real file).
        Returns the number of entries copied."""
        where: dict[str, tuple[int, int, int]] = {}    # name -> (data offset, size, mode)
        count = 0
        for m in tar:
            name = m.name.removeprefix("./").strip("/")
            if not name or name == "." or skip(name):
                continue
            mode = m.mode & 0o7777
            if m.isdir():
                self.add_dir(name, mode, m.mtime)
            elif m.isfile():
                self.add_stream(name, tar.extractfile(m), m.size, mode, m.mtime)
                where[name] = (self.last_data_offset, m.size, mode)
            elif m.issym():
                self.add_symlink(name, m.linkname, m.mtime)
            elif m.islnk():
                target = m.linkname.removeprefix("./").strip("/")
                if target not in where:
                    raise ExitlatError(f"cpio: hard link {name} to {target}, which is not in the archive")
                off, size, _ = where[target]
                data = self._read_back(self.base + off, size)
                self.add_bytes(name, data, mode, m.mtime)
                where[name] = (self.last_data_offset, size, mode)
            elif m.ischr():
                self.add_chardev(name, m.devmajor, m.devminor, mode)
            else:
                continue   # fifos, block devices: L1 needs none
            count += 1
        return count

    def _read_back(self, offset: int, size: int) -> bytes:
        """Bytes already written to the output file (opened for writing only, or not)."""
        self.out.flush()
        name = getattr(self.out, "name", None)
        if not isinstance(name, str):
            raise ExitlatError("cpio: hard links need the archive written to a named file")
        with open(name, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise ExitlatError("cpio: could not read back a hard link's target")
        return data

    def close(self) -> None:
        """Write the trailer (the archive can then be followed by another one)."""
        if not self.closed:
            self._header(TRAILER, 0, 0, mtime=0)
            self.closed = True
            self._write(b"\0" * ((512 - self.size % 512) % 512))   # next archive on a block


def read_names(data: bytes) -> list[tuple[str, int, bytes]]:
    """Parse newc archives (one or several, concatenated): [(name, mode, data)], trailers
    excluded. For tests and checks; the kernel is the real reader."""
    out = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 6] != MAGIC:
            if data[pos:].strip(b"\0"):
                raise ExitlatError(f"cpio: bad magic at offset {pos}")
            break
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_start = pos + 110
        name = data[name_start: name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += (4 - pos % 4) % 4
        body = data[pos: pos + size]
        pos += size
        pos += (4 - pos % 4) % 4
        if name == TRAILER:
            while pos < len(data) and data[pos] == 0:
                pos += 1
            continue
        out.append((name, mode, body))
    return out


def files_in(entries: Iterable[tuple[str, int, bytes]]) -> dict[str, bytes]:
    return {n: d for n, m, d in entries if stat.S_ISREG(m)}
