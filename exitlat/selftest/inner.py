"""What runs inside L1 (`python3 -m exitlat.selftest.inner CONFIG`): the bench runs of the selftest
on L1's real KVM (kvm_amd or kvm_intel), each exported as a bundle archive, plus a summary, written
to the raw output disk (virtio-blk or ATA) for the host to collect.

Every run is `exitlat.bench.run_bench` called directly: no container (L1 has no Docker), accel kvm,
the L2 vCPU pinned to the configured core, `emulated_host` set to the machine's note so each bundle
says which emulated host it ran on and that its timings are not exit costs. A run that fails is recorded with its one-line error and the next run still happens; the
host judges the results. Progress goes to the console as `exitlat-l1: event {json}` lines.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tarfile
import time
import traceback
from pathlib import Path

from exitlat.limits import SELFTEST_MAX_ITERATIONS
from .protocol import DISK_MAGIC, MARK

OUT = Path("/tmp/selftest-out")

# The selftest's runs: every case with CPUID under each tracing backend, and every other
# instruction where the guest accepts it (docs/measuring.md). (name, instruction, cases, backend)
RUNS = (
    ("cpuid-hist", "cpuid", (1, 2, 3, 4, 5, 6), "hist"),
    ("cpuid-stream", "cpuid", (1, 2, 3, 4, 5, 6), "stream"),
    ("vmcall", "vmcall", (1, 3, 5), "hist"),
    ("rdmsr", "rdmsr", (3, 5), "stream"),
    ("wrmsr_tsc_deadline", "wrmsr_tsc_deadline", (5,), "hist"),
)
RUN_NAMES = tuple(r[0] for r in RUNS)
# The exit catalogue (docs/measuring.md): every kind each F case allows, one run per case (part of
# "all"; alone: --runs catalogue), as
# `invoke bench --case N --instr all` runs them (kinds this vCPU cannot run are left out, with why).
CATALOGUE_RUNS = (
    ("catalogue-kernel", "all", (5,), "hist"),
    ("catalogue-ioctl", "all", (3,), "stream"),
    ("catalogue-user", "all", (1,), "hist"),
    # the xAPIC kinds, which "all" leaves out: their guest boots nox2apic (cases.check_apic_modes)
    ("catalogue-xapic", "xapic_self_ipi,xapic_ipi_sti_nop,xapic_ipi_tpr", (5,), "hist"),
)
CATALOGUE_NAMES = tuple(r[0] for r in CATALOGUE_RUNS)
# The two-vCPU kinds (bench's "all" leaves them out without a second core): L2's receiving vCPU on
# L1's core after the measured one, so an L1 that runs this gets a third CPU (host.py). Run by name
# (or in --runs catalogue), not in "all", so the default selftest's L1 keeps its two CPUs.
TWO_VCPU_RUNS = (
    ("catalogue-ipi", "ipi,ipi_halt", (5,), "hist"),
)
TWO_VCPU_NAMES = tuple(r[0] for r in TWO_VCPU_RUNS)
# Kinds whose vCPU feature the emulated hosts' CPU models lack (TCG's EPYC, Bochs's Skylake):
# the guest refuses them with why (and vmexit.flat skips them), and that refusal is the verdict
# they can have there.
EMULATED_CPU_LACKS = frozenset({"wr_ibrs_msr", "wr_ibpb_msr", "wr_tsx_ctrl_msr",
                                "xsetbv"})       # XSAVE: not in L2's vCPU on the Bochs host
# kvm-unit-tests' vmexit.flat beside case 5 (`bench --case 5 --instr cpuid,vmcall --reference`,
# exitlat/reference/), two VM runs; chosen by name (--runs reference). It proves the reference's
# plumbing and its exits per iteration (vmcall: 2 CPUID + 1 VMMCALL); its ratios here are never
# exit costs.
REFERENCE_RUNS = (
    ("reference", "cpuid,vmcall", (5,), "hist"),
)
REFERENCE_NAMES = tuple(r[0] for r in REFERENCE_RUNS)
# Runs that hold the emulated host itself to account, by name only (not in "all"): mov_to_cr8 in
# batches long enough (~0.1 s under TCG) for L2's tick to fall due inside them with IRQs off, so
# KVM asks for an interrupt window while the guest writes CR8. QEMU 10.0.2's TCG SVM aborted there
# (qemu/build.sh has the fix); the catalogue's 1 100-iteration batches hit it only now and then.
HOST_RUNS = (
    ("cr8-irq-pending", "mov_to_cr8", (5,), "hist"),
)
HOST_NAMES = tuple(r[0] for r in HOST_RUNS)
HOST_RUN_SIZES = {"iterations": SELFTEST_MAX_ITERATIONS, "warmup": 100,
                  "verify_iterations": SELFTEST_MAX_ITERATIONS}
# Default runs that also run the reference (one VM run), so that every full selftest proves its
# plumbing, the vmcall loop's 2 CPUID + 1 VMMCALL, and `--instr all --reference` (every vmexit.flat
# test exitlat has a kind for): on the AMD-V host only (+~10 s and +~50 s there; under Bochs
# vmexit.flat's loops, which run until a round lasts 2^30 cycles, added 4½ minutes for vmcall).
WITH_REFERENCE = ("vmcall", "catalogue-kernel")
WITH_REFERENCE_VENDORS = ("amd",)
# A run whose verdicts must NOT pass (controls.py): windows far too small to tell paths apart,
# timed while another tracefs instance traces every syscall (as a forgotten `perf trace` or a
# colleague's instance would).
CONTROL_RUN = {"name": "controls-small-n-traced", "instr": "cpuid", "cases": [1, 2],
               "tracing": "hist", "capture": False, "iterations": 20, "warmup": 0,
               "verify_iterations": 20, "baselines": False,
               "foreign_tracing": "raw_syscalls/sys_enter"}
FOREIGN_INSTANCE = "exitlat_control_foreign"
# Short runs whose raw trace text and hist files are kept (--capture; tests/fixtures/trace).
CAPTURE_RUNS = (
    ("capture-cpuid", "cpuid", (1, 2), "hist"),
    ("capture-vmcall", "vmcall", (1,), "hist"),
    ("capture-msr", "rdmsr", (3,), "hist"),
    ("capture-wrmsr", "wrmsr_tsc_deadline", (5,), "hist"),
)


def run_config(name: str, instr: str, cases, tracing: str, capture: bool = False,
               vendor: str = "amd") -> dict:
    from exitlat.instructions import TABLE

    own = name in REFERENCE_NAMES
    two = any(TABLE[k].vcpus > 1 for k in instr.split(",") if k in TABLE)
    # the reference runs take two VM runs: the ratio's interval across VM runs needs R >= 2
    return {"name": name, "instr": instr, "cases": list(cases), "tracing": tracing,
            "capture": capture, "two_vcpus": two,
            "reference": own or (name in WITH_REFERENCE and vendor in WITH_REFERENCE_VENDORS),
            **({"repeat": 2} if own else {}), **(HOST_RUN_SIZES if name in HOST_NAMES else {})}


def event(kind: str, **fields) -> None:
    # the console itself, even while bench's output goes to a log (_bench_output)
    print(f"{MARK} event {json.dumps(dict(event=kind, **fields), sort_keys=True)}",
          file=sys.__stdout__, flush=True)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def kernel_messages(pattern: tuple[str, ...] = ("kvm", "svm", "SVM", "vmx", "VMX", "TSC")) -> list[str]:
    """Kernel log lines that mention KVM/SVM/VMX or the TSC (from /dev/kmsg, without blocking)."""
    out = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return out
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:          # EPIPE: overwritten records; keep reading
                continue
            if not rec:
                break
            msg = rec.split(";", 1)[-1].strip()
            if any(p in msg for p in pattern):
                out.append(msg)
    finally:
        os.close(fd)
    return out[-40:]


KVM_VENDOR_MODULES = ("kvm_amd", "kvm_intel")
FLAGS_SHOWN = ("svm", "npt", "nrip_save", "vgif", "vmx", "ept", "vpid", "x2apic", "tsc_deadline_timer",
               "constant_tsc", "invtsc", "hypervisor")


def l1_facts() -> dict:
    """What L1 is: kernel, CPU flags that matter (and VMX's own `vmx flags`), the KVM vendor
    module's parameters, tracing, Python."""
    flags, vmx_flags = set(), []
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("vmx flags") and not vmx_flags:
            vmx_flags = line.split(":", 1)[1].split()
    params, module = {}, None
    for name in KVM_VENDOR_MODULES:
        pdir = Path("/sys/module") / name / "parameters"
        if pdir.is_dir():
            module = name
            for p in sorted(pdir.iterdir()):
                params[p.name] = _read(str(p))
    try:
        from exitlat.verify.trace.tracefs import tracing_available

        tracing = tracing_available()
    except Exception as err:  # reported, never fatal here
        tracing = (False, str(err))
    import numpy

    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in FLAGS_SHOWN),
        "vmx_flags": vmx_flags,
        "kvm_module": module,
        "kvm_parameters": params,
        "tsc_khz": _tsc_khz(),
        "tracing": {"ok": tracing[0], "detail": tracing[1]},
        "hist_triggers": Path("/sys/kernel/tracing/events/kvm/kvm_exit/hist").exists(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "mem_total_kb": _meminfo("MemTotal"),
        "uptime_s": float((_read("/proc/uptime") or "0").split()[0]),
        "interrupts": _read("/proc/interrupts"),
        "kernel_messages": kernel_messages(),
    }


def _tsc_khz() -> float | None:
    """The TSC frequency L1's kernel settled on (its boot messages), for the VMX preemption timer:
    kvm_intel turns the timer off when TSC Hz >> its rate exceeds 2^32 / 10."""
    for msg in kernel_messages(("tsc:",)):
        if "MHz" in msg and ("Refined TSC" in msg or "Detected" in msg):
            try:
                return round(float(msg.split("MHz")[0].split()[-1]) * 1000, 1)
            except ValueError:
                continue
    return None


def _meminfo(key: str) -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


class _NoCapture:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the runs ---------------------------------------------------------------------------------------

# L2 hangs that are the emulated host's, not exitlat's: under nested TCG an L2 kernel can deadlock in
# its timer interrupt (spinning in queued_spin_lock_slowpath on hrtimer_bases.lock or
# timekeeper_lock with IF=0: QEMU delivered the interrupt twice; see host.l1_argv, whose
# thread=multi avoids the known cause). Should one still happen, the run is repeated with a fresh
# VM (at most `retries` times) and every hang is reported.
HANG_MARKERS = ("timed out after", "waiting for the guest to boot")
L2_BOOT_TIMEOUT_S = 20.0      # L2 boots in 1-2 s here (cont to hello); a hang costs no more than this


class ForeignTracing:
    """Someone else's tracing, left on during the whole run: a tracefs instance of its own with
    one event enabled (the bench must notice it in every timed window)."""

    def __init__(self, event: str):
        self.event = event
        self.root = Path("/sys/kernel/tracing/instances") / FOREIGN_INSTANCE

    def __enter__(self):
        self.root.mkdir(exist_ok=True)
        (self.root / "events" / self.event / "enable").write_text("1")
        return self

    def __exit__(self, *exc):
        try:
            (self.root / "events" / self.event / "enable").write_text("0")
            self.root.rmdir()
        except OSError:
            pass
        return False


class _QuietStream:
    """bench's progress, to a log file that comes back with the results instead of L1's console:
    Bochs's UART sends at 115200 baud in emulated time, and the interrupts of a console still
    busy with the last lines landed in the next timed window (231 interrupt exits in one of 1100
    iterations). Only L2's boot start and end go to the console, as short events (host-side
    timing)."""

    MARKS = (("starting QEMU", "l2-boot-start"), ("guest up:", "l2-boot-done"))

    def __init__(self, f):
        self.f = f

    def write(self, text: str) -> int:
        self.f.write(text)
        for needle, kind in self.MARKS:
            if needle in text:
                self.f.flush()
                event(kind)
        return len(text)

    def flush(self) -> None:
        self.f.flush()


class _bench_output:
    """Context manager: with cfg["quiet_console"], bench's stdout and stderr go to
    OUT/logs/<run>.log (see _QuietStream); otherwise nothing changes."""

    def __init__(self, cfg: dict, run: dict):
        self.quiet = bool(cfg.get("quiet_console"))
        self.path = OUT / "logs" / f"{run['name']}.log"
        self.saved = None

    def __enter__(self):
        if self.quiet:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a")
            self.saved = (sys.stdout, sys.stderr)
            sys.stdout = sys.stderr = _QuietStream(self.f)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            sys.stdout, sys.stderr = self.saved
            self.f.close()
        return False


def is_l2_hang(reason: str | None) -> bool:
    return bool(reason) and any(m in reason for m in HANG_MARKERS)


def one_run(cfg: dict, run: dict, index: int, of: int) -> dict:
    rec = {"name": run["name"], "instr": run["instr"], "cases": run["cases"],
           "tracing": run["tracing"], "status": "error", "error": None, "bundle": None,
           "archive": None, "hangs": []}
    event("run-start", index=index, of=of, name=run["name"], instr=run["instr"],
          cases=",".join(map(str, run["cases"])), tracing=run["tracing"])
    t0 = time.monotonic()
    retries = int(cfg.get("retries", 2))
    for attempt in range(retries + 1):
        rec["attempts"] = attempt + 1
        _attempt(cfg, run, rec)
        hang = rec["status"] == "incomplete" and is_l2_hang(rec.get("reason"))
        if not hang:
            break
        rec["hangs"].append({"attempt": attempt + 1, "reason": rec["reason"],
                             "l2_console_tail": rec.pop("l2_console_tail", "")})
        if attempt < retries:
            event("run-retry", name=run["name"], attempt=attempt + 2, reason=rec["reason"])
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    event("run-done", name=run["name"], status=rec["status"], wall_s=rec["wall_s"],
          error=rec["error"], hangs=len(rec["hangs"]))
    return rec


def _attempt(cfg: dict, run: dict, rec: dict) -> None:
    """One run_bench call; fills rec (status, bundle, archive, error)."""
    from exitlat.bundle.archive import export_bundle
    from exitlat.bench import run_bench
    from exitlat.run.plan import BenchOptions
    from exitlat.bundle.read import load_bundle

    rec.update(status="error", error=None, bundle=None, archive=None, reason=None)
    opts = BenchOptions(
        cases=list(run["cases"]), iterations=int(run.get("iterations", cfg["iterations"])),
        warmup=int(run.get("warmup", cfg["warmup"])), instr=run["instr"], core=int(cfg["core"]),
        peer_core=int(cfg["core"]) + 1 if run.get("two_vcpus") else None,
        accel="kvm", repeat=int(run.get("repeat", 1)), container=False, output=OUT / "results",
        baselines=run.get("baselines", run["instr"] == "cpuid"),   # every baseline's ≈0-exit proof, twice
        label=f"selftest {run['name']} ({cfg.get('machine', 'emulated AMD-V host')})",
        build=Path(cfg["build"]), tracing=run["tracing"],
        emulated_host=cfg.get("emulated_note") or True,
        boot_timeout=float(cfg.get("l2_boot_timeout", L2_BOOT_TIMEOUT_S)),
        verify_iterations=int(run.get("verify_iterations", cfg["verify_iterations"])),
        reference=bool(run.get("reference")))
    argv = ["invoke", "selftest", f"--runs={run['name']}"]
    try:
        if run.get("capture"):
            from .capture import Capture

            cap = Capture(OUT / "capture" / run["name"], cpu=int(cfg["core"]))
        elif run.get("foreign_tracing"):
            cap = ForeignTracing(run["foreign_tracing"])
        else:
            cap = _NoCapture()
        with cap, _bench_output(cfg, run):
            path = run_bench(opts, argv)
        b = load_bundle(path)
        doc = b.doc
        rec["bundle"] = path.name
        rec["state"] = doc["status"]["state"]
        rec["reason"] = doc["status"]["reason"]
        rec["verdicts"] = {c["key"]: c["verification"]["status"] for c in doc["cases"]}
        if rec["state"] == "complete":
            archive = export_bundle(path, OUT / "bundles" / f"{path.name}.tar.gz")
            rec["archive"] = archive.name
            rec["status"] = "ok"
        else:
            rec["status"] = "incomplete"
            rec["error"] = f"bundle incomplete: {rec['reason']}"
            logs = sorted(path.glob("console-r*.log"))
            rec["l2_console_tail"] = logs[-1].read_text(errors="replace")[-1500:] if logs else ""
            if not is_l2_hang(rec["reason"]):      # kept as evidence; a hang's is dropped
                archive = export_bundle(path, OUT / "bundles" / f"{path.name}.tar.gz")
                rec["archive"] = archive.name
    except Exception as err:   # one run's failure must not lose the others
        from exitlat.errors import ExitlatError

        rec["error"] = str(err).splitlines()[0] if isinstance(err, ExitlatError) else \
            f"{type(err).__name__}: {err}"
        if not isinstance(err, ExitlatError):
            rec["traceback"] = traceback.format_exc()[-4000:]
            print(rec["traceback"], file=sys.stderr, flush=True)


def output_device() -> Path:
    """The raw disk for the results: virtio-blk (vd*) under QEMU, ATA (sd*) under Bochs."""
    blocks = sorted(p.name for p in Path("/sys/block").glob("vd*")) or \
        sorted(p.name for p in Path("/sys/block").glob("sd*"))
    if not blocks:
        raise RuntimeError("no disk for the results (/sys/block/vd* or sd*)")
    return Path("/dev") / blocks[0]


def write_disk(folder: Path, device: Path, skip: tuple[str, ...] = ("results",)) -> int:
    """The folder as a tar, behind a magic and its length, at the start of the raw disk. The
    bundle folders themselves stay behind: their exported archives (bundles/) carry them."""
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(folder.rglob("*")):
            if p.relative_to(folder).parts[0] in skip:
                continue
            if p.is_file():
                tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
    data = buf.getvalue()
    with open(device, "r+b") as f:
        f.write(DISK_MAGIC + struct.pack("<Q", len(data)) + data)
        f.flush()
        os.fsync(f.fileno())
    return len(data)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m exitlat.selftest.inner CONFIG.json (inside L1 only)", file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[0]).read_text())
    (OUT / "bundles").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary = {"format": 1, "config": cfg, "runs": [], "error": None}
    try:
        summary["l1"] = l1_facts()
        event("facts", kernel=summary["l1"]["kernel"], kvm_module=summary["l1"]["kvm_module"],
              kvm=summary["l1"]["kvm_parameters"], tracing=summary["l1"]["tracing"]["detail"])
        for i, run in enumerate(cfg["runs"], 1):
            summary["runs"].append(one_run(cfg, run, i, len(cfg["runs"])))
        summary["kernel_messages_after"] = kernel_messages()
        summary["interrupts_after"] = _read("/proc/interrupts")
        summary["uptime_after_s"] = float((_read("/proc/uptime") or "0").split()[0])
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["traceback"] = traceback.format_exc()[-4000:]
        print(summary["traceback"], file=sys.stderr, flush=True)
        event("fatal", message=summary["error"])
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    try:
        n = write_disk(OUT, output_device())
    except Exception as err:
        event("fatal", message=f"cannot write the results disk: {type(err).__name__}: {err}")
        return 1
    event("written", bytes=n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
