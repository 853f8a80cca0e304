"""One VM run of a bench: start QEMU (in the runtime container or on the host), pin its vCPU,
follow the guest's markers through every timed and traced window, and collect the samples. A run
that fails keeps everything it collected, marked incomplete with the reason."""

import errno
import os
import re
import shutil
import time
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.progress import Progress, fmt_duration

from .console import Console, ConsoleClosed
from .interrupt import deferred, reason_of
from .leftovers import kill_folder_processes, new_run_folder
from .plan import RunPlan
from .qemu import QemuConfig, RunFiles, can_lock_memory, qemu_argv
from .runrecord import VmResult
from .windows import case_of, is_traced_key

EVENT_BYTES_PER_ITERATION = 4 * 64   # kvm_exit + kvm_userspace_exit + kvm_pio + a handler event
# The timeline adds kvm_entry (40 bytes in the ring buffer) and, for a userspace exit,
# sys_exit_ioctl + sys_enter_ioctl (28 + 44): an OUT iteration is about 240 bytes in all.
TIMELINE_BYTES_PER_ITERATION = 2 * 64


def trace_buffer_kb(iterations_total: int, timeline: bool = False) -> int:
    """The measured core's trace buffer (streaming backend, and the hist backend's timeline): a
    whole case's events, so the reader never has to keep up with the exit rate; at least 32 MiB,
    at most 2 GiB or a quarter of the available memory."""
    from exitlat.verify.trace.tracepipe import DEFAULT_BUFFER_KB

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


def make_sample_disk(path: Path, size: int) -> None:
    """The guest's sample disk, allocated now: a full temporary disk is one line before QEMU
    starts, not a guest stalled on a write it cannot finish."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ExitlatError(f"no room for the {size >> 20} MiB sample disk in {path.parent.parent} "
                               "(set TMPDIR to a folder with more space)") from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise ExitlatError(f"cannot make the sample disk {path}: {err.strerror}") from None
        os.ftruncate(fd, size)     # a filesystem without fallocate: sparse, as before
    finally:
        os.close(fd)


def panic_reason(console) -> str | None:
    """"the guest kernel panicked: ..." when the console shows a panic (panic=-1 and -no-reboot
    make QEMU exit right after it)."""
    if console is None:
        return None
    m = re.search(rb"Kernel panic - not syncing:[^\r\n]*", bytes(console.transcript))
    return f"the guest kernel panicked ({m.group(0).decode(errors='replace').strip()})" if m else None


class VmRun:
    """One fresh VM: boot, pin, follow the guest through every window, collect the samples."""

    def __init__(self, plan: RunPlan, progress: Progress):
        self.plan, self.o, self.guest = plan, plan.options, plan.guest
        self.build, self.accel, self.core, self.hk = plan.build, plan.accel, plan.core, plan.housekeeping
        self.progress, self.pins_base = progress, plan.pins_base
        self.result = VmResult()
        self.spec_by_key = {s.key: s for s in plan.specs}
        self.verdicts = plan.verdicts()
        self.tracer = None
        self.traced_before = None
        self.receiver_tracer = None     # the second vCPU's counter (two-vCPU kinds)
        self.receiver_before = None
        self.vcpus: list[int] = []

    def timeouts(self) -> tuple[float, float]:
        n = max(self.plan.n_timed, self.guest.verify_iterations or 0)
        slow = self.accel == "tcg"
        boot = self.o.boot_timeout or (120.0 if slow else 60.0)
        per_key = 30.0 + n * (200e-6 if slow else 50e-6)
        return boot, per_key

    def run(self) -> VmResult:
        from .guestio import parse_console_line, read_samples

        r = self.result
        folder = new_run_folder()      # named after this process: cleanup knows whose it is
        files = RunFiles(folder)
        debugcon = self.o.debugcon if self.o.debugcon != "auto" else ("file" if self.accel == "tcg" else "null")
        mem_mb = self.guest.guest_mem_mb()
        mem_lock = self.o.container or can_lock_memory(mem_mb)
        if not mem_lock:
            self.progress.say("warning: cannot lock guest memory (not root, RLIMIT_MEMLOCK too "
                              "small): running with mem-lock=off; raise `ulimit -l` to lock it")
        self.result.mem_lock = mem_lock
        cfg = QemuConfig(self.build, self.accel, mem_mb, self.guest.kernel_args(), self.o.port,
                         debugcon, mem_lock, self.guest.devices(), self.plan.vcpus)
        r.argv = qemu_argv(cfg, files)
        qemu = console = qmp = None
        t0 = time.monotonic()
        try:
            make_sample_disk(files.disk, self.guest.disk_size_bytes())
            qemu = self._start_qemu(r.argv, folder)
            r.timings["qemu_start_s"] = time.monotonic() - t0
            from .qmp import QMP

            console = Console(str(files.console), exit_code=qemu.poll)
            qmp = QMP(str(files.qmp), exit_code=qemu.poll)
            r.qemu_version = qmp.version()
            self.vcpus = qmp.vcpu_threads()
            from .launcher import pin_threads

            if len(self.vcpus) != self.plan.vcpus:
                raise ExitlatError(f"QEMU reports {len(self.vcpus)} vCPU threads, the plan has "
                                   f"{self.plan.vcpus}")
            r.pinned = pin_threads(qemu.pid, self.vcpus, self.plan.placement.vcpu_cores, self.hk)
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
            # a kind the guest left out (refused, with why) has no samples by design
            missing = [k for k in self.guest.keys()
                       if k not in r.samples and case_of(k) not in r.refused]
            if missing and r.status == "complete":
                r.status, r.reason = "incomplete", f"guest wrote no samples for {', '.join(missing)}"
        except KeyboardInterrupt as err:
            r.status, r.reason = "incomplete", reason_of(err)
            raise
        except ConsoleClosed:
            r.status = "incomplete"
            r.reason = (panic_reason(console) or
                        f"QEMU exited ({qemu.exit_text() if qemu else 'code unknown'}) before the guest finished")
        except ExitlatError as err:
            r.status, r.reason = "incomplete", str(err)
        finally:
            # A stop request arriving now is held (exitlat.run.interrupt): the cleanup always ends.
            with deferred():
                for tracer in (self.tracer, self.receiver_tracer):
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
                kill_folder_processes(folder)     # a QEMU whose start was cut short
                if files.debugcon.exists():
                    r.debugcon_bytes = files.debugcon.stat().st_size
                stderr = folder / "qemu-stderr.log"
                r.qemu_stderr = stderr.read_bytes() if stderr.exists() else b""
                shutil.rmtree(folder, ignore_errors=True)
        if r.status != "complete" and r.reason and r.reason.startswith("QEMU exited"):
            said = qemu_error_line(r.qemu_stderr)
            if said:
                r.reason = f"{r.reason}: {said}"
        return r

    def _start_qemu(self, argv, folder):
        from .launcher import ContainerQemu, HostQemu

        if self.o.container:
            return ContainerQemu(argv, folder, self.build,
                                 sorted({*self.plan.placement.vcpu_cores, self.hk}), self.accel,
                                 self.pins_base, self.progress.say)
        return HostQemu(argv, folder)

    def _tracing_mode(self) -> str:
        if self.accel != "kvm":
            return "not applicable"
        if not self.o.verify:
            return "disabled (--no-verify)"
        if not self.guest.verify_iterations:
            return "disabled (no traced windows)"
        return f"traced windows only ({self.o.tracing})"

    # -- the two windows of a key ----------------------------------------------------------------
    def _open_traced(self, key: str) -> None:
        """Start counting exits for a traced window: a fresh tracefs instance (tracepoints, hist
        triggers, fastpath kprobes) that exists only while this window runs, with the TSC as its
        trace clock and the timeline that pairs each exit with its re-entry (exitlat.stats.decompose)."""
        from exitlat.instructions import TABLE
        from exitlat.verify.trace.kprobes import fastpath_symbols
        from exitlat.verify.trace.kvmtrace import ExitCounter
        from .windows import TracedWindow

        w = self.result.windows[case_of(key)] = TracedWindow()
        if not self.plan.verifying:
            return
        # The fastpath kprobes only where the verifier reads them (an instruction with a fastpath
        # handler): no other case's exit intervals carry a kprobe (exitlat.stats.decompose).
        spec = self.spec_by_key.get(case_of(key))
        probes = fastpath_symbols() if spec is not None and TABLE[spec.instruction].fastpath else None
        # vCPU 0's thread alone: a second vCPU (the IPI kinds' receiver) has its own counter,
        # so that each one's exits are proven against what it must do
        self.tracer = ExitCounter(self.vcpus[:1], cpu=self.core, backend=self.o.tracing,
                                  buffer_kb=trace_buffer_kb(self.guest.verify_iterations, timeline=True),
                                  kprobes=probes, timeline=True)
        self.tracer.start()
        w.backend = self.tracer.backend
        w.kprobes = list(getattr(self.tracer, "kprobes_active", []) or [])
        if spec is not None and spec.receiver_path and len(self.vcpus) > 1:
            self.receiver_tracer = ExitCounter(
                self.vcpus[1:2], cpu=self.plan.placement.peer, backend=self.o.tracing,
                buffer_kb=trace_buffer_kb(self.guest.verify_iterations))
            self.receiver_tracer.start()
            self.receiver_before = self.receiver_tracer.snapshot()
        self.traced_before = self.tracer.snapshot()

    def _close_traced(self, key: str) -> None:
        w = self.result.windows[case_of(key)]
        if self.tracer is None:
            return
        try:
            w.counts = self.tracer.snapshot() - self.traced_before
            if self.receiver_tracer is not None:
                w.receiver_counts = self.receiver_tracer.snapshot() - self.receiver_before
            try:        # the decomposition's input; its failure never touches the verification
                self.result.timelines[case_of(key)] = self.tracer.timeline()
            except ExitlatError as e:
                self.result.timelines[case_of(key)] = f"no timeline: {e}"
        finally:
            self.tracer.stop()
            self.tracer = None
            self._stop_receiver_tracer()

    def _stop_receiver_tracer(self) -> None:
        if self.receiver_tracer is not None:
            try:
                self.receiver_tracer.stop()
            finally:
                self.receiver_tracer = None

    def _live_verdict(self, key: str) -> str:
        """A window's check as soon as it closes: the same verdicts the bundle keeps."""
        r, judge = self.result, self.verdicts
        if is_traced_key(key):
            spec = self.spec_by_key.get(case_of(key))
            if spec is None or not self.plan.verifying:
                return ""
            v = judge.traced(spec, r)
            if judge.console_io(r) is None and spec.key in r.timed:
                # no baseline ran: the timed window's console estimate came with this window
                t = judge.timed(spec, r)
                return (f"; {v['status'].upper()}: {v['detail']}; timed window "
                        f"{t['status'].upper()}: {t['detail']}")
        elif self.accel != "kvm":
            return ""
        elif key in self.spec_by_key:
            if judge.console_io(r) is None and self.plan.verifying:
                return "; verdict after its traced window (which measures the console's I/O)"
            v = judge.timed(self.spec_by_key[key], r)
        else:
            v = judge.baseline(key, r)
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
                                  f"invariant TSC {ev.get('invariant_tsc')}"
                                  + (f", APIC {ev['apic_mode']}" if ev.get("apic_mode") else ""))
                timeout, waiting_for = key_timeout, "the first case"
            elif kind == "ready":
                key = ev["key"]
                if is_traced_key(key):
                    self._open_traced(key)
                    what = f"{self.guest.verify_iterations} traced iterations"
                else:
                    r.timed[key] = TimedWindow(tracing_before=tracing_state())
                    what = f"{self.o.warmup}+{self.o.iterations} iterations"
                stats_before[key] = qmp.kvm_stats() if qmp else None
                if qmp and self.plan.vcpus > 1:
                    stats_before[key + "/receiver"] = qmp.kvm_stats(1)
                started[key] = time.monotonic()
                self.progress.say(f"{key}: running {what}")
                console.send("go\n")
                timeout, waiting_for = key_timeout, f"{key} to finish"
            elif kind == "done":
                key = ev["key"]
                stats = _stats_delta(stats_before.get(key), qmp.kvm_stats() if qmp else None)
                receiver = (_stats_delta(stats_before.get(key + "/receiver"), qmp.kvm_stats(1))
                            if qmp and self.plan.vcpus > 1 else None)
                r.tsc_backwards[key] = ev.get("tsc_backwards")
                if is_traced_key(key):
                    self._close_traced(key)
                    r.windows[case_of(key)].kvm_stats = stats
                    r.windows[case_of(key)].receiver_kvm_stats = receiver
                elif key in r.timed:
                    r.timed[key].kvm_stats = stats
                    r.timed[key].receiver_kvm_stats = receiver
                    r.timed[key].tracing_after = tracing_state()
                r.timings[f"{key}_s"] = time.monotonic() - started.get(key, time.monotonic())
                self.progress.say(f"{key}: done in {fmt_duration(r.timings[f'{key}_s'])}"
                                  + self._live_verdict(key))
                console.send("go\n")
            elif kind == "refused":     # a kind of a list this vCPU cannot run: left out
                r.refused[str(ev.get("key"))] = str(ev.get("message") or "refused")
                self.progress.say(f"{ev.get('key')}: left out: {ev.get('message')}")
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


def qemu_error_line(stderr: bytes) -> str:
    """The line of QEMU's stderr that says why it stopped (its first error), '' when none."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    said = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return said[:300]


def _stats_delta(before: dict | None, after: dict | None) -> dict | None:
    """KVM stats of one window (every counter, zeros included); None when either read failed."""
    if not before or not after:
        return None
    return {k: after[k] - v for k, v in before.items() if k in after}
