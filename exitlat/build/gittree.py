"""The git tree id of a source archive's content: the check that identifies a pinned tree whatever
program made its archive. A forge's on-the-fly archive (GitLab's, GitHub's) need not be byte-identical
to the one pinned by sha256, but its files are the tree's; their git tree id is the same.

Computed from the archive alone (no git): every regular file is a blob (`blob <size>\\0<data>`),
every symbolic link a blob of its target, folders trees whose entries git sorts by name with a
'/' after folder names. The archive's single top-level folder (the prefix) is not part of the tree."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from exitlat.errors import ExitlatError


def _object(kind: bytes, data: bytes) -> bytes:
    return hashlib.sha1(kind + b" " + str(len(data)).encode() + b"\0" + data).digest()


def _tree(entries: dict) -> bytes:
    """entries: name -> (mode, sha1 digest) or name -> dict (a folder)."""
    rows = []
    for name, value in entries.items():
        if isinstance(value, dict):
            if not value:            # git keeps no empty folders
                continue
            rows.append((name + "/", b"40000 " + name.encode() + b"\0" + _tree(value)))
        else:
            mode, digest = value
            rows.append((name, mode + b" " + name.encode() + b"\0" + digest))
    rows.sort(key=lambda r: r[0].encode())
    return _object(b"tree", b"".join(r[1] for r in rows))


def tree_id(archive: Path | str, strip_prefix: bool = True) -> str:
    """The git tree id (hex) of the files in a tar archive (any compression tarfile reads)."""
    root: dict = {}
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.type not in (tarfile.XGLTYPE, tarfile.XHDTYPE)]
            tops = {m.name.split("/", 1)[0] for m in members}
            prefix = next(iter(tops)) + "/" if strip_prefix and len(tops) == 1 else ""
            for m in members:
                name = m.name.rstrip("/")
                if prefix:
                    if name + "/" == prefix:
                        continue
                    name = name[len(prefix):]
                parts = name.split("/")
                folder = root
                for p in parts[:-1]:
                    folder = folder.setdefault(p, {})
                if m.isdir():
                    folder.setdefault(parts[-1], {})
                elif m.issym():
                    folder[parts[-1]] = (b"120000", _object(b"blob", m.linkname.encode()))
                elif m.isfile():
                    data = tar.extractfile(m).read()
                    mode = b"100755" if m.mode & 0o100 else b"100644"
                    folder[parts[-1]] = (mode, _object(b"blob", data))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ExitlatError(f"cannot read the archive {archive}: {err}") from None
    return _tree(root).hex()
