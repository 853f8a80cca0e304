"""Result bundles: one folder per run with bundle.json, raw samples (samples/<key>.npy, uint64),
extra files (console logs, ...) and SHA256SUMS over every other file.

The document's format is exitlat.bundle.format; write_bundle() (exitlat.bundle.write)
builds the folder under a temporary name and renames it into place, so a bundle is either complete
or absent; load_bundle() checks everything (exitlat.bundle.check: files, checksums, schema,
version, sample files) before anyone reads a number.
"""

import json
import os
from pathlib import Path

import numpy as np

from exitlat.errors import ExitlatError

from .check import check_files, scan_folder
from .format import NAME_RE, banner_for, dump_doc, entries, normalize, tsc_hz_of
from exitlat.stats.summary import summarize


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
    return Bundle(path, normalize(doc))


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
