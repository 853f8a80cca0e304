"""The reference's VM runs: kvm-unit-tests' vmexit.flat booted by the same QEMU binary, with the
same accelerator and CPU model, the same vCPU pinning (measured core, housekeeping core), in the
runtime container or not as the cases were, on the same plan (exitlat.run.plan.RunPlan).

* **timed runs** (one per --repeat): every test in one VM, nothing traced; tracefs is read before
  and after (the cases' rule: tracing someone left on is caught, not measured). KVM's own
  counters cannot be read around it: vmexit.flat ends QEMU right after its last line.
* **traced runs**: one VM per test, and one with no test (the baseline), each counted from its
  first instruction to its result line by the project's exit counter (exitlat.verify.trace); their
  figures are never used, only their exits (exitlat/reference/perloop.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.run.launcher import pin_threads
from exitlat.run.leftovers import kill_folder_processes, new_run_folder
from exitlat.run.qemu import accel_args, can_lock_memory, qemu_binary

from .output import parse_output
from .tests import RefTest

MEM_MB = 256                 # vmexit.flat's own default (kvm-unit-tests' run scripts)
DEBUG_EXIT_PORT = 0xF4       # isa-debug-exit: vmexit.flat's exit(0) makes QEMU exit with (0 << 1) | 1
SUCCESS_CODE = 1
NO_TEST = "none"             # a name no test has: the baseline boots and exits without a loop
PER_TEST_TIMEOUT_S = 120.0   # a test ends once a round lasts 2^30 cycles (< 1 s on hardware)
FLAT = "vmexit.flat"


def reference_argv(build: Path, accel: str, folder: Path, tests: list[str], mem_lock: bool) -> list[str]:
    """QEMU's command line for vmexit.flat: the cases' binary, accelerator and CPU model, the test
    OS as -kernel, its output on the serial port, isa-debug-exit to end it."""
    return [
        str(qemu_binary(build)), *accel_args(accel),
        "-machine", "pc", "-smp", "1", "-m", f"{MEM_MB}M",
        "-overcommit", f"mem-lock={'on' if mem_lock else 'off'}",
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-nic", "none",
        "-no-reboot", "-S",
        "-kernel", str(build / FLAT), "-append", " ".join(tests),
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x4",
        "-serial", f"file:{folder / 'serial.log'}",
        "-qmp", f"unix:{folder / 'qmp.sock'},server=on,wait=off",
    ]


@dataclass
class RefVm:
    """One VM run of vmexit.flat."""
    role: str                         # "timed", "traced" or "baseline"
    tests: list[str]
    argv: list[str] = field(default_factory=list)
    status: str = "complete"
    reason: str | None = None
    values: dict = field(default_factory=dict)     # test -> cycles (timed runs)
    skipped: list = field(default_factory=list)
    serial: bytes = b""
    exit_code: int | None = None
    timed_window: dict | None = None   # TimedWindow.to_dict(): tracing around a timed run
    counts: dict | None = None         # ExitCounts.to_dict(): a traced run's exits
    backend: str | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict:
        return {"role": self.role, "tests": self.tests, "status": self.status, "reason": self.reason,
                "values": self.values, "skipped": self.skipped, "exit_code": self.exit_code,
                "timed_window": self.timed_window, "counts": self.counts, "backend": self.backend,
                "wall_s": self.wall_s}


def _start(plan, argv, folder, say):
    from exitlat.run.launcher import ContainerQemu, HostQemu

    if plan.options.container:
        return ContainerQemu(argv, folder, plan.build, [plan.core, plan.housekeeping], plan.accel,
                             plan.pins_base, say)
    return HostQemu(argv, folder)


def _wait_for(serial: Path, names: list[str], qemu, timeout: float) -> str:
    """Wait until every test named has its result line (or QEMU exited); the output so far."""
    deadline = time.monotonic() + timeout
    while True:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        values, skipped = parse_output(text, names)
        if names and all(n in values or n in skipped for n in names):
            return text
        if qemu.poll() is not None:
            return serial.read_text(errors="replace") if serial.exists() else ""
        if time.monotonic() > deadline:
            raise ExitlatError(f"{FLAT} gave no result for {', '.join(names) or 'its boot'} "
                               f"within {timeout:.0f} s")
        time.sleep(0.05)


def run_vm(plan, role: str, tests: list[str], say, trace: bool = False) -> RefVm:
    """One VM of vmexit.flat with `tests` (NO_TEST: the baseline). Never raises for the run's own
    failure: the RefVm says what went wrong."""
    from exitlat.run.qmp import QMP
    from exitlat.run.windows import TimedWindow, tracing_state

    vm = RefVm(role, [t for t in tests if t != NO_TEST])
    folder = new_run_folder()
    mem_lock = plan.options.container or can_lock_memory(MEM_MB)
    vm.argv = reference_argv(plan.build, plan.accel, folder, tests, mem_lock)
    qemu = qmp = tracer = None
    window = None
    t0 = time.monotonic()
    boot = plan.options.boot_timeout or (120.0 if plan.accel == "tcg" else 60.0)
    try:
        qemu = _start(plan, vm.argv, folder, say)
        qmp = QMP(str(folder / "qmp.sock"), exit_code=qemu.poll)
        vcpus = qmp.vcpu_threads()
        pin_threads(qemu.pid, vcpus, plan.core, plan.housekeeping)
        if trace:
            from exitlat.run.vm import trace_buffer_kb
            from exitlat.verify.trace.kvmtrace import ExitCounter

            tracer = ExitCounter(vcpus, cpu=plan.core, backend=plan.options.tracing,
                                 buffer_kb=trace_buffer_kb(4_000_000))
            tracer.start()
            vm.backend = tracer.backend
        elif plan.accel == "kvm":
            window = TimedWindow(tracing_before=tracing_state())
        qmp.command("cont")
        text = _wait_for(folder / "serial.log", vm.tests, qemu,
                         boot + PER_TEST_TIMEOUT_S * max(1, len(vm.tests)))
        if tracer is not None and vm.tests:      # the loops' exits, before exit()'s own
            vm.counts = tracer.snapshot().to_dict()
        vm.exit_code = qemu.wait(30)
        if tracer is not None and not vm.tests:
            vm.counts = tracer.snapshot().to_dict()
        if window is not None:
            window.tracing_after = tracing_state()
            vm.timed_window = window.to_dict()
        text = (folder / "serial.log").read_text(errors="replace") if (folder / "serial.log").exists() else text
        vm.serial = text.encode()
        vm.values, vm.skipped = parse_output(text, vm.tests)
        if vm.exit_code is None:
            raise ExitlatError(f"{FLAT} gave its results but QEMU did not exit within 30 s")
        if vm.exit_code != SUCCESS_CODE:
            raise ExitlatError(f"{FLAT} ended with QEMU exit code {vm.exit_code} "
                               f"(isa-debug-exit {SUCCESS_CODE} is success)")
        missing = [t for t in vm.tests if t not in vm.values and t not in vm.skipped]
        if missing:
            raise ExitlatError(f"{FLAT} printed no result for {', '.join(missing)}")
    except ExitlatError as err:
        vm.status, vm.reason = "incomplete", str(err)
    finally:
        if tracer is not None:
            try:
                tracer.stop()
            except Exception:
                pass
        if qmp is not None:
            qmp.close()
        if qemu is not None:
            qemu.stop()
        kill_folder_processes(folder)
        if not vm.serial and (folder / "serial.log").exists():
            vm.serial = (folder / "serial.log").read_bytes()
        shutil.rmtree(folder, ignore_errors=True)
        vm.wall_s = round(time.monotonic() - t0, 2)
    return vm


@dataclass
class ReferenceRuns:
    tests: list[RefTest]
    timed: list[RefVm] = field(default_factory=list)
    traced: dict = field(default_factory=dict)      # test -> RefVm
    baseline: RefVm | None = None
    error: str | None = None


def run_reference(plan, out: ReferenceRuns, progress) -> ReferenceRuns:
    """The timed runs (one per VM run of the cases), then, under KVM with verification on, the
    traced runs: a baseline and one per test; into `out`, so that a stop keeps what ran."""
    say = progress.say
    tests = out.tests
    if not (plan.build / FLAT).is_file():
        out.error = f"the build folder {plan.build} has no {FLAT} (rebuild: `invoke build`)"
        say(f"reference: {out.error}")
        return out
    names = [t.test for t in tests]
    for rep in range(plan.repeat):
        say(f"reference {rep + 1}/{plan.repeat}: {FLAT} {' '.join(names)} (untraced)")
        vm = run_vm(plan, "timed", names, say)
        out.timed.append(vm)
        say(f"reference {rep + 1}: " + (", ".join(f"{k} {v}" for k, v in vm.values.items())
                                         if vm.status == "complete" else f"incomplete: {vm.reason}"))
        if vm.status != "complete":
            return out
    if not plan.verifying:
        return out
    say(f"reference traced: baseline ({FLAT} with no test)")
    out.baseline = run_vm(plan, "baseline", [NO_TEST], say, trace=True)
    if out.baseline.status != "complete":
        say(f"reference traced baseline: incomplete: {out.baseline.reason}")
        return out
    for name in names:
        say(f"reference traced: {name}")
        vm = run_vm(plan, "traced", [name], say, trace=True)
        out.traced[name] = vm
        if vm.status != "complete":
            say(f"reference traced {name}: incomplete: {vm.reason}")
    return out
