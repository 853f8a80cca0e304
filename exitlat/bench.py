"""`invoke bench`, above the packages it ties together: parse the options, plan the run
(exitlat.run.plan), boot a fresh VM per repeat (exitlat.run.vm) that times every case in a window
nothing traces and proves its path in a traced window of its own, assemble the document
(exitlat.bundle.assemble) and write one bundle. Nothing earlier is ever overwritten; a failed or
interrupted run still leaves a bundle marked incomplete with everything collected so far."""

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from exitlat.errors import CheckFailed, ExitlatError
from exitlat.limits import MAX_ITERATIONS, MAX_PORT, MAX_REPEAT, MAX_WARMUP
from exitlat.paths import results_root
from exitlat.progress import Progress

from .run import leftovers
from .run.corelock import CoreLock, other_runs
from .run.interrupt import (Interrupted, check, deferred, interruptible, reason_of, stop_on_signals,
                            stopping)
from .run.placement import ensure_build
from .run.plan import BenchOptions, RunPlan, parse_cores, parse_int, plan_bench
from .run.runrecord import VmResult
from .run.vm import VmRun


def run_bench(opts: BenchOptions, argv: list[str] | None = None, wait: bool = False) -> Path:
    """One bench; SIGTERM and SIGHUP stop it as Ctrl-C does (exitlat.run.interrupt). `wait`: wait
    for a run that holds the core instead of refusing."""
    progress = Progress()
    with stop_on_signals(progress.say):
        return _run_bench(opts, argv, wait, progress)


def _run_bench(opts: BenchOptions, argv: list[str] | None, wait: bool, progress: Progress) -> Path:
    from exitlat.build.pins import load_pins
    from exitlat.host.facts import collect_host
    from exitlat.bundle.assemble import DocumentBuilder, document_hz

    out_root = Path(opts.output) if opts.output else results_root()
    host = collect_host(with_docker=opts.container)
    if opts.reference:          # a kind vmexit.flat has no test of is one line, before anything
        from .reference.tests import kinds_of, matching_tests

        matching_tests(kinds_of(opts.instr))
    plan = plan_bench(opts, host, progress.say)
    out_root.mkdir(parents=True, exist_ok=True)
    _say_plan_notes(plan, progress)
    remove_leftovers(progress)
    with CoreLock(plan.core) as lock, contextlib.ExitStack() as peer_lock:
        lock.acquire(wait=wait, say=progress.say)
        peer = plan.placement.peer
        if peer is not None:        # the receiving vCPU's core is held as well
            peer_lock.enter_context(CoreLock(peer)).acquire(wait=wait, say=progress.say)
        since = lock.record["started_ns"]
        running = other_runs(since, lock.folder)
        if running:
            progress.say("warning: other exitlat runs on this host now: "
                         + "; ".join(f"core {r['core']}: pid {r['pid']}" for r in running)
                         + " (each measures the others' noise; the bundle records them)")
        plan = plan.with_build(opts.build or ensure_build(progress), load_pins().base)
        progress.say(f"bench: cases {','.join(map(str, opts.cases))}, {opts.instr}, "
                     f"{plan.accel.upper()}, core {plan.core}"
                     + (f", receiver core {peer} ({plan.placement.topology.get('relation')})"
                        if peer is not None else "")
                     + f" (housekeeping {plan.housekeeping}), "
                     f"{plan.repeat} VM(s), {'container' if opts.container else 'no container'}")
        # From here on a stop request never costs what was measured: the VM runs are interrupted
        # at once, everything after them (the bundle) finishes first.
        with deferred():
            results, stop = _run_vms(plan, progress)
            refs = None
            if opts.reference and stop is None and all(r.status == "complete" for r in results):
                refs, stop = _run_reference(plan, progress)
            others = other_runs(since, lock.folder, running)
            hello = next((r.hello for r in results if r.hello), {})
            doc, samples, files = DocumentBuilder(plan, document_hz(host, hello)).build(
                argv, host, results)
            doc["run"]["other_runs_seen"] = others
            if refs is not None:
                add_reference(doc, files, plan, refs)
            path = keep_bundle(out_root, doc, samples, files, stop)
        progress.say(f"bundle: {path}")
    if stop is None and stopping():
        try:
            check()                     # a signal that came while the bundle was written
        except Interrupted as err:
            stop = err
    if stop is not None:
        stop = stop if isinstance(stop, Interrupted) else Interrupted("SIGINT")
        stop.kept = (f"incomplete bundle kept: {path}" if doc["status"]["state"] != "complete"
                     else f"the run had completed: bundle {path}")
        raise stop
    return path


def _run_reference(plan: RunPlan, progress: Progress):
    """kvm-unit-tests' vmexit.flat beside the cases (exitlat/reference/); a stop request keeps
    what ran and is returned."""
    from .reference.runner import ReferenceRuns, run_reference
    from .reference.tests import kinds_of, matching_tests

    runs = ReferenceRuns(matching_tests(kinds_of(plan.options.instr)))
    try:
        with interruptible():
            return run_reference(plan, runs, progress), None
    except KeyboardInterrupt as err:
        runs.error = reason_of(err)
        return runs, err


def add_reference(doc: dict, files: dict, plan: RunPlan, refs) -> None:
    """The bundle's `reference` section and the reference's serial output as files."""
    from .bundle.assemble import emulated_note
    from .reference.section import build_section

    doc["reference"] = build_section(refs, doc, plan.vendor, plan.manifest,
                                     emulated_note(plan.options.emulated_host))
    for i, vm in enumerate(refs.timed):
        files[f"reference-serial-r{i}.log"] = vm.serial
    for name, vm in [("baseline", refs.baseline), *refs.traced.items()]:
        if vm is not None:
            files[f"reference-serial-traced-{name}.log"] = vm.serial


def remove_leftovers(progress: Progress) -> None:
    """Remove what killed runs left (containers, QEMU, run folders, tracefs instances); a run in
    progress is never touched."""
    found = leftovers.find_all()
    gone = [f for f in found if not f.live]
    if gone:
        removed = leftovers.remove(gone)
        if removed:
            progress.say(f"removed what a killed exitlat run left: {', '.join(removed)}")


def keep_bundle(out_root: Path, doc: dict, samples: dict, files: dict, stop=None) -> Path:
    """write_bundle(), or, when that fails, the same data elsewhere: a folder that cannot take it
    (full, read-only, gone) gets nothing half-written, and the bundle goes to the rescue folder;
    a bundle that does not pass its checks is kept as plain files. Either way: one line."""
    from exitlat.bundle.write import BundleIOError, write_bundle

    first = f"{stop.reason}; " if isinstance(stop, Interrupted) else ""
    try:
        return write_bundle(out_root, doc, samples, files)
    except BundleIOError as err:
        tried = []
        for root in rescue_roots():
            if root.resolve() == out_root.resolve():
                continue
            try:
                path = write_bundle(root, doc, samples, files)
            except ExitlatError as again:
                tried.append(str(again))
                continue
            raise ExitlatError(f"{first}{err}; the bundle was written to {path} instead") from None
        raise ExitlatError(f"{first}{err}; and nowhere else: {'; '.join(tried)}") from None
    except ExitlatError as err:
        try:
            rescue = save_rescue(out_root, doc, samples, files)
        except OSError as again:
            raise ExitlatError(f"{first}{err}; the raw data could not be kept either "
                               f"({again.strerror})") from None
        raise ExitlatError(f"{first}{err}; the raw data is kept in {rescue}") from None


def rescue_roots() -> list[Path]:
    """Where a bundle goes when its results folder cannot take it."""
    if os.environ.get("EXITLAT_RESCUE_DIR"):
        return [Path(os.environ["EXITLAT_RESCUE_DIR"])]
    return [Path("/var/tmp/exitlat-rescue"), Path(tempfile.gettempdir()) / "exitlat-rescue"]


def _say_plan_notes(plan: RunPlan, progress: Progress) -> None:
    from exitlat.instructions import PATH_KVM

    # the plan decided it (cases.tsc_deadline_fastpath): say so, rather than decide again
    if any(s.instruction == "wrmsr_tsc_deadline" and s.expected_path == PATH_KVM for s in plan.specs):
        progress.say("note: KVM's fastpath cannot handle WRMSR TSC_DEADLINE on this host (no VMX "
                     "preemption timer): case 5 expects the normal in-kernel handler")
    if plan.verifying:
        from exitlat.verify.rules import STRAY_EVENTS, min_verifiable_n

        least = min_verifiable_n(STRAY_EVENTS)
        small = min(plan.n_timed, plan.verify_iterations)
        if small < least:
            progress.say(f"note: windows of {small} iterations are too small to verify a path "
                         f"(at least {least} are needed): their verdicts will be UNVERIFIED")


def _run_vms(plan: RunPlan, progress: Progress) -> tuple[list[VmResult], KeyboardInterrupt | None]:
    """The VM runs, one after another; stops at the first incomplete one. A stop request (Ctrl-C,
    SIGTERM, SIGHUP) keeps what ran and is returned."""
    results: list[VmResult] = []
    vm = None
    try:
        with interruptible():
            for rep in range(plan.repeat):
                check()               # a signal held while the last VM was cleaned up
                missing = build_missing(plan.build)
                if missing:
                    results.append(VmResult(status="incomplete", reason=missing))
                    progress.say(f"VM {rep + 1}: not started: {missing}")
                    break
                progress.say(f"VM {rep + 1}/{plan.repeat}: starting QEMU")
                vm = VmRun(plan, progress)
                res = vm.run()
                results.append(res)
                if res.status != "complete":
                    progress.say(f"VM {rep + 1}: incomplete: {res.reason}")
                    break
    except KeyboardInterrupt as err:
        if vm is not None and not any(r is vm.result for r in results):
            results.append(vm.result)       # the interrupted VM: its console, what it measured
            vm.result.status, vm.result.reason = "incomplete", reason_of(err)
        elif not results or results[-1].status == "complete":
            results.append(VmResult(status="incomplete", reason=reason_of(err)))
        return results, err
    return results, None


def build_missing(build: Path) -> str | None:
    """What a VM needs from the build folder and no longer finds there (removed during the run)."""
    from .run.qemu import qemu_binary

    need = [build / "manifest.json", build / "bzImage", build / "initramfs.cpio.gz", qemu_binary(build)]
    gone = [str(p.relative_to(build)) for p in need if not p.exists()]
    if gone:
        return f"the build folder {build} changed during the run ({', '.join(gone)} missing)"
    return None


def save_rescue(out_root: Path, doc: dict, samples: dict, files: dict) -> Path:
    """When a bundle cannot be written (a bug, a schema mismatch), keep everything as plain files:
    nothing measured is lost. The folder is hidden so `invoke results` does not take it for a bundle."""
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix=".rescue-", dir=out_root))
    (folder / "bundle.json").write_text(json.dumps(doc, indent=1, default=str))
    for key, arr in samples.items():
        np.save(folder / f"{key}.npy", arr)
    for name, data in files.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())
    return folder


def parse_peer_core(text) -> int | None:
    """--core A,B: B, the receiving vCPU's core of the two-vCPU kinds (None for --core A)."""
    if text is None:
        return None
    cores = parse_cores(text)
    return cores[1] if len(cores) > 1 else None


def bench_main(case, iterations, warmup, instr, port, timer, core, accel, repeat, label, output,
               no_container, no_verify, require_isolation, debugcon, no_baselines, tracing="auto",
               verify_iterations=None, build=None, wait=False, verbose=False, reference=False) -> int:
    from exitlat.cases import parse_cases
    from exitlat.bundle.read import load_bundle

    opts = BenchOptions(
        cases=parse_cases(case),
        iterations=parse_int(iterations, "--iterations", 1, MAX_ITERATIONS),
        warmup=parse_int(warmup, "--warmup", 0, MAX_WARMUP),
        instr=instr, port=parse_int(port, "--port", 0, MAX_PORT), timer=timer,
        core=None if core is None else parse_cores(core)[0],
        peer_core=parse_peer_core(core),
        accel=accel, repeat=None if str(repeat) == "auto" else parse_int(repeat, "--repeat", 1, MAX_REPEAT),
        label=label,
        output=Path(output) if output else None, container=not no_container,
        verify=not no_verify, require_isolation=require_isolation, debugcon=debugcon,
        baselines=not no_baselines, tracing=tracing,
        verify_iterations=None if verify_iterations is None else parse_int(
            verify_iterations, "--verify-iterations", 1, MAX_ITERATIONS),
        build=Path(build) if build else None, reference=bool(reference))
    path = run_bench(opts, ["invoke", "bench", *sys.argv[2:]] if len(sys.argv) > 1 else None, wait=wait)
    bundle = load_bundle(path)
    from exitlat.report.text import render_report

    print(render_report(bundle, verbose))
    doc = bundle.doc
    if doc["status"]["state"] != "complete":
        raise ExitlatError(f"run incomplete: {doc['status']['reason']} (bundle kept: {path})")
    ref = doc.get("reference")
    if ref is not None and ref["state"] != "complete":
        raise ExitlatError(f"kvm-unit-tests reference incomplete: {ref['reason']} (bundle kept: {path})")
    failed = [c["key"] for c in doc["cases"] if c["verification"]["status"] == "failed"]
    if failed and opts.verify:
        raise CheckFailed(f"path verification failed for {', '.join(failed)} (bundle: {path})")
    return 0
