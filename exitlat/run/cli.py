"""Argument parsing for `invoke bench`: strings in, a checked BenchOptions out, a bundle written."""

import sys
from pathlib import Path

from .bench import run_bench
from .plan import BenchOptions, parse_int
from exitlat.errors import CheckFailed, ExitlatError


def bench_main(case, iterations, warmup, instr, port, timer, core, accel, repeat, label, output,
               no_container, no_verify, require_isolation, debugcon, no_baselines, tracing="auto",
               verify_iterations=None, build=None) -> int:
    from exitlat.results.bundle import load_bundle
    from exitlat.cases import parse_cases

    opts = BenchOptions(
        cases=parse_cases(case),
        iterations=parse_int(iterations, "--iterations", 1, 50_000_000),
        warmup=parse_int(warmup, "--warmup", 0, 10_000_000),
        instr=instr, port=parse_int(port, "--port", 0, 0xFFFF), timer=timer,
        core=None if core is None else parse_int(core, "--core", 0, 4095),
        accel=accel, repeat=None if str(repeat) == "auto" else parse_int(repeat, "--repeat", 1, 100),
        label=label,
        output=Path(output) if output else None, container=not no_container,
        verify=not no_verify, require_isolation=require_isolation, debugcon=debugcon,
        baselines=not no_baselines, tracing=tracing,
        verify_iterations=None if verify_iterations is None else parse_int(
            verify_iterations, "--verify-iterations", 1, 50_000_000),
        build=Path(build) if build else None)
    path = run_bench(opts, ["invoke", "bench", *sys.argv[2:]] if len(sys.argv) > 1 else None)
    bundle = load_bundle(path)
    try:
        from exitlat.results.report import render_report
        print(render_report(bundle))
    except ImportError:
        pass
    doc = bundle.doc
    if doc["status"]["state"] != "complete":
        raise ExitlatError(f"run incomplete: {doc['status']['reason']} (bundle kept: {path})")
    failed = [c["key"] for c in doc["cases"] if c["verification"]["status"] == "failed"]
    if failed and opts.verify:
        raise CheckFailed(f"path verification failed for {', '.join(failed)} (bundle: {path})")
    return 0
