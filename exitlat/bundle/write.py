"""write_bundle(): one bundle folder, written under a temporary name and renamed into place, so that
a bundle is either complete or absent, and never replaces an existing one. It stores what it is
given: the statistics come with the document (exitlat.bundle.assemble)."""

import copy
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from exitlat.build.sources import sha256_file
from exitlat.errors import ExitlatError

from .check import walk_files
from .format import (BUNDLE_JSON, FILE_RE, NAME_RE, SAMPLES_DIR, SCHEMA_VERSION, SUMS, dump_doc,
                        entries, validate_doc)
from exitlat.stats.summary import as_cycles
def default_name(hostname: str | None = None) -> str:
    host = re.sub(r"[^A-Za-z0-9-]+", "-", hostname or socket.gethostname()).strip("-")[:60] or "host"
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host}-{secrets.token_hex(3)}"


def _check_name(name: str, what: str = "bundle name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise ExitlatError(f"bad {what} {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _as_samples(key: str, arr) -> np.ndarray:
    try:
        return as_cycles(arr).astype("<u8", copy=False)
    except ValueError as err:
        raise ExitlatError(f"samples {key!r}: {err}") from None


def _fill_entries(doc: dict, samples: dict) -> dict[str, np.ndarray]:
    """Point every case and baseline at its samples file; return the arrays to store. The
    statistics come with the document (exitlat.bundle.assemble computes them): storage only
    stores, and load_bundle()/`validate` recompute them from the stored samples."""
    incomplete = doc.get("status", {}).get("state") == "incomplete"
    keys = [e.get("samples_key") for e in entries(doc)]
    unused = sorted(set(samples) - set(keys))
    if unused:
        raise ExitlatError(f"samples not referenced by any case or baseline: {', '.join(unused)}")
    store: dict[str, np.ndarray] = {}
    seen_keys = set()
    for e, key in zip(entries(doc), keys):
        if not isinstance(key, str) or not FILE_RE.match(key):
            raise ExitlatError(f"entry {e.get('key')!r}: bad samples_key {key!r}")
        if key in seen_keys:
            raise ExitlatError(f"samples_key {key!r} is used by more than one entry")
        seen_keys.add(key)
        arr = samples.get(key)
        arr = None if arr is None else _as_samples(key, arr)
        if arr is None or arr.size == 0:
            if not incomplete and not (e.get("verification") or {}).get("refused"):
                raise ExitlatError(f"entry {e.get('key')!r} has no samples but the run is marked complete")
            e["samples_file"], e["stats"] = None, None
            continue
        if e.get("stats") is None:
            raise ExitlatError(f"entry {e.get('key')!r} has samples but no statistics (they are "
                               "computed before storage, by exitlat.bundle.assemble)")
        e["samples_file"] = f"{SAMPLES_DIR}/{key}.npy"
        store[key] = arr
    return store


def _write_file(path: Path, data) -> None:
    if isinstance(data, Path):
        shutil.copyfile(data, path)
    elif isinstance(data, str):
        path.write_bytes(data.encode())
    elif isinstance(data, (bytes, bytearray, memoryview)):
        path.write_bytes(bytes(data))
    else:
        raise ExitlatError(f"extra file {path.name}: expected bytes, str or a Path, got {type(data).__name__}")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save, written through Python's file object so that a full disk is ENOSPC (numpy's own
    writer reports only a short write)."""
    from numpy.lib import format as npy

    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, npy.header_data_from_array_1_0(arr))
        f.write(np.ascontiguousarray(arr).data)


def _write_sums(folder: Path) -> None:
    lines = []
    for rel in sorted(walk_files(folder)):
        if rel != SUMS:
            lines.append(f"{sha256_file(folder / rel)}  {rel}\n")
    (folder / SUMS).write_text("".join(lines))


def write_bundle(results_root: Path, doc: dict, samples: dict, files: dict,
                 name: str | None = None) -> Path:
    """Write one bundle atomically (see the module docstring); never replaces an existing one."""
    results_root = Path(results_root)
    name = _check_name(name or default_name((doc.get("host") or {}).get("hostname")))
    doc = copy.deepcopy(doc)
    doc["schema_version"] = SCHEMA_VERSION
    store = _fill_entries(doc, samples)
    for fname in files:
        if not isinstance(fname, str) or not FILE_RE.match(fname) or fname in (BUNDLE_JSON, SUMS, SAMPLES_DIR):
            raise ExitlatError(f"bad extra file name {fname!r}: one plain file name, not "
                               f"{BUNDLE_JSON}, {SUMS} or {SAMPLES_DIR}")
    blob = dump_doc(doc)
    validate_doc(json.loads(blob))        # validate exactly what will be on disk
    final = results_root / name
    tmp = results_root / f".tmp-{name}"
    if final.exists():
        raise ExitlatError(f"bundle {final} already exists; refusing to overwrite it")
    try:
        results_root.mkdir(parents=True, exist_ok=True)
        with new_bundle_folder(final, tmp, "another writer") as folder:
            for key, arr in store.items():
                _save_npy(folder / SAMPLES_DIR / f"{key}.npy", arr)
            for fname, data in files.items():
                _write_file(folder / fname, data)
            (folder / BUNDLE_JSON).write_bytes(blob)
            _write_sums(folder)                  # last: it covers every file above
    except OSError as err:   # a full disk, a read-only or vanished folder: nothing is left there
        if err.filename and not (str(err.filename).startswith(str(tmp))
                                 or Path(err.filename) in (results_root, final)):
            raise                # an extra file to copy that cannot be read: not the folder's fault
        raise BundleIOError(f"cannot write the bundle in {results_root}: "
                            f"{err.strerror or err} (nothing half-written is left there)") from None
    return final


class BundleIOError(ExitlatError):
    """The results folder could not take the bundle (full, read-only, gone); nothing of it is left
    there, so the same bundle may be written elsewhere."""


RENAME_NOREPLACE = 1
try:
    import ctypes

    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):     # a C library without renameat2 (glibc < 2.28)
    _renameat2 = None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` unless `dst` exists, in one step (an empty folder that appeared at
    `dst` since the last look would otherwise be replaced). FileExistsError when it exists."""
    if _renameat2 is not None:
        AT_FDCWD = -100
        if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):      # not supported here: check, then rename
            raise OSError(err, os.strerror(err), str(dst)) if err != errno.EEXIST else \
                FileExistsError(err, os.strerror(err), str(dst))
    if dst.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@contextmanager
def new_bundle_folder(final: Path, tmp: Path, who: str):
    """An empty temporary folder (with samples/) for a bundle, renamed to `final` when the block
    ends without error and removed otherwise: a bundle is complete or absent, and never replaces
    one that appeared meanwhile. `who`: what else could be using `tmp`, for the error."""
    try:
        tmp.mkdir()
    except FileExistsError:
        raise ExitlatError(f"{tmp} exists ({who}, or a crashed one: remove it)") from None
    try:
        (tmp / SAMPLES_DIR).mkdir()
        yield tmp
        try:
            rename_noreplace(tmp, final)
        except FileExistsError:
            raise ExitlatError(f"bundle {final} appeared meanwhile; refusing to overwrite it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
