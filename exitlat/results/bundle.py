"""Result bundles: one folder per run with bundle.json, raw samples (samples/<key>.npy, uint64),
extra files (console logs, ...) and SHA256SUMS over every other file.

write_bundle() builds the folder under a temporary name and renames it into place, so a bundle is
either complete or absent; load_bundle() checks everything (files, checksums, schema, version,
sample files) before anyone reads a number. The checks run on a {relative path: FileInfo} listing so
that `import` can run exactly the same checks on an archive before writing anything.
"""

import copy
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np

from exitlat.errors import ExitlatError
from exitlat.build.sources import sha256_file
from .stats import as_cycles, summarize

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)   # v1: one traced window per case (before timed/traced windows)
BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
SAMPLES_DIR = "samples"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_FILE_RE = NAME_RE           # sample keys and extra file names: the same rule as bundle names
_SUMS_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")
_HEAD = 4096              # bytes kept of every file: enough for any .npy header we write
_MAX_SMALL = 64 << 20     # bundle.json / SHA256SUMS larger than this are not ours
TCG_BANNER = "TCG: software emulation — these are NOT VM-exit timings"


def banner_for(doc: dict) -> str | None:
    """The line that must stand above any number of this bundle (TCG, or an emulated KVM host such
    as the selftest's), or None for a measurement on a real VMX/SVM host."""
    if doc.get("accel") == "tcg":
        return TCG_BANNER
    emulated = (doc.get("host") or {}).get("emulated")
    if emulated:
        return f"{emulated} (NOT VM-exit timings)"
    return None


# -- schema ---------------------------------------------------------------------------------------

def schema() -> dict:
    return json.loads(resources.files("exitlat.schemas").joinpath("bundle.schema.json").read_text())


def _where(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(top level)"


def validate_doc(doc: dict, what: str = BUNDLE_JSON) -> None:
    """Schema check with one line naming the first (deepest-path-first) problem."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        msg = err.message if len(err.message) <= 200 else err.message[:200] + "..."
        raise ExitlatError(f"{what}: schema violation at {_where(err)}: {msg}")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dump_doc(doc: dict) -> bytes:
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ExitlatError(f"bundle document cannot be stored as JSON: {err}") from None
    return (text + "\n").encode()


def tsc_hz_of(doc: dict) -> float | None:
    """The TSC rate used for ns: the host's, else the one the guest kernel reported."""
    hz = (doc.get("host") or {}).get("tsc", {}).get("hz")
    if hz:
        return float(hz)
    khz = (doc.get("guest") or {}).get("tsc_khz")
    return float(khz) * 1000.0 if khz else None


def entries(doc: dict) -> list[dict]:
    return list(doc.get("cases", [])) + list(doc.get("baselines", []))


# -- writing --------------------------------------------------------------------------------------

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
    statistics come with the document (exitlat.results.document computes them): storage only
    stores, and load_bundle()/`validate` recompute them from the stored samples."""
    incomplete = doc.get("status", {}).get("state") == "incomplete"
    keys = [e.get("samples_key") for e in entries(doc)]
    unused = sorted(set(samples) - set(keys))
    if unused:
        raise ExitlatError(f"samples not referenced by any case or baseline: {', '.join(unused)}")
    store: dict[str, np.ndarray] = {}
    seen_keys = set()
    for e, key in zip(entries(doc), keys):
        if not isinstance(key, str) or not _FILE_RE.match(key):
            raise ExitlatError(f"entry {e.get('key')!r}: bad samples_key {key!r}")
        if key in seen_keys:
            raise ExitlatError(f"samples_key {key!r} is used by more than one entry")
        seen_keys.add(key)
        arr = samples.get(key)
        arr = None if arr is None else _as_samples(key, arr)
        if arr is None or arr.size == 0:
            if not incomplete:
                raise ExitlatError(f"entry {e.get('key')!r} has no samples but the run is marked complete")
            e["samples_file"], e["stats"] = None, None
            continue
        if e.get("stats") is None:
            raise ExitlatError(f"entry {e.get('key')!r} has samples but no statistics (they are "
                               "computed before storage, by exitlat.results.document)")
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


def _write_sums(folder: Path) -> None:
    lines = []
    for rel in sorted(_walk(folder)):
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
        if not isinstance(fname, str) or not _FILE_RE.match(fname) or fname in (BUNDLE_JSON, SUMS, SAMPLES_DIR):
            raise ExitlatError(f"bad extra file name {fname!r}: one plain file name, not "
                               f"{BUNDLE_JSON}, {SUMS} or {SAMPLES_DIR}")
    blob = dump_doc(doc)
    validate_doc(json.loads(blob))        # validate exactly what will be on disk
    final = results_root / name
    tmp = results_root / f".tmp-{name}"
    if final.exists():
        raise ExitlatError(f"bundle {final} already exists; refusing to overwrite it")
    results_root.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
    except FileExistsError:
        raise ExitlatError(f"{tmp} exists (another writer, or a crashed one: remove it)") from None
    try:
        (tmp / SAMPLES_DIR).mkdir()
        for key, arr in store.items():
            np.save(tmp / SAMPLES_DIR / f"{key}.npy", arr, allow_pickle=False)
        for fname, data in files.items():
            _write_file(tmp / fname, data)
        (tmp / BUNDLE_JSON).write_bytes(blob)
        _write_sums(tmp)                  # last: it covers every file above
        if final.exists():
            raise ExitlatError(f"bundle {final} appeared while writing; refusing to overwrite it")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- checking -------------------------------------------------------------------------------------

@dataclass
class FileInfo:
    """What the checks need of one file: size, sha256, its first bytes, all of it if small."""
    size: int
    sha256: str
    head: bytes
    data: bytes | None = None


def _walk(folder: Path):
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
    for rel in _walk(folder):
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
        _check_rel(rel)
        sums[rel] = m.group(1)
    return sums


def _check_rel(rel: str) -> None:
    parts = rel.split("/")
    ok = (len(parts) == 1 and _FILE_RE.match(parts[0])) or \
         (len(parts) == 2 and parts[0] == SAMPLES_DIR and _FILE_RE.match(parts[1]))
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
        _check_rel(rel)
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
            if complete or (sf is None) != (e["stats"] is None):
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


# -- reading --------------------------------------------------------------------------------------

class Bundle:
    """A checked bundle: .doc (bundle.json), .path, .samples(key)."""

    def __init__(self, path: Path, doc: dict):
        self.path = Path(path)
        self.doc = doc

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_tcg(self) -> bool:
        return self.doc.get("accel") == "tcg"

    @property
    def banner(self) -> str | None:
        """Set when the numbers are not VM-exit timings (TCG, emulated host)."""
        return banner_for(self.doc)

    @property
    def tsc_hz(self) -> float | None:
        return tsc_hz_of(self.doc)

    def entries(self) -> list[dict]:
        return entries(self.doc)

    def entry(self, key: str) -> dict:
        for e in self.entries():
            if key in (e["key"], e["samples_key"]):
                return e
        raise ExitlatError(f"{self.name}: no case or baseline {key!r}")

    def samples(self, key: str) -> np.ndarray:
        e = self.entry(key)
        if e["samples_file"] is None:
            return np.zeros(0, dtype=np.uint64)
        return np.load(self.path / e["samples_file"], allow_pickle=False)


def load_bundle(path) -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise ExitlatError(f"not a bundle: {path} is not a folder")
    doc = check_files(scan_folder(path), str(path))
    return Bundle(path, doc)


def resolve_bundle(arg: str | os.PathLike, root: Path | None = None) -> Path:
    """A BUNDLE argument: a path to a folder, or a bundle name under results/."""
    from exitlat.paths import results_root

    p = Path(arg)
    if p.is_dir():
        return p
    cand = (root or results_root()) / str(arg)
    if NAME_RE.match(str(arg)) and cand.is_dir():
        return cand
    raise ExitlatError(f"no bundle {str(arg)!r}: not a folder, and not a bundle name under {root or results_root()}")


def recheck_stats(bundle: Bundle) -> None:
    """Recompute every entry's statistics from its samples and compare: catches a bundle whose
    numbers were edited together with its checksums."""
    hz = bundle.tsc_hz
    for e in bundle.entries():
        if e["stats"] is None:
            continue
        again = json.loads(dump_doc(summarize(bundle.samples(e["key"]), e["stats"]["tsc_hz"] or None)))
        if again != e["stats"]:
            bad = sorted(k for k in again if again[k] != e["stats"].get(k))
            raise ExitlatError(f"{bundle.name}: stats of {e['key']!r} do not match its samples "
                               f"({', '.join(bad)})")
        if e["stats"]["tsc_hz"] != hz:
            raise ExitlatError(f"{bundle.name}: stats of {e['key']!r} use a TSC rate of "
                               f"{e['stats']['tsc_hz']} Hz, the bundle says {hz}")
