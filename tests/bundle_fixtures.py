"""Helpers that write real bundles (seeded samples) and tamper with them, for the results tests."""

import hashlib
import json
from pathlib import Path

from exitlat.bundle import SUMS, example_doc, example_samples, write_bundle


def make_bundle(root: Path, name: str = "A", seed: int = 1, scale: float = 1.0,
                edit=None, files=None, **doc_kw) -> Path:
    """A realistic bundle under root/name; `edit(doc)` may change the document first."""
    doc = example_doc(**doc_kw)
    if edit:
        edit(doc)
    samples = example_samples(doc, seed=seed, scale=scale)
    files = {"console-r0.log": b"EXITLAT-INIT-READY\n"} if files is None else files
    return write_bundle(Path(root), doc, samples, files, name=name)


def reseal(bundle: Path) -> None:
    """Recompute SHA256SUMS after tampering, so that the checks behind the checksums are reached."""
    lines = []
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != SUMS:
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    (bundle / SUMS).write_text("".join(lines))


def edit_json(bundle: Path, fn, seal: bool = True) -> None:
    doc = json.loads((bundle / "bundle.json").read_text())
    fn(doc)
    (bundle / "bundle.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    if seal:
        reseal(bundle)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
