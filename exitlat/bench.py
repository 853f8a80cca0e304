"""`invoke bench`: boot the built guest in QEMU (in the runtime container, or on the host), pin its
vCPU, let the guest probes time each case while the host counts the exits of each case's window,
then write one result bundle. Nothing earlier is ever overwritten; a failed or interrupted run still
leaves a bundle marked incomplete with everything collected so far."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .console import Console, ConsoleClosed
from .errors import ExitlatError
from .paths import REPO_ROOT, results_root
from .progress import Progress, fmt_duration
from .qemu import QemuConfig, RunFiles, can_lock_memory, qemu_argv

INSTRUCTIONS = ("cpuid", "vmcall", "rdmsr", "wrmsr_tsc_deadline")
TIMERS = ("rdtscp", "lfence")


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
    repeat: int = 1
    label: str | None = None
    output: Path | None = None
    container: bool = True
    verify: bool = True
    require_isolation: bool = False
    debugcon: str = "auto"
    baselines: bool = True
    boot_timeout: float | None = None


@dataclass
class VmResult:
    """What one VM run (one repeat) produced; partial when status != complete."""
    status: str = "complete"
    reason: str | None = None
    hello: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)       # key -> ExitCounts of its window
    errors: list = field(default_factory=list)
    console: bytes = b""
    argv: list = field(default_factory=list)
    qemu_version: str | None = None
    kvm_stats: dict | None = None
    debugcon_bytes: int | None = None
    timings: dict = field(default_factory=dict)
    pinned: dict = field(default_factory=dict)
    tracing: str | None = None
    mem_lock: bool | None = None
    qemu_stderr: bytes = b""
    kvm_stat_windows: dict = field(default_factory=dict)   # key -> KVM's query-stats deltas
    finished: dict = field(default_factory=dict)           # the guest's last event (write figures)


def parse_int(text, what: str, lo: int, hi: int) -> int:
    try:
        v = int(str(text), 0)
    except ValueError:
        raise ExitlatError(f"{what} must be an integer, got {text!r}") from None
    if not lo <= v <= hi:
        raise ExitlatError(f"{what} must be between {lo} and {hi}, got {v}")
    return v


def check_options(o: BenchOptions) -> None:
    from .cases import case_specs

    if o.instr not in INSTRUCTIONS:
        raise ExitlatError(f"unknown --instr {o.instr!r}; choose one of {', '.join(INSTRUCTIONS)}")
    if o.timer not in TIMERS:
        raise ExitlatError(f"unknown --timer {o.timer!r}; choose rdtscp or lfence")
    if o.accel not in ("auto", "kvm", "tcg"):
        raise ExitlatError(f"unknown --accel {o.accel!r}; choose auto, kvm or tcg")
    if o.debugcon not in ("auto", "file", "null"):
        raise ExitlatError(f"unknown --debugcon {o.debugcon!r}; choose auto, file or null")
    case_specs(o.cases, o.instr, o.port)  # refuses e.g. rdmsr in user-mode cases


def choose_accel(requested: str, host: dict, progress: Progress) -> str:
    from .hostinfo import kvm_usable

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
    from .isolation import collect_state, default_core, housekeeping_core

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
    from .build import build, find_build

    folder = find_build()
    if folder is None:
        progress.say("no build for the current inputs: running `invoke build` first")
        folder, _ = build(progress=progress)
    return folder


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}-dirty" if commit and dirty else commit
    except (OSError, subprocess.SubprocessError):
        return None


# -- one VM run ---------------------------------------------------------------------------------

EVENT_BYTES_PER_ITERATION = 4 * 64   # kvm_exit + kvm_userspace_exit + kvm_pio + a handler event


def trace_buffer_kb(iterations_total: int) -> int:
    """The measured core's trace buffer (streaming backend): a whole case's events, so the reader
    never has to keep up with the exit rate; at least 32 MiB, at most 2 GiB or a quarter of the
    available memory."""
    from .kvmtrace import DEFAULT_BUFFER_KB

    want = iterations_total * EVENT_BYTES_PER_ITERATION // 1024
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
        self.vendor = plan.vendor or "intel"
        self.result = VmResult()

    def timeouts(self) -> tuple[float, float]:
        n = self.o.iterations + self.o.warmup
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
        qemu = console = qmp = tracer = None
        t0 = time.monotonic()
        try:
            qemu = self._start_qemu(r.argv, folder)
            r.timings["qemu_start_s"] = time.monotonic() - t0
            from .qmp import QMP

            console = Console(str(files.console))
            qmp = QMP(str(files.qmp))
            r.qemu_version = qmp.version()
            vcpus = qmp.vcpu_threads()
            from .launcher import pin_threads

            r.pinned = pin_threads(qemu.pid, vcpus, self.core, self.hk)
            tracer = self._start_tracer(vcpus)
            t_boot = self.t_cont = time.monotonic()
            qmp.command("cont")
            self._conversation(console, tracer, parse_console_line,
                               qmp if self.accel == "kvm" else None)
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
            missing = [k for k in self._expected_keys() if k not in r.samples]
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
            if tracer is not None:
                try:
                    tracer.stop()
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

    def _expected_keys(self) -> list[str]:
        keys = [s.key for s in self.specs]
        if self.o.baselines:
            keys += ["baseline_timer", "baseline_nonexiting", "baseline_syscall", "baseline_module_call"]
        return keys

    def _start_qemu(self, argv, folder):
        from .launcher import ContainerQemu, HostQemu

        if self.o.container:
            return ContainerQemu(argv, folder, self.build, [self.core, self.hk], self.accel,
                                 self.pins_base, self.progress.say)
        return HostQemu(argv, folder)

    def _start_tracer(self, vcpus):
        if self.accel != "kvm" or not self.o.verify:
            self.result.tracing = "not applicable" if self.accel != "kvm" else "disabled (--no-verify)"
            return None
        from .kvmtrace import ExitCounter

        tracer = ExitCounter(vcpus, cpu=self.core, buffer_kb=trace_buffer_kb(
            self.o.iterations + self.o.warmup))
        tracer.start()
        self.result.tracing = tracer.backend
        return tracer

    def _live_verdict(self, key: str) -> str:
        """The path check of a case as soon as its window closes (the bundle keeps the full one)."""
        spec = next((s for s in self.specs if s.key == key), None)
        if spec is None or key not in self.result.windows:
            return ""
        from .verify import verify_case

        v = verify_case(self.result.windows[key], self.o.iterations + self.o.warmup,
                        spec.expected_path, spec.instruction,
                        self.o.port if spec.instruction == "outb" else None, self.vendor)
        return f"; path {v['status'].upper()}: {v['detail']}"

    def _conversation(self, console: Console, tracer, parse, qmp=None) -> None:
        """Follow the guest's markers; around each key's loop take a tracing snapshot (and KVM's
        own counters through QMP query-stats, a second, independent count)."""
        r = self.result
        stats_before = {}
        boot_timeout, key_timeout = self.timeouts()
        timeout, waiting_for = boot_timeout, "the guest to boot"
        before = {}
        started = {}
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
                before[key] = tracer.snapshot() if tracer else None
                stats_before[key] = qmp.kvm_stats() if qmp else None
                started[key] = time.monotonic()
                self.progress.say(f"{key}: running {self.o.warmup}+{self.o.iterations} iterations")
                console.send("go\n")
                timeout, waiting_for = key_timeout, f"{key} to finish"
            elif kind == "done":
                key = ev["key"]
                if tracer and key in before:
                    r.windows[key] = tracer.snapshot() - before[key]
                if qmp and stats_before.get(key):
                    after = qmp.kvm_stats() or {}
                    r.kvm_stat_windows[key] = {k: after[k] - v for k, v in stats_before[key].items()
                                               if k in after and after[k] != v}
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


# -- the whole run ------------------------------------------------------------------------------

def run_bench(opts: BenchOptions, argv: list[str] | None = None) -> Path:
    from .bundle import write_bundle
    from .cases import case_specs
    from .guestio import GuestPlan
    from .hostinfo import collect_host
    from .pins import load_pins

    progress = Progress()
    check_options(opts)
    specs = case_specs(opts.cases, opts.instr, opts.port)
    out_root = Path(opts.output) if opts.output else results_root()
    out_root.mkdir(parents=True, exist_ok=True)
    host = collect_host(with_docker=opts.container)
    accel = choose_accel(opts.accel, host, progress)
    core, hk, isolation = resolve_cores(opts.core, progress)
    if not isolation.get("isolated"):
        msg = f"core {core} is not isolated (see `invoke doctor --core {core}`)"
        if opts.require_isolation:
            raise ExitlatError(msg + " and --require-isolation was given")
        progress.say(f"warning: {msg}")
    build = ensure_build(progress)
    manifest = json.loads((build / "manifest.json").read_text())
    vendor = "amd" if host["cpu"].get("vendor") == "AuthenticAMD" else "intel"
    plan = GuestPlan(cases=opts.cases, instr=opts.instr, port=opts.port, timer=opts.timer,
                     iterations=opts.iterations, warmup=opts.warmup, baselines=opts.baselines,
                     handshake=True, msr=None, vendor=vendor)
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
    doc, samples, files = assemble(opts, argv, host, isolation, manifest, accel, core, hk, specs,
                                   results, vendor)
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


def assemble(opts, argv, host, isolation, manifest, accel, core, hk, specs, results, vendor):
    samples, files, cases, baselines = {}, {}, [], []
    incomplete = [r for r in results if r.status != "complete"]
    first = results[0] if results else VmResult()
    for rep, res in enumerate(results):
        tag = f"r{rep}"
        for s in specs:
            key = f"{s.key}-{tag}"
            got = res.samples.get(s.key)
            if got is not None:
                samples[key] = got
            if got is None:  # listed anyway, so an incomplete bundle shows what did not run
                errs = [e.get("message", "") for e in res.errors if e.get("key") == s.key]
                ver = {"status": "skipped", "detail": "no samples" + (f": {errs[0]}" if errs else "")}
            elif accel != "kvm":
                ver = {"status": "not_applicable", "detail": "TCG: no VM exits to verify"}
            elif not opts.verify:
                ver = {"status": "skipped", "detail": "--no-verify"}
            elif s.key not in res.windows:
                ver = {"status": "failed", "detail": "no tracing window recorded"}
            else:
                from .verify import verify_case

                ver = verify_case(res.windows[s.key], opts.iterations + opts.warmup,
                                  s.expected_path, s.instruction, opts.port if s.instruction == "outb" else None,
                                  vendor)
                if s.key in res.kvm_stat_windows:  # KVM's own counters: a second opinion
                    ver["kvm_stats"] = res.kvm_stat_windows[s.key]
            cases.append({"key": key, "case": s.number, "repeat": rep, "flow": s.flow,
                          "instruction": s.instruction,
                          "msr": None if s.msr is None else f"{s.msr:#x}",
                          "port": opts.port if s.instruction == "outb" else None,
                          "timer": opts.timer, "expected_path": s.expected_path,
                          "verification": ver, "iterations": 0 if got is None else int(len(got)),
                          "warmup": opts.warmup, "samples_key": key})
        for name in ("timer", "nonexiting", "syscall", "module_call"):
            gk = f"baseline_{name}"
            if gk in res.samples:
                key = f"{gk}-{tag}"
                samples[key] = res.samples[gk]
                baselines.append({"key": key, "name": name,
                                  "flow": "user" if name != "module_call" else "user→kernel",
                                  "iterations": int(len(res.samples[gk])), "samples_key": key,
                                  "repeat": rep})
        files[f"console-{tag}.log"] = res.console
        if res.qemu_stderr:
            files[f"qemu-stderr-{tag}.log"] = res.qemu_stderr
    status = {"state": "complete", "reason": None}
    if incomplete:
        status = {"state": "incomplete", "reason": incomplete[0].reason}
    hello = first.hello
    versions = manifest.get("versions", {})
    doc = {
        "tool": {"name": "exitlat", "version": __version__, "commit": git_commit()},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command_line": list(argv or sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "label": opts.label,
        "status": status,
        "accel": accel,
        "host": host,
        "guest": {"kernel_release": hello.get("kernel") or versions.get("kernel_release"),
                  "kernel_config_sha256": manifest.get("artifacts", {}).get("kernel.config"),
                  "busybox_version": versions.get("busybox"),
                  "tsc_khz": hello.get("tsc_khz"), "invariant_tsc": hello.get("invariant_tsc"),
                  "cpu": hello.get("vendor"), "vcpu": hello.get("cpu")},
        "qemu": {"version": first.qemu_version or versions.get("qemu"),
                 "command_line": first.argv, "container": opts.container},
        "build_manifest": manifest,
        "isolation": isolation,
        "run": {"core": core, "housekeeping_core": hk, "tracing": first.tracing,
                "pinned_threads": {str(k): v for r in results for k, v in r.pinned.items()},
                "kvm_stats": first.kvm_stats, "mem_lock": first.mem_lock, "debugcon_bytes": [r.debugcon_bytes for r in results],
                "timings": [r.timings for r in results],
                "guest_finished": [r.finished for r in results],
                "exit_windows": [{k: _window_dict(w) for k, w in r.windows.items()} for r in results],
                "kvm_stat_windows": [r.kvm_stat_windows for r in results],
                "guest_errors": [e for r in results for e in r.errors]},
        "cases": cases,
        "baselines": baselines,
    }
    return doc, samples, files


def _window_dict(w) -> dict:
    if hasattr(w, "to_dict"):
        return w.to_dict()
    return {k: v for k, v in vars(w).items()} if hasattr(w, "__dict__") else {"value": str(w)}
