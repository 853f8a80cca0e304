"""`invoke build` on the command line, and its reproducibility check (--verify-reproducible: build
again from scratch in another folder and compare every artifact)."""

import shutil
import time
from pathlib import Path

from exitlat.paths import build_root
from exitlat.progress import Progress, fmt_duration

from .builder import artifact_hashes, build
def compare_builds(a: Path, b: Path) -> list[str]:
    ha, hb = artifact_hashes(a), artifact_hashes(b)
    return sorted(k for k in set(ha) | set(hb) if ha.get(k) != hb.get(k))


def cli_build(mirror=None, pins=None, verify_reproducible=False, force=False) -> int:
    t0 = time.monotonic()
    folder, _ = build(pins, mirror, force)
    print(folder)
    if not verify_reproducible:
        return 0
    progress = Progress()
    alt_root = build_root().parent / f"{build_root().name}-verify"
    shutil.rmtree(alt_root, ignore_errors=True)
    progress.say(f"--verify-reproducible: building again from scratch in {alt_root}")
    other, _ = build(pins, mirror, force=True, root=alt_root, progress=progress)
    diff = compare_builds(folder, other)
    if diff:
        for d in diff:
            print(f"DIFFERS: {d}")
        print(f"not reproducible: {len(diff)} artifact(s) differ ({fmt_duration(time.monotonic() - t0)})")
        return 1
    print(f"reproducible: all {len(artifact_hashes(folder))} artifacts identical")
    shutil.rmtree(alt_root, ignore_errors=True)
    return 0
