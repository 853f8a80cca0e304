"""Every check of a bundle's files: the listing, SHA256SUMS, the document's schema and version, and
each sample file against its entry. The checks run on a {relative path: FileInfo} listing, so that
`import` runs exactly the same checks on an archive before writing anything."""

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitlat.errors import ExitlatError

from .format import (BUNDLE_JSON, FILE_RE, SAMPLES_DIR, SCHEMA_VERSION, SUMS, entries,
                        validate_doc)
_SUMS_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


_HEAD = 4096              # bytes kept of every file: enough for any .npy header we write


_MAX_SMALL = 64 << 20     # bundle.json / SHA256SUMS larger than this are not ours


@dataclass
class FileInfo:
    """What the checks need of one file: size, sha256, its first bytes, all of it if small."""
    size: int
    sha256: str
    head: bytes
    data: bytes | None = None


def walk_files(folder: Path):
    """Relative paths of the regular files under folder; links and special files are errors."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                raise ExitlatError(f"{os.path.join(dirpath, d)}: symbolic links are not allowed in a bundle")
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                raise ExitlatError(f"{p}: not a regular file (links are not allowed in a bundle)")
            yield os.path.relpath(p, folder).replace(os.sep, "/")


def read_info(f, rel: str) -> FileInfo:
    """Size, sha256 and the first bytes of one file read from `f` (a folder's file or an archive
    member), keeping the whole content only for the small metadata files."""
    h, size, head, keep = hashlib.sha256(), 0, b"", []
    small = rel in (BUNDLE_JSON, SUMS)
    for chunk in iter(lambda: f.read(1 << 20), b""):
        if not head:
            head = chunk[:_HEAD]
        h.update(chunk)
        size += len(chunk)
        if small and size <= _MAX_SMALL:
            keep.append(chunk)
    return FileInfo(size, h.hexdigest(), head, b"".join(keep) if small else None)


def scan_folder(folder: Path) -> dict[str, FileInfo]:
    out = {}
    for rel in walk_files(folder):
        with open(folder / rel, "rb") as f:
            out[rel] = read_info(f, rel)
    return out


def _parse_sums(data: bytes) -> dict[str, str]:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ExitlatError(f"{SUMS} is not text") from None
    sums = {}
    for i, line in enumerate(text.splitlines(), 1):
        m = _SUMS_LINE.match(line)
        if not m:
            raise ExitlatError(f"{SUMS} line {i} is not '<sha256>  <file>'")
        rel = m.group(2)
        if rel in sums:
            raise ExitlatError(f"{SUMS} lists {rel} twice")
        check_rel(rel)
        sums[rel] = m.group(1)
    return sums


def check_rel(rel: str) -> None:
    parts = rel.split("/")
    ok = (len(parts) == 1 and FILE_RE.match(parts[0])) or \
         (len(parts) == 2 and parts[0] == SAMPLES_DIR and FILE_RE.match(parts[1]))
    if not ok or ".." in parts:
        raise ExitlatError(f"unexpected path in bundle: {rel!r}")


def npy_length(rel: str, info: FileInfo) -> int:
    """Number of samples in a .npy file from its header; refuses anything but a 1-D uint64 array
    whose size matches the header exactly (truncated or padded files)."""
    f = io.BytesIO(info.head)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError) as err:
        raise ExitlatError(f"{rel}: not a valid .npy file ({err})") from None
    if dtype != np.dtype("<u8") or len(shape) != 1:
        raise ExitlatError(f"{rel}: expected a 1-D uint64 array, got {dtype} {shape}")
    n = shape[0]
    if info.size != f.tell() + 8 * n:
        raise ExitlatError(f"{rel}: size {info.size} does not match its header ({n} samples): "
                           "truncated or padded")
    if n == 0:
        raise ExitlatError(f"{rel}: empty sample file")
    return n


def check_files(files: dict[str, FileInfo], where: str) -> dict:
    """All checks of one bundle's files; returns the parsed, schema-valid bundle.json."""
    if BUNDLE_JSON not in files:
        raise ExitlatError(f"not a bundle: {where} has no {BUNDLE_JSON}")
    if SUMS not in files:
        raise ExitlatError(f"{where}: {SUMS} is missing")
    for rel in files:
        check_rel(rel)
    if files[SUMS].data is None or files[BUNDLE_JSON].data is None:
        raise ExitlatError(f"{where}: {BUNDLE_JSON} or {SUMS} is too large to be a bundle's")
    sums = _parse_sums(files[SUMS].data)
    for rel in sorted(sums):
        if rel not in files:
            raise ExitlatError(f"{where}: missing file {rel} (listed in {SUMS})")
    for rel in sorted(files):
        if rel != SUMS and rel not in sums:
            raise ExitlatError(f"{where}: extra file {rel} (not in {SUMS})")
    for rel in sorted(sums):
        if files[rel].sha256 != sums[rel]:
            raise ExitlatError(f"{where}: checksum mismatch for {rel} (modified or corrupted)")
    try:
        doc = json.loads(files[BUNDLE_JSON].data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ExitlatError(f"{where}: {BUNDLE_JSON} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ExitlatError(f"{where}: {BUNDLE_JSON} is not a JSON object")
    ver = doc.get("schema_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise ExitlatError(f"{where}: {BUNDLE_JSON} has no valid schema_version")
    if ver > SCHEMA_VERSION:
        raise ExitlatError(f"{where}: schema_version {ver} is newer than this exitlat supports "
                           f"({SCHEMA_VERSION}); upgrade exitlat to read it")
    validate_doc(doc, f"{where}: {BUNDLE_JSON}")
    _check_samples(doc, files, where)
    return doc


def _check_samples(doc: dict, files: dict[str, FileInfo], where: str) -> None:
    complete = doc["status"]["state"] == "complete"
    keys, referenced = set(), set()
    for e in entries(doc):
        if e["key"] in keys:
            raise ExitlatError(f"{where}: entry key {e['key']!r} appears twice")
        keys.add(e["key"])
        sf = e["samples_file"]
        if sf is None or e["stats"] is None:
            # a complete run has samples for every entry but a case its guest refused to run
            left_out = bool((e.get("verification") or {}).get("refused"))
            if (complete and not left_out) or (sf is None) != (e["stats"] is None):
                raise ExitlatError(f"{where}: entry {e['key']!r} has no samples/stats in a "
                                   "complete run" if complete else
                                   f"{where}: entry {e['key']!r}: samples_file and stats disagree")
            continue
        if sf != f"{SAMPLES_DIR}/{e['samples_key']}.npy":
            raise ExitlatError(f"{where}: entry {e['key']!r}: samples_file {sf} does not match its samples_key")
        if sf in referenced:
            raise ExitlatError(f"{where}: {sf} is referenced twice")
        referenced.add(sf)
        if sf not in files:
            raise ExitlatError(f"{where}: missing sample file {sf} (entry {e['key']!r})")
        n = npy_length(sf, files[sf])
        if n != e["stats"]["n"]:
            raise ExitlatError(f"{where}: {sf} holds {n} samples but its stats say n={e['stats']['n']}")
    for rel in sorted(files):
        if rel.startswith(SAMPLES_DIR + "/") and rel not in referenced:
            raise ExitlatError(f"{where}: extra sample file {rel} (no case or baseline uses it)")
