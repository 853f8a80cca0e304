#!/usr/bin/env python3
"""The tool's own figures: build time per stage (cold, a newcomer's first run, or as cached),
no-op rebuild time, bench wall time under TCG split into phases, and sample throughput through
the out-channel.

    python3 scripts/figures.py [--cold | --first-run] [--bench N] [--throughput N]

--cold        a cold build: a fresh build folder and the builder image made again (the base image
              and the downloaded sources stay cached). Removes the builder image of the current
              inputs first: hold the build lock (`flock /tmp/exitlat-build.lock …`) on a shared
              machine.
--first-run   what a newcomer's first `invoke bench --case 1-6` costs with nothing cached but the
              Docker engine: an empty download cache, and the base image bootstrapped from the
              pinned packages (the pins are copied with base.digest unset, which also gives every
              image a fresh tag, so no image another build uses is touched), then the bench under
              TCG. The images it made are removed afterwards.

Each build step is printed with its wall time, the CPU time (user + system) its container used,
and when it ran (stages overlap). Wall times depend on what else the machine runs: the load
average is printed beside them. Prints figures only; nothing here is a test.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exitlat.build.builder import Builder  # noqa: E402
from exitlat.build.stages import STAGES  # noqa: E402
from exitlat.paths import build_root  # noqa: E402
from exitlat.build.pins import load_pins  # noqa: E402
from exitlat.progress import Progress  # noqa: E402


def fig(name, value, unit=""):
    print(f"{name:<44} {value:>12} {unit}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_ticks() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot, from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz, sum(v) / hz


def machine_busy(start: tuple[float, float]) -> str:
    busy, total = cpu_ticks()
    return (f"machine CPU busy {busy - start[0]:.0f} of {total - start[1]:.0f} core-seconds "
            "(the stages' own CPU is in `cpu s`; the rest is the engine, storage driver, others)")


def _remove_image(client, tag: str) -> None:
    import docker.errors

    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


def build_table(builder: Builder, total: float) -> None:
    """One row per build step: wall seconds, CPU seconds, start → end (seconds into the build)."""
    print(f"{'build step':<22} {'wall s':>8} {'cpu s':>8}   ran")
    for step in ("sources", "base image", "builder image", "toolchain unpack"):
        if step in builder.timings:
            print(f"{step:<22} {builder.timings[step]:>8.1f} {'':>8}")
    for st in STAGES:
        if st.name in builder.timings:
            s, e = builder.spans[st.name]
            cpu = builder.cpu.get(st.name)
            print(f"{'stage ' + st.name:<22} {builder.timings[st.name]:>8.1f} "
                  f"{(f'{cpu:.1f}' if cpu is not None else '-'):>8}   {s:6.1f} → {e:6.1f}")
    if builder.spans:
        first = min(s for s, _ in builder.spans.values())
        last = max(e for _, e in builder.spans.values())
        print(f"{'stages (overlapped)':<22} {last - first:>8.1f} {sum(builder.cpu.values()):>8.1f}")
    print(f"{'build total':<22} {total:>8.1f}")


def build_figures(cold: bool, keep: bool = False) -> None:
    pins = load_pins()
    root = Path(tempfile.mkdtemp(prefix="exitlat-cold-", dir=build_root().parent)) if cold else None
    builder = Builder(pins, root or build_root(), progress=Progress())
    if cold:
        _remove_image(builder._docker(), f"exitlat/builder:{builder.plan.builder_key}")
        print(f"cold build into {root} (builder image made again; base image and sources cached); "
              f"{load()}")
    t0, c0 = time.monotonic(), cpu_ticks()
    builder.run(force=cold)
    total = time.monotonic() - t0
    build_table(builder, total)
    print(f"  ({load()} at the end; {machine_busy(c0)})")
    t0 = time.monotonic()
    Builder(pins, root or build_root(), progress=Progress()).run()
    fig("no-op rebuild (in-process)", f"{time.monotonic() - t0:.2f}", "s")
    if not cold:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "invoke", "build"], check=True, capture_output=True)
        fig("no-op rebuild (`invoke build`, whole CLI)", f"{time.monotonic() - t0:.2f}", "s")
    if root and keep:
        print(f"kept: {root} (EXITLAT_BUILD_DIR={root} uses it)")
    elif root:
        shutil.rmtree(root, ignore_errors=True)


def first_run_figures(case: str = "1-6") -> None:
    """A newcomer's first run: empty download cache, base image bootstrapped, everything built,
    then the bench under TCG."""
    import yaml

    from exitlat.build.images import base_tag

    work = Path(tempfile.mkdtemp(prefix="exitlat-first-", dir=build_root().parent))
    raw = yaml.safe_load(load_pins().path.read_text())
    raw["base"]["digest"] = None
    pins_path = work / "pins.yaml"
    pins_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    pins = load_pins(pins_path)
    os.environ["EXITLAT_CACHE_DIR"] = str(work / "cache")
    builder = Builder(pins, work / "build", progress=Progress())
    tags = [base_tag(pins.base), f"exitlat/builder:{builder.plan.builder_key}"]
    print(f"first run: empty cache ({work / 'cache'}), base image bootstrapped; {load()}")
    try:
        t0 = time.monotonic()
        folder = builder.run()
        total = time.monotonic() - t0
        build_table(builder, total)
        out = work / "results"
        t1 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "invoke", "bench", "--case", case,
                              "--build", str(folder), "--output", str(out)],
                             capture_output=True, text=True)
        bench_s = time.monotonic() - t1
        fig(f"bench --case {case} (exit {res.returncode})", f"{bench_s:.1f}", "s")
        fig("first run total (build + bench)", f"{time.monotonic() - t0:.1f}", "s")
        print(f"  ({load()} at the end)")
        if res.returncode != 0:
            print(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "(no stderr)")
    finally:
        client = builder._docker()
        for tag in reversed(tags):
            _remove_image(client, tag)
        shutil.rmtree(work, ignore_errors=True)


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
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--cold", action="store_true",
                      help="time a cold build (fresh folder, builder image made again)")
    when.add_argument("--first-run", action="store_true",
                      help="time a newcomer's first build + bench with nothing cached")
    ap.add_argument("--keep", action="store_true", help="--cold: keep the build folder")
    ap.add_argument("--bench", type=int, metavar="N", default=0, help="time a TCG bench of N iterations")
    ap.add_argument("--throughput", type=int, metavar="N", default=0, help="move N samples out")
    a = ap.parse_args()
    if a.first_run:
        first_run_figures()
    else:
        build_figures(a.cold, a.keep)
    if a.bench:
        bench_figures(a.bench)
    if a.throughput:
        throughput_figures(a.throughput)


if __name__ == "__main__":
    main()
