#!/usr/bin/env python3
"""The tool's own figures: build time per stage (cold or as cached), no-op rebuild time, bench wall
time under TCG split into phases, and sample throughput through the out-channel.

    python3 scripts/figures.py [--cold] [--bench] [--throughput N]

--cold builds into a fresh folder (a full cold build, ~11 min on 2 cores). Prints figures only;
nothing here is a test.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exitlat.build import build  # noqa: E402
from exitlat.paths import build_root  # noqa: E402
from exitlat.progress import Progress  # noqa: E402


def fig(name, value, unit=""):
    print(f"{name:<44} {value:>12} {unit}")


def build_figures(cold: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="exitlat-cold-", dir=build_root().parent)) if cold else None
    t0 = time.monotonic()
    folder, timings = build(root=root, force=cold, progress=Progress())
    total = time.monotonic() - t0
    for stage, secs in timings.items():
        fig(f"build stage {stage}", f"{secs:.1f}", "s")
    fig("build total" + (" (cold)" if cold else ""), f"{total:.1f}", "s")
    t0 = time.monotonic()
    build(root=root)
    fig("no-op rebuild (in-process)", f"{time.monotonic() - t0:.2f}", "s")
    t0 = time.monotonic()
    subprocess.run(["invoke", "build"], check=True, capture_output=True)
    fig("no-op rebuild (`invoke build`, whole CLI)", f"{time.monotonic() - t0:.2f}", "s")
    if root:
        shutil.rmtree(root, ignore_errors=True)


def bench_figures(iterations: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="exitlat-fig-"))
    t0 = time.monotonic()
    subprocess.run(["invoke", "bench", "--case", "1-6", "--iterations", str(iterations),
                    "--accel", "tcg", "--output", str(out)], check=False, capture_output=True)
    wall = time.monotonic() - t0
    fig(f"bench --case 1-6 --iterations {iterations} --accel tcg", f"{wall:.1f}", "s wall")
    for b in out.iterdir():
        doc = json.loads((b / "bundle.json").read_text())
        for rep in doc["run"]["timings"]:
            for k, v in rep.items():
                fig(f"  {k}", f"{v:.2f}", "s")
    shutil.rmtree(out, ignore_errors=True)


def throughput_figures(n: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="exitlat-fig-"))
    t0 = time.monotonic()
    subprocess.run(["invoke", "bench", "--case", "5", "--iterations", str(n), "--warmup", "0",
                    "--accel", "tcg", "--no-baselines", "--output", str(out)], check=False,
                   capture_output=True)
    wall = time.monotonic() - t0
    for b in out.iterdir():
        doc = json.loads((b / "bundle.json").read_text())
        t = doc["run"]["timings"][0]
        fig(f"samples out of the guest (case 5, n={n})", doc["cases"][0]["iterations"], "samples")
        fig("  collection (disk read + parse)", f"{t.get('collect_s', 0):.2f}", "s")
        fig("  throughput host side", f"{n / max(t.get('collect_s', 1e-9), 1e-9) / 1e6:.1f}", "M samples/s")
        g = doc["run"].get("guest_finished", [{}])[0]
        if g.get("write_seconds"):
            fig("  guest write to virtio-blk", f"{g['write_seconds']:.2f}", "s")
            fig("  throughput guest side", f"{g['bytes_written'] / 8 / g['write_seconds'] / 1e6:.1f}",
                "M samples/s")
    fig("  whole run", f"{wall:.1f}", "s")
    shutil.rmtree(out, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="time a full cold build in a fresh folder")
    ap.add_argument("--bench", type=int, metavar="N", default=0, help="time a TCG bench of N iterations")
    ap.add_argument("--throughput", type=int, metavar="N", default=0, help="move N samples out")
    a = ap.parse_args()
    build_figures(a.cold)
    if a.bench:
        bench_figures(a.bench)
    if a.throughput:
        throughput_figures(a.throughput)


if __name__ == "__main__":
    main()
