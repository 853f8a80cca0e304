"""`invoke bench`: boot the built guest in QEMU (in the runtime container, or on the host), pin its
vCPU, let the guest probes time each case in a window nothing traces, then prove its path in a
traced window of its own, and write one result bundle. Nothing earlier is ever overwritten; a failed or interrupted run still
leaves a bundle marked incomplete with everything collected so far."""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .console import Console, ConsoleClosed
from exitlat.errors import ExitlatError
from exitlat.paths import results_root
from exitlat.progress import Progress, fmt_duration
from .qemu import QemuConfig, RunFiles, can_lock_memory, qemu_argv
from .runrecord import VmResult
from exitlat.verify.verdicts import VerdictContext
from .windows import case_of, is_traced_key

TRACING_BACKENDS = ("auto", "hist", "stream")
DEFAULT_VERIFY_ITERATIONS = 10_000


@dataclass
class BenchOptions:
    cases: list[int]
    iterations: int = 10000
    warmup: int = 1000
    instr: str = "cpuid"
    port: int = 0xE9
    timer: str = "rdtscp"
    core: int | None = None
    accel: str = "auto"
    repeat: int | None = None      # None: RECOMMENDED_REPEAT under KVM, 1 under TCG
    label: str | None = None
    output: Path | None = None
    container: bool = True
    verify: bool = True
    require_isolation: bool = False
    debugcon: str = "auto"
    baselines: bool = True
    boot_timeout: float | None = None
    build: Path | None = None               # a build folder to use instead of the current inputs'
    tracing: str = "auto"                   # verification backend: auto, hist or stream
    verify_iterations: int | None = None    # traced window per case (None: min(iterations, 10000))
    emulated_host: bool = False             # set by selftest: the host is an emulated AMD-V machine


def parse_int(text, what: str, lo: int, hi: int) -> int:
    try:
        v = int(str(text), 0)
    except ValueError:
        raise ExitlatError(f"{what} must be an integer, got {text!r}") from None
    if not lo <= v <= hi:
        raise ExitlatError(f"{what} must be between {lo} and {hi}, got {v}")
    return v


def check_options(o: BenchOptions) -> None:
    from exitlat.cases import case_specs

    from exitlat.instructions import F_INSTRUCTIONS

    if o.instr not in F_INSTRUCTIONS:
        raise ExitlatError(f"unknown --instr {o.instr!r}; choose one of {', '.join(F_INSTRUCTIONS)}")
    from .guestio import TIMERS

    if o.timer not in TIMERS:
        raise ExitlatError(f"unknown --timer {o.timer!r}; choose rdtscp or lfence")
    if o.accel not in ("auto", "kvm", "tcg"):
        raise ExitlatError(f"unknown --accel {o.accel!r}; choose auto, kvm or tcg")
    if o.debugcon not in ("auto", "file", "null"):
        raise ExitlatError(f"unknown --debugcon {o.debugcon!r}; choose auto, file or null")
    if o.tracing not in TRACING_BACKENDS:
        raise ExitlatError(f"unknown --tracing {o.tracing!r}; choose {', '.join(TRACING_BACKENDS)}")
    if o.verify_iterations is not None and not 1 <= o.verify_iterations <= 50_000_000:
        raise ExitlatError(f"--verify-iterations must be between 1 and 50000000, got {o.verify_iterations}")
    if o.build is not None and not (Path(o.build) / "manifest.json").is_file():
        raise ExitlatError(f"--build {o.build}: not a finished build folder (no manifest.json)")
    case_specs(o.cases, o.instr, o.port)  # refuses e.g. rdmsr in user-mode cases


def choose_accel(requested: str, host: dict, progress: Progress) -> str:
    from exitlat.host.facts import kvm_usable

    ok, why = kvm_usable()
    hw = host["cpu"].get("virtualization")
    if requested == "tcg":
        return "tcg"
    if requested == "kvm":
        if not ok:
            raise ExitlatError(f"--accel kvm: {why}")
        if not hw:
            progress.say("warning: this KVM has no VMX/SVM (software KVM such as kvm_pvm); "
                         "a Linux guest may boot very slowly and exits do not reflect hardware")
        return "kvm"
    if ok and hw:
        return "kvm"
    progress.say(f"warning: no hardware KVM here ({why if not ok else 'no vmx/svm flag'}); "
                 "using TCG — the numbers will NOT be VM-exit timings")
    return "tcg"


def resolve_cores(core: int | None, progress: Progress) -> tuple[int, int, dict]:
    from exitlat.host.isolation import collect_state, default_core, housekeeping_core

    if core is None:
        core, warning = default_core()
        if warning:
            progress.say(f"warning: {warning}")
    ncpu = os.cpu_count() or 1
    if not 0 <= core < ncpu:
        raise ExitlatError(f"--core {core} does not exist (this host has cores 0-{ncpu - 1})")
    hk = housekeeping_core(core)
    return core, hk, collect_state(core)


def ensure_build(progress: Progress) -> Path:
    from exitlat.build.builder import build, find_build

    folder = find_build()
    if folder is None:
        progress.say("no build for the current inputs: running `invoke build` first")
        folder, _ = build(progress=progress)
    return folder


# -- one VM run ---------------------------------------------------------------------------------

EVENT_BYTES_PER_ITERATION = 4 * 64   # kvm_exit + kvm_userspace_exit + kvm_pio + a handler event
# The timeline adds kvm_entry (40 bytes in the ring buffer) and, for a userspace exit,
# sys_exit_ioctl + sys_enter_ioctl (28 + 44): an OUT iteration is about 240 bytes in all.
TIMELINE_BYTES_PER_ITERATION = 2 * 64


def trace_buffer_kb(iterations_total: int, timeline: bool = False) -> int:
    """The measured core's trace buffer (streaming backend, and the hist backend's timeline): a
    whole case's events, so the reader never has to keep up with the exit rate; at least 32 MiB,
    at most 2 GiB or a quarter of the available memory."""
    from exitlat.verify.kvmtrace import DEFAULT_BUFFER_KB

    per = EVENT_BYTES_PER_ITERATION + (TIMELINE_BYTES_PER_ITERATION if timeline else 0)
    want = iterations_total * per // 1024
    avail_kb = 2 << 20
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail_kb = int(line.split()[1]) // 4
    except OSError:
        pass
    return max(DEFAULT_BUFFER_KB, min(want, 2 << 20, avail_kb))


class VmRun:
    def __init__(self, opts: BenchOptions, build: Path, accel: str, core: int, hk: int,
                 plan, specs, progress: Progress, pins_base: dict):
        self.o, self.build, self.accel, self.core, self.hk = opts, build, accel, core, hk
        self.plan, self.specs, self.progress, self.pins_base = plan, specs, progress, pins_base
        self.result = VmResult()
        self.spec_by_key = {s.key: s for s in specs}
        self.n_timed = opts.iterations + opts.warmup
        self.verdict_context = VerdictContext(vendor=plan.vendor or "unknown", port=opts.port)
        self.tracer = None
        self.traced_before = None
        self.vcpus: list[int] = []

    def timeouts(self) -> tuple[float, float]:
        n = max(self.o.iterations + self.o.warmup, self.plan.verify_iterations or 0)
        slow = self.accel == "tcg"
        boot = self.o.boot_timeout or (120.0 if slow else 60.0)
        per_key = 30.0 + n * (200e-6 if slow else 50e-6)
        return boot, per_key

    def run(self) -> VmResult:
        from .guestio import parse_console_line, read_samples

        r = self.result
        folder = Path(tempfile.mkdtemp(prefix="exitlat-run-"))
        files = RunFiles(folder)
        with open(files.disk, "wb") as f:
            f.truncate(self.plan.disk_size_bytes())
        debugcon = self.o.debugcon if self.o.debugcon != "auto" else ("file" if self.accel == "tcg" else "null")
        mem_mb = self.plan.guest_mem_mb()
        mem_lock = self.o.container or can_lock_memory(mem_mb)
        if not mem_lock:
            self.progress.say("warning: cannot lock guest memory (not root, RLIMIT_MEMLOCK too "
                              "small): running with mem-lock=off; raise `ulimit -l` to lock it")
        self.result.mem_lock = mem_lock
        cfg = QemuConfig(self.build, self.accel, mem_mb, self.plan.kernel_args(), self.o.port,
                         debugcon, mem_lock)
        r.argv = qemu_argv(cfg, files)
        qemu = console = qmp = None
        t0 = time.monotonic()
        try:
            qemu = self._start_qemu(r.argv, folder)
            r.timings["qemu_start_s"] = time.monotonic() - t0
            from .qmp import QMP

            console = Console(str(files.console))
            qmp = QMP(str(files.qmp))
            r.qemu_version = qmp.version()
            self.vcpus = qmp.vcpu_threads()
            from .launcher import pin_threads

            r.pinned = pin_threads(qemu.pid, self.vcpus, self.core, self.hk)
            r.tracing = self._tracing_mode()
            t_boot = self.t_cont = time.monotonic()
            qmp.command("cont")
            self._conversation(console, parse_console_line, qmp if self.accel == "kvm" else None)
            r.timings["guest_s"] = time.monotonic() - t_boot
            # The guest said "finished" (even after an error in one case it still writes the
            # samples of the others): collect whatever the disk holds.
            r.kvm_stats = qmp.kvm_stats() if self.accel == "kvm" else None
            t_c = time.monotonic()
            if qemu.wait(30) is None:
                raise ExitlatError("the guest finished but QEMU did not exit within 30 s")
            try:
                r.samples = read_samples(files.disk)
            except ExitlatError:
                if r.status == "complete":
                    raise
                # the guest's own error (already the reason) kept it from writing samples
            r.timings["collect_s"] = time.monotonic() - t_c
            missing = [k for k in self.plan.keys() if k not in r.samples]
            if missing and r.status == "complete":
                r.status, r.reason = "incomplete", f"guest wrote no samples for {', '.join(missing)}"
        except KeyboardInterrupt:
            r.status, r.reason = "incomplete", "interrupted (Ctrl-C)"
            raise
        except ConsoleClosed:
            code = qemu.poll() if qemu else None
            r.status = "incomplete"
            r.reason = f"QEMU exited (code {code}) before the guest finished"
        except ExitlatError as err:
            r.status, r.reason = "incomplete", str(err)
        finally:
            if self.tracer is not None:
                try:
                    self.tracer.stop()
                except Exception:
                    pass
            if qmp is not None:
                qmp.close()
            if console is not None:
                r.console = bytes(console.transcript)
                console.close()
            if qemu is not None:
                qemu.stop()
            if files.debugcon.exists():
                r.debugcon_bytes = files.debugcon.stat().st_size
            stderr = folder / "qemu-stderr.log"
            r.qemu_stderr = stderr.read_bytes() if stderr.exists() else b""
            shutil.rmtree(folder, ignore_errors=True)
        return r

    def _start_qemu(self, argv, folder):
        from .launcher import ContainerQemu, HostQemu

        if self.o.container:
            return ContainerQemu(argv, folder, self.build, [self.core, self.hk], self.accel,
                                 self.pins_base, self.progress.say)
        return HostQemu(argv, folder)

    def _tracing_mode(self) -> str:
        if self.accel != "kvm":
            return "not applicable"
        if not self.o.verify:
            return "disabled (--no-verify)"
        if not self.plan.verify_iterations:
            return "disabled (no traced windows)"
        return f"traced windows only ({self.o.tracing})"

    # -- the two windows of a key ----------------------------------------------------------------
    def _open_traced(self, key: str) -> None:
        """Start counting exits for a traced window: a fresh tracefs instance (tracepoints, hist
        triggers, fastpath kprobes) that exists only while this window runs, with the TSC as its
        trace clock and the timeline that pairs each exit with its re-entry (exitlat.verify.decompose)."""
        from exitlat.verify.kvmtrace import ExitCounter, fastpath_symbols
        from .windows import TracedWindow

        w = self.result.windows[case_of(key)] = TracedWindow()
        if self.accel != "kvm" or not self.o.verify:
            return
        self.tracer = ExitCounter(self.vcpus, cpu=self.core, backend=self.o.tracing,
                                  buffer_kb=trace_buffer_kb(self.plan.verify_iterations, timeline=True),
                                  kprobes=fastpath_symbols(), timeline=True)
        self.tracer.start()
        w.backend = self.tracer.backend
        w.kprobes = list(getattr(self.tracer, "kprobes_active", []) or [])
        self.traced_before = self.tracer.snapshot()

    def _close_traced(self, key: str) -> None:
        w = self.result.windows[case_of(key)]
        if self.tracer is None:
            return
        try:
            w.counts = self.tracer.snapshot() - self.traced_before
            try:        # the decomposition's input; its failure never touches the verification
                self.result.timelines[case_of(key)] = self.tracer.timeline()
            except ExitlatError as e:
                self.result.timelines[case_of(key)] = f"no timeline: {e}"
        finally:
            self.tracer.stop()
            self.tracer = None

    def _live_verdict(self, key: str) -> str:
        """A window's check as soon as it closes (the bundle keeps the full verdicts)."""
        from exitlat.verify.verdicts import baseline_verdict, timed_verdict, traced_verdict

        r, ctx = self.result, self.verdict_context
        if is_traced_key(key):
            spec = self.spec_by_key.get(case_of(key))
            if spec is None or self.accel != "kvm" or not self.o.verify:
                return ""
            v = traced_verdict(spec, r.windows[case_of(key)], self.plan.verify_iterations, ctx)
        elif key in self.spec_by_key:
            if self.accel != "kvm":
                return ""
            v = timed_verdict(self.spec_by_key[key], r.timed.get(key), self.n_timed, ctx)
        else:
            if self.accel != "kvm":
                return ""
            v = baseline_verdict(r.timed.get(key), self.n_timed)
        return f"; {v['status'].upper()}: {v['detail']}"

    def _conversation(self, console: Console, parse, qmp=None) -> None:
        """Follow the guest's markers. Timed window: KVM stats and the tracefs state around it,
        nothing enabled. Traced window: a tracing instance that lives only for its loop."""
        from .windows import TimedWindow, tracing_state

        r = self.result
        boot_timeout, key_timeout = self.timeouts()
        timeout, waiting_for = boot_timeout, "the guest to boot"
        stats_before: dict = {}
        started: dict = {}
        while True:
            line = console.readline(timeout)
            if line is None:
                raise ExitlatError(f"timed out after {timeout:.0f} s waiting for {waiting_for}")
            ev = parse(line)
            if ev is None:
                continue
            kind = ev.get("event")
            if kind == "hello":
                r.hello = ev
                r.timings["boot_s"] = time.monotonic() - self.t_cont
                self.progress.say(f"guest up: kernel {ev.get('kernel')}, TSC {ev.get('tsc_khz')} kHz, "
                                  f"invariant TSC {ev.get('invariant_tsc')}")
                timeout, waiting_for = key_timeout, "the first case"
            elif kind == "ready":
                key = ev["key"]
                if is_traced_key(key):
                    self._open_traced(key)
                    what = f"{self.plan.verify_iterations} traced iterations"
                else:
                    r.timed[key] = TimedWindow(tracing_before=tracing_state())
                    what = f"{self.o.warmup}+{self.o.iterations} iterations"
                stats_before[key] = qmp.kvm_stats() if qmp else None
                started[key] = time.monotonic()
                self.progress.say(f"{key}: running {what}")
                console.send("go\n")
                timeout, waiting_for = key_timeout, f"{key} to finish"
            elif kind == "done":
                key = ev["key"]
                stats = _stats_delta(stats_before.get(key), qmp.kvm_stats() if qmp else None)
                r.tsc_backwards[key] = ev.get("tsc_backwards")
                if is_traced_key(key):
                    self._close_traced(key)
                    r.windows[case_of(key)].kvm_stats = stats
                elif key in r.timed:
                    r.timed[key].kvm_stats = stats
                    r.timed[key].tracing_after = tracing_state()
                r.timings[f"{key}_s"] = time.monotonic() - started.get(key, time.monotonic())
                self.progress.say(f"{key}: done in {fmt_duration(r.timings[f'{key}_s'])}"
                                  + self._live_verdict(key))
                console.send("go\n")
            elif kind == "error":
                r.errors.append(ev)
                self.progress.say(f"guest error{' in ' + ev['key'] if ev.get('key') else ''}: "
                                  f"{ev.get('message')}")
            elif kind == "finished":
                r.finished = ev
                if ev.get("status") != "ok":
                    msgs = "; ".join(e.get("message", "?") for e in r.errors) or "no detail"
                    r.status, r.reason = "incomplete", f"guest reported an error: {msgs}"
                return


def _stats_delta(before: dict | None, after: dict | None) -> dict | None:
    """KVM stats of one window (every counter, zeros included); None when either read failed."""
    if not before or not after:
        return None
    return {k: after[k] - v for k, v in before.items() if k in after}


# -- the whole run ------------------------------------------------------------------------------

def verify_iterations(opts: BenchOptions, accel: str) -> int:
    """Iterations of each case's traced window: none under TCG or --no-verify."""
    if accel != "kvm" or not opts.verify:
        return 0
    if opts.verify_iterations is not None:
        return opts.verify_iterations
    return min(opts.iterations, DEFAULT_VERIFY_ITERATIONS)


def run_bench(opts: BenchOptions, argv: list[str] | None = None) -> Path:
    from exitlat.verify.rules import exit_vendor
    from exitlat.results.bundle import write_bundle
    from exitlat.cases import case_specs, tsc_deadline_fastpath
    from .guestio import GuestPlan
    from exitlat.host.facts import collect_host
    from exitlat.build.pins import load_pins

    progress = Progress()
    check_options(opts)
    out_root = Path(opts.output) if opts.output else results_root()
    out_root.mkdir(parents=True, exist_ok=True)
    host = collect_host(with_docker=opts.container)
    accel = choose_accel(opts.accel, host, progress)
    if opts.repeat is None:
        from exitlat.results.vmstats import RECOMMENDED_REPEAT

        opts.repeat = RECOMMENDED_REPEAT if accel == "kvm" else 1
    specs = case_specs(opts.cases, opts.instr, opts.port, fastpath=tsc_deadline_fastpath(host))
    if opts.instr == "wrmsr_tsc_deadline" and 5 in opts.cases and not tsc_deadline_fastpath(host):
        progress.say("note: KVM's fastpath cannot handle WRMSR TSC_DEADLINE on this host (no VMX "
                     "preemption timer): case 5 expects the normal in-kernel handler")
    core, hk, isolation = resolve_cores(opts.core, progress)
    if not isolation.get("isolated"):
        msg = f"core {core} is not isolated (see `invoke doctor --core {core}`)"
        if opts.require_isolation:
            raise ExitlatError(msg + " and --require-isolation was given")
        progress.say(f"warning: {msg}")
    if accel == "kvm" and opts.verify:
        from exitlat.verify.kvmtrace import tracing_available

        ok, why = tracing_available()
        if not ok:
            raise ExitlatError(f"cannot verify exit paths: {why} (or run with --no-verify)")
    build = Path(opts.build) if opts.build else ensure_build(progress)
    manifest = json.loads((build / "manifest.json").read_text())
    vendor = exit_vendor(host["cpu"].get("vendor") or "")
    viters = verify_iterations(opts, accel)
    plan = GuestPlan(cases=opts.cases, instr=opts.instr, port=opts.port, timer=opts.timer,
                     iterations=opts.iterations, warmup=opts.warmup, baselines=opts.baselines,
                     handshake=True, msr=None, vendor=None if vendor == "unknown" else vendor,
                     verify_iterations=viters)
    progress.say(f"bench: cases {','.join(map(str, opts.cases))}, {opts.instr}, {accel.upper()}, "
                 f"core {core} (housekeeping {hk}), {opts.repeat} VM(s), "
                 f"{'container' if opts.container else 'no container'}")
    pins_base = load_pins().base
    results: list[VmResult] = []
    interrupted = False
    try:
        for rep in range(opts.repeat):
            progress.say(f"VM {rep + 1}/{opts.repeat}: starting QEMU")
            res = VmRun(opts, build, accel, core, hk, plan, specs, progress, pins_base).run()
            results.append(res)
            if res.status != "complete":
                progress.say(f"VM {rep + 1}: incomplete: {res.reason}")
                break
    except KeyboardInterrupt:
        interrupted = True
        if not results or results[-1].status == "complete":
            results.append(VmResult(status="incomplete", reason="interrupted (Ctrl-C)"))
    from exitlat.results.document import DocumentBuilder, document_hz

    hello = next((r.hello for r in results if r.hello), {})
    doc, samples, files = DocumentBuilder(opts, accel, specs, vendor, viters, document_hz(host, hello)
                                          ).build(argv, host, isolation, manifest, core, hk, results)
    try:
        path = write_bundle(out_root, doc, samples, files)
    except ExitlatError as err:
        rescue = save_rescue(out_root, doc, samples, files)
        raise ExitlatError(f"{err}; the raw data is kept in {rescue}") from None
    progress.say(f"bundle: {path}")
    if interrupted:
        raise KeyboardInterrupt
    return path


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
