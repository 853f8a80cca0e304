"""Invoke tasks for exitlat. Each task only parses its arguments and calls the package.

Run `invoke --list` for the tasks and `invoke --help TASK` for each one's options.
"""

import functools
import os
import sys

from invoke import Exit, task

from exitlat.errors import ExitlatError
from exitlat.report.taskargs import KeepHelpTask, spill_positionals


def cli(fn):
    """Turn ExitlatError and Ctrl-C into one line on stderr and a non-zero exit, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except ExitlatError as err:
            print(f"error: {err}", file=sys.stderr)
            raise Exit(code=err.exit_code)
        except KeyboardInterrupt as err:   # Ctrl-C; bench also SIGTERM and SIGHUP (it names them)
            print(f"error: {err}" if str(err) else "error: interrupted", file=sys.stderr)
            raise Exit(code=getattr(err, "exit_code", 130))
        except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
            sys.stdout = None
            raise Exit(code=0)
        except OSError as err:   # a path the checks below did not foresee: still one line
            where = f"{err.filename}: " if err.filename else ""
            print(f"error: {where}{err.strerror or err}", file=sys.stderr)
            raise Exit(code=2)
        if code:
            raise Exit(code=code)

    return wrapper


def _path(value, option: str, kind: str):
    """Check a path option before any work starts (one line on a bad one). kind: 'dir' (read),
    'file' (read), 'outdir' (a folder to write into, made if missing), 'outfile' (a file to
    write; its folder must exist), 'statefile' (a file to write; its folder is made if missing)."""
    if value is None:
        return None
    from pathlib import Path
    import tempfile

    p = Path(value)
    bad = lambda why: ExitlatError(f"{option} {value}: {why}")  # noqa: E731
    if kind in ("dir", "file"):
        if not p.exists():
            raise bad("no such " + ("folder" if kind == "dir" else "file"))
        if kind == "dir" and not p.is_dir():
            raise bad("not a folder")
        if kind == "file" and p.is_dir():
            raise bad("is a folder, not a file")
        try:
            os.listdir(p) if kind == "dir" else open(p, "rb").close()
        except OSError as err:
            raise bad(f"cannot read it ({err.strerror})") from None
        return value
    if kind in ("outfile", "statefile"):
        if p.is_dir():
            raise bad("is a folder; give a file name")
        folder = p.parent
        made = [q for q in [folder, *folder.parents] if not q.exists()] if kind == "statefile" else []
        if not made and not folder.is_dir():
            raise bad(f"its folder {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    else:
        if p.exists() and not p.is_dir():
            raise bad("not a folder (a file is there)")
        folder, made = p, [q for q in [p, *p.parents] if not q.exists()]
    try:   # make what is missing, write a probe file, then undo both
        folder.mkdir(parents=True, exist_ok=True) if made else None
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".exitlat-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise bad(f"cannot write there ({err.strerror})") from None
    finally:
        for q in made:
            try:
                q.rmdir()
            except OSError:
                break
    return value


# --- build -------------------------------------------------------------------------------------


@task(help={
    "mirror": "folder of source tarballs to try first (files named as in pins.yaml)",
    "pins": "pins file (default: pins.yaml in the repository)",
    "verify_reproducible": "build again in a fresh folder and list every artifact that differs",
    "force": "rebuild even when the cached build matches",
})
@cli
def build(c, mirror=None, pins=None, verify_reproducible=False, force=False):
    """Build the guest kernel, initramfs, probes and QEMU in Docker (cached by input hash)."""
    from exitlat.build.cli import cli_build

    return cli_build(mirror=_path(mirror, "--mirror", "dir"), pins=_path(pins, "--pins", "file"),
                     verify_reproducible=verify_reproducible, force=force)


# --- bench -------------------------------------------------------------------------------------


@task(klass=KeepHelpTask, help={
    "case": "cases to run: 1-6, 1,3,5, 2 or all",
    "iterations": "timed iterations per case (default 10000)",
    "warmup": "discarded warm-up iterations per case (default 1000)",
    "instr": "F instructions (exitlat/instructions.py; catalogue: docs/measuring.md): one "
             "(default cpuid), a comma list (cpuid,mov_to_cr8) or all (every kind each F case "
             "allows; kinds this vCPU lacks are left out with why)",
    "port": "S port for OUTB (debugcon; default 0xe9)",
    "timer": "rdtscp (default) or lfence (LFENCE;RDTSC;LFENCE)",
    "core": "host core for the vCPU (default: an isolated core, else the last one); A,B also "
            "places the receiving vCPU of the two-vCPU kinds (ipi, ipi_halt) on core B",
    "accel": "auto (default), kvm or tcg (TCG: no VM exits, for testing the chain only)",
    "repeat": "fresh VMs to run: the unit of the statistics (default auto: 5 under KVM, 1 under "
              "TCG; 1 leaves run-to-run variation unknown)",
    "label": "free text stored in the bundle",
    "output": "results folder (default: results/)",
    "no_container": "run QEMU straight on the host instead of the runtime container",
    "no_verify": "no traced windows, and do not fail on an exit path that does not match",
    "require_isolation": "fail when the core is not isolated",
    "debugcon": "auto (default: null under KVM, file under TCG), file or null",
    "no_baselines": "skip the baselines (timer, non-exiting, syscall, module call, kernel timer)",
    "tracing": "backend of the traced windows: auto (default: hist triggers if the kernel has "
               "them), hist or stream",
    "verify_iterations": "iterations of each case's traced (verification) window "
                         "(default: min(iterations, 10000)); the timed window is never traced",
    "build": "use this build folder (default: the build of the current inputs, made if missing)",
    "wait": "when another exitlat run holds the core, wait for it (default: refuse, naming it)",
    "verbose": "the report at the end with every warning and the whole metadata",
    "reference": "also run kvm-unit-tests' x86/vmexit.flat (cpuid and the --instr's test) on the "
                 "same QEMU, core and container, and put it beside case 5 in the bundle",
})
@cli
def bench(c, case="1-6", iterations="10000", warmup="1000", instr="cpuid", port="0xe9",
          timer="rdtscp", core=None, accel="auto", repeat="auto", label=None, output=None,
          no_container=False, no_verify=False, require_isolation=False, debugcon="auto",
          no_baselines=False, tracing="auto", verify_iterations=None, build=None, wait=False,
          verbose=False, reference=False):
    """Run cases in a VM, verify each exit's path on the host, write a result bundle."""
    from exitlat.bench import bench_main

    output, build = _path(output, "--output", "outdir"), _path(build, "--build", "dir")

    return bench_main(case=case, iterations=iterations, warmup=warmup, instr=instr, port=port,
                      timer=timer, core=core, accel=accel, repeat=repeat, label=label,
                      output=output, no_container=no_container, no_verify=no_verify,
                      require_isolation=require_isolation, debugcon=debugcon,
                      no_baselines=no_baselines, tracing=tracing,
                      verify_iterations=verify_iterations, build=build, wait=wait,
                      verbose=verbose, reference=reference)


@task(help={"dry_run": "list what would be removed, remove nothing"})
@cli
def cleanup(c, dry_run=False):
    """Remove what killed exitlat runs left (runtime containers, QEMU, /tmp/exitlat-run-* folders,
    tracefs instances); runs in progress are listed, never touched."""
    from exitlat.run.cleanup import cleanup_main

    return cleanup_main(dry_run=dry_run)


# --- selftest ----------------------------------------------------------------------------------


@task(help={
    "runs": "which runs: all (default), default (all but the exit catalogue), catalogue (its "
            "runs: catalogue-kernel, catalogue-ioctl, catalogue-user: --instr all in cases 5, 3, "
            "1; catalogue-xapic: the xAPIC kinds, whose guest boots nox2apic) or a comma list of "
            "cpuid-hist, cpuid-stream, vmcall, rdmsr, wrmsr_tsc_deadline and those; by name "
            "only: catalogue-ipi (ipi, ipi_halt: L1 gets a third CPU; also in catalogue), reference (kvm-unit-tests' vmexit.flat beside case 5, --instr "
            "cpuid,vmcall --reference, two VM runs), cr8-irq-pending (mov_to_cr8 in 200000-"
            "iteration batches: the emulated host's own check, see docs/verification.md)",
    "iterations": "timed iterations per case inside L1 (default 1000; 100-200000)",
    "warmup": "warm-up iterations per case (default 100)",
    "verify_iterations": "iterations of each traced window (default: as --iterations)",
    "json": "print the result as one JSON document",
    "keep": "keep the work folder (L1's initrd, output disk, what L1 wrote)",
    "capture": "also run a short traced bench and copy its raw trace_pipe text and hist files "
               "to this (new or empty) folder",
    "timeout": "overall limit for L1 in seconds (default 1500 for amd, 2400 for intel)",
    "mirror": "folder to try first for the L1 kernel package (named as in pins.yaml)",
    "retries": "fresh VMs for a run whose L2 hangs under nested TCG (default 2; each hang is "
               "reported)",
    "vendor": "which emulated host: amd (default: L1 under QEMU's TCG, kvm_amd, ~1 min), intel "
              "(L1 under Bochs, kvm_intel, ~9 min) or all",
    "kernel": "the L1 kernel series, as pins.yaml emulated_host.kernels names them (default: "
              "its default_kernel)",
})
@cli
def selftest(c, runs="all", iterations="1000", warmup="100", verify_iterations=None, json=False,
             keep=False, capture=None, timeout=None, mirror=None, retries="2", vendor="amd",
             kernel=None):
    """Prove the KVM path on a real KVM: boot an emulated AMD-V host (L1: TCG with SVM, kvm_amd)
    and/or an emulated VT-x host (L1: Bochs with VMX, kvm_intel),
    run bench inside it on every case and instruction with both tracing backends, then run negative
    controls that the verifier must fail. Needs the build (made if missing) and Docker for the L1
    image (built once, cached). Timings inside are meaningless; exit 0 only when every case passed
    and every control failed."""
    from exitlat.selftest.cli import selftest_main

    return selftest_main(runs=runs, iterations=iterations, warmup=warmup,
                         verify_iterations=verify_iterations, as_json=json, keep=keep,
                         capture=capture, timeout=timeout, mirror=mirror, retries=retries,
                         vendor=vendor, kernel=kernel)


# --- isolation ---------------------------------------------------------------------------------


@task(help={"core": "host core to check (default: the core bench would use); A,B checks both "
                    "(bench --core A,B: the two-vCPU kinds' receiving vCPU on B)",
            "json": "print the state as JSON"})
@cli
def doctor(c, core=None, json=False):
    """Preflight: KVM, Docker, tracing and isolation of the measured core, with fixes."""
    from exitlat.doctor import doctor_main

    return doctor_main(core=core, as_json=json)


@task(help={"core": "core to isolate (default: the core bench would use)",
            "revert": "restore every value saved by the last isolate",
            "dry_run": "print each change without making it",
            "state_file": "where previous values are saved (default: /run/exitlat/isolate-state.json)"})
@cli
def isolate(c, core=None, revert=False, dry_run=False, state_file=None):
    """Apply run-time isolation for a core (governor, turbo, IRQs, ...), or revert it."""
    from exitlat.host.isolation.cli import isolate_main
    from exitlat.run.plan import parse_cores

    state_file = _path(state_file, "--state-file", "file" if revert else "statefile")
    # one core: the state file holds one isolate's previous values
    return isolate_main(core=None if core is None else parse_cores(core, most=1)[0],
                        revert=revert, dry_run=dry_run, state_file=state_file)


# --- results -----------------------------------------------------------------------------------


@task(help={"root": "results folder (default: results/)"})
@cli
def results(c, root=None):
    """List result bundles (time, host, CPU, cases, status)."""
    from exitlat.report.cli import results_main

    root = _path(root, "--root", "dir")

    return results_main(root=root)


@task(klass=KeepHelpTask, help={
    "bundle": "bundle folder, or a bundle name under results/",
    "json": "print the report as JSON",
    "html": "also write the report as one self-contained HTML page to this file (its folder must "
            "exist; replaced if present; '-': stdout instead of the report)",
    "verbose": "every warning on its own line and the whole metadata (default: warnings grouped, "
               "at most 5 lines, long values cut)"})
@cli
def report(c, bundle, json=False, html=None, verbose=False):
    """Show one bundle: cases, paths, medians, CIs, warnings."""
    from exitlat.report.cli import report_main

    html = html if html == "-" else _path(html, "--html", "outfile")

    return report_main(bundle, as_json=json, html=html, verbose=verbose)


@task(klass=KeepHelpTask, positional=["a", "b"], iterable=["more"], help={
    "a": "reference bundle (path, or name under results/)",
    "b": "bundle to compare with A; further bundles may follow (invoke compare A B C ...)",
    "more": "further bundles (repeatable; the same as more positional bundles)",
    "json": "print the comparison as JSON",
    "min_effect": "smallest difference marked * (a fraction or a percentage; default 1%)",
    "html": "also write the comparison as one self-contained HTML page to this file (its folder "
            "must exist; replaced if present; '-': stdout instead of the table)",
    "csv": "also write the comparison as CSV, one row per entry and bundle, to this file "
           "('-': stdout instead of the table)",
    "exact": "CSV: write text cells exactly as in the bundles (default: a cell starting with "
             "= + - @ gets a leading ' so that a spreadsheet shows it, never runs it)"})
@cli
def compare(c, a, b=None, more=None, json=False, min_effect=None, html=None, csv=None,
            exact=False):
    """Compare bundles: headline medians over VM runs, ratios with CIs, unfair setups."""
    from exitlat.report.cli import compare_main, split_bundle_args

    html = html if html == "-" else _path(html, "--html", "outfile")
    csv = csv if csv == "-" else _path(csv, "--csv", "outfile")

    return compare_main(split_bundle_args(a, b, more), as_json=json, min_effect=min_effect,
                        html=html, csv=csv, exact=exact)


@task(klass=KeepHelpTask, iterable=["bundle"], help={
    "bundle": "bundle folder or name (repeatable; usually given positionally: invoke export B). "
              "csv without one: every bundle under the results folder",
    "format": "tar.gz (default: one bundle as an archive) or csv (one table of every case of "
              "the bundles; docs/bundles.md)",
    "output": "file to write (default: ./<bundle>.tar.gz, or ./results.csv; csv: '-' for stdout)",
    "root": "results folder where bundle names are looked up and csv finds every bundle "
            "(default: results/)",
    "exact": "csv: write text cells exactly as in the bundles (default: a cell starting with "
             "= + - @ gets a leading ' so that a spreadsheet shows it, never runs it)"})
@cli
def export(c, bundle=None, format="tar.gz", output=None, root=None, exact=False):
    """Write a bundle as one deterministic .tar.gz, or bundles' cases as one CSV table."""
    from exitlat.report.cli import export_main

    output = output if output == "-" else _path(output, "--output", "outfile")
    root = _path(root, "--root", "dir")

    return export_main(bundle, output=output, fmt=format, root=root, exact=exact)


@task(name="import", help={"file": "a .tar.gz made by `invoke export`",
                           "output": "results folder (default: results/)"})
@cli
def import_(c, file, output=None):
    """Check an exported bundle, then add it to results/."""
    from exitlat.report.cli import import_main

    file, output = _path(file, "FILE", "file"), _path(output, "--output", "outdir")

    return import_main(file, output=output)


@task(help={"bundle": "bundle folder or name"})
@cli
def validate(c, bundle):
    """Check a bundle fully, recomputing every statistic."""
    from exitlat.report.cli import validate_main

    return validate_main(bundle)


@task(help={"bundle": "bundle folder or name", "format": "png (default) or svg",
            "output": "folder for the figures (default: ./plots/<bundle>)"})
@cli
def plot(c, bundle, format="png", output=None):
    """Plot histogram + CDF per case, and an overview."""
    from exitlat.report.cli import plot_main

    output = _path(output, "--output", "outdir")

    return plot_main(bundle, fmt=format, output=output)


# Invoke has no variadic positional arguments: the extra bundles of `invoke compare A B C …` and
# the bundles of `invoke export [B …]` become --more / --bundle before Invoke parses the tasks'
# arguments (exitlat/report/taskargs.py).
spill_positionals(__name__, {"compare": ("more", 2), "export": ("bundle", 0)})
